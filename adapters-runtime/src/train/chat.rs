//! The chat format used for `{"messages":[…]}` examples (Zephyr's layout):
//!
//! ```text
//! <|system|>\n{content}<EOS>\n<|user|>\n{content}<EOS>\n<|assistant|>\n{content}<EOS>\n
//! ```
//!
//! Each message is the header `<|{role}|>\n` (plain text), its content, the tokenizer's EOS token
//! (omitted when it has none) and a newline. The loss covers only the assistant contents and the
//! EOS that ends them, so the model learns to answer and to stop. A generation prompt is the
//! conversation so far followed by `<|assistant|>\n`.
//!
//! Headers, contents and newlines are encoded separately, so token boundaries always fall between
//! them (a SentencePiece tokenizer may add its word-start marker to each piece).

pub use crate::chat::{Message, ROLES};

/// A piece of a rendered example: text to encode, or the EOS token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Text, encoded by the tokenizer without special tokens.
    Text(String),
    /// The tokenizer's end-of-sequence token.
    Eos,
}

/// The header that opens a message of `role`.
pub fn header(role: &str) -> String {
    format!("<|{role}|>\n")
}

/// The conversation as segments, each with whether the loss covers it.
pub fn chat_segments(messages: &[Message]) -> Vec<(Segment, bool)> {
    let mut out = Vec::with_capacity(messages.len() * 4);
    for m in messages {
        let train = m.is_assistant();
        out.push((Segment::Text(header(&m.role)), false));
        out.push((Segment::Text(m.content.clone()), train));
        out.push((Segment::Eos, train));
        out.push((Segment::Text("\n".into()), false));
    }
    out
}

/// The segments of a generation prompt: the conversation, then the assistant header.
pub fn chat_prompt_segments(messages: &[Message]) -> Vec<Segment> {
    let mut out: Vec<Segment> = chat_segments(messages)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    out.push(Segment::Text(header("assistant")));
    out
}
