//! Tokenizers: an HF `tokenizer.json` (through the `tokenizers` crate) or a byte-level tokenizer
//! (256 byte tokens, then BOS, EOS and PAD) when none is given.

use crate::chat::ChatTemplate;
use crate::error::{AdapterError, Result};
use crate::io::bounded::{
    read_bounded, read_to_string_bounded, MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES,
};
use crate::train::chat::Segment;
use std::path::Path;
use std::sync::Arc;

/// BOS id of the byte-level tokenizer.
pub const BYTE_BOS: u32 = 256;
/// EOS id of the byte-level tokenizer.
pub const BYTE_EOS: u32 = 257;
/// PAD id of the byte-level tokenizer.
pub const BYTE_PAD: u32 = 258;
/// Vocabulary size of the byte-level tokenizer.
pub const BYTE_VOCAB: usize = 259;

/// BOS candidates looked up in an HF vocabulary, in order.
const BOS_NAMES: [&str; 4] = ["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];
/// EOS candidates looked up in an HF vocabulary, in order.
const EOS_NAMES: [&str; 5] = [
    "<|end_of_text|>",
    "</s>",
    "<eos>",
    "<|endoftext|>",
    "<|im_end|>",
];
/// PAD candidates looked up in an HF vocabulary, in order (else EOS is used).
const PAD_NAMES: [&str; 5] = [
    "<pad>",
    "<|pad|>",
    "[PAD]",
    "<|finetune_right_pad_id|>",
    "<|padding|>",
];

/// Token ids of a text and, per id, the byte range `(start, end)` of the text it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per id, its bytes `start..end` in the text (empty for a token of no text).
    pub offsets: Vec<(usize, usize)>,
}

/// A tokenizer with the special ids training needs.
#[derive(Clone)]
pub enum Tokenizer {
    /// Bytes as tokens: ids 0–255, then [`BYTE_BOS`], [`BYTE_EOS`], [`BYTE_PAD`].
    Bytes,
    /// An HF `tokenizer.json`.
    Hf(Box<HfTokenizer>),
}

/// An HF tokenizer, its special ids and its chat template.
#[derive(Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: u32,
    vocab: usize,
    chat_template: TemplateSlot,
}

/// A tokenizer's chat template: none, compiled, or one that failed to compile (the failure is
/// reported when a conversation needs the template, so text-only training is not blocked).
#[derive(Clone, Default)]
enum TemplateSlot {
    #[default]
    None,
    Ready(Arc<ChatTemplate>),
    Broken {
        source_name: String,
        reason: String,
    },
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer({}, vocab {}, bos {:?}, eos {:?}, pad {})",
            self.name(),
            self.vocab_size(),
            self.bos_id(),
            self.eos_id(),
            self.pad_id()
        )
    }
}

fn tok_err(name: &str, reason: impl std::fmt::Display) -> AdapterError {
    AdapterError::Tokenizer {
        source_name: name.to_string(),
        reason: reason.to_string(),
    }
}

impl Tokenizer {
    /// The byte-level tokenizer.
    pub fn byte_level() -> Self {
        Tokenizer::Bytes
    }

