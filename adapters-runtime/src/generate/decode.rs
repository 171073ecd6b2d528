//! The decoding loop: the prompt through the model once, then one token per step through the
//! key / value cache, until EOS, a stop string, `max_new_tokens` or the end of the context.

use super::sampling::{argmax, no_token, Sampler, Sampling};
use super::text_stream::TextStream;
use crate::adapters::Adapters;
use crate::error::Result;
use crate::models::llama::{KvCache, Llama};
use crate::train::Tokenizer;
use candle_core::{DType, Tensor};
use std::time::Instant;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// How tokens are chosen.
    pub sampling: Sampling,
    /// Token ids that end generation (not part of the text): the tokenizer's EOS and those of
    /// `generation_config.json`.
    pub eos: Vec<u32>,
    /// Strings that end generation; the text stops before the first one found.
    pub stop_strings: Vec<String>,
}

impl Default for GenerationConfig {
    /// 256 greedy tokens, no stop condition but the context length.
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            sampling: Sampling::greedy(),
            eos: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An EOS token was generated (it is in [`Generation::ids`], not in the text).
    Eos(u32),
    /// A stop string appeared (the text ends before it).
    StopString(String),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The sequence reached `max_position_embeddings`.
    ContextFull,
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The generated ids (an ending EOS included).
    pub ids: Vec<u32>,
    /// Their text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
    /// Prompt tokens run through the model (after what the cache already held).
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt (prefill).
    pub prefill_secs: f64,
    /// Seconds spent generating after the prompt.
    pub decode_secs: f64,
}

impl Generation {
    /// Generated tokens per second after the prompt (the first token comes from the prefill).
    pub fn decode_tokens_per_sec(&self) -> f64 {
        let steps = self.ids.len().saturating_sub(1);
        if self.decode_secs > 0.0 {
            steps as f64 / self.decode_secs
        } else {
            0.0
        }
    }
}

/// DoRA norm caching for the duration of a generation: the adapters cannot change while it
/// holds the model, so each layer's norm is computed once ([`Adapters::set_dora_norm_caching`]),
/// not on every token. Off again (and the norms dropped) when it ends.
struct NormCaching<'a>(&'a Llama);

impl<'a> NormCaching<'a> {
    fn on(model: &'a Llama) -> Result<Self> {
        model.set_dora_norm_caching(true)?;
        Ok(Self(model))
    }
}

impl Drop for NormCaching<'_> {
    fn drop(&mut self) {
        // Turning caching off only stores a flag and drops tensors: it cannot fail.
        let _ = self.0.set_dora_norm_caching(false);
    }
}

/// Generates a continuation of `prompt` (ids, special tokens included as the model expects).
/// `cache` holds what the model has already seen of this sequence: its first
/// [`KvCache::len`] positions must equal `prompt`'s (a conversation going on), and only the rest
/// runs; pass a fresh cache ([`Llama::new_cache`]) otherwise. When this returns, the cache holds
/// the prompt and the generated tokens but the last. `on_text` receives the text as it becomes
/// final (streaming); returning an error from it stops generation with that error. DoRA norms
/// are computed once per call (see [`Adapters::set_dora_norm_caching`]).
pub fn generate(
    model: &Llama,
    tok: &Tokenizer,
    prompt: &[u32],
    config: &GenerationConfig,
    cache: &mut KvCache,
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<Generation> {
    let device = model.device();
    let max_positions = model.rope().max_positions();
    let mut sampler = Sampler::new(config.sampling.clone())?;
    let _caching = NormCaching::on(model)?;
    let mut stream = TextStream::new(tok, &config.stop_strings);
    let mut history: Vec<u32> = prompt.to_vec();
    let mut ids = Vec::new();
    let fresh = cache.len().min(prompt.len().saturating_sub(1));
    cache.truncate(fresh);
    let pending = &prompt[fresh..];
    if pending.is_empty() {
        return Err(crate::AdapterError::InvalidArgument {
            name: "prompt".into(),
            expected: "at least one token".into(),
            actual: "an empty prompt".into(),
        });
    }
    let start = Instant::now();
    let mut input = Tensor::new(pending, device)?.unsqueeze(0)?;
    let mut prefill_secs = 0.0;
    let stop = loop {
        if ids.len() >= config.max_new_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() + input.dim(1)? > max_positions {
            break StopReason::ContextFull;
        }
        let logits: Vec<f32> = model
            .forward_cached(&input, cache)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        if ids.is_empty() {
            prefill_secs = start.elapsed().as_secs_f64();
        }
        let next = sampler.next(&logits, &history)?;
        ids.push(next);
        history.push(next);
        if config.eos.contains(&next) {
            break StopReason::Eos(next);
        }
        let piece = stream.push(next)?;
        if !piece.is_empty() {
            on_text(&piece)?;
        }
        if let Some(s) = stream.stopped() {
            break StopReason::StopString(s.to_string());
        }
        input = Tensor::new(&[next], device)?.unsqueeze(0)?;
    };
    let rest = stream.finish();
    if !rest.is_empty() {
        on_text(&rest)?;
    }
    let total = start.elapsed().as_secs_f64();
    Ok(Generation {
        text: stream.text().to_string(),
        ids,
        stop,
        prompt_tokens: pending.len(),
        prefill_secs,
        decode_secs: total - prefill_secs,
    })
}

/// Greedy continuations of several prompts, at most `max_new_tokens` each, a row ending at its
/// first token in `eos` (included). Prompts of equal length decode together as one batch
/// through one cache; the result is in the prompts' order.
pub fn greedy_batch(
    model: &Llama,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    eos: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let device = model.device();
    let max_positions = model.rope().max_positions();
    let _caching = NormCaching::on(model)?;
    let mut out = vec![Vec::new(); prompts.len()];
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, p) in prompts.iter().enumerate() {
        if !p.is_empty() {
            by_len.entry(p.len()).or_default().push(i);
        }
    }
    for (len, group) in by_len {
        let mut cache = model.new_cache();
        let flat: Vec<u32> = group.iter().flat_map(|&i| prompts[i].clone()).collect();
        let mut input = Tensor::from_vec(flat, (group.len(), len), device)?;
        let mut done = vec![false; group.len()];
        for _ in 0..max_new_tokens {
            if cache.len() + input.dim(1)? > max_positions {
                break;
            }
            let logits = model
                .forward_cached(&input, &mut cache)?
                .to_dtype(DType::F32)?;
            let rows: Vec<Vec<f32>> = logits.to_vec2()?;
            let mut next = Vec::with_capacity(rows.len());
            for (k, row) in rows.iter().enumerate() {
                let scores: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
                let id = argmax(&scores).ok_or_else(no_token)?;
                if !done[k] {
                    out[group[k]].push(id);
                    done[k] = eos.contains(&id);
                }
                next.push(id);
            }
            if done.iter().all(|d| *d) {
                break;
            }
            input = Tensor::from_vec(next, (group.len(), 1), device)?;
        }
    }
    Ok(out)
}
