//! Held-out evaluation: mean loss on the eval set, and exact-match task accuracy by greedy
//! decoding of each prompt.

use adapters_runtime::candle_core::{Device, Tensor, D};
use adapters_runtime::models::llama::Llama;
use adapters_runtime::train::{encode_prompt, evaluate, Batch, Example, Tokenizer};

/// Eval loss and, for prompt / completion data, the share of completions reproduced exactly.
pub struct Scores {
    /// Mean token loss on the eval set.
    pub loss: f64,
    /// Exact-match accuracy of greedy completions (`None` without prompt / completion examples).
    pub accuracy: Option<f64>,
}

/// Greedy completions of `prompts` (at most `max_new` tokens each, stopping at EOS); prompts of
/// equal length are decoded together.
pub fn complete(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[String],
    max_new: usize,
    dev: &Device,
) -> adapters_runtime::Result<Vec<String>> {
    let encoded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| encode_prompt(tok, p))
        .collect::<Result<_, _>>()?;
    let mut out = vec![Vec::new(); prompts.len()];
    let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, ids) in encoded.iter().enumerate() {
        by_len.entry(ids.len()).or_default().push(i);
    }
    for (_, group) in by_len {
        let mut rows: Vec<Vec<u32>> = group.iter().map(|&i| encoded[i].clone()).collect();
        let mut done = vec![false; rows.len()];
        for _ in 0..max_new {
            let t = rows[0].len();
            let flat: Vec<u32> = rows.iter().flatten().copied().collect();
            let ids = Tensor::from_vec(flat, (rows.len(), t), dev)?;
            let next: Vec<u32> = model
                .forward(&ids)?
                .narrow(1, t - 1, 1)?
                .squeeze(1)?
                .argmax(D::Minus1)?
                .to_vec1()?;
            for (k, &tok_id) in next.iter().enumerate() {
                rows[k].push(tok_id);
                if Some(tok_id) == tok.eos_id() {
                    done[k] = true;
                }
                if !done[k] {
                    out[group[k]].push(tok_id);
                }
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
    }
    out.iter().map(|ids| tok.decode(ids)).collect()
}

/// Scores the model on the eval examples (`batches` are the same examples, batched).
pub fn score(
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Example],
    batches: &[Batch],
    dev: &Device,
) -> adapters_runtime::Result<Scores> {
    let metrics = evaluate(model, batches, |m, b| Ok(m.forward(&b.input_ids)?))?;
    let pairs: Vec<(&String, &String)> = examples
        .iter()
        .filter_map(|e| match e {
            Example::PromptCompletion { prompt, completion } => Some((prompt, completion)),
            _ => None,
        })
        .collect();
    if pairs.is_empty() {
        return Ok(Scores {
            loss: metrics.loss,
            accuracy: None,
        });
    }
    let prompts: Vec<String> = pairs.iter().map(|(p, _)| (*p).clone()).collect();
    let max_new = pairs
        .iter()
        .map(|(_, c)| tok.encode(c).map(|v| v.len()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0)
        + 1;
    let got = complete(model, tok, &prompts, max_new, dev)?;
    let right = got
        .iter()
        .zip(&pairs)
        .filter(|(g, (_, c))| g.trim() == c.trim())
        .count();
    Ok(Scores {
        loss: metrics.loss,
        accuracy: Some(right as f64 / pairs.len() as f64),
    })
}
