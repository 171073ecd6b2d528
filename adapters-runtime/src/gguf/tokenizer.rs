//! An HF `tokenizer.json` from a GGUF file's `tokenizer.ggml.*` metadata, built as transformers
//! builds it.
//!
//! llama.cpp's GGUF files carry their tokenizer as metadata rather than as a `tokenizer.json`.
//! [`gguf_tokenizer_json`] turns that metadata into an HF `tokenizer.json` and
//! `tokenizer_config.json` the way transformers 5 does (`AutoTokenizer.from_pretrained(dir,
//! gguf_file=…)`, `integrations/gguf/gguf_tokenizer_mapping.py`);
//! `train::Tokenizer::from_gguf_metadata` loads it through `Tokenizer::from_bytes`, so token ids
//! equal transformers' and all of that path's hardening applies, and a GGUF merged to an HF folder
//! carries it. Two tokenizer models are supported:
//!
//! * `gpt2`: byte-level BPE. `tokenizer.ggml.tokens` (tokens outside the byte alphabet respelled
//!   into it), `tokenizer.ggml.merges`; the split regex chosen by `tokenizer.ggml.pre` (Llama 3's,
//!   Qwen 2's, Tekken's, GPT-4o's, …), GPT-2's byte-level split for any other value.
//! * `llama`: SentencePiece as llama.cpp stores it: a BPE with byte fallback (`<0x..>` tokens),
//!   `▁` for spaces, `Metaspace` prepending `▁` to the first word and the decoder stripping it.
//!   The merges are the file's `tokenizer.ggml.merges` when present, else derived from
//!   `tokenizer.ggml.scores` (transformers' `generate_merges`). Architecture `phi3` gets its `▁`
//!   from a normalizer instead (every space, and one prepended); `gemma*` are refused (transformers
//!   respells their tokens and orders their merges otherwise).
//!
//! Tokens typed CONTROL in `tokenizer.ggml.token_type` become special added tokens, USER_DEFINED
//! ones plain added tokens (both matched whole in text); the BOS / EOS / UNK / PAD ids name the
//! special tokens, and `tokenizer.ggml.add_bos_token` / `add_eos_token` (default: true / false for
//! `llama`, false / false for `gpt2`) give the post-processor. Any other model, a missing or
//! mistyped key, or inconsistent arrays is an [`AdapterError::Config`] naming the file and the key.

use crate::error::{AdapterError, Result};
use crate::gguf::value::{as_int, clip, describe};
use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map, Value as Json};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// `tokenizer.ggml.model`: `gpt2` or `llama` here.
pub const GGUF_TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
/// `tokenizer.ggml.pre`: names the split regex of a `gpt2` tokenizer.
pub const GGUF_TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
/// `tokenizer.ggml.tokens`: the vocabulary, by id.
pub const GGUF_TOKENS: &str = "tokenizer.ggml.tokens";
/// `tokenizer.ggml.scores`: one score per token (`llama`).
pub const GGUF_SCORES: &str = "tokenizer.ggml.scores";
/// `tokenizer.ggml.token_type`: one llama.cpp token type per token (3 CONTROL, 4 USER_DEFINED, …).
pub const GGUF_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
/// `tokenizer.ggml.merges`: BPE merges, `"left right"`.
pub const GGUF_MERGES: &str = "tokenizer.ggml.merges";
/// `tokenizer.ggml.bos_token_id`.
pub const GGUF_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
/// `tokenizer.ggml.eos_token_id`.
pub const GGUF_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
/// `tokenizer.ggml.unknown_token_id`.
pub const GGUF_UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
/// `tokenizer.ggml.padding_token_id`.
pub const GGUF_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
/// `tokenizer.ggml.add_bos_token`.
pub const GGUF_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
/// `tokenizer.ggml.add_eos_token`.
pub const GGUF_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
/// `general.architecture`: picks among transformers' SentencePiece builders.
pub const GGUF_ARCHITECTURE: &str = "general.architecture";

/// llama.cpp's CONTROL token type.
const TYPE_CONTROL: i64 = 3;
/// llama.cpp's USER_DEFINED token type.
const TYPE_USER_DEFINED: i64 = 4;

/// The most merges derived from scores (real vocabularies give well under a million).
const MAX_DERIVED_MERGES: usize = 1 << 22;
/// The most bytes looked up while deriving merges (a 256k-token vocabulary needs under a tenth).
const MAX_DERIVE_WORK: usize = 1 << 28;

