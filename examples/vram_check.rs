//! Peak GPU memory of one training step, measured, against the runtime estimate.
//!
//! ```text
//! cargo run --release --features cuda --example vram_check -- [--device cuda] [--case all|block|model]
//!     [--block-batch 4,1024] [--model-shape 128,352,4,4,2,259] [--model-batch 32,24] [--json FILE]
//! ```
//!
//! Two cases, each a random-weight `adapters_runtime::models::llama::Llama` trained one step at a
//! time (forward, masked cross entropy, backward, gradient clipping, AdamW) as the `Trainer` does:
//!
//! * `block`: one Llama-7B-shaped decoder layer (hidden 4096, MLP 11008, 32 heads, vocab 256
//!   tied, so embedding and head are negligible), bf16 base, DoRA r = 16 on all seven
//!   projections, `--block-batch` sequences × tokens (default 4 × 1024 = 4096 tokens).
//! * `model`: the fine-tuning example's default model (`--model-shape hidden,mlp,layers,heads,
//!   kv_heads,vocab`, default 128,352,4,4,2,259, untied), f32 base, DoRA r = 8 on the seven
//!   projections, 32 × 24 tokens.
//!
//! Measured on CUDA, from an empty device: the peak of the stream-ordered allocator that candle
//! allocates from (the driver's `CU_MEMPOOL_ATTR_USED_MEM_HIGH`, restarted once the model is built
//! so the temporaries of building it do not count; the model's weights, adapters, optimizer state,
//! batch, activations and gradients do), and the driver's free-memory drop (`cuMemGetInfo`, freed
//! memory kept reserved, so it includes the pool's peak reservation plus cuBLAS workspaces and
//! loaded kernels). The estimate is `adapters_runtime::peft::estimate_training` (the
//! `estimate::vram_bytes` formula the `#[adapter]` macro's `VRAM_BYTES` uses) with the same
//! `batch_tokens`. On the CPU, or when no GPU is available, only the estimate is printed
//! (`--run-on-cpu` still runs the steps, for timing).

use adapters_runtime::candle_core::{self as candle_core, DType, Device, Tensor};
use adapters_runtime::candle_nn::{VarBuilder, VarMap};
use adapters_runtime::estimate::{human_bytes, BaseDType, Method};
use adapters_runtime::models::llama::{random_weights, BaseMode, Llama};
use adapters_runtime::train::{clip_grad_norm, masked_cross_entropy, AdamW, AdamWConfig, Grads};
use adapters_runtime::train::{estimate_training, EstimateRequest, TrainingEstimate};
use adapters_runtime::{AdapterConfig, Adapters};
use bench::Res;
use clap::Parser;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

#[path = "support/bench.rs"]
#[allow(dead_code)]
mod bench;

#[derive(Parser)]
#[command(
    about = "Measures the peak GPU memory of a training step and compares it with the estimate"
)]
struct Args {
    /// `cuda`, `cuda:N` or `cpu` (estimate only).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Fail (exit 1) instead of printing the estimate only when no GPU can be opened.
    #[arg(long)]
    require_gpu: bool,
    /// On the CPU, still run the training steps (timings only; checks the code path).
    #[arg(long)]
    run_on_cpu: bool,
    /// `all`, `block` (Llama-7B-shaped layer) or `model` (the fine-tuning example's model).
    #[arg(long, default_value = "all")]
    case: String,
    /// Sequences and tokens per sequence of the `block` case.
    #[arg(long, default_value = "4,1024")]
    block_batch: String,
    /// `hidden,mlp,layers,heads,kv_heads,vocab` of the `model` case.
    #[arg(long, default_value = "128,352,4,4,2,259")]
    model_shape: String,
    /// Sequences and tokens per sequence of the `model` case.
    #[arg(long, default_value = "32,24")]
    model_batch: String,
    /// Training steps measured per case (the first one allocates the AdamW state).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Write the results as a JSON array to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One measured configuration.
#[derive(Clone, Debug)]
struct Case {
    name: &'static str,
    hidden: usize,
    mlp: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    tied: bool,
    rank: usize,
    dtype: BaseDType,
    batch: usize,
    seq: usize,
}

impl Case {
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "hidden_size": self.hidden,
            "intermediate_size": self.mlp,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "max_position_embeddings": self.seq.max(64),
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
        })
    }

    fn adapter(&self) -> AdapterConfig {
        AdapterConfig::dora(self.rank, 2.0 * self.rank as f64)
    }

    fn estimate(&self) -> Res<TrainingEstimate> {
        let cfg: adapters_runtime::hf::LlamaConfig = serde_json::from_value(self.config_json())?;
        let request = EstimateRequest {
            method: Method::Dora,
            rank: self.rank,
            targets: vec!["all-linear".into()],
            dtype: self.dtype,
            batch_tokens: self.batch * self.seq,
            seq_len: self.seq,
        };
        Ok(estimate_training(&cfg, &request)?)
    }
}

