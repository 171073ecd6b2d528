//! Decoding speed of a random-init Llama-shaped model: prefill, greedy decode with the key / value
//! cache ([`generate`]) and greedy decode recomputing the whole prefix every step (no cache), for
//! the base, with a DoRA adapter attached unmerged, and with it merged.
//!
//! ```text
//! cargo run --release --example bench_generate -- [--hidden 512 --layers 8 --heads 8
//!     --kv-heads 4 --intermediate 1536 --vocab 32000] [--prompt 128 --new 64] [--rounds 5
//!     --warmup 1] [--dtype f32] [--adapter-rank 16] [--uncached base,dora,dora_merged]
//!     [--full-logits] [--json FILE]
//! ```
//! No downloads: the base is random (HF's initialisation, [`random_weights`]), frozen; the
//! prompt is random token ids. The DoRA adapter (r = `--adapter-rank`, α = 2r) goes on every
//! linear layer but the head (PEFT's `all-linear`); its B matrices are filled with small random
//! values (uniform in ±0.03) (a fresh adapter's B is zero, which would make it the base's function), so the adapted
//! model's tokens differ from the base's. *merged* is that model after [`Adapters::merge_adapters`].
//!
//! Per variant: *prefill* is the prompt's pass through [`Llama::forward_cached`] (and the first
//! token); *cached* is the tokens after it per second ([`Generation::decode_tokens_per_sec`]);
//! *uncached* runs the whole sequence through the model every step and takes the last position's
//! argmax — by default only the last position's logits are formed (what transformers' `generate`
//! does, `logits_to_keep = 1`); `--full-logits` takes them from [`Llama::forward`] over every
//! position. The greedy tokens of the two must be equal (checked every round). Every variant is
//! timed once per round, the order rotating each round; figures are medians over rounds and the
//! cached / uncached speed-up is the median of per-round ratios. `scripts/bench_generate.py`
//! runs the same with transformers + PEFT.
//!
//! [`Generation::decode_tokens_per_sec`]: adapters_runtime::generate::Generation::decode_tokens_per_sec

#[path = "support/bench.rs"]
#[allow(dead_code)]
mod bench;

use adapters_runtime::candle_core::{DType, Device, Tensor};
use adapters_runtime::candle_nn::{VarBuilder, VarMap};
use adapters_runtime::generate::{argmax, generate, GenerationConfig, StopReason};
use adapters_runtime::models::llama::{random_weights, BaseMode, Llama, LlamaConfig};
use adapters_runtime::train::Tokenizer;
use adapters_runtime::{AdapterConfig, Adapters, Init, Method, TargetSpec};
use bench::{median, Res};
use clap::Parser;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

// The allocator that keeps freed buffers mapped (see `adapters_runtime::alloc`).
#[global_allocator]
static GLOBAL: adapters_runtime::alloc::TrainingAllocator =
    adapters_runtime::alloc::TrainingAllocator;

const VARIANTS: [&str; 3] = ["base", "dora", "dora_merged"];

