//! The byte ranges of a rendered conversation that the training loss covers: each answer and its
//! end-of-turn marker, from `{% generation %}` blocks or from how the rendering grows per turn.

use super::*;

impl ChatTemplate {
    /// The full conversation rendered (no generation prompt), with the byte ranges of the
    /// returned string that the training loss covers, in order and disjoint.
    ///
    /// * With `{% generation %}` blocks: exactly the text each non-empty block rendered.
    /// * Otherwise one range per assistant message: its turn's text after the assistant header,
    ///   up to and including the end-of-turn marker (`content<|im_end|>`, `content<|eot_id|>`,
    ///   `content</s>`, `content<end_of_turn>`), without the white space after it. Let `P` be
    ///   the rendering of the messages before it with a generation prompt and `F` that of the
    ///   messages up to it without one: when `F` starts with `P` and the full rendering starts
    ///   with `F`, the span is `F[P.len()..]` without its trailing white space.
    /// * Otherwise (templates that render a turn differently once later messages follow: Qwen3
    ///   drops the `<think>` block of earlier answers, Mistral moves the system message into the
    ///   last user turn, Phi-3 ends only the whole conversation with EOS; or whose generation
    ///   prompt is not a prefix of the answered turn: DeepSeek-R1 opens `<think>` in it), the
    ///   content is located by rendering again with it replaced by a marker character: the full
    ///   renderings must differ only there, and what the template rendered for the content must
    ///   be a part of it (its answer without the reasoning, trimmed, …). The span is that text,
    ///   preceded by what `F` has between `P` and the content when the full rendering has it there
    ///   too, and followed by the end-of-turn text `F` has after the content (or its part up to a
    ///   white space that the full rendering shares).
    ///
    /// Anything else (a template whose output changes elsewhere with the content, or that
    /// renders something not taken from it) is an [`AdapterError::ChatTemplate`] naming the
    /// template and the message; such templates need `{% generation %}` blocks.
    pub fn render_with_assistant_spans(
        &self,
        messages: &[Message],
    ) -> Result<(String, Vec<Range<usize>>)> {
        if messages.is_empty() {
            return Err(template_err(
                &self.name,
                "cannot render an empty conversation: give at least one message",
            ));
        }
        self.check_no_marks(messages)?;
        if self.generation_blocks {
            return self.generation_spans(messages);
        }
        let full = self.render_raw(messages, false, false)?;
        let mut spans: Vec<Range<usize>> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if !m.is_assistant() {
                continue;
            }
            let span = self.turn_span(messages, i, &full)?;
            if let Some(prev) = spans.last() {
                if span.start < prev.end {
                    return Err(
                        self.span_err(i, "its span overlaps the previous assistant message's")
                    );
                }
            }
            spans.push(span);
        }
        Ok((full, spans))
    }

    fn span_err(&self, i: usize, why: &str) -> AdapterError {
        template_err(
            &self.name,
            format!(
                "cannot tell which text of assistant message {i} to train on: {why}; use a template that marks assistant text with {{% generation %}} … {{% endgeneration %}} blocks"
            ),
        )
    }

    fn generation_spans(&self, messages: &[Message]) -> Result<(String, Vec<Range<usize>>)> {
        let tracked = self.render_raw(messages, false, true)?;
        let (text, ranges) = strip_marks(&tracked).ok_or_else(|| {
            template_err(
                &self.name,
                "the {% generation %} blocks' output was cut apart by the template",
            )
        })?;
        let plain = self.render_raw(messages, false, false)?;
        if plain != text {
            return Err(template_err(
                &self.name,
                "the template renders differently when its {% generation %} blocks are tracked (it processes their output further)",
            ));
        }
        Ok((text, ranges.into_iter().filter(|r| !r.is_empty()).collect()))
    }

    /// The span of assistant message `i` in `full` (see
    /// [`render_with_assistant_spans`](Self::render_with_assistant_spans)).
    fn turn_span(&self, messages: &[Message], i: usize, full: &str) -> Result<Range<usize>> {
        let prompt = self.render_raw(&messages[..i], true, false)?;
        let answered = self.render_raw(&messages[..=i], false, false)?;
        let prompt_is_prefix = answered.starts_with(prompt.as_str());
        let turn_end = answered.trim_end().len();
        if prompt_is_prefix && full.starts_with(answered.as_str()) {
            return Ok(prompt.len()..turn_end.max(prompt.len()));
        }
        // Locate the content: render again with it replaced by a marker character, which no
        // message holds; the renderings then differ exactly where the content was rendered.
        let mut alt = messages.to_vec();
        alt[i].content = MARK_START.to_string();
        let answered_alt = self.render_raw(&alt[..=i], false, false)?;
        let full_alt = self.render_raw(&alt, false, false)?;
        let (local, local_alt) = differing(&answered, &answered_alt);
        let (global, global_alt) = differing(full, &full_alt);
        if !local_alt.ends_with(MARK_START) {
            return Err(self.span_err(i, "its content cannot be located in the rendering up to it"));
        }
        if global_alt.chars().ne([MARK_START])
            || !messages[i].content.contains(&full[global.clone()])
        {
            return Err(self.span_err(
                i,
                "the full rendering does not start with the rendering up to it, and the template changes more than the message's content when the content changes (so it cannot be located)",
            ));
        }
        // The template's text between the generation prompt and the content (`<think>\n`, a
        // space, …), when the full rendering has it there too.
        let before = match prompt_is_prefix && local.start >= prompt.len() {
            true => &answered[prompt.len()..local.start],
            false => "",
        };
        let start = if full[..global.start].ends_with(before) {
            global.start - before.len()
        } else {
            global.start
        };
        // The end-of-turn text: what follows the content up to the end of the turn, or the part
        // of it that the full rendering has too, up to a white space (Phi-3 ends only the whole
        // conversation with EOS).
        let after_local = &answered[local.end..turn_end.max(local.end)];
        let after_full = &full[global.end..];
        let common = common_prefix(after_local, after_full);
        let end_marker = if common == after_local.len() {
            after_local
        } else {
            // Cut back to the last white space both share: `<|end|>\n<|endoftext|>` against
            // `<|end|>\n<|user|>` gives `<|end|>`.
            let shared = &after_local[..common];
            match shared.rfind(char::is_whitespace) {
                Some(ws) => shared[..ws].trim_end(),
                None => {
                    return Err(self.span_err(
                        i,
                        &format!(
                            "its end-of-turn text {after_local:?} is not what follows it in the full rendering"
                        ),
                    ))
                }
            }
        };
        if end_marker.is_empty() && !after_local.is_empty() {
            return Err(self.span_err(i, "no end-of-turn text follows it in the full rendering"));
        }
        Ok(start..global.end + end_marker.len())
    }
}

