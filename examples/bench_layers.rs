//! Layer benchmark: forward and forward+backward of base / LoRA / DoRA / merged DoRA linear layers.
//!
//! ```text
//! cargo run --release --example bench_layers -- [--json FILE] [--runs 20] [--device cpu|cuda|cuda:N] [--dtype f32|bf16]
//! ```
//! Backward is of `sum(y·g)` into the adapter parameters only (x is a constant input). Each figure is
//! the median of `--runs` timed rounds after warm-up; within a round every kind is timed once, so
//! all kinds see the same machine conditions, and the DoRA / LoRA ratio is the median of the
//! per-round ratios. Results go to stdout as a table and, with
//! `--json`, as an array of `{"kind", "din", "dout", "r", "tokens", "dtype", "fwd_ms", "fwd_bwd_ms"}`.

use adapters_runtime::candle_core::{self as candle_core, DType, Device, Module, Tensor};
use adapters_runtime::{AdaptedLinear, AdapterConfig};
use bench::{median, time_ms, BenchArgs, Res};
use clap::Parser;
use serde::Serialize;

// candle allocates a fresh buffer for every op result; glibc's malloc serves large ones with
// mmap, and the page faults and TLB shootdowns cost DoRA's CPU backward ~2× (BENCHMARKS.md).
// mimalloc reuses freed buffers.
#[path = "support/bench.rs"]
mod bench;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Times base / LoRA / DoRA / merged-DoRA linear layers")]
struct Args {
    #[command(flatten)]
    bench: BenchArgs,
    /// Shapes as `in,out,r,tokens`; repeatable. Default: the two shapes of the issue.
    #[arg(long = "shape")]
    shapes: Vec<String>,
}

#[derive(Serialize)]
struct Record {
    kind: &'static str,
    din: usize,
    dout: usize,
    r: usize,
    tokens: usize,
    dtype: String,
    fwd_ms: f64,
    fwd_bwd_ms: Option<f64>,
}

fn rand(dims: &[usize], scale: f64, dt: DType, device: &Device) -> candle_core::Result<Tensor> {
    (Tensor::rand(-1f32, 1f32, dims, device)? * scale)?.to_dtype(dt)
}

fn layer(w: &Tensor, cfg: Option<AdapterConfig>, device: &Device) -> Res<AdaptedLinear> {
    let mut l = AdaptedLinear::new(w.clone(), None).with_path("bench");
    if let Some(cfg) = cfg {
        let (dout, din) = w.dims2()?;
        // Non-zero A and B, as mid-training.
        let a = rand(
            &[cfg.rank, din],
            1.0 / (din as f64).sqrt(),
            DType::F32,
            device,
        )?;
        let b = rand(&[dout, cfg.rank], 0.01, DType::F32, device)?;
        l.attach_weights(cfg, &a, &b, None)?;
    }
    Ok(l)
}

fn run() -> Res<()> {
    let args = Args::parse();
    let device = args.bench.device()?;
    let dt = args.bench.dtype()?;
    let shapes: Vec<[usize; 4]> = if args.shapes.is_empty() {
        vec![[1024, 1024, 16, 512], [2048, 2048, 16, 256]]
    } else {
        args.shapes
            .iter()
            .map(|s| {
                let v: Vec<usize> = s.split(',').map(str::parse).collect::<Result<_, _>>()?;
                v.try_into()
                    .map_err(|_| format!("--shape `{s}`: expected in,out,r,tokens").into())
            })
            .collect::<Result<_, Box<dyn std::error::Error>>>()?
    };
    let mut records = Vec::new();
    println!(
        "{:<12} {:>5} {:>5} {:>3} {:>6} {:>5} {:>10} {:>12}",
        "kind", "in", "out", "r", "tokens", "dtype", "fwd ms", "fwd+bwd ms"
    );
    for [din, dout, r, tokens] in shapes {
        let w = rand(&[dout, din], 1.0 / (din as f64).sqrt(), dt, &device)?;
        let x = rand(&[tokens, din], 1.0, dt, &device)?;
        let g = rand(&[tokens, dout], 1.0, dt, &device)?;
        let alpha = 2.0 * r as f64;
        let kinds: [(&'static str, Option<AdapterConfig>, bool); 4] = [
            ("base", None, false),
            ("lora", Some(AdapterConfig::lora(r, alpha)), false),
            ("dora", Some(AdapterConfig::dora(r, alpha)), false),
            ("dora_merged", Some(AdapterConfig::dora(r, alpha)), true),
        ];
        let mut layers = Vec::new();
        for (kind, cfg, merged) in kinds {
            let mut l = layer(&w, cfg, &device)?;
            if merged {
                l.merge()?;
            }
            layers.push((kind, l, cfg.is_some() && !merged));
        }
        // Every measurement is taken once per round, round after round, so all kinds see the
        // same machine conditions; medians over rounds, and the median of per-round ratios.
        let mut fwd: Vec<Vec<f64>> = vec![Vec::new(); layers.len()];
        let mut fwd_bwd: Vec<Vec<f64>> = vec![Vec::new(); layers.len()];
        for round in 0..args.bench.rounds() {
            for (i, (_, l, trains)) in layers.iter().enumerate() {
                let t = time_ms(&device, &mut || l.forward(&x).map(drop))?;
                let tb = if *trains {
                    Some(time_ms(&device, &mut || {
                        let y = l.forward(&x)?;
                        let loss = (y * &g)?.to_dtype(DType::F32)?.sum_all()?;
                        loss.backward().map(drop)
                    })?)
                } else {
                    None
                };
                if args.bench.timed(round) {
                    fwd[i].push(t);
                    fwd_bwd[i].extend(tb);
                }
            }
        }
        let ratio = {
            let pos = |k: &str| layers.iter().position(|(n, _, _)| *n == k);
            match (pos("lora"), pos("dora")) {
                (Some(li), Some(di)) => {
                    let mut r: Vec<f64> = fwd_bwd[di]
                        .iter()
                        .zip(&fwd_bwd[li])
                        .map(|(d, l)| d / l)
                        .collect();
                    Some(median(&mut r))
                }
                _ => None,
            }
        };
        for (i, (kind, _, _)) in layers.iter().enumerate() {
            let fwd_ms = median(&mut fwd[i]);
            let fwd_bwd_ms = (!fwd_bwd[i].is_empty()).then(|| median(&mut fwd_bwd[i]));
            let bwd = fwd_bwd_ms.map_or("-".to_string(), |v| format!("{v:.2}"));
            println!(
                "{kind:<12} {din:>5} {dout:>5} {r:>3} {tokens:>6} {:>5} {fwd_ms:>10.2} {bwd:>12}",
                args.bench.dtype
            );
            records.push(Record {
                kind,
                din,
                dout,
                r,
                tokens,
                dtype: args.bench.dtype.clone(),
                fwd_ms,
                fwd_bwd_ms,
            });
        }
        if let Some(ratio) = ratio {
            println!("  DoRA / LoRA fwd+bwd = {ratio:.3} (median of per-round ratios)");
        }
    }
    args.bench.write_json(&records)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    bench::exit(run())
}
