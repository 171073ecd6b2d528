//! What the benchmark examples share: the common flags, timing with device synchronisation,
//! medians, the JSON output and the exit code.

use adapters_runtime::candle_core::{self as candle_core, DType, Device};
use serde::Serialize;
use std::time::Instant;

/// A boxed error, for examples.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The flags every benchmark takes.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Write the records as a JSON array to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Timed rounds per figure (the median is reported).
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// Untimed warm-up rounds.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Activation / base dtype: `f32`, `bf16` or `f16`.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl BenchArgs {
    /// The device named by `--device`.
    pub fn device(&self) -> Res<Device> {
        Ok(adapters_runtime::device(&self.device)?)
    }

    /// The dtype named by `--dtype`.
    pub fn dtype(&self) -> Res<DType> {
        match self.dtype.as_str() {
            "f32" => Ok(DType::F32),
            "bf16" => Ok(DType::BF16),
            "f16" => Ok(DType::F16),
            d => Err(format!("unknown dtype `{d}` (expected f32, bf16 or f16)").into()),
        }
    }

    /// Whether round `round` (0-based) is timed (after the warm-up).
    pub fn timed(&self, round: usize) -> bool {
        round >= self.warmup
    }

    /// Rounds in all: warm-up plus at least one timed.
    pub fn rounds(&self) -> usize {
        self.warmup + self.runs.max(1)
    }

    /// Writes `records` as pretty JSON to `--json`, atomically, when given.
    pub fn write_json<R: Serialize>(&self, records: &[R]) -> Res<()> {
        write_json(self.json.as_deref(), records)
    }
}

/// Writes `records` as pretty JSON to `path`, atomically, when given.
pub fn write_json<R: Serialize>(path: Option<&std::path::Path>, records: &[R]) -> Res<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(records)?;
        adapters_runtime::io::atomic::write_file_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// One timed call of `f` in milliseconds, synchronising the device after it so that
/// asynchronous (CUDA) work is included.
pub fn time_ms(device: &Device, f: &mut dyn FnMut() -> candle_core::Result<()>) -> Res<f64> {
    let t = Instant::now();
    f()?;
    device.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The median (upper median for an even count) of `v`, which must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `run`, printing its error, as the process's exit code.
pub fn exit(result: Res<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