/// Architectures whose SentencePiece vocabulary transformers builds differently (not supported).
const OTHER_SENTENCEPIECE_ARCHS: [&str; 3] = ["gemma", "gemma2", "gemma3"];

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for a `tokenizer.ggml.pre` value (`GGUF_PRE_TOKENIZER_SPLITS`);
/// `None`: GPT-2's byte-level split.
fn pre_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// What [`gguf_tokenizer_json`] builds.
#[derive(Clone, Debug)]
pub struct GgufTokenizerJson {
    /// An HF `tokenizer.json` (the `tokenizers` crate's format, version 1.0).
    pub tokenizer_json: Json,
    /// A `tokenizer_config.json` naming `bos_token`, `eos_token`, `pad_token`, `unk_token` (those
    /// the file gives), `add_bos_token` and `add_eos_token`, and `chat_template` when present.
    pub config: Json,
}

/// The HF `tokenizer.json` and `tokenizer_config.json` transformers builds from a GGUF file's
/// tokenizer metadata (see the module documentation); `file` names the file in errors.
pub fn gguf_tokenizer_json<'a>(
    metadata: &'a HashMap<String, Value>,
    file: &Path,
) -> Result<GgufTokenizerJson> {
    let meta = Meta { metadata, file };
    let model = meta
        .string(GGUF_TOKENIZER_MODEL)?
        .ok_or_else(|| meta.missing(GGUF_TOKENIZER_MODEL, "`gpt2` or `llama`"))?;
    // `phi3`: its `llama` vocabulary gets the prefix `▁` from a normalizer (transformers'
    // `phi3_tokenizer`), not from `Metaspace`.
    let mut phi3 = false;
    let kind = match model {
        "gpt2" => Kind::ByteLevel,
        "llama" => {
            let arch = meta
                .string(GGUF_ARCHITECTURE)?
                .ok_or_else(|| meta.missing(GGUF_ARCHITECTURE, "a string"))?;
            if OTHER_SENTENCEPIECE_ARCHS.contains(&arch) {
                return Err(meta.err(
                    GGUF_ARCHITECTURE,
                    format!(
                        "an architecture whose `llama` tokenizer transformers builds like Llama's (not {})",
                        OTHER_SENTENCEPIECE_ARCHS.join(", ")
                    ),
                    format!("`{arch}`, not supported"),
                ));
            }
            phi3 = arch == "phi3";
            Kind::SentencePiece
        }
        other => {
            return Err(meta.err(
                GGUF_TOKENIZER_MODEL,
                "`gpt2` (byte-level BPE) or `llama` (SentencePiece)",
                format!("`{}`, not supported", clip(other)),
            ))
        }
    };

    let tokens = meta
        .strings(GGUF_TOKENS)?
        .ok_or_else(|| meta.missing(GGUF_TOKENS, "an array of strings"))?;
    let n = tokens.len();
    if n == 0 || u32::try_from(n).is_err() {
        return Err(meta.err(
            GGUF_TOKENS,
            format!("between 1 and {} tokens", u32::MAX),
            format!("{n} tokens"),
        ));
    }
    let token_types = meta.ints(GGUF_TOKEN_TYPE)?;
    if let Some(t) = &token_types {
        meta.check_len(GGUF_TOKEN_TYPE, t.len(), n)?;
    }
    let token_types = token_types.unwrap_or_default();
    let merges_given = meta.strings(GGUF_MERGES)?;
    // Read for `llama` only (transformers derives merges from them when the file has none).
    let scores = match kind {
        Kind::ByteLevel => None,
        Kind::SentencePiece => meta.floats(GGUF_SCORES)?,
    };
    if let Some(s) = &scores {
        meta.check_len(GGUF_SCORES, s.len(), n)?;
    }
    let bos = meta.token_id(GGUF_BOS_ID, n)?;
    let eos = meta.token_id(GGUF_EOS_ID, n)?;
    let unk = meta.token_id(GGUF_UNK_ID, n)?;
    let pad = meta.token_id(GGUF_PAD_ID, n)?;
    let add_bos = meta
        .flag(GGUF_ADD_BOS)?
        .unwrap_or(kind == Kind::SentencePiece);
    let add_eos = meta.flag(GGUF_ADD_EOS)?.unwrap_or(false);
    let pre = match kind {
        Kind::ByteLevel => meta.string(GGUF_TOKENIZER_PRE)?,
        Kind::SentencePiece => None,
    };
    let chat_template = meta.string("tokenizer.chat_template")?;

    // The vocabulary: token → id, the last id winning for a repeated token (a Python dict).
    // `keys[id]` is how token `id` is spelled in it.
    let byte_alphabet = ByteAlphabet::new();
    let keys: Vec<String> = match kind {
        Kind::ByteLevel => tokens.iter().map(|t| byte_alphabet.spell(t)).collect(),
        Kind::SentencePiece => tokens.iter().map(|t| t.to_string()).collect(),
    };
    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(n);
    let mut vocab_json = Map::with_capacity(n);
    for (id, key) in keys.iter().enumerate() {
        vocab.insert(key, id as u32);
        vocab_json.insert(key.clone(), json!(id));
    }

    let merges: Vec<(String, String)> = match merges_given {
        Some(given) => {
            let mut merges = Vec::with_capacity(given.len());
            for (i, merge) in given.iter().enumerate() {
                let parts: Vec<&str> = merge.split(' ').collect();
                let &[left, right] = parts.as_slice() else {
                    return Err(meta.err(
                        GGUF_MERGES,
                        "every merge two tokens separated by one space",
                        format!("merge {i} `{}` with {} parts", clip(merge), parts.len()),
                    ));
                };
                for piece in [
                    left.to_string(),
                    format!("{left}{right}"),
                    right.to_string(),
                ] {
                    if !vocab.contains_key(piece.as_str()) {
                        return Err(meta.err(
                            GGUF_MERGES,
                            format!("the tokens of every merge, and their concatenation, in `{GGUF_TOKENS}`"),
                            format!("merge {i} `{}`: `{}` is not a token", clip(merge), clip(&piece)),
                        ));
                    }
                }
                merges.push((left.to_string(), right.to_string()));
            }
            merges
        }
        None => match kind {
            Kind::ByteLevel => {
                return Err(meta.missing(
                    GGUF_MERGES,
                    "an array of strings (a `gpt2` tokenizer has merges)",
                ))
            }
            Kind::SentencePiece => {
                let scores = scores.as_deref().ok_or_else(|| {
                    meta.missing(GGUF_SCORES, "an array of floats (a `llama` tokenizer without merges derives them from scores)")
                })?;
                derive_merges(&meta, &tokens, scores, &vocab)?
            }
        },
    };

    // Added tokens, as transformers adds them: the class's default special tokens when the
    // vocabulary has them, the file's special ids, CONTROL tokens (byte-level: only those spelled
    // in the byte alphabet), then USER_DEFINED tokens as plain added tokens.
    let mut added: Vec<(u32, String, bool)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut add = |content: &'a str, special: bool| {
        // The first kind a token is added as stays (special before plain, as in transformers).
        let Some(&id) = vocab.get(content) else {
            return;
        };
        if !content.is_empty() && seen.insert(content) {
            added.push((id, content.to_string(), special));
        }
    };
    let spelled = |id: u32| -> Option<&'a str> {
        let raw = tokens[id as usize];
        match kind {
            Kind::ByteLevel if !byte_alphabet.spells(raw) => None,
            _ => Some(raw),
        }
    };
    let defaults: &[&str] = match kind {
        Kind::ByteLevel => &["<|endoftext|>"],
        Kind::SentencePiece => &["<unk>", "<s>", "</s>"],
    };
    for d in defaults {
        add(d, true);
    }
    for id in [bos, eos, unk, pad].into_iter().flatten() {
        if let Some(t) = spelled(id) {
            add(t, true);
        }
    }
    for (id, &ty) in token_types.iter().enumerate() {
        if ty == TYPE_CONTROL {
            if let Some(t) = spelled(id as u32) {
                add(t, true);
            }
        }
    }
    for (id, &ty) in token_types.iter().enumerate() {
        if ty == TYPE_USER_DEFINED {
            add(tokens[id], false);
        }
    }
    added.sort_by_key(|(id, _, _)| *id);
    let added_json: Vec<Json> = added
        .iter()
        .map(|(id, content, special)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": special,
            })
        })
        .collect();

    // BOS / EOS as transformers names them: the token the id points at, looked up again in the
    // vocabulary (a repeated token resolves to its last id, as in transformers).
    let name = |id: Option<u32>| id.map(|i| keys[i as usize].clone());
    let (bos_name, eos_name) = (name(bos), name(eos));
    let lookup = |t: &Option<String>| t.as_deref().and_then(|t| vocab.get(t).copied());
    let post_processor = template(
        bos_name
            .as_deref()
            .filter(|_| add_bos)
            .zip(lookup(&bos_name)),
        eos_name
            .as_deref()
            .filter(|_| add_eos)
            .zip(lookup(&eos_name)),
    );

    let mut normalizer = Json::Null;
    let (model_json, pre_tokenizer, decoder) = match kind {
        Kind::ByteLevel => {
            let model = json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                "byte_fallback": false, "ignore_merges": false,
                "vocab": Json::Object(vocab_json), "merges": merges_json(&merges),
            });
            let pre = match pre.and_then(pre_split) {
                Some(split) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
                ]}),
                None => {
                    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
                }
            };
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (model, pre, decoder)
        }
        Kind::SentencePiece => {
            let model = json!({
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false,
                "vocab": Json::Object(vocab_json), "merges": merges_json(&merges),
            });
            let pre = if phi3 {
                normalizer = json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
                ]});
                Json::Null
            } else {
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false})
            };
            let decoder = json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]});
            (model, pre, decoder)
        }
    };
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model_json,
    });

    let mut config = Map::new();
    for (key, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(t) = name(id) {
            config.insert(key.to_string(), json!(t));
        }
    }
    config.insert("add_bos_token".into(), json!(add_bos && bos.is_some()));
    config.insert("add_eos_token".into(), json!(add_eos && eos.is_some()));
    if let Some(t) = chat_template {
        config.insert("chat_template".into(), json!(t));
    }
    Ok(GgufTokenizerJson {
        tokenizer_json,
        config: Json::Object(config),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `gpt2`
    ByteLevel,
    /// `llama`
    SentencePiece,
}

fn merges_json(merges: &[(String, String)]) -> Json {
    Json::Array(merges.iter().map(|(l, r)| json!([l, r])).collect())
}

/// transformers' `update_post_processor`: `[bos] $A [eos]` (pair: `[bos] $A [eos] [bos] $B [eos]`).
fn template(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Json {
    let special = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (s, type_id) in [("A", 0), ("B", 1)] {
        let part = if type_id == 0 { &mut single } else { &mut pair };
        if let Some((t, _)) = bos {
            part.push(special(t, type_id));
        }
        part.push(seq(s, type_id));
        if let Some((t, _)) = eos {
            part.push(special(t, type_id));
        }
    }
    let pair: Vec<Json> = single.iter().cloned().chain(pair).collect();
    let mut specials = Map::new();
    for (t, id) in [bos, eos].into_iter().flatten() {
        specials.insert(t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

/// transformers' `generate_merges(vocab, vocab_scores)` for a vocabulary without merges: every
/// split of a token into two tokens, best score first (then the longer left part, then the longer
/// right part; ties keep the vocabulary's order, and a token's splits are ordered by the ids of
/// their parts).
fn derive_merges(
    meta: &Meta<'_, '_>,
    tokens: &[&str],
    scores: &[f64],
    vocab: &HashMap<&str, u32>,
) -> Result<Vec<(String, String)>> {
    // `dict(zip(tokens, scores))`: first position, last score.
    let mut order: Vec<(&str, f64)> = Vec::with_capacity(tokens.len());
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (id, (&token, &score)) in tokens.iter().zip(scores).enumerate() {
        if score.is_nan() {
            return Err(meta.err(GGUF_SCORES, "finite scores", format!("NaN for token {id}")));
        }
        // Python compares -0.0 equal to 0.0.
        let score = if score == 0.0 { 0.0 } else { score };
        match position.get(token) {
            Some(&p) => order[p].1 = score,
            None => {
                position.insert(token, order.len());
                order.push((token, score));
            }
        }
    }
    struct Merge<'t> {
        left: &'t str,
        right: &'t str,
        score: f64,
        left_chars: usize,
        right_chars: usize,
    }
    let mut merges: Vec<Merge<'_>> = Vec::new();
    let mut local: Vec<(u32, u32, Merge<'_>)> = Vec::new();
    let mut work = 0usize;
    for &(token, score) in &order {
        let chars = token.chars().count();
        local.clear();
        for (k, (at, _)) in token.char_indices().enumerate().skip(1) {
            work += token.len();
            if work > MAX_DERIVE_WORK {
                return Err(meta.err(
                    GGUF_SCORES,
                    format!("a vocabulary whose merges can be derived within {MAX_DERIVE_WORK} bytes of lookups (or `{GGUF_MERGES}`)"),
                    format!("{} tokens, too long in all to derive merges from", tokens.len()),
                ));
            }
            let (left, right) = token.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                let merge = Merge {
                    left,
                    right,
                    score,
                    left_chars: k,
                    right_chars: chars - k,
                };
                local.push((l, r, merge));
            }
        }
        local.sort_by_key(|(l, r, _)| (*l, *r));
        merges.extend(local.drain(..).map(|(_, _, m)| m));
        if merges.len() > MAX_DERIVED_MERGES {
            return Err(meta.err(
                GGUF_SCORES,
                format!("a vocabulary implying at most {MAX_DERIVED_MERGES} merges (or `{GGUF_MERGES}`)"),
                format!("more merges than that, from {} tokens", tokens.len()),
            ));
        }
    }
    // `sorted(…, key=(score, len(left), len(right)), reverse=True)`: descending, stable.
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    Ok(merges
        .into_iter()
        .map(|m| (m.left.to_string(), m.right.to_string()))
        .collect())
}

/// GPT-2's byte ↔ character table (`bytes_to_unicode`).
struct ByteAlphabet {
    chars: [char; 256],
}

impl ByteAlphabet {
    fn new() -> Self {
        let mut chars = ['\0'; 256];
        let mut extra = 0u32;
        for b in 0..=255u8 {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            chars[b as usize] = if printable {
                char::from(b)
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('\u{FFFD}')
            };
        }
        Self { chars }
    }

    /// Whether every character of `token` is one of the alphabet's.
    fn spells(&self, token: &str) -> bool {
        token.chars().all(|c| {
            let c = c as u32;
            (c < 256 && self.chars[c as usize] as u32 == c) || (256..=323).contains(&c)
        })
    }

    /// `token` in the alphabet: unchanged when already spelled in it, else its UTF-8 bytes mapped.
    fn spell(&self, token: &str) -> String {
        if self.spells(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| self.chars[b as usize]).collect()
        }
    }
}

/// Typed access to the metadata, with errors naming the file and the key.
struct Meta<'a, 'f> {
    metadata: &'a HashMap<String, Value>,
    file: &'f Path,
}

impl<'a> Meta<'a, '_> {
    fn err(
        &self,
        key: &str,
        expected: impl Into<String>,
        actual: impl Into<String>,
    ) -> AdapterError {
        AdapterError::Config {
            path: self.file.to_path_buf(),
            field: key.to_string(),
            expected: expected.into(),
            actual: actual.into(),
        }
    }

    fn missing(&self, key: &str, expected: &str) -> AdapterError {
        self.err(key, expected, "missing")
    }

    fn check_len(&self, key: &str, len: usize, tokens: usize) -> Result<()> {
        if len == tokens {
            return Ok(());
        }
        Err(self.err(
            key,
            format!("{tokens} entries, one per token of `{GGUF_TOKENS}`"),
            format!("{len} entries"),
        ))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, "a string", describe(v))),
        }
    }

    fn array(&self, key: &str, expected: &str) -> Result<Option<&'a [Value]>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.err(key, expected, describe(v))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(items) = self.array(key, "an array of strings")? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.err(
                    key,
                    "an array of strings",
                    format!("element {i} is {}", describe(v)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(items) = self.array(key, "an array of integers")? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_int(v).ok_or_else(|| {
                    self.err(
                        key,
                        "an array of integers",
                        format!("element {i} is {}", describe(v)),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        let Some(items) = self.array(key, "an array of floats")? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(f64::from(*x)),
                Value::F64(x) => Ok(*x),
                v => Err(self.err(
                    key,
                    "an array of floats",
                    format!("element {i} is {}", describe(v)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn flag(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, "a bool", describe(v))),
        }
    }

    /// A token id below `tokens`.
    fn token_id(&self, key: &str, tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        let expected = || format!("a token id below {tokens} (the number of `{GGUF_TOKENS}`)");
        let id = as_int(v).ok_or_else(|| self.err(key, expected(), describe(v)))?;
        match usize::try_from(id) {
            Ok(i) if i < tokens => Ok(Some(i as u32)),
            _ => Err(self.err(key, expected(), id.to_string())),
        }
    }
}
