//! Examples → token ids with a loss mask → training sequences of at most `seq_len + 1` tokens
//! (`seq_len` inputs, each predicting the next token). Text far longer than a sequence is cut
//! before tokenizing. Truncation is never silent: every truncated or dropped example, and the
//! tokens and bytes cut, are counted in [`Prepared`].

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
/// completion and EOS), or a conversation (loss on the assistant turns). BOS / EOS are left out
/// when the tokenizer has none. A conversation is rendered with the tokenizer's chat template
/// when it has one ([`Tokenizer::chat_template`]: exactly transformers' `apply_chat_template`
/// text, tokenized without added special tokens as transformers does — the template writes BOS
/// itself; the loss covers the tokens overlapping each answer's span, its end-of-turn marker
/// included), else with the built-in format of [`crate::train::chat`] after `[BOS]`.
pub fn encode_example(tok: &Tokenizer, example: &Example) -> Result<Sequence> {
    encode_example_bounded(tok, example, usize::MAX).map(|(seq, _)| seq)
}

/// Text budget per token kept: [`prepare`] cuts an example's text to `(seq_len + 1) ×` this many
/// bytes before tokenizing it, so a huge example costs no more than one that fills a sequence
/// (no real tokenizer's tokens average anywhere near 64 bytes).
pub const MAX_BYTES_PER_TOKEN: usize = 64;

/// The largest char boundary of `s` at or below `at`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// Cuts the text of `segments` to `max_bytes` in all (at a char boundary); once text is cut, the
/// segments after it (an EOS included) are dropped, as truncation would drop them. Returns the
/// bytes of text removed.
fn cut_segments(segments: &mut Vec<(Segment, bool)>, max_bytes: usize) -> usize {
    let mut left = max_bytes;
    for i in 0..segments.len() {
        let Segment::Text(t) = &mut segments[i].0 else {
            continue;
        };
        if t.len() <= left {
            left -= t.len();
            continue;
        }
        let keep = floor_char_boundary(t, left);
        let mut cut = t.len() - keep;
        t.truncate(keep);
        for (rest, _) in segments.drain(i + 1..) {
            if let Segment::Text(r) = rest {
                cut = cut.saturating_add(r.len());
            }
        }
        return cut;
    }
    0
}

/// [`encode_example`] with the example's text first cut to `max_text_bytes` bytes in all (see
/// [`MAX_BYTES_PER_TOKEN`]); also returns the bytes cut (0 when the text fit).
pub fn encode_example_bounded(
    tok: &Tokenizer,
    example: &Example,
    max_text_bytes: usize,
) -> Result<(Sequence, usize)> {
    if let (Example::Chat(messages), Some(template)) = (example, tok.chat_template()?) {
        let (mut text, spans) = template.render_with_assistant_spans(messages)?;
        let keep = floor_char_boundary(&text, max_text_bytes);
        let cut = text.len() - keep;
        text.truncate(keep);
        let enc = tok.encode_with_offsets(&text)?;
        let mask = enc
            .offsets
            .iter()
            .map(|&(a, b)| spans.iter().any(|s| a < s.end && s.start < b.max(a + 1)))
            .collect();
        return Ok((Sequence { ids: enc.ids, mask }, cut));
    }
    let mut segments: Vec<(Segment, bool)> = match example {
        Example::Text(t) => vec![(Segment::Text(t.clone()), true), (Segment::Eos, true)],
        Example::PromptCompletion { prompt, completion } => vec![
            (Segment::Text(prompt.clone()), false),
            (Segment::Text(completion.clone()), true),
            (Segment::Eos, true),
        ],
        Example::Chat(messages) => chat_segments(messages),
    };
    let cut = cut_segments(&mut segments, max_text_bytes);
    let (body, body_mask) = tok.encode_segments(&segments)?;
    let mut seq = Sequence::default();
    if let Some(bos) = tok.bos_id() {
        seq.ids.push(bos);
        seq.mask.push(false);
    }
    seq.ids.extend(body);
    seq.mask.extend(body_mask);
    Ok((seq, cut))
}

/// The ids a model continues to complete `prompt`: `[BOS] prompt`.
pub fn encode_prompt(tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>> {
    Ok(tok
        .bos_id()
        .into_iter()
        .chain(tok.encode(prompt)?)
        .collect())
}

/// The ids a model continues to answer a conversation: the chat template's rendering with the
/// generation prompt (as transformers' `apply_chat_template(…, add_generation_prompt=True)`
/// tokenizes it), or without a template `[BOS]` + messages + `<|assistant|>\n`.
pub fn encode_chat_prompt(tok: &Tokenizer, messages: &[Message]) -> Result<Vec<u32>> {
    if let Some(template) = tok.chat_template()? {
        return tok.encode(&template.render(messages, true)?);
    }
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
    /// Tokens removed by truncation (of the text kept after `truncated_bytes` were cut).
    pub truncated_tokens: usize,
    /// Bytes of text cut before tokenizing, from examples longer than
    /// `(seq_len + 1) ×` [`MAX_BYTES_PER_TOKEN`] bytes (they are counted in `truncated` too).
    pub truncated_bytes: usize,
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
            "{} examples → {} sequences ({} tokens, {} loss targets); {} truncated ({} tokens cut{}), {} dropped (no target left)",
            self.examples,
            self.sequences.len(),
            self.tokens,
            self.targets,
            self.truncated,
            self.truncated_tokens,
            if self.truncated_bytes > 0 {
                format!(", and {} bytes of text before tokenizing", self.truncated_bytes)
            } else {
                String::new()
            },
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
    let cap = options.seq_len.saturating_add(1);
    let max_text_bytes = cap.saturating_mul(MAX_BYTES_PER_TOKEN);
    let mut out = Prepared {
        examples: examples.len(),
        ..Prepared::default()
    };
    let mut current = Sequence::default();
    for ex in examples {
        let (mut seq, cut) = encode_example_bounded(tok, ex, max_text_bytes)?;
        if seq.len() > cap || cut > 0 {
            out.truncated += 1;
            out.truncated_tokens += seq.len().saturating_sub(cap);
            out.truncated_bytes = out.truncated_bytes.saturating_add(cut);
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