#[derive(Parser, Debug)]
#[command(about = "Times prefill and greedy decoding (KV cache vs none) of a random Llama")]
struct Args {
    /// hidden_size.
    #[arg(long, default_value_t = 512)]
    hidden: usize,
    /// num_hidden_layers.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// num_attention_heads.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// num_key_value_heads.
    #[arg(long, default_value_t = 4)]
    kv_heads: usize,
    /// intermediate_size.
    #[arg(long, default_value_t = 1536)]
    intermediate: usize,
    /// vocab_size.
    #[arg(long, default_value_t = 32000)]
    vocab: usize,
    /// Prompt tokens (random ids).
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens to generate (never stopped early: no EOS).
    #[arg(long, default_value_t = 64)]
    new: usize,
    /// Timed rounds (every variant once per round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Untimed rounds first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Base dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// DoRA rank (α = 2 × rank).
    #[arg(long, default_value_t = 16)]
    adapter_rank: usize,
    /// Variants whose uncached decoding is timed (comma-separated of base, dora, dora_merged;
    /// `none` for none): it is the slow part at long contexts.
    #[arg(long, default_value = "base,dora,dora_merged")]
    uncached: String,
    /// Uncached steps take every position's logits from `Llama::forward` (the default forms only
    /// the last position's, as transformers' `generate` does).
    #[arg(long)]
    full_logits: bool,
    /// Seed of the weights, the adapter and the prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the records as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One variant's figures over the timed rounds.
#[derive(Serialize, Default, Clone)]
struct Record {
    #[serde(rename = "impl")]
    implementation: &'static str,
    variant: &'static str,
    prompt: usize,
    new: usize,
    dtype: String,
    threads: usize,
    prefill_ms: Vec<f64>,
    cached_tok_s: Vec<f64>,
    uncached_tok_s: Vec<f64>,
    /// Per round: cached tokens/s over uncached tokens/s.
    speedup: Vec<f64>,
    median_prefill_ms: f64,
    median_cached_tok_s: f64,
    median_uncached_tok_s: Option<f64>,
    median_speedup: Option<f64>,
    /// Bytes the key / value cache held at the end (allocated capacity).
    kv_cache_bytes: usize,
    /// The greedy tokens (the same every round).
    tokens: Vec<u32>,
}

fn main() -> std::process::ExitCode {
    bench::exit(run(Args::parse()))
}

fn config(a: &Args) -> Res<LlamaConfig> {
    let json = serde_json::json!({
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "vocab_size": a.vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "max_position_embeddings": (a.prompt + a.new).max(2048),
    });
    Ok(serde_json::from_value(json)?)
}

/// The frozen random base.
fn base(cfg: &LlamaConfig, dtype: DType, device: &Device, seed: u64) -> Res<Llama> {
    let weights: HashMap<String, Tensor> = random_weights(cfg, dtype, device, seed)?
        .into_iter()
        .collect();
    let vb = VarBuilder::from_tensors(weights, dtype, device);
    Ok(Llama::load(cfg, vb, BaseMode::Frozen)?)
}

/// The base with a DoRA adapter on every linear layer but the head, its B matrices random
/// (uniform in ±0.03, seeded), merged when `merge`.
fn dora(cfg: &LlamaConfig, a: &Args, dtype: DType, device: &Device, merge: bool) -> Res<Llama> {
    let mut m = base(cfg, dtype, device, a.seed)?;
    let adapter = AdapterConfig {
        method: Method::Dora,
        rank: a.adapter_rank,
        alpha: 2.0 * a.adapter_rank as f64,
        dropout: 0.0,
        rslora: false,
        init: Init::Kaiming,
    };
    let varmap = VarMap::new();
    m.attach_adapters_matching(&varmap, a.seed, &TargetSpec::new(adapter, "all-linear"))?;
    {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0xb0b);
        let data = varmap.data().lock().map_err(|_| "poisoned VarMap")?;
        let mut names: Vec<&String> = data.keys().filter(|n| n.contains("lora_B")).collect();
        if names.is_empty() {
            return Err("no lora_B variable in the VarMap".into());
        }
        names.sort();
        for name in names {
            let v = &data[name];
            let n = v.elem_count();
            let values: Vec<f32> = (0..n).map(|_| rng.random_range(-0.03f32..0.03)).collect();
            v.set(&Tensor::from_vec(values, v.shape(), device)?.to_dtype(v.dtype())?)?;
        }
    }
    if merge {
        m.merge_adapters()?;
    }
    Ok(m)
}

/// Greedy decoding with the cache: (prefill ms, decode tokens/s, tokens, cache bytes).
fn cached(
    m: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    new: usize,
) -> Res<(f64, f64, Vec<u32>, usize)> {
    let config = GenerationConfig {
        max_new_tokens: new,
        ..GenerationConfig::default()
    };
    let mut cache = m.new_cache();
    let g = generate(m, tok, prompt, &config, &mut cache, &mut |_| Ok(()))?;
    if g.stop != StopReason::MaxTokens || g.ids.len() != new {
        return Err(format!(
            "generation stopped early: {:?} after {}",
            g.stop,
            g.ids.len()
        )
        .into());
    }
    Ok((
        g.prefill_secs * 1e3,
        g.decode_tokens_per_sec(),
        g.ids,
        cache.bytes(),
    ))
}

/// Greedy decoding without a cache, the whole sequence through the model every step:
/// (first step ms, tokens/s of the steps after it, tokens).
fn uncached(m: &Llama, prompt: &[u32], new: usize, full_logits: bool) -> Res<(f64, f64, Vec<u32>)> {
    let device = m.device();
    let head = m.head_weight().ok_or("the head is trainable")?.clone();
    let mut ids = prompt.to_vec();
    let mut first_ms = 0.0;
    let start = Instant::now();
    let mut rest_start = start;
    for step in 0..new {
        let input = Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?;
        let t = ids.len();
        let logits = if full_logits {
            m.forward(&input)?.narrow(1, t - 1, 1)?
        } else {
            let h = m.forward_hidden(&input)?.narrow(1, t - 1, 1)?;
            adapters_runtime::ops::frozen_matmul(&h, &head)?
        };
        let scores: Vec<f64> = logits.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        let next = argmax(&scores).ok_or("empty logits")?;
        ids.push(next);
        if step == 0 {
            first_ms = start.elapsed().as_secs_f64() * 1e3;
            rest_start = Instant::now();
        }
    }
    let rest = rest_start.elapsed().as_secs_f64();
    let tok_s = if new > 1 {
        (new - 1) as f64 / rest
    } else {
        0.0
    };
    Ok((first_ms, tok_s, ids[prompt.len()..].to_vec()))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "machine: {cpu}, {cpus} logical CPUs; candle {} threads; {} {}",
        adapters_runtime::candle_core::utils::get_num_threads(),
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}