/// The length in bytes of the longest common prefix of `a` and `b` (on character boundaries).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((pos, _), _)| pos)
}

/// Where `a` and `b` differ: the range of `a` between their longest common prefix and their
/// longest common suffix (not overlapping the prefix), and the text of `b` there.
fn differing<'b>(a: &str, b: &'b str) -> (Range<usize>, &'b str) {
    let prefix = common_prefix(a, b);
    let max = a.len().min(b.len()) - prefix;
    let mut suffix = 0;
    for (x, y) in a[prefix..].chars().rev().zip(b[prefix..].chars().rev()) {
        if x != y || suffix + x.len_utf8() > max {
            break;
        }
        suffix += x.len_utf8();
    }
    (prefix..a.len() - suffix, &b[prefix..b.len() - suffix])
}

#[cfg(test)]
mod tests {
    use super::{common_prefix, differing};

    #[test]
    fn differing_finds_the_replaced_piece() {
        assert_eq!(common_prefix("abé", "abè"), 2);
        assert_eq!(differing("xHi\n</s>", "x\u{FDD0}</s>"), (1..4, "\u{FDD0}"));
        // The common suffix never overlaps the common prefix.
        assert_eq!(differing("a\nb\n", "a\n"), (2..4, ""));
        assert_eq!(differing("same", "same"), (4..4, ""));
    }
}