#[derive(Serialize)]
struct Record {
    case: &'static str,
    device: String,
    shape: String,
    dtype: String,
    batch_tokens: usize,
    /// Sequences per batch.
    batch: usize,
    /// Tokens per sequence.
    seq: usize,
    frozen_params: usize,
    trainable_params: usize,
    estimate_bytes: usize,
    /// Peak of candle's allocator (the driver's memory pool) over the measured steps.
    measured_peak_bytes: Option<u64>,
    /// Drop in the driver's free memory (pool reservation + cuBLAS workspaces + kernels).
    driver_bytes: Option<u64>,
    /// `measured_peak_bytes / estimate_bytes`.
    ratio: Option<f64>,
    step_ms: Option<f64>,
}

fn pair(s: &str, what: &str) -> Res<(usize, usize)> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()?;
    match v[..] {
        [a, b] if a > 0 && b > 0 => Ok((a, b)),
        _ => Err(format!("--{what} `{s}`: expected two positive numbers `a,b`").into()),
    }
}

fn cases(args: &Args) -> Res<Vec<Case>> {
    let (bb, bs) = pair(&args.block_batch, "block-batch")?;
    let block = Case {
        name: "block",
        hidden: 4096,
        mlp: 11008,
        layers: 1,
        heads: 32,
        kv_heads: 32,
        vocab: 256,
        tied: true,
        rank: 16,
        dtype: BaseDType::BF16,
        batch: bb,
        seq: bs,
    };
    let m: Vec<usize> = args
        .model_shape
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()?;
    let [hidden, mlp, layers, heads, kv_heads, vocab] = m[..] else {
        return Err(format!(
            "--model-shape `{}`: expected hidden,mlp,layers,heads,kv_heads,vocab",
            args.model_shape
        )
        .into());
    };
    let (mb, ms) = pair(&args.model_batch, "model-batch")?;
    let model = Case {
        name: "model",
        hidden,
        mlp,
        layers,
        heads,
        kv_heads,
        vocab,
        tied: false,
        rank: 8,
        dtype: BaseDType::F32,
        batch: mb,
        seq: ms,
    };
    match args.case.as_str() {
        "all" => Ok(vec![block, model]),
        "block" => Ok(vec![block]),
        "model" => Ok(vec![model]),
        other => Err(format!("--case `{other}`: expected all, block or model").into()),
    }
}

/// The model with DoRA on the seven projections, its optimizer and a random batch.
struct Run {
    model: Llama,
    opt: AdamW,
    ids: Tensor,
    targets: Tensor,
    mask: Tensor,
}

impl Run {
    fn new(case: &Case, dev: &Device) -> Res<Self> {
        let cfg: adapters_runtime::models::llama::LlamaConfig =
            serde_json::from_value(case.config_json())?;
        let dt = case.dtype.to_candle();
        let weights: HashMap<String, Tensor> =
            random_weights(&cfg, dt, dev, 0)?.into_iter().collect();
        let vb = VarBuilder::from_tensors(weights, dt, dev);
        let mut model = Llama::load(&cfg, vb, BaseMode::Frozen)?;
        let adapter = case.adapter();
        model.attach_adapters_with(&VarMap::new(), 0, &mut |path, _| {
            (!path.contains("embed_tokens")).then_some(adapter)
        })?;
        model.set_adapters_training(true)?;
        let opt = AdamW::new(model.named_trainable_vars()?, AdamWConfig::default())?;
        let n = case.batch * case.seq;
        let tokens = |seed: u64| -> candle_core::Result<Tensor> {
            let v: Vec<u32> = (0..n as u64)
                .map(|k| {
                    ((k.wrapping_mul(2654435761).wrapping_add(seed)) % case.vocab as u64) as u32
                })
                .collect();
            Tensor::from_vec(v, (case.batch, case.seq), dev)
        };
        Ok(Self {
            model,
            opt,
            ids: tokens(1)?,
            targets: tokens(7)?,
            mask: Tensor::ones((case.batch, case.seq), DType::F32, dev)?,
        })
    }

    /// One optimizer step as the `Trainer` takes it; returns the loss.
    fn step(&mut self) -> Res<f64> {
        let logits = self.model.forward(&self.ids)?;
        let loss = masked_cross_entropy(&logits, &self.targets, &self.mask)?;
        let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        let store = loss.backward()?;
        drop((logits, loss));
        let mut grads = Grads::from_store(self.opt.params(), &store)?;
        drop(store);
        clip_grad_norm(&mut grads, 1.0)?;
        self.opt.step(&grads, 1e-4)?;
        Ok(value)
    }
}

