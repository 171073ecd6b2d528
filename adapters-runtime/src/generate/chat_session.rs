//! A conversation with a model: each user message is rendered with the tokenizer's chat format
//! (the model's own template, or the built-in default) and answered; the key / value cache keeps
//! the conversation, so a turn runs only the tokens that changed.

use super::decode::{generate, Generation, GenerationConfig};
use crate::chat::Message;
use crate::error::Result;
use crate::models::llama::{KvCache, Llama};
use crate::train::{encode_chat_prompt, Tokenizer};

/// A conversation: its messages and what the model has already seen of it.
#[derive(Debug)]
pub struct ChatSession {
    system: Option<String>,
    messages: Vec<Message>,
    cache: KvCache,
    /// The ids whose keys and values are in `cache`.
    cached: Vec<u32>,
}

impl ChatSession {
    /// A new conversation with `model`, opened by a system message when given.
    pub fn new(model: &Llama, system: Option<String>) -> Self {
        let mut s = Self {
            system,
            messages: Vec::new(),
            cache: model.new_cache(),
            cached: Vec::new(),
        };
        s.reset();
        s
    }

    /// The messages so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Starts over (the system message stays).
    pub fn reset(&mut self) {
        self.messages = self
            .system
            .iter()
            .map(|s| Message::new("system", s.clone()))
            .collect();
        self.cache.reset();
        self.cached.clear();
    }

    /// Positions in the cache (the conversation's length in tokens, less the last answer's
    /// final token).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Adds `user`'s message and generates the answer, streaming its text to `on_text`; the
    /// answer joins the conversation. On an error the message is withdrawn.
    pub fn reply(
        &mut self,
        model: &Llama,
        tok: &Tokenizer,
        user: &str,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<Generation> {
        self.messages.push(Message::new("user", user));
        let out = self.answer(model, tok, config, on_text);
        if out.is_err() {
            self.messages.pop();
            self.cache.reset();
            self.cached.clear();
        }
        out
    }

    fn answer(
        &mut self,
        model: &Llama,
        tok: &Tokenizer,
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<Generation> {
        let prompt = encode_chat_prompt(tok, &self.messages)?;
        // Keep what the cache holds of this prompt; the rest runs.
        let common = self
            .cached
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count();
        self.cache.truncate(common);
        let g = generate(model, tok, &prompt, config, &mut self.cache, on_text)?;
        // The cache now holds the prompt and every generated token but the last.
        self.cached = prompt;
        self.cached.extend(&g.ids[..g.ids.len().saturating_sub(1)]);
        self.cached.truncate(self.cache.len());
        self.messages
            .push(Message::new("assistant", g.text.clone()));
        Ok(g)
    }
}
