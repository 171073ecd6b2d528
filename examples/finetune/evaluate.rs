//! Held-out evaluation: mean loss on the eval set, exact-match task accuracy by greedy decoding of
//! each prompt (through the key / value cache), and sample generations.

use adapters_runtime::generate::{generate, greedy_batch, GenerationConfig};
use adapters_runtime::models::llama::Llama;
use adapters_runtime::train::{
    encode_chat_prompt, encode_prompt, evaluate, Batch, Example, Tokenizer,
};

/// Eval loss and, for prompt / completion data, the share of completions reproduced exactly.
pub struct Scores {
    /// Mean token loss on the eval set.
    pub loss: f64,
    /// Exact-match accuracy of greedy completions (`None` without prompt / completion examples).
    pub accuracy: Option<f64>,
}

/// Greedy completions of `prompts` (at most `max_new` tokens each, stopping at EOS), decoded
/// through the key / value cache; prompts of equal length are decoded together.
pub fn complete(
    model: &Llama,
    tok: &Tokenizer,
    prompts: &[String],
    max_new: usize,
) -> adapters_runtime::Result<Vec<String>> {
    let encoded: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| encode_prompt(tok, p))
        .collect::<Result<_, _>>()?;
    let eos: Vec<u32> = tok.eos_id().into_iter().collect();
    greedy_batch(model, &encoded, max_new, &eos)?
        .iter()
        .map(|ids| {
            let text = ids.strip_suffix(eos.as_slice()).unwrap_or(ids);
            tok.decode(text)
        })
        .collect()
}

/// The prompt of an example for a sample generation: a prompt, a conversation up to its last
/// answer, or the first half of a text.
fn sample_prompt(tok: &Tokenizer, e: &Example) -> adapters_runtime::Result<(String, Vec<u32>)> {
    Ok(match e {
        Example::PromptCompletion { prompt, .. } => (prompt.clone(), encode_prompt(tok, prompt)?),
        Example::Chat(messages) => {
            let last = messages
                .iter()
                .rposition(|m| m.is_assistant())
                .unwrap_or(messages.len());
            let shown = messages[..last]
                .last()
                .map_or(String::new(), |m| m.content.clone());
            (shown, encode_chat_prompt(tok, &messages[..last])?)
        }
        Example::Text(t) => {
            let mut half = t.len() / 2;
            while !t.is_char_boundary(half) {
                half -= 1;
            }
            (t[..half].to_string(), encode_prompt(tok, &t[..half])?)
        }
    })
}

/// Prints greedy generations (through the key / value cache) for the first `n` examples.
pub fn print_samples(
    when: &str,
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Example],
    n: usize,
    max_new: usize,
) -> adapters_runtime::Result<()> {
    if n == 0 || examples.is_empty() {
        return Ok(());
    }
    println!("samples {when}:");
    let config = GenerationConfig {
        max_new_tokens: max_new,
        eos: tok.eos_id().into_iter().collect(),
        ..GenerationConfig::default()
    };
    for e in examples.iter().take(n) {
        let (shown, ids) = sample_prompt(tok, e)?;
        let mut cache = model.new_cache();
        let g = generate(model, tok, &ids, &config, &mut cache, &mut |_| Ok(()))?;
        println!(
            "  {:?} → {:?} ({:.0} tokens/s)",
            shown,
            g.text,
            g.decode_tokens_per_sec()
        );
    }
    Ok(())
}

/// Scores the model on the eval examples (`batches` are the same examples, batched).
pub fn score(
    model: &Llama,
    tok: &Tokenizer,
    examples: &[Example],
    batches: &[Batch],
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
    let got = complete(model, tok, &prompts, max_new)?;
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