/// The driver's view of memory: the pool candle allocates from and the free device memory.
#[cfg(feature = "cuda")]
mod gpu {
    use super::Res;
    use adapters_runtime::candle_core::cuda_backend::cudarc::driver::{result, sys, CudaContext};
    use adapters_runtime::candle_core::Device;
    use std::ffi::c_void;
    use std::sync::Arc;

    type Attr = sys::CUmemPool_attribute;

    /// The context and memory pool of a CUDA device.
    pub struct Meter {
        ctx: Arc<CudaContext>,
        pool: Option<sys::CUmemoryPool>,
    }

    impl Meter {
        /// `None` for a non-CUDA device.
        pub fn new(device: &Device) -> Res<Option<Self>> {
            let Device::Cuda(d) = device else {
                return Ok(None);
            };
            let ctx = d.cuda_stream().context().clone();
            ctx.bind_to_thread()?;
            let pool = if ctx.has_async_alloc() {
                // SAFETY: a valid device of a live context.
                let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }?;
                let m = Self {
                    ctx: ctx.clone(),
                    pool: Some(pool),
                };
                // Keep freed memory reserved, so the free-memory drop shows the peak reservation.
                m.set(Attr::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX)?;
                Some(pool)
            } else {
                None
            };
            Ok(Some(Self { ctx, pool }))
        }

        fn set(&self, attr: Attr, mut v: u64) -> Res<()> {
            if let Some(pool) = self.pool {
                // SAFETY: the attributes used here are all `cuuint64_t`.
                unsafe {
                    result::mem_pool::set_attribute(pool, attr, &mut v as *mut u64 as *mut c_void)
                }?;
            }
            Ok(())
        }

        fn get(&self, attr: Attr) -> Res<Option<u64>> {
            let Some(pool) = self.pool else {
                return Ok(None);
            };
            let mut v = 0u64;
            // SAFETY: as in `set`.
            unsafe {
                result::mem_pool::get_attribute(pool, attr, &mut v as *mut u64 as *mut c_void)
            }?;
            Ok(Some(v))
        }

        /// Returns the pool's unused memory to the driver and restarts the high-water marks.
        pub fn reset(&self) -> Res<()> {
            self.ctx.synchronize()?;
            if let Some(pool) = self.pool {
                // SAFETY: a valid pool.
                unsafe { result::mem_pool::trim_to(pool, 0) }?;
            }
            self.set(Attr::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)?;
            self.reset_high()
        }

        /// Restarts the allocator's high-water mark at the memory in use now.
        pub fn reset_high(&self) -> Res<()> {
            self.ctx.synchronize()?;
            self.set(Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)
        }

