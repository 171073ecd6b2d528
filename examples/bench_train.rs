//! Model-level training benchmark: DoRA / LoRA steps of a randomly initialised Llama-family model.
//!
//! ```text
//! cargo run --release --example bench_train -- --preset smollm-135m --method dora [--rank 8]
//!     [--batch 4 --seq 78] [--steps 5 --warmup 1] [--targets q_proj,...] [--json FILE]
//! cargo run --release --example bench_train -- --config path/to/config.json --method lora
//! ```
//! No downloads: the base is random (HF's initialisation, [`random_weights`]) from an HF
//! `config.json` or a preset shape, frozen; adapters go on `--targets` (all seven projections by
//! default). Each step is what `finetune` runs: forward, masked cross entropy, backward, global
//! norm clipping at 1.0 and AdamW, through [`Trainer`], on random token ids (`--batch` rows of
//! `--seq` tokens, no padding). Reports the median step time of the timed steps, tokens per
//! second, the process's peak resident memory (Linux: `VmHWM`), minor page faults per timed step,
//! and the training-memory estimate the `finetune` example prints (the formulas behind
//! `VRAM_BYTES`). `scripts/peft_train_compare.py` runs the same shapes with PyTorch + PEFT.
//! `--quant nf4|q4_0|q8_0|…` stores the projections quantized (QLoRA / QDoRA), each made and
//! quantized one at a time ([`random_var_builder`]), and reports the quantized base's bytes.

#[path = "support/bench.rs"]
#[allow(dead_code)]
mod bench;

use adapters_runtime::candle_core::{DType, Tensor};
use adapters_runtime::candle_nn::{VarBuilder, VarMap};
use adapters_runtime::estimate::BaseDType;
use adapters_runtime::models::llama::{
    random_var_builder, random_weights, BaseMode, BaseQuant, Llama, LlamaConfig,
};
use adapters_runtime::train::memory::{estimate_training_quantized, parse_quant};
use adapters_runtime::train::{
    llama_loss, BatchLoader, EstimateRequest, LrSchedule, Sequence, TrainConfig, Trainer,
};
use adapters_runtime::{AdapterConfig, Adapters, Init, Method, Targets};
use bench::{median, Res};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

// The allocator that keeps freed buffers mapped (see `adapters_runtime::alloc`).
#[global_allocator]
static GLOBAL: adapters_runtime::alloc::TrainingAllocator =
    adapters_runtime::alloc::TrainingAllocator;

/// Model shapes with names (HF `config.json` fields).
const PRESETS: &[(&str, &str)] = &[
    (
        // SmolLM-135M (HuggingFaceTB/SmolLM2-135M's shape).
        "smollm-135m",
        r#"{"hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,
            "num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
            "rms_norm_eps":1e-5,"rope_theta":100000.0,"tie_word_embeddings":true,
            "max_position_embeddings":8192}"#,
    ),
    (
        // The `finetune` example's embedded default model.
        "default",
        r#"{"hidden_size":128,"intermediate_size":352,"num_hidden_layers":4,
            "num_attention_heads":4,"num_key_value_heads":2,"head_dim":32,"vocab_size":259,
            "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,
            "max_position_embeddings":64}"#,
    ),
    (
        // A ~1B Llama (TinyLlama-1.1B-like, 16 layers).
        "llama-1b",
        r#"{"hidden_size":2048,"intermediate_size":8192,"num_hidden_layers":16,
            "num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,
            "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,
            "max_position_embeddings":4096}"#,
    ),
];

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum MethodArg {
    Dora,
    Lora,
}

#[derive(Parser, Debug)]
#[command(about = "Times DoRA / LoRA training steps of a random-init Llama-family model")]
struct Args {
    /// An HF `config.json` (Llama family).
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// A named shape: smollm-135m, default (the finetune example's model), llama-1b.
    #[arg(long, default_value = "smollm-135m")]
    preset: String,
    /// Adapter method.
    #[arg(long, value_enum, default_value_t = MethodArg::Dora)]
    method: MethodArg,
    /// Adapter rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// lora_alpha (default 2 × rank).
    #[arg(long)]
    alpha: Option<f64>,
    /// Comma-separated module names to adapt.
    #[arg(
        long,
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    targets: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence (model inputs; the targets are the next tokens).
    #[arg(long, default_value_t = 78)]
    seq: usize,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 5)]
    steps: u64,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Base dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Store the projections quantized: nf4, q4_0, q4_1, q5_0, q5_1, q8_0, q2k … q8k.
    #[arg(long)]
    quant: Option<String>,
    /// Seed of the weights, adapters and token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the record as a one-element JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the model's HF config (JSON) and exit (`scripts/peft_train_compare.py` builds
    /// PEFT's side from it).
    #[arg(long)]
    print_config: bool,
}

