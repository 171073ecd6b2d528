//! The main job: DoRA (or LoRA) fine-tuning of a Llama-architecture model, end to end.
//!
//! ```text
//! cargo run --release --example finetune                 # the embedded default, ~1-2 min on 2 cores
//! cargo run --release --example finetune -- --model DIR --tokenizer DIR/tokenizer.json --data train.jsonl
//! cargo run --release --example finetune -- --model DIR --quant nf4 ...   # QLoRA / QDoRA
//! cargo run --release --example finetune -- --model FILE.gguf ...         # over a GGUF's own quantized weights
//! ```
//! With no arguments: starts from the embedded small base model (made by phase 1, `--pretrain`:
//! pretraining on generated text, written as an HF checkpoint to `OUT/base/`), then fine-tunes a
//! DoRA adapter on a different generated task with the base frozen,
//! and reports eval loss and task accuracy on held-out data before and after. `--out` receives
//! `adapter/` (PEFT format), `merged/` (an HF checkpoint folder; `merged.gguf`, re-quantized to the
//! file's own types, for a GGUF base), `metrics.jsonl` and `loss.svg`.

mod default_model;
mod evaluate;
mod plot;
mod pretrain;
mod tasks;

use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::estimate::{human_bytes, BaseDType, QuantFormat};
use adapters_runtime::hf::save_model_folder;
use adapters_runtime::models::llama::{load_model, Llama};
use adapters_runtime::train::memory::{estimate_training_quantized, parse_quant};
use adapters_runtime::train::{
    llama_loss, load_jsonl, prepare, split_train_eval, BatchLoader, EstimateRequest, Example,
    LrSchedule, PackMode, PackOptions, Tokenizer, TrainConfig, Trainer,
};
use adapters_runtime::{
    merge_gguf, save_adapter, AdapterConfig, AdapterError, Adapters, Init, MergeOptions, Method,
    SaveOptions, TargetSpec, Targets,
};
use clap::{Parser, ValueEnum};
use default_model::DefaultLlama;
use std::path::{Path, PathBuf};
use std::time::Instant;

// mimalloc that keeps freed buffers for the next step (no page faults per step; see
// `adapters_runtime::alloc`).
#[global_allocator]
static GLOBAL: adapters_runtime::alloc::TrainingAllocator =
    adapters_runtime::alloc::TrainingAllocator;

/// The modules adapted by default: every linear layer but the head (PEFT's `all-linear`: the seven
/// projections of a Llama layer, Phi-3's four fused ones).
const DEFAULT_TARGETS: &str = "all-linear";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MethodArg {
    Dora,
    Lora,
}