        /// Bytes in use in the pool now.
        pub fn used(&self) -> Res<Option<u64>> {
            self.get(Attr::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
        }

        /// The pool's peak use since [`Meter::reset`].
        pub fn used_high(&self) -> Res<Option<u64>> {
            self.get(Attr::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
        }

        /// Free device memory, as the driver reports it.
        pub fn free(&self) -> Res<u64> {
            Ok(self.ctx.mem_get_info()?.0 as u64)
        }

        /// The device's name.
        pub fn name(&self) -> String {
            self.ctx.name().unwrap_or_else(|e| format!("unknown ({e})"))
        }
    }
}

/// What one case measured.
struct Measured {
    /// Peak of the allocator, `None` without a memory pool (or on the CPU).
    peak: Option<u64>,
    /// Drop of the driver's free memory, `None` on the CPU.
    driver: Option<u64>,
    /// Time of the last step.
    step_ms: f64,
}

/// Builds the model of `case` on `dev` and takes `steps` training steps, metering the GPU's
/// memory when `meter` is given.
fn measure(case: &Case, dev: &Device, steps: usize, meter: Option<&Meter>) -> Res<Measured> {
    let mut base = (0, 0);
    if let Some(m) = meter {
        m.reset()?;
        base = (m.used()?.unwrap_or(0), m.free()?);
    }
    let mut run = Run::new(case, dev)?;
    if let Some(m) = meter {
        // The peak counts what the model holds, not the temporaries of building it.
        m.reset_high()?;
    }
    let mut step_ms = 0.0;
    for s in 1..=steps.max(1) {
        let t = Instant::now();
        let loss = run.step()?;
        dev.synchronize()?;
        step_ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("  {} step {s}: loss {loss:.4}, {step_ms:.1} ms", case.name);
    }
    let mut out = Measured {
        peak: None,
        driver: None,
        step_ms,
    };
    if let Some(m) = meter {
        out.peak = m.used_high()?.map(|h| h.saturating_sub(base.0));
        out.driver = Some(base.1.saturating_sub(m.free()?));
        drop(run);
        m.reset()?;
    }
    Ok(out)
}

#[cfg(feature = "cuda")]
use gpu::Meter;

/// Stand-in without CUDA: there is never a meter.
#[cfg(not(feature = "cuda"))]
struct Meter;

#[cfg(not(feature = "cuda"))]
impl Meter {
    fn new(_: &Device) -> Res<Option<Self>> {
        Ok(None)
    }
    fn reset(&self) -> Res<()> {
        Ok(())
    }
    fn reset_high(&self) -> Res<()> {
        Ok(())
    }
    fn used(&self) -> Res<Option<u64>> {
        Ok(None)
    }
    fn used_high(&self) -> Res<Option<u64>> {
        Ok(None)
    }
    fn free(&self) -> Res<u64> {
        Ok(0)
    }
    fn name(&self) -> String {
        String::new()
    }
}

fn run() -> Res<()> {
    let args = Args::parse();
    let cases = cases(&args)?;
    let device = match adapters_runtime::device(&args.device) {
        Ok(d) if d.is_cuda() => Some(d),
        Ok(_) if args.require_gpu => {
            return Err(format!("--require-gpu: `{}` is not a GPU", args.device).into())
        }
        Ok(d) if args.run_on_cpu => {
            println!(
                "no GPU (device `{}`): running the steps for timing, memory not measured",
                args.device
            );
            Some(d)
        }
        Ok(_) => {
            println!(
                "no GPU (device `{}`): printing the estimates only",
                args.device
            );
            None
        }
        Err(e) if args.require_gpu => return Err(e.into()),
        Err(e) => {
            println!("no GPU: {e}; printing the estimates only");
            None
        }
    };
    let meter = match &device {
        Some(d) => Meter::new(d)?,
        None => None,
    };
    let dev_name = match (&meter, &device) {
        (Some(m), _) => m.name(),
        (None, Some(d)) => format!("{d:?}"),
        (None, None) => "none".to_string(),
    };
    println!("device: {dev_name}");
    let mut records = Vec::new();
    for case in &cases {
        let est = case.estimate()?;
        println!(
            "\n== {}: hidden {} mlp {} layers {} heads {}/{} vocab {}, {:?} base, DoRA r={}, {} × {} tokens",
            case.name,
            case.hidden,
            case.mlp,
            case.layers,
            case.heads,
            case.kv_heads,
            case.vocab,
            case.dtype,
            case.rank,
            case.batch,
            case.seq
        );
        print!("{est}");
        let (peak, driver, step_ms) = match &device {
            Some(dev) => {
                let m = measure(case, dev, args.steps, meter.as_ref())?;
                (m.peak, m.driver, Some(m.step_ms))
            }
            None => (None, None, None),
        };
        let ratio = peak.map(|p| p as f64 / est.total_bytes as f64);
        if let Some(d) = driver {
            let p = peak.map_or("n/a (no memory pool)".into(), |p| human_bytes(p as usize));
            println!(
                "measured peak (allocator): {p}; driver free-memory drop: {}",
                human_bytes(d as usize)
            );
            if let Some(r) = ratio {
                println!(
                    "measured / estimate = {r:.3} ({}within ±15 %)",
                    if (0.85..=1.15).contains(&r) {
                        ""
                    } else {
                        "NOT "
                    }
                );
            }
        }
        records.push(Record {
            case: case.name,
            device: dev_name.clone(),
            shape: format!(
                "hidden {} mlp {} layers {} heads {}/{} vocab {}",
                case.hidden, case.mlp, case.layers, case.heads, case.kv_heads, case.vocab
            ),
            dtype: format!("{:?}", case.dtype).to_lowercase(),
            batch_tokens: case.batch * case.seq,
            batch: case.batch,
            seq: case.seq,
            frozen_params: est.frozen_params,
            trainable_params: est.trainable_params,
            estimate_bytes: est.total_bytes,
            measured_peak_bytes: peak,
            driver_bytes: driver,
            ratio,
            step_ms,
        });
    }
    println!(
        "\n{:<6} {:>12} {:>14} {:>14} {:>8}",
        "case", "estimate", "measured peak", "driver drop", "ratio"
    );
    for r in &records {
        let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| human_bytes(v as usize));
        println!(
            "{:<6} {:>12} {:>14} {:>14} {:>8}",
            r.case,
            human_bytes(r.estimate_bytes),
            opt(r.measured_peak_bytes),
            opt(r.driver_bytes),
            r.ratio.map_or("-".to_string(), |v| format!("{v:.3}"))
        );
    }
    bench::write_json(args.json.as_deref(), &records)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    bench::exit(run())
}
