//! Examples → token ids with a loss mask → training sequences of at most `seq_len + 1` tokens
//! (`seq_len` inputs, each predicting the next token). Truncation is never silent: every
//! truncated or dropped example is counted in [`Prepared`].

use crate::error::{AdapterError, Result};
use crate::train::chat::{chat_prompt_segments, chat_segments, Message, Segment};
use crate::train::data::Example;
use crate::train::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};

/// Token ids and, per id, whether it is a loss target (predicted from the ids before it).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Sequence {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `mask[i]`: the loss covers predicting `ids[i]`.
    pub mask: Vec<bool>,
}

impl Sequence {
    /// Number of loss targets (the first token is never one: nothing predicts it).
    pub fn targets(&self) -> usize {
        self.mask.iter().skip(1).filter(|&&m| m).count()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the sequence has no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Encodes an example: `[BOS] text [EOS]`, `[BOS] prompt completion [EOS]` (loss on the
/// completion and EOS), or `[BOS]` + the chat format (loss on assistant turns). BOS / EOS are
/// left out when the tokenizer has none.
pub fn encode_example(tok: &Tokenizer, example: &Example) -> Result<Sequence> {
    let segments: Vec<(Segment, bool)> = match example {
        Example::Text(t) => vec![(Segment::Text(t.clone()), true), (Segment::Eos, true)],
        Example::PromptCompletion { prompt, completion } => vec![
            (Segment::Text(prompt.clone()), false),
            (Segment::Text(completion.clone()), true),
            (Segment::Eos, true),
        ],
        Example::Chat(messages) => chat_segments(messages),
    };
    let (body, body_mask) = tok.encode_segments(&segments)?;
    let mut seq = Sequence::default();
    if let Some(bos) = tok.bos_id() {
        seq.ids.push(bos);
        seq.mask.push(false);
    }
    seq.ids.extend(body);
    seq.mask.extend(body_mask);
    Ok(seq)
}

/// The ids a model continues to complete `prompt`: `[BOS] prompt`.
pub fn encode_prompt(tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    Ok(tok
        .bos_id()
        .into_iter()
        .chain(tok.encode(prompt)?)
        .collect())
}

/// The ids a model continues to answer a conversation: `[BOS]` + messages + `<|assistant|>\n`.
pub fn encode_chat_prompt(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
    let segs: Vec<(Segment, bool)> = chat_prompt_segments(messages)
        .into_iter()
        .map(|s| (s, false))
        .collect();
    let (ids, _) = tok.encode_segments(&segs)?;
    Ok(tok.bos_id().into_iter().chain(ids).collect())
}

/// How examples become sequences.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackMode {
    /// One example per sequence (batches are padded).
    #[default]
    Pad,
    /// Consecutive whole examples share a sequence while they fit (attention is not masked
    /// between them); an example never spans two sequences.
    Pack,
}

/// Sequence building options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackOptions {
    /// Model input length: sequences hold at most `seq_len + 1` tokens.
    pub seq_len: usize,
    /// Padding or packing.
    pub mode: PackMode,
}

/// Sequences built from examples, with what truncation cost.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// The training sequences.
    pub sequences: Vec<Sequence>,
    /// Examples encoded.
    pub examples: usize,
    /// Examples cut to `seq_len + 1` tokens.
    pub truncated: usize,
    /// Tokens removed by truncation.
    pub truncated_tokens: usize,
    /// Examples dropped because no loss target survived truncation.
    pub dropped: usize,
    /// Tokens kept, over all sequences.
    pub tokens: usize,
    /// Loss targets kept, over all sequences.
    pub targets: usize,
}

impl Prepared {
    /// A one-line report (`120 examples → 120 sequences, 3 truncated (41 tokens), 0 dropped`).
    pub fn summary(&self) -> String {
        format!(
            "{} examples → {} sequences ({} tokens, {} loss targets); {} truncated ({} tokens cut), {} dropped (no target left)",
            self.examples,
            self.sequences.len(),
            self.tokens,
            self.targets,
            self.truncated,
            self.truncated_tokens,
            self.dropped
        )
    }
}

/// Encodes `examples` and builds sequences of at most `seq_len + 1` tokens.
pub fn prepare(examples: &[Example], tok: &Tokenizer, options: PackOptions) -> Result<Prepared> {
    if options.seq_len == 0 {
        return Err(AdapterError::InvalidArgument {
            name: "seq_len".into(),
            expected: "at least 1".into(),
            actual: "0".into(),
        });
    }
    let cap = options.seq_len + 1;
    let mut out = Prepared {
        examples: examples.len(),
        ..Prepared::default()
    };
    let mut current = Sequence::default();
    for ex in examples {
        let mut seq = encode_example(tok, ex)?;
        if seq.len() > cap {
            out.truncated += 1;
            out.truncated_tokens += seq.len() - cap;
            seq.ids.truncate(cap);
            seq.mask.truncate(cap);
        }
        if seq.targets() == 0 {
            out.dropped += 1;
            continue;
        }
        match options.mode {
            PackMode::Pad => out.sequences.push(seq),
            PackMode::Pack => {
                if current.len() + seq.len() > cap {
                    out.sequences.push(std::mem::take(&mut current));
                }
                current.ids.extend(seq.ids);
                current.mask.extend(seq.mask);
            }
        }
    }
    if !current.is_empty() {
        out.sequences.push(current);
    }
    out.tokens = out.sequences.iter().map(Sequence::len).sum();
    out.targets = out.sequences.iter().map(Sequence::targets).sum();
    Ok(out)
}
