//! Generated tokens → text as it becomes final: incremental detokenization (a token's text is
//! released once it decodes to whole characters) and stop strings (text that could still turn
//! into one is held back, so a stop string never reaches the output).

use crate::error::Result;
use crate::train::Tokenizer;

/// The text of a growing token sequence, released piece by piece.
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Text of `ids` decoded so far that is final (whole characters).
    text: String,
    /// Bytes of `text` already released.
    released: usize,
    stops: Vec<String>,
    /// The stop string found, once found; nothing after it is released.
    stopped: Option<String>,
}

impl<'a> TextStream<'a> {
    /// A stream decoding with `tok`, ending at the first of `stops` (empty strings ignored).
    pub fn new(tok: &'a Tokenizer, stops: &[String]) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            text: String::new(),
            released: 0,
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            stopped: None,
        }
    }

    /// Adds a token; returns the text that became final (possibly empty). After a stop string
    /// is found nothing more is released (see [`TextStream::stopped`]).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if self.stopped.is_some() {
            return Ok(String::new());
        }
        self.ids.push(id);
        let full = self.tok.decode(&self.ids)?;
        // An incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives.
        if full.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        self.text = full;
        Ok(self.release(false))
    }

    /// Ends the stream: the text held back (a possible stop-string prefix that never completed).
    pub fn finish(&mut self) -> String {
        if self.stopped.is_some() {
            return String::new();
        }
        if let Ok(full) = self.tok.decode(&self.ids) {
            self.text = full;
        }
        self.release(true)
    }

    /// The stop string that ended the stream, if one did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// All text released so far.
    pub fn text(&self) -> &str {
        &self.text[..self.released.min(self.text.len())]
    }

    fn release(&mut self, all: bool) -> String {
        // Decoding more tokens can rewrite earlier text (a SentencePiece space); release only
        // past what is already out, and never re-release.
        if !self
            .text
            .is_char_boundary(self.released.min(self.text.len()))
        {
            return String::new();
        }
        let start = self.released.min(self.text.len());
        let search_from = floor_boundary(
            &self.text,
            start.saturating_sub(self.stops.iter().map(String::len).max().unwrap_or(0)),
        );
        let found = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| (search_from + i, s))
            })
            .min_by_key(|(i, _)| *i);
        let end = match found {
            Some((i, s)) => {
                self.stopped = Some(s.clone());
                self.text.truncate(i.max(start));
                i.max(start)
            }
            None if all => self.text.len(),
            None => self.text.len() - self.held_back(),
        };
        let out = self.text[start..end].to_string();
        self.released = end;
        out
    }

    /// Bytes at the end of the text that begin some stop string (they may complete it).
    fn held_back(&self) -> usize {
        let t = self.text.as_bytes();
        self.stops
            .iter()
            .flat_map(|s| (1..s.len().min(t.len() + 1)).map(move |n| (s, n)))
            .filter(|(s, n)| t.ends_with(&s.as_bytes()[..*n]))
            .map(|(_, n)| n)
            .max()
            .map_or(0, |n| {
                // Hold back whole characters.
                let cut = floor_boundary(&self.text, self.text.len() - n);
                self.text.len() - cut
            })
    }
}

fn floor_boundary(s: &str, mut at: usize) -> usize {
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    #[test]
    fn multibyte_characters_are_released_whole() {
        let tok = Tokenizer::byte_level();
        let mut st = TextStream::new(&tok, &[]);
        let mut out = Vec::new();
        for id in bytes("aé€") {
            out.push(st.push(id).unwrap());
        }
        out.push(st.finish());
        assert_eq!(out, vec!["a", "", "é", "", "", "€", ""]);
        assert_eq!(st.text(), "aé€");
    }

    #[test]
    fn stop_strings_are_cut_and_never_released() {
        let tok = Tokenizer::byte_level();
        let stops = vec!["\nUser:".to_string()];
        let mut st = TextStream::new(&tok, &stops);
        let mut got = String::new();
        for id in bytes("Hi.\nUs") {
            got += &st.push(id).unwrap();
        }
        // "\nUs" may begin the stop string: held back.
        assert_eq!(got, "Hi.");
        for id in bytes("er: more") {
            got += &st.push(id).unwrap();
        }
        got += &st.finish();
        assert_eq!(got, "Hi.");
        assert_eq!(st.stopped(), Some("\nUser:"));
        // A prefix that does not complete is released at the end.
        let mut st = TextStream::new(&tok, &stops);
        let mut got = String::new();
        for id in bytes("a\nUse") {
            got += &st.push(id).unwrap();
        }
        got += &st.finish();
        assert_eq!(got, "a\nUse");
        assert_eq!(st.stopped(), None);
    }
}
