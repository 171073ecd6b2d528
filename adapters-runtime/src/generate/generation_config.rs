//! Defaults a model sets for generation: the end-of-sequence ids (`generation_config.json` and
//! `config.json` `eos_token_id`, a number or a list, as transformers reads them; for a GGUF file,
//! its EOS / EOT / EOM ids and the end-of-turn tokens llama.cpp stops at) and the sampling
//! settings of `generation_config.json`.

use super::sampling::Sampling;
use crate::error::{AdapterError, Result};
use crate::io::bounded::{read_to_string_bounded, MAX_CONFIG_BYTES};
use crate::train::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// transformers' `GenerationConfig.top_k` default, which applies whenever it samples.
pub const TRANSFORMERS_TOP_K: usize = 50;

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_to_string_bounded(path, MAX_CONFIG_BYTES, "reading generation settings")?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| AdapterError::Json {
            path: path.to_path_buf(),
            source,
        })
}

/// `eos_token_id` of a config: a number, a list of numbers, or absent / null.
fn ids_of(v: Option<&Value>, path: &Path) -> Result<Vec<u32>> {
    let bad = |actual: &Value| AdapterError::InvalidArgument {
        name: format!("{}: eos_token_id", path.display()),
        expected: "a token id or a list of token ids".into(),
        actual: actual.to_string(),
    };
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(x))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

/// The ids that end generation: the tokenizer's EOS, then `eos_token_id` of
/// `generation_config.json` and of `config.json` in `model_dir` (when given), without repeats.
pub fn eos_ids(model_dir: Option<&Path>, tok: &Tokenizer) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = tok.eos_id().into_iter().collect();
    if let Some(dir) = model_dir {
        for name in ["generation_config.json", "config.json"] {
            let path = dir.join(name);
            if let Some(v) = read_json(&path)? {
                for id in ids_of(v.get("eos_token_id"), &path)? {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
    }
    Ok(ids)
}

/// The end-of-turn token texts llama.cpp also stops at (its `special_eog_ids`): a GGUF file keeps
/// one EOS id, while chat models end their turns with one of these.
pub const EOG_TOKENS: [&str; 8] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "<｜end▁of▁sentence｜>",
];

/// The ids that end generation for a GGUF file's model: the tokenizer's EOS, the metadata's
/// `tokenizer.ggml.eos_token_id`, `eot_token_id` and `eom_token_id`, and the ids of
/// [`EOG_TOKENS`] in the vocabulary — as llama.cpp decides where generation ends.
pub fn gguf_eos_ids(
    metadata: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
    tok: &Tokenizer,
) -> Vec<u32> {
    let mut ids: Vec<u32> = tok.eos_id().into_iter().collect();
    let keys = ["eos", "eot", "eom"].map(|k| format!("tokenizer.ggml.{k}_token_id"));
    let from_meta = keys
        .iter()
        .filter_map(|k| metadata.get(k))
        .filter_map(crate::gguf::metadata_int)
        .filter_map(|v| u32::try_from(v).ok())
        .filter(|&id| (id as usize) < tok.vocab_size());
    let named = EOG_TOKENS.iter().filter_map(|t| tok.token_to_id(t));
    for id in from_meta.chain(named) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The sampling settings of `model_dir/generation_config.json` as transformers' `generate` would
/// use them: greedy unless `do_sample` is true; then its `temperature` (default 1), `top_k`
/// (default 50) and `top_p` (default 1). `repetition_penalty` applies either way. Greedy
/// defaults when the file is absent.
pub fn sampling_defaults(model_dir: Option<&Path>) -> Result<Sampling> {
    let mut s = Sampling::greedy();
    let Some(path) = model_dir.map(|d| d.join("generation_config.json")) else {
        return Ok(s);
    };
    let Some(v) = read_json(&path)? else {
        return Ok(s);
    };
    let num = |k: &str| v.get(k).and_then(Value::as_f64);
    if let Some(p) = num("repetition_penalty") {
        s.repetition_penalty = p;
    }
    if v.get("do_sample").and_then(Value::as_bool) == Some(true) {
        s.temperature = num("temperature").unwrap_or(1.0);
        s.top_k = v
            .get("top_k")
            .and_then(Value::as_u64)
            .map_or(TRANSFORMERS_TOP_K, |k| {
                usize::try_from(k).unwrap_or(usize::MAX)
            });
        s.top_p = num("top_p").unwrap_or(1.0);
    }
    s.validate().map_err(|e| AdapterError::InvalidArgument {
        name: path.display().to_string(),
        expected: "valid sampling settings".into(),
        actual: e.to_string(),
    })?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_ids_merge_the_tokenizer_and_both_configs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id": [5, 257, 9], "do_sample": true, "temperature": 0.6, "top_p": 0.9}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"eos_token_id": 11}"#).unwrap();
        let tok = Tokenizer::byte_level();
        assert_eq!(
            eos_ids(Some(dir.path()), &tok).unwrap(),
            vec![257, 5, 9, 11]
        );
        let s = sampling_defaults(Some(dir.path())).unwrap();
        assert_eq!((s.temperature, s.top_k, s.top_p), (0.6, 50, 0.9));
        std::fs::write(dir.path().join("config.json"), r#"{"eos_token_id": "x"}"#).unwrap();
        let e = eos_ids(Some(dir.path()), &tok).unwrap_err().to_string();
        assert!(e.contains("eos_token_id"), "{e}");
        assert_eq!(sampling_defaults(None).unwrap(), Sampling::greedy());
    }
}