#[derive(Parser, Debug)]
#[command(about = "Fine-tune a Llama-architecture model with DoRA / LoRA adapters")]
struct Args {
    /// An HF Llama-family checkpoint folder (config.json + model.safetensors), or a llama.cpp
    /// `.gguf` file (its quantized projections are the frozen base; its tokenizer is used unless
    /// --tokenizer is given). Default: the embedded small model, pretrained here on generated text.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Store the frozen projection weights quantized (QLoRA / QDoRA): nf4, q4_0, q4_1, q5_0, q5_1,
    /// q8_0, q2k, q3k, q4k, q5k, q6k, q8k. Embeddings, norms and the head stay in --dtype.
    #[arg(long)]
    quant: Option<String>,
    /// Training data: JSONL of {"text"}, {"prompt","completion"} or {"messages"}. Default: the
    /// generated shift task.
    #[arg(long)]
    data: Option<PathBuf>,
    /// An HF tokenizer.json (default: byte-level).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Adapter method.
    #[arg(long, value_enum, default_value_t = MethodArg::Dora)]
    method: MethodArg,
    /// Adapter rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// lora_alpha.
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Adapter dropout.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Scale by alpha/sqrt(r) (rsLoRA).
    #[arg(long)]
    rslora: bool,
    /// Modules to adapt, as PEFT's `target_modules`: comma-separated names (a module matches when
    /// its path is the name or ends with `.name`), or `all-linear` (every linear layer but the
    /// output layer).
    #[arg(
        long,
        default_value = DEFAULT_TARGETS
    )]
    targets: String,
    /// `target_modules` as a regular expression matched against whole module paths (instead of
    /// --targets), e.g. `.*\.(q|v)_proj`.
    #[arg(long)]
    target_regex: Option<String>,
    /// `exclude_modules`: comma-separated names (or, with --exclude-regex, a regular expression).
    #[arg(long)]
    exclude: Option<String>,
    /// Read --exclude as a regular expression matched against whole module paths.
    #[arg(long)]
    exclude_regex: bool,
    /// `layers_to_transform`: comma-separated layer indexes (with name targets).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// `rank_pattern`: `PATTERN=R`, repeatable (first match wins, as PEFT).
    #[arg(long)]
    rank_pattern: Vec<String>,
    /// `alpha_pattern`: `PATTERN=ALPHA`, repeatable.
    #[arg(long)]
    alpha_pattern: Vec<String>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 400)]
    steps: u64,
    /// Peak learning rate (linear warmup, cosine decay).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Model input length (longer examples are truncated, and counted).
    #[arg(long, default_value_t = 24)]
    seq_len: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Base weight dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Output folder.
    #[arg(long, default_value = "out/finetune")]
    out: PathBuf,
    /// Resume from a training checkpoint folder (OUT/checkpoints/step-…).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Seed of the adapter init, the data order and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluate every N steps.
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Rebuild the default base model by pretraining it here (phase 1) instead of using the
    /// embedded one (ignored with --model).
    #[arg(long)]
    pretrain: bool,
    /// Pretraining steps with --pretrain (the embedded base was made with 2000).
    #[arg(long, default_value_t = 2000)]
    pretrain_steps: u64,
    /// Skip malformed JSONL lines (counted) instead of failing.
    #[arg(long)]
    skip_bad_lines: bool,
    /// Print greedy generations for the first N eval examples before and after training.
    #[arg(long, default_value_t = 3)]
    sample: usize,
    /// New tokens per sample generation.
    #[arg(long, default_value_t = 32)]
    sample_tokens: usize,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Res<()> {
    let started = Instant::now();
    let device = adapters_runtime::device(&args.device)?;
    let base_dtype = BaseDType::parse(&args.dtype)
        .ok_or_else(|| format!("--dtype `{}`: expected f32, bf16 or f16", args.dtype))?;
    let quant = args.quant.as_deref().map(parse_quant).transpose()?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| AdapterError::io("creating the output folder", &args.out, e))?;
    let gguf_base = args
        .model
        .as_deref()
        .filter(|p| adapters_runtime::gguf::is_gguf_path(p));
    let tok = match (gguf_base, &args.tokenizer) {
        (Some(file), None) => {
            let f = adapters_runtime::gguf::GgufFile::open(file)?;
            let t = Tokenizer::from_gguf_metadata(f.metadata(), file)?;
            println!(
                "tokenizer: from the GGUF metadata ({} tokens)",
                t.vocab_size()
            );
            t
        }
        _ => Tokenizer::from_optional_file(args.tokenizer.as_deref())?,
    };
    if let Some(t) = tok.chat_template()? {
        println!(
            "chat format: the chat template of {} ({{\"messages\"}} data is rendered with it)",
            t.name()
        );
    }

    // The base model: given, or the embedded default (pretrained here once, then cached).
    let base_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            let dir = args.out.join("base");
            if args.pretrain {
                let p = pretrain::Pretrain {
                    steps: args.pretrain_steps,
                    ..pretrain::embedded_settings()
                };
                println!("phase 1: pretraining the default base model ({} steps, all weights) on `copy abcde>abcde` text", p.steps);
                let t = Instant::now();
                let loss = pretrain::run(&dir, &p, &device)?;
                println!(
                    "  done in {:.1}s, final loss {loss:.3}; written to {}",
                    t.elapsed().as_secs_f64(),
                    dir.display()
                );
            } else if pretrain::is_current(&dir, &pretrain::embedded_settings()) {
                println!("base model: {} (the embedded default)", dir.display());
            } else {
                pretrain::install_embedded(&dir)?;
                println!(
                    "base model: the embedded default (a {}-layer Llama pretrained by phase 1 of this example on `copy abcde>abcde`; `--pretrain` rebuilds it), written to {}",
                    default_model::LAYERS,
                    dir.display()
                );
            }
            dir
        }
    };

    // Data.
    let (train_ex, eval_ex) = load_data(&args)?;
    let loaded_at = Instant::now();
    let mut model = load_model(&base_dir, base_dtype.to_candle(), &device, quant)?.model;
    report_base_memory(&model, loaded_at)?;
    if tok.vocab_size() > model.config().vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but the model's vocab_size is {}",
            tok.vocab_size(),
            model.config().vocab_size
        )
        .into());
    }
    let pack = PackOptions {
        seq_len: args.seq_len,
        mode: PackMode::Pad,
    };
    let train_p = prepare(&train_ex, &tok, pack)?;
    let eval_p = prepare(&eval_ex, &tok, pack)?;
    println!(
        "data: {} train / {} eval examples; {}",
        train_ex.len(),
        eval_ex.len(),
        train_p.summary()
    );
    let mut loader = BatchLoader::new(
        train_p.sequences,
        args.batch,
        tok.pad_id(),
        &device,
        args.seed,
        true,
    )?;
    let eval_batches = BatchLoader::new(
        eval_p.sequences,
        args.batch,
        tok.pad_id(),
        &device,
        args.seed,
        false,
    )?
    .batches_in_order()?;

    // Adapters, as the flags say.
    let spec = target_spec(&args)?;
    let varmap = VarMap::new();
    model
        .attach_adapters_matching(&varmap, args.seed, &spec)
        .map_err(|e| format!("--targets `{}`: {e}", args.targets))?;
    // The estimate's storage format: --quant, or the GGUF's when all its projections share one.
    let mut formats = std::collections::HashSet::new();
    model.for_each_layer(&mut |_, l| {
        formats.extend(l.quant_format());
    })?;
    let est_quant = match (quant, formats.len()) {
        (Some(q), _) => Some(q),
        (None, 1) => formats.into_iter().next(),
        _ => None,
    };
    report_counts(&model, &args, base_dtype, est_quant)?;

    let before = evaluate::score(&model, &tok, &eval_ex, &eval_batches)?;
    print_scores("before fine-tuning", &before);
    let samples = |when: &str, m: &Llama| {
        evaluate::print_samples(when, m, &tok, &eval_ex, args.sample, args.sample_tokens)
    };
    samples("before fine-tuning", &model)?;

    // Train.
    let mut tc = TrainConfig::new(args.steps, args.lr);
    tc.grad_accum = args.grad_accum;
    tc.schedule =
        LrSchedule::cosine(args.lr, args.steps / 20, args.steps).with_min_lr(args.lr / 10.0);
    tc.eval_every = Some(args.eval_every);
    tc.checkpoint_every = Some(args.checkpoint_every);
    tc.checkpoint_dir = Some(args.out.join("checkpoints"));
    tc.keep_checkpoints = 2;
    tc.metrics_path = Some(args.out.join("metrics.jsonl"));
    tc.seed = args.seed;
    let mut trainer = Trainer::new(&model, tc)?
        .with_eval(|m: &Llama| {
            adapters_runtime::train::evaluate(m, &eval_batches, |m, b| Ok(m.forward(&b.input_ids)?))
        })
        .with_adapter_saver(|m: &Llama, dir: &Path| save_adapter(m, dir, &SaveOptions::default()));
    if let Some(dir) = &args.resume {
        trainer.resume(&model, &mut loader, dir)?;
        println!("resumed from {} at step {}", dir.display(), trainer.step());
    }
    let summary = trainer.train(&mut model, &mut loader, |m, b, _| llama_loss(m, b))?;
    drop(trainer);
    println!(
        "trained {} steps in {:.1}s ({:.0} tokens/s), final train loss {:.4}",
        summary.steps,
        summary.elapsed.as_secs_f64(),
        summary.tokens_per_sec,
        summary.final_loss().unwrap_or(f64::NAN)
    );

    let after = evaluate::score(&model, &tok, &eval_ex, &eval_batches)?;
    print_scores("after fine-tuning", &after);
    samples("after fine-tuning", &model)?;
    println!(
        "eval loss {:.4} → {:.4}{}",
        before.loss,
        after.loss,
        match (before.accuracy, after.accuracy) {
            (Some(b), Some(a)) => format!(", task accuracy {:.1}% → {:.1}%", 100.0 * b, 100.0 * a),
            _ => String::new(),
        }
    );

    // Outputs.
    let adapter_dir = args.out.join("adapter");
    save_adapter(
        &model,
        &adapter_dir,
        &SaveOptions {
            base_model_name_or_path: Some(base_dir.display().to_string()),
            ..Default::default()
        },
    )?;
    let merged_dir = match gguf_base {
        // The file llama.cpp users run: the merged weights re-quantized to the base's own types.
        Some(file) => {
            let out = args.out.join("merged.gguf");
            let opts = MergeOptions {
                overwrite: true,
                ..Default::default()
            };
            merge_gguf(file, &adapter_dir, &out, &opts, None)?;
            out
        }
        None => {
            let dir = args.out.join("merged");
            let extra: Vec<PathBuf> = args.tokenizer.iter().cloned().collect();
            save_model_folder(&dir, model.config(), &model.base_tensors(true)?, &extra)?;
            dir
        }
    };
    // The whole run from metrics.jsonl (a resumed run included); the eval curve starts at the
    // base model's eval loss (step 0).
    let (train_curve, eval_curve) = plot::read_metrics(&args.out.join("metrics.jsonl"))?;
    let evals: Vec<(u64, f64)> = std::iter::once((0, before.loss))
        .chain(eval_curve)
        .collect();
    let plot_path = args.out.join("loss.svg");
    plot::loss_curve(
        &plot_path,
        &format!("{} r={} fine-tuning", method_name(args.method), args.rank),
        &train_curve,
        &evals,
    )?;
    println!(
        "wrote {} (PEFT adapter), {} (merged {}), {}, {}",
        adapter_dir.display(),
        merged_dir.display(),
        if gguf_base.is_some() {
            "GGUF, re-quantized to the base's types"
        } else {
            "HF checkpoint"
        },
        args.out.join("metrics.jsonl").display(),
        plot_path.display()
    );
    if let Some(peak) = adapters_runtime::alloc::peak_rss_bytes() {
        println!("peak resident memory {}", human_bytes(peak as usize));
    }
    println!("total time {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The frozen base's memory as loaded: quantized projections (QLoRA / QDoRA) against what they
/// would take dense, and the dense rest.
fn report_base_memory(model: &Llama, loaded_at: Instant) -> Res<()> {
    let (mut quant_bytes, mut quant_params, mut quantized) = (0usize, 0usize, 0usize);
    model.for_each_layer(&mut |_, l| {
        if l.base_is_quantized() {
            quant_bytes += l.base_bytes();
            quant_params += l.frozen_params();
            quantized += 1;
        }
    })?;
    if quantized > 0 {
        let dense = quant_params * model.dtype().size_in_bytes();
        println!(
            "base: {quantized} projections quantized: {} (dense {:?} would be {}, {:.2}×), loaded in {:.1}s",
            human_bytes(quant_bytes),
            model.dtype(),
            human_bytes(dense),
            dense as f64 / quant_bytes.max(1) as f64,
            loaded_at.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn method_name(m: MethodArg) -> &'static str {
    match m {
        MethodArg::Dora => "DoRA",
        MethodArg::Lora => "LoRA",
    }
}

fn adapter_config(args: &Args) -> Res<AdapterConfig> {
    let method = match args.method {
        MethodArg::Dora => Method::Dora,
        MethodArg::Lora => Method::Lora,
    };
    let cfg = AdapterConfig {
        method,
        rank: args.rank,
        alpha: args.alpha,
        dropout: args.dropout,
        rslora: args.rslora,
        init: Init::Kaiming,
    };
    cfg.validate("--rank/--alpha/--dropout")?;
    Ok(cfg)
}

/// The adapter plan of the flags, with PEFT's targeting semantics.
fn target_spec(args: &Args) -> Res<TargetSpec> {
    let mut spec = TargetSpec::new(adapter_config(args)?, &args.targets);
    if let Some(re) = &args.target_regex {
        let t = Targets::regex(re).map_err(|e| format!("--target-regex `{re}`: {e}"))?;
        spec.selection = adapters_runtime::adapters::target_spec::Selection::Modules(t);
    }
    spec.exclude = match (&args.exclude, args.exclude_regex) {
        (Some(e), true) => {
            Some(Targets::regex(e).map_err(|err| format!("--exclude `{e}`: {err}"))?)
        }
        (Some(e), false) => Some(Targets::parse_list(e)),
        (None, _) => None,
    };
    spec.layers_to_transform = (!args.layers.is_empty()).then(|| args.layers.clone());
    let pairs = |flag: &str, items: &[String]| -> Res<Vec<(String, f64)>> {
        items
            .iter()
            .map(|kv| {
                let (k, v) = kv
                    .rsplit_once('=')
                    .ok_or_else(|| format!("{flag} `{kv}`: expected PATTERN=VALUE"))?;
                let v: f64 = v
                    .parse()
                    .map_err(|_| format!("{flag} `{kv}`: `{v}` is not a number"))?;
                Ok((k.to_string(), v))
            })
            .collect()
    };
    let ranks = pairs("--rank-pattern", &args.rank_pattern)?
        .into_iter()
        .map(|(k, v)| {
            if v.fract() != 0.0 || v < 1.0 {
                return Err(format!(
                    "--rank-pattern `{k}={v}`: a rank is a positive integer"
                ));
            }
            Ok((k, v as usize))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let alphas = pairs("--alpha-pattern", &args.alpha_pattern)?;
    spec.patterns = adapters_runtime::adapters::Patterns::from_pairs(
        "--rank-pattern/--alpha-pattern",
        &ranks,
        &alphas,
    )?;
    Ok(spec)
}

/// `(train, eval)` examples: `--data` split 90/10, or the generated shift task (also written to
/// `OUT/data/` so the format is there to see).
fn load_data(args: &Args) -> Res<(Vec<Example>, Vec<Example>)> {
    let opts = adapters_runtime::train::JsonlOptions {
        skip_bad_lines: args.skip_bad_lines,
        ..Default::default()
    };
    if let Some(path) = &args.data {
        let ds = load_jsonl(path, &opts)?;
        if !ds.skipped.is_empty() {
            println!(
                "skipped {} malformed line(s) of {}",
                ds.skipped.len(),
                path.display()
            );
        }
        let (train, eval) = split_train_eval(ds.examples, 0.1, args.seed);
        return Ok((train, eval));
    }
    let dir = args.out.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| AdapterError::io("creating", &dir, e))?;
    let (train, eval) = tasks::shift_task(2000, 200, args.seed);
    let (tp, ep) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    tasks::write_jsonl(&tp, &train)?;
    tasks::write_jsonl(&ep, &eval)?;
    println!("task: `shift abcde>` → `bcdef` (data in {})", dir.display());
    Ok((
        load_jsonl(&tp, &opts)?.examples,
        load_jsonl(&ep, &opts)?.examples,
    ))
}

/// Trainable vs total parameters, the library's training-memory estimate, and for the default
/// model the compile-time constants.
fn report_counts(
    model: &Llama,
    args: &Args,
    dtype: BaseDType,
    quant: Option<QuantFormat>,
) -> Res<()> {
    let (trainable, frozen) = (model.trainable_params()?, model.frozen_params()?);
    println!(
        "adapters: {} on {} modules; trainable {trainable} of {} parameters ({:.3}%)",
        method_name(args.method),
        model.adapter_layers()?.len(),
        trainable + frozen,
        100.0 * trainable as f64 / (trainable + frozen) as f64
    );
    let request = EstimateRequest {
        method: adapter_config(args)?.method,
        rank: args.rank,
        // The kinds of module actually adapted (whatever flags chose them).
        targets: model
            .adapter_layers()?
            .iter()
            .map(|l| l.path.rsplit('.').next().unwrap_or(&l.path).to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        dtype,
        batch_tokens: args.batch * args.seq_len,
        seq_len: args.seq_len,
    };
    let est = estimate_training_quantized(model.config(), &request, quant)?;
    println!(
        "runtime estimate: adapter {} ; training memory {} (base {} + adapter state {} + activations {})",
        human_bytes(est.adapter_bytes),
        human_bytes(est.total_bytes),
        human_bytes(est.base_bytes),
        human_bytes(est.adapter_bytes + est.gradient_bytes + est.optimizer_bytes),
        human_bytes(est.activation_bytes)
    );
    if args.model.is_none() {
        println!(
            "compile-time constants of the default model (DefaultLlama): TRAINABLE_PARAMS = {}, FROZEN_PARAMS = {}, ADAPTER_BYTES = {}, VRAM_BYTES = {} (batch_tokens = {}, budget 64 MiB)",
            DefaultLlama::TRAINABLE_PARAMS,
            DefaultLlama::FROZEN_PARAMS,
            DefaultLlama::ADAPTER_BYTES,
            DefaultLlama::VRAM_BYTES,
            default_model::BATCH_TOKENS,
        );
        let default_run = matches!(args.method, MethodArg::Dora)
            && args.rank == 8
            && args.targets == DEFAULT_TARGETS;
        if default_run {
            let consts = (DefaultLlama::TRAINABLE_PARAMS, DefaultLlama::FROZEN_PARAMS);
            if consts != (trainable, frozen) {
                return Err(format!(
                    "compile-time (trainable, frozen) = {consts:?} but the loaded model counts ({trainable}, {frozen})"
                )
                .into());
            }
            println!("  = the runtime counts of the loaded model");
        }
    }
    Ok(())
}

fn print_scores(when: &str, s: &evaluate::Scores) {
    match s.accuracy {
        Some(a) => println!(
            "{when}: eval loss {:.4}, task accuracy {:.1}% (exact match, held-out)",
            s.loss,
            100.0 * a
        ),
        None => println!("{when}: eval loss {:.4}", s.loss),
    }
}