#[derive(Serialize)]
struct Record {
    #[serde(rename = "impl")]
    implementation: &'static str,
    model: String,
    method: MethodArg,
    rank: usize,
    alpha: f64,
    targets: String,
    dtype: String,
    device: String,
    /// The projections' storage format (`null`: dense).
    quant: Option<String>,
    /// Bytes of the frozen projections as stored.
    projection_bytes: usize,
    batch: usize,
    seq: usize,
    tokens_per_step: usize,
    trainable_params: usize,
    frozen_params: usize,
    step_ms: Vec<f64>,
    median_step_ms: f64,
    /// Median time of the forward pass and loss (the rest of a step is backward, clipping and
    /// AdamW).
    median_forward_ms: f64,
    tokens_per_sec: f64,
    peak_rss_bytes: Option<u64>,
    /// Resident memory when the run started, before the model (the program itself).
    start_rss_bytes: Option<u64>,
    peak_gpu_bytes: Option<u64>,
    estimate_bytes: usize,
    page_faults_per_step: Option<f64>,
    threads: usize,
    final_loss: Option<f64>,
}

fn main() -> std::process::ExitCode {
    bench::exit(run(Args::parse()))
}

fn model_config(args: &Args) -> Res<(String, LlamaConfig)> {
    if let Some(path) = &args.config {
        return Ok((path.display().to_string(), LlamaConfig::from_file(path)?));
    }
    let (name, json) = PRESETS
        .iter()
        .find(|(n, _)| *n == args.preset)
        .ok_or_else(|| {
            let names: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
            format!(
                "--preset `{}`: expected one of {}",
                args.preset,
                names.join(", ")
            )
        })?;
    Ok((name.to_string(), serde_json::from_str(json)?))
}

/// `--batch` random sequences of `--seq + 1` ids (inputs and next-token targets), all in the loss.
fn random_sequences(args: &Args, vocab: usize) -> Vec<Sequence> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x5eed);
    (0..args.batch)
        .map(|_| {
            let ids: Vec<u32> = (0..=args.seq)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let mask = vec![true; ids.len()];
            Sequence { ids, mask }
        })
        .collect()
}