    /// Loads an HF `tokenizer.json`. Special tokens come from a `tokenizer_config.json` beside it
    /// (`bos_token`, `eos_token`, `pad_token`) when present, else from well-known names
    /// (`<|begin_of_text|>` / `<s>`, `<|end_of_text|>` / `</s>`, `<pad>`, …); PAD falls back to EOS.
    /// The chat template is the folder's (`chat_template.jinja`, `chat_template.json` or
    /// `tokenizer_config.json`'s `chat_template`), if any.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_bounded(path, MAX_TOKENIZER_BYTES, "reading tokenizer")?;
        let config = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .filter(|p| p.is_file());
        let config = match config {
            Some(p) => Some(read_config(&p)?),
            None => None,
        };
        let tok = Self::from_bytes(&bytes, &path.display().to_string(), config.as_ref())?;
        let template = match path.parent() {
            Some(dir) => ChatTemplate::from_model_dir(dir),
            None => Ok(None),
        };
        Ok(tok.with_chat_template_result(template))
    }

    /// [`Tokenizer::with_chat_template`] keeping a template's loading error for later.
    pub(crate) fn with_chat_template_result(self, template: Result<Option<ChatTemplate>>) -> Self {
        match self {
            Tokenizer::Bytes => Tokenizer::Bytes,
            Tokenizer::Hf(mut h) => {
                h.chat_template = match template {
                    Ok(Some(t)) => TemplateSlot::Ready(Arc::new(t)),
                    Ok(None) => TemplateSlot::None,
                    Err(e) => TemplateSlot::Broken {
                        source_name: h.name.clone(),
                        reason: e.to_string(),
                    },
                };
                Tokenizer::Hf(h)
            }
        }
    }

    /// This tokenizer rendering conversations with `template` (`None`: the built-in format of
    /// [`crate::train::chat`]). The byte-level tokenizer has no template and ignores it.
    pub fn with_chat_template(self, template: Option<ChatTemplate>) -> Self {
        self.with_chat_template_result(Ok(template))
    }

    /// The model's chat template, if it has one: conversations (`{"messages"}` examples, chat
    /// prompts) are rendered with it, as transformers' `apply_chat_template` does. A template
    /// that was found but failed to load is this error.
    pub fn chat_template(&self) -> Result<Option<&ChatTemplate>> {
        match self {
            Tokenizer::Bytes => Ok(None),
            Tokenizer::Hf(h) => match &h.chat_template {
                TemplateSlot::None => Ok(None),
                TemplateSlot::Ready(t) => Ok(Some(t)),
                TemplateSlot::Broken {
                    source_name,
                    reason,
                } => Err(AdapterError::ChatTemplate {
                    source_name: source_name.clone(),
                    reason: format!("the chat template could not be loaded: {reason}"),
                    raised: None,
                }),
            },
        }
    }

    /// The id of the token `text` (special tokens included), if the vocabulary has it.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        match self {
            Tokenizer::Bytes => None,
            Tokenizer::Hf(h) => h.inner.token_to_id(text),
        }
    }

    /// Encodes text without adding special tokens, with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Encoded> {
        match self {
            Tokenizer::Bytes => Ok(Encoded {
                ids: text.bytes().map(u32::from).collect(),
                offsets: (0..text.len()).map(|i| (i, i + 1)).collect(),
            }),
            Tokenizer::Hf(h) => {
                let enc = h
                    .inner
                    .encode(text, false)
                    .map_err(|e| tok_err(&h.name, e))?;
                Ok(Encoded {
                    ids: enc.get_ids().to_vec(),
                    offsets: enc.get_offsets().to_vec(),
                })
            }
        }
    }

    /// Loads a `tokenizer.json` from memory; `name` names it in errors; `config` is the parsed
    /// `tokenizer_config.json`, if any.
    pub fn from_bytes(
        bytes: &[u8],
        name: &str,
        config: Option<&serde_json::Value>,
    ) -> Result<Self> {
        // tokenizers 0.23 panics (`expect("Helper")`) on malformed JSON inside the `decoder`
        // value (a syntax error, invalid UTF-8 in a string), so malformed JSON is refused here
        // first (found by the `tokenizer` fuzz target). A full parse: `IgnoredAny` would skip
        // strings without checking their UTF-8.
        serde_json::from_slice::<serde_json::Value>(bytes)
            .map_err(|e| tok_err(name, format!("not a valid tokenizer.json: {e}")))?;
        // tokenizers 0.23 also panics (an out-of-range slice in `models/bpe/model.rs`) building a
        // BPE model from crafted `merges`, which the JSON check cannot see: a panic while parsing
        // is turned into this typed error (`tests/fixtures/fuzz/tokenizer_bpe_merges_open.json`).
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| tok_err(name, "not a valid tokenizer.json: the tokenizers crate panicked parsing it (malformed model data such as BPE `merges`)"))?;
        let inner =
            parsed.map_err(|e| tok_err(name, format!("not a valid tokenizer.json: {e}")))?;
        let lookup = |key: &str, names: &[&str]| -> Result<Option<u32>> {
            if let Some(tok) = config.and_then(|c| special_name(c, key)) {
                return match inner.token_to_id(&tok) {
                    Some(id) => Ok(Some(id)),
                    None => Err(tok_err(name, format!("tokenizer_config.json names {key} `{tok}`, which is not in the vocabulary"))),
                };
            }
            Ok(names.iter().find_map(|n| inner.token_to_id(n)))
        };
        let bos = lookup("bos_token", &BOS_NAMES)?;
        let eos = lookup("eos_token", &EOS_NAMES)?;
        let pad = lookup("pad_token", &PAD_NAMES)?.or(eos).ok_or_else(|| {
            tok_err(
                name,
                format!(
                    "no padding token: neither `pad_token` nor `eos_token` is set, and the vocabulary has none of {:?} or {:?}",
                    PAD_NAMES, EOS_NAMES
                ),
            )
        })?;
        let max_added = inner
            .get_added_tokens_decoder()
            .keys()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let vocab = inner.get_vocab_size(true).max(max_added);
        Ok(Tokenizer::Hf(Box::new(HfTokenizer {
            inner,
            name: name.to_string(),
            bos,
            eos,
            pad,
            vocab,
            chat_template: TemplateSlot::None,
        })))
    }

    /// Loads `path` when given, else the byte-level tokenizer.
    pub fn from_optional_file(path: Option<&Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::byte_level()), Self::from_file)
    }

    /// `byte-level` or the tokenizer file's path.
    pub fn name(&self) -> &str {
        match self {
            Tokenizer::Bytes => "byte-level",
            Tokenizer::Hf(h) => &h.name,
        }
    }

    /// Encodes text without adding special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::Hf(h) => Ok(h
                .inner
                .encode(text, false)
                .map_err(|e| tok_err(&h.name, e))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Decodes ids, skipping special tokens (invalid UTF-8 from byte tokens becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Bytes => {
                let bytes: Vec<u8> = ids.iter().filter_map(|&i| u8::try_from(i).ok()).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Tokenizer::Hf(h) => h.inner.decode(ids, true).map_err(|e| tok_err(&h.name, e)),
        }
    }

    /// Encodes segments (see [`crate::train::chat`]), returning ids and, per id, whether the loss
    /// covers it. [`Segment::Eos`] is dropped when the tokenizer has no EOS.
    pub fn encode_segments(&self, segments: &[(Segment, bool)]) -> Result<(Vec<u32>, Vec<bool>)> {
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        for (seg, train) in segments {
            let piece = match seg {
                Segment::Text(t) => self.encode(t)?,
                Segment::Eos => self.eos_id().into_iter().collect(),
            };
            mask.extend(std::iter::repeat_n(*train, piece.len()));
            ids.extend(piece);
        }
        Ok((ids, mask))
    }

    /// Number of token ids (the model's embedding table must have at least this many rows).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => BYTE_VOCAB,
            Tokenizer::Hf(h) => h.vocab,
        }
    }

    /// Beginning-of-sequence id, prepended to every example when present.
    pub fn bos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => Some(BYTE_BOS),
            Tokenizer::Hf(h) => h.bos,
        }
    }

    /// End-of-sequence id, appended to every example when present.
    pub fn eos_id(&self) -> Option<u32> {
        match self {
            Tokenizer::Bytes => Some(BYTE_EOS),
            Tokenizer::Hf(h) => h.eos,
        }
    }

    /// Padding id (never trained on: padded positions have loss mask 0).
    pub fn pad_id(&self) -> u32 {
        match self {
            Tokenizer::Bytes => BYTE_PAD,
            Tokenizer::Hf(h) => h.pad,
        }
    }

    /// The underlying HF tokenizer, if any.
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match self {
            Tokenizer::Bytes => None,
            Tokenizer::Hf(h) => Some(&h.inner),
        }
    }
}

fn read_config(path: &Path) -> Result<serde_json::Value> {
    let text = read_to_string_bounded(path, MAX_CONFIG_BYTES, "reading tokenizer config")?;
    serde_json::from_str(&text).map_err(|source| AdapterError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// `config[key]` as a token string: either `"<s>"` or `{"content": "<s>", …}`.
fn special_name(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}