fn run(a: Args) -> Res<()> {
    if a.prompt == 0 || a.new < 2 || a.rounds == 0 {
        return Err("--prompt ≥ 1, --new ≥ 2 and --rounds ≥ 1 are needed".into());
    }
    let device = adapters_runtime::device(&a.device)?;
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        d => return Err(format!("--dtype `{d}`: expected f32, bf16 or f16").into()),
    };
    let uncached_on: Vec<&str> = a
        .uncached
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .collect();
    if let Some(bad) = uncached_on.iter().find(|v| !VARIANTS.contains(v)) {
        return Err(format!("--uncached `{bad}`: expected {}", VARIANTS.join(", ")).into());
    }
    let cfg = config(&a)?;
    let models = [
        base(&cfg, dtype, &device, a.seed)?,
        dora(&cfg, &a, dtype, &device, false)?,
        dora(&cfg, &a, dtype, &device, true)?,
    ];
    let prompt: Vec<u32> = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0x9e37);
        (0..a.prompt)
            .map(|_| rng.random_range(0..a.vocab as u32))
            .collect()
    };
    let tok = Tokenizer::byte_level();
    let threads = adapters_runtime::candle_core::utils::get_num_threads();
    println!("{}", machine());
    println!(
        "model: hidden {}, {} layers, {}/{} heads, MLP {}, vocab {}, {}; prompt {}, new {}; DoRA r={} α={} all-linear; {} rounds (+{} warm-up); uncached: {} logits, on {}",
        a.hidden,
        a.layers,
        a.heads,
        a.kv_heads,
        a.intermediate,
        a.vocab,
        a.dtype,
        a.prompt,
        a.new,
        a.adapter_rank,
        2 * a.adapter_rank,
        a.rounds,
        a.warmup,
        if a.full_logits { "every position's" } else { "last position's" },
        if uncached_on.is_empty() { "none".to_string() } else { uncached_on.join(",") },
    );
    let mut recs: Vec<Record> = VARIANTS
        .iter()
        .map(|&v| Record {
            implementation: "adapters",
            variant: v,
            prompt: a.prompt,
            new: a.new,
            dtype: a.dtype.clone(),
            threads,
            ..Record::default()
        })
        .collect();
    for round in 0..a.warmup + a.rounds {
        let timed = round >= a.warmup;
        for k in 0..VARIANTS.len() {
            let v = (k + round) % VARIANTS.len();
            let m = &models[v];
            let (prefill, cached_tps, tokens, bytes) = cached(m, &tok, &prompt, a.new)?;
            let unc = if uncached_on.contains(&VARIANTS[v]) {
                let (_, tps, utoks) = uncached(m, &prompt, a.new, a.full_logits)?;
                if utoks != tokens {
                    let first = tokens.iter().zip(&utoks).position(|(x, y)| x != y);
                    return Err(format!(
                        "{}: cached and uncached greedy tokens differ (first at {first:?})\n  cached   {tokens:?}\n  uncached {utoks:?}",
                        VARIANTS[v]
                    )
                    .into());
                }
                Some(tps)
            } else {
                None
            };
            let r = &mut recs[v];
            if !r.tokens.is_empty() && r.tokens != tokens {
                return Err(
                    format!("{}: greedy tokens changed between rounds", VARIANTS[v]).into(),
                );
            }
            r.tokens = tokens;
            r.kv_cache_bytes = bytes;
            if timed {
                r.prefill_ms.push(prefill);
                r.cached_tok_s.push(cached_tps);
                if let Some(u) = unc {
                    r.uncached_tok_s.push(u);
                    r.speedup.push(cached_tps / u);
                }
            }
        }
        eprintln!("round {}/{} done", round + 1, a.warmup + a.rounds);
    }
    let med = |v: &[f64]| (!v.is_empty()).then(|| median(&mut v.to_vec()));
    println!(
        "{:<9} {:<12} {:>11} {:>13} {:>15} {:>16}",
        "impl", "variant", "prefill ms", "cached tok/s", "uncached tok/s", "cached/uncached"
    );
    for r in &mut recs {
        r.median_prefill_ms = med(&r.prefill_ms).unwrap_or(0.0);
        r.median_cached_tok_s = med(&r.cached_tok_s).unwrap_or(0.0);
        r.median_uncached_tok_s = med(&r.uncached_tok_s);
        r.median_speedup = med(&r.speedup);
        let opt = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |x| format!("{x:.p$}"));
        println!(
            "{:<9} {:<12} {:>11.1} {:>13.1} {:>15} {:>16}",
            r.implementation,
            r.variant,
            r.median_prefill_ms,
            r.median_cached_tok_s,
            opt(r.median_uncached_tok_s, 1),
            opt(r.median_speedup, 2),
        );
    }
    let same = recs[1].tokens == recs[2].tokens;
    println!(
        "greedy tokens: cached == uncached (checked every round) on {}; DoRA unmerged == merged: {same}; base == DoRA: {}; KV cache {} per sequence",
        if uncached_on.is_empty() { "none".to_string() } else { uncached_on.join(",") },
        recs[0].tokens == recs[1].tokens,
        adapters_runtime::estimate::human_bytes(recs[0].kv_cache_bytes),
    );
    let dora_cost = recs[0].median_cached_tok_s / recs[1].median_cached_tok_s;
    println!("cached decode time per token, DoRA unmerged / base: {dora_cost:.2}");
    bench::write_json(a.json.as_deref(), &recs)
}