fn run(args: Args) -> Res<()> {
    let start_rss = adapters_runtime::alloc::rss_bytes();
    if args.batch == 0 || args.seq == 0 || args.steps == 0 {
        return Err("--batch, --seq and --steps must be at least 1".into());
    }
    let device = adapters_runtime::device(&args.device)?;
    let (dtype, base_dtype) = match args.dtype.as_str() {
        "f32" => (DType::F32, BaseDType::F32),
        "bf16" => (DType::BF16, BaseDType::BF16),
        "f16" => (DType::F16, BaseDType::F16),
        d => return Err(format!("--dtype `{d}`: expected f32, bf16 or f16").into()),
    };
    let (model_name, cfg) = model_config(&args)?;
    if args.print_config {
        println!("{}", serde_json::to_string(&cfg)?);
        return Ok(());
    }

    let quant = args.quant.as_deref().map(parse_quant).transpose()?;
    // The frozen base: random weights, as HF initialises a Llama.
    let mut model = match quant {
        None => {
            let weights: HashMap<String, Tensor> = random_weights(&cfg, dtype, &device, args.seed)?
                .into_iter()
                .collect();
            let vb = VarBuilder::from_tensors(weights, dtype, &device);
            Llama::load(&cfg, vb, BaseMode::Frozen)?
        }
        Some(q) => {
            let vb = random_var_builder(&cfg, dtype, &device, args.seed);
            Llama::load_with(&cfg, vb, BaseMode::Frozen, &BaseQuant::Quantize(q))?
        }
    };
    let mut projection_bytes = 0;
    model.for_each_layer(&mut |_, l| {
        if !l.is_embedding() {
            projection_bytes += l.base_bytes();
        }
    })?;

    let method = match args.method {
        MethodArg::Dora => Method::Dora,
        MethodArg::Lora => Method::Lora,
    };
    let alpha = args.alpha.unwrap_or(2.0 * args.rank as f64);
    let adapter = AdapterConfig {
        method,
        rank: args.rank,
        alpha,
        dropout: 0.0,
        rslora: false,
        init: Init::Kaiming,
    };
    adapter.validate("--rank/--alpha")?;
    let targets = Targets::parse_list(&args.targets);
    let varmap = VarMap::new();
    model.attach_adapters_with(&varmap, args.seed, &mut |path, _| {
        targets.matches(path).then_some(adapter)
    })?;
    let tokens_per_step = args.batch * args.seq;
    let estimate = estimate_training_quantized(
        &cfg,
        &EstimateRequest {
            method,
            rank: args.rank,
            targets: args.targets.split(',').map(str::to_string).collect(),
            dtype: base_dtype,
            batch_tokens: tokens_per_step,
            seq_len: args.seq,
        },
        quant,
    )?;

    let seqs = random_sequences(&args, cfg.vocab_size);
    let mut loader = BatchLoader::new(seqs, args.batch, 0, &device, args.seed, false)?;
    let mut tc = TrainConfig::new(args.warmup + args.steps, 1e-4);
    tc.schedule = LrSchedule::constant(1e-4, 0);
    tc.progress = false;
    tc.seed = args.seed;
    let mut trainer = Trainer::new(&model, tc)?;
    let faults_before = std::cell::Cell::new(None);
    let warmup = args.warmup as usize;
    let mut micro = 0usize;
    let mut forward_ms = Vec::new();
    let summary = trainer.train(&mut model, &mut loader, |m, b, _| {
        if micro == warmup {
            faults_before.set(minor_faults());
        }
        micro += 1;
        let t = std::time::Instant::now();
        let loss = llama_loss(m, b)?;
        loss.device().synchronize()?;
        forward_ms.push(t.elapsed().as_secs_f64() * 1e3);
        Ok(loss)
    })?;
    device.synchronize()?;
    let faults = match (faults_before.get(), minor_faults()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / args.steps as f64),
        _ => None,
    };
    let mut step_ms: Vec<f64> = summary.step_seconds[warmup..]
        .iter()
        .map(|s| s * 1e3)
        .collect();
    let med = median(&mut step_ms.clone());
    step_ms
        .iter_mut()
        .for_each(|v| *v = (*v * 1e3).round() / 1e3);
    let rec = Record {
        implementation: "adapters",
        model: model_name,
        method: args.method,
        rank: args.rank,
        alpha,
        targets: args.targets.clone(),
        dtype: args.dtype.clone(),
        device: args.device.clone(),
        quant: quant.map(|q| q.name().to_string()),
        projection_bytes,
        batch: args.batch,
        seq: args.seq,
        tokens_per_step,
        trainable_params: model.trainable_params()?,
        frozen_params: model.frozen_params()?,
        step_ms,
        median_step_ms: med,
        median_forward_ms: median(&mut forward_ms[warmup..].to_vec()),
        tokens_per_sec: tokens_per_step as f64 / (med / 1e3),
        peak_rss_bytes: adapters_runtime::alloc::peak_rss_bytes(),
        start_rss_bytes: start_rss,
        peak_gpu_bytes: None,
        estimate_bytes: estimate.total_bytes,
        page_faults_per_step: faults,
        threads: adapters_runtime::candle_core::utils::get_num_threads(),
        final_loss: summary.final_loss(),
    };
    println!(
        "{} {} {:?} r={} {}×{} tokens: median step {:.1} ms (forward {:.1} ms), {:.0} tokens/s, peak RSS {}, estimate {}, projections {}, {} page faults/step",
        rec.model,
        rec.quant.as_deref().unwrap_or(&rec.dtype),
        rec.method,
        rec.rank,
        rec.batch,
        rec.seq,
        rec.median_step_ms,
        rec.median_forward_ms,
        rec.tokens_per_sec,
        rec.peak_rss_bytes
            .map(|b| adapters_runtime::estimate::human_bytes(b as usize))
            .unwrap_or_else(|| "n/a".into()),
        adapters_runtime::estimate::human_bytes(rec.estimate_bytes),
        adapters_runtime::estimate::human_bytes(rec.projection_bytes),
        rec.page_faults_per_step
            .map(|f| format!("{f:.0}"))
            .unwrap_or_else(|| "n/a".into()),
    );
    bench::write_json(args.json.as_deref(), &[rec])
}

/// Minor page faults of the process so far (Linux `/proc/self/stat`, field 10).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(7)?.parse().ok()
}
