//! [`ChatTemplate`]: a chat template rendered as transformers renders it, with training spans.

use super::message::Message;
use super::python;
use super::strftime::DateTime;
use crate::error::{AdapterError, Result};
use crate::io::bounded::{read_to_string_bounded, MAX_CONFIG_BYTES};
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

mod spans;

/// The name the compiled template has in the environment (errors name the source instead).
const MAIN: &str = "chat_template";
/// Template instructions one rendering may execute (real templates need a few hundred per
/// message).
pub const MAX_FUEL: u64 = 20_000_000;
/// The filter `{% generation %}` blocks are rewritten to.
const GENERATION_FILTER: &str = "__adapters_generation";
/// The context variable that turns the generation markers on.
const TRACK_VAR: &str = "__adapters_track_generation";
/// Marks the start of a tracked piece of output (a `{% generation %}` block, or an assistant
/// message's text): a Unicode noncharacter, reserved for a program's internal use.
const MARK_START: char = '\u{FDD0}';
/// Marks the end of a tracked piece of output.
const MARK_END: char = '\u{FDD1}';

/// The special tokens a chat template sees as `bos_token`, `eos_token`, `unk_token` and
/// `pad_token` (undefined when `None`, as transformers leaves unset tokens out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// The beginning-of-sequence token (`<s>`, `<|begin_of_text|>`, `<bos>`, …).
    pub bos: Option<String>,
    /// The end-of-sequence token (`</s>`, `<|eot_id|>`, `<|im_end|>`, …).
    pub eos: Option<String>,
    /// The unknown token.
    pub unk: Option<String>,
    /// The padding token.
    pub pad: Option<String>,
}

impl SpecialTokens {
    /// The `bos_token`, `eos_token`, `unk_token` and `pad_token` of a parsed
    /// `tokenizer_config.json` (or `special_tokens_map.json`): each a string or an
    /// `{"content": …}` object; missing, `null` or malformed ones are `None`.
    pub fn from_tokenizer_config(config: &serde_json::Value) -> Self {
        let token = |key: &str| match config.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
            _ => None,
        };
        Self {
            bos: token("bos_token"),
            eos: token("eos_token"),
            unk: token("unk_token"),
            pad: token("pad_token"),
        }
    }

    /// These tokens, with the missing ones taken from `other`.
    pub fn or(self, other: SpecialTokens) -> Self {
        Self {
            bos: self.bos.or(other.bos),
            eos: self.eos.or(other.eos),
            unk: self.unk.or(other.unk),
            pad: self.pad.or(other.pad),
        }
    }
}

/// The message `raise_exception(message)` was called with, carried through minijinja's error.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// An HF chat template, compiled.
///
/// Rendering follows transformers' `apply_chat_template` (`utils/chat_template_utils.py`):
/// jinja2 with `trim_blocks`, `lstrip_blocks`, loop controls (`break` / `continue`), no
/// auto-escaping, jinja2's lenient undefined values (printed as nothing, `is defined` false), the
/// globals `raise_exception(message)` and `strftime_now(format)`, the `tojson` filter as
/// `json.dumps(…, ensure_ascii=False)` (with `indent`, `separators`, `sort_keys`), Python's
/// `str()` for printed values and Python's string methods (`strip`, `split`, `startswith`, …).
/// The template sees `messages` (each `{"role", "content"}`), `add_generation_prompt`, `tools`
/// and `documents` (both `none`), and the special tokens that are set.
///
/// `{% generation %}` … `{% endgeneration %}` blocks (transformers' `AssistantTracker`) render
/// their body unchanged and give [`render_with_assistant_spans`](Self::render_with_assistant_spans)
/// its spans.
///
/// The engine is minijinja; what chat templates use renders as jinja2 renders it (checked
/// against transformers on the fixtures of `tests/chat_templates.rs`). Known differences, none
/// seen in a model's template: Python's `%` string formatting is refused (the `format` filter and
/// `str.format` work), tuples print as lists, and jinja2's `truncate`, `center`, `sum(start=…)`
/// and Python's binary rounding in `round` are not reproduced.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    name: String,
    source: String,
    special: SpecialTokens,
    generation_blocks: bool,
    now: Option<DateTime>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("special", &self.special)
            .field("generation_blocks", &self.generation_blocks)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn template_err(name: &str, reason: impl Into<String>) -> AdapterError {
    AdapterError::ChatTemplate {
        source_name: name.to_string(),
        reason: reason.into(),
        raised: None,
    }
}

/// A minijinja error as an [`AdapterError::ChatTemplate`]; a `raise_exception` call becomes one
/// whose `raised` is the template's message.
fn render_err(name: &str, e: &Error) -> AdapterError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(Raised(msg)) = err.downcast_ref::<Raised>() {
            return AdapterError::ChatTemplate {
                source_name: name.to_string(),
                reason: format!(
                    "the template refused the conversation: {msg}{}",
                    e.line().map(|l| format!(" (line {l})")).unwrap_or_default()
                ),
                raised: Some(msg.clone()),
            };
        }
        source = err.source();
    }
    let mut reason = e.to_string();
    let mut inner = std::error::Error::source(e);
    while let Some(err) = inner {
        reason.push_str(&format!(": {err}"));
        inner = err.source();
    }
    template_err(name, reason)
}

/// Rewrites `{% generation %}` / `{% endgeneration %}` (transformers' extension tags, with their
/// whitespace-control signs) into a filter block holding a `with` block: like the extension's
/// call block, it renders its body as a unit, in a scope of its own (a `set` inside does not
/// leak out). Returns the source and whether it had any.
fn rewrite_generation_tags(source: &str) -> (String, bool) {
    let re = regex::Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}").expect("valid regex");
    let mut found = false;
    let out = re.replace_all(source, |c: &regex::Captures<'_>| {
        found = true;
        let (pre, post) = (&c[1], &c[3]);
        if c.get(2).is_some() {
            format!("{{%{pre} endwith %}}{{% endfilter {post}%}}")
        } else {
            format!("{{%{pre} filter {GENERATION_FILTER} %}}{{% with {post}%}}")
        }
    });
    (out.into_owned(), found)
}

/// Removes the markers from `text`, returning it with the byte ranges (into the result) that
/// the marker pairs enclosed; nested pairs count as their outermost pair. `None` when the
/// markers do not pair up.
fn strip_marks(text: &str) -> Option<(String, Vec<Range<usize>>)> {
    let mut out = String::with_capacity(text.len());
    let mut ranges = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for c in text.chars() {
        match c {
            MARK_START => {
                if depth == 0 {
                    start = out.len();
                }
                depth += 1;
            }
            MARK_END => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    ranges.push(start..out.len());
                }
            }
            c => out.push(c),
        }
    }
    (depth == 0).then_some((out, ranges))
}

impl ChatTemplate {
    /// Compiles `source`; `name` names it in errors (a file path, a model name, …).
    pub fn new(source: &str, special: SpecialTokens, name: &str) -> Result<Self> {
        let (rewritten, generation_blocks) = rewrite_generation_tags(source);
        let mut env = Environment::new();
        // A template is code from the model's folder: a bounded number of instructions per
        // rendering turns an endless one into an error instead of a hang.
        env.set_fuel(Some(MAX_FUEL));
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_formatter(python::formatter);
        env.set_unknown_method_callback(python::unknown_method);
        env.add_filter("tojson", python::tojson);
        env.add_filter("string", python::string_filter);
        env.add_filter("trim", python::trim_filter);
        env.add_filter("wordcount", python::wordcount_filter);
        env.add_filter("replace", python::replace_filter);
        env.add_filter(GENERATION_FILTER, |state: &State, body: Value| {
            let track = state.lookup(TRACK_VAR).is_some_and(|v| v.is_true());
            let body = body.to_string();
            if track {
                Value::from(format!("{MARK_START}{body}{MARK_END}"))
            } else {
                Value::from(body)
            }
        });
        env.add_function(
            "raise_exception",
            |message: Value| -> std::result::Result<Value, Error> {
                let msg = message.to_string();
                Err(Error::new(ErrorKind::InvalidOperation, msg.clone()).with_source(Raised(msg)))
            },
        );
        env.add_template_owned(MAIN, rewritten)
            .map_err(|e| render_err(name, &e))?;
        let mut template = Self {
            env,
            name: name.to_string(),
            source: source.to_string(),
            special,
            generation_blocks,
            now: None,
        };
        template.set_now(None);
        Ok(template)
    }

    /// The template of a parsed `tokenizer_config.json`: its `chat_template`, a string or a list
    /// of `{"name", "template"}` (the one named `default`, as transformers picks), with the
    /// config's special tokens. `Ok(None)` when it has no `chat_template`.
    pub fn from_tokenizer_config(config: &serde_json::Value, name: &str) -> Result<Option<Self>> {
        let special = SpecialTokens::from_tokenizer_config(config);
        match config.get("chat_template") {
            None => Ok(None),
            Some(value) => Self::from_json_template(value, special, name),
        }
    }

    /// A `chat_template` value: a string, a list of `{"name", "template"}`, or `null`.
    fn from_json_template(
        value: &serde_json::Value,
        special: SpecialTokens,
        name: &str,
    ) -> Result<Option<Self>> {
        let source = match value {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::String(s) => s.as_str(),
            serde_json::Value::Array(list) => {
                let default = list.iter().find(|t| {
                    t.get("name").and_then(|n| n.as_str()) == Some("default")
                });
                let names: Vec<&str> = list
                    .iter()
                    .filter_map(|t| t.get("name").and_then(|n| n.as_str()))
                    .collect();
                match default.and_then(|t| t.get("template")).and_then(|t| t.as_str()) {
                    Some(s) => s,
                    None => {
                        return Err(template_err(
                            name,
                            format!(
                                "`chat_template` lists templates named {names:?}, expected one named `default` with a string `template`"
                            ),
                        ))
                    }
                }
            }
            other => {
                return Err(template_err(
                    name,
                    format!(
                        "`chat_template` is {}, expected a string or a list of {{\"name\", \"template\"}}",
                        json_kind(other)
                    ),
                ))
            }
        };
        Self::new(source, special, name).map(Some)
    }

    /// The chat template of an HF model folder, as transformers loads it: `chat_template.jinja`
    /// (how recent transformers versions save it), else the `chat_template` of
    /// `chat_template.json`, else that of `tokenizer_config.json`. The special tokens come from
    /// `tokenizer_config.json`, missing ones from `special_tokens_map.json`. `Ok(None)` when none
    /// of these files holds a template. Every file is read with a 16 MiB bound.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let read_json = |file: &str| -> Result<Option<serde_json::Value>> {
            let path = dir.join(file);
            if !path.is_file() {
                return Ok(None);
            }
            let text =
                read_to_string_bounded(&path, MAX_CONFIG_BYTES, "reading chat template config")?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|source| AdapterError::Json { path, source })
        };
        let config = read_json("tokenizer_config.json")?;
        let mut special = config
            .as_ref()
            .map(SpecialTokens::from_tokenizer_config)
            .unwrap_or_default();
        if let Some(map) = read_json("special_tokens_map.json")? {
            special = special.or(SpecialTokens::from_tokenizer_config(&map));
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            let source = read_to_string_bounded(&jinja, MAX_CONFIG_BYTES, "reading chat template")?;
            return Self::new(&source, special, &jinja.display().to_string()).map(Some);
        }
        if let Some(json) = read_json("chat_template.json")? {
            if let Some(value) = json.get("chat_template") {
                let name = dir.join("chat_template.json").display().to_string();
                if let Some(t) = Self::from_json_template(value, special.clone(), &name)? {
                    return Ok(Some(t));
                }
            }
        }
        match config.as_ref().and_then(|c| c.get("chat_template")) {
            Some(value) => {
                let name = dir.join("tokenizer_config.json").display().to_string();
                Self::from_json_template(value, special, &name)
            }
            None => Ok(None),
        }
    }

    /// This template with `strftime_now` formatting `now` instead of the current local time (for
    /// reproducible renderings and tests).
    pub fn with_now(mut self, now: DateTime) -> Self {
        self.set_now(Some(now));
        self
    }

    fn set_now(&mut self, now: Option<DateTime>) {
        self.now = now;
        self.env.add_function("strftime_now", move |format: &str| {
            now.unwrap_or_else(DateTime::now_local).strftime(format)
        });
    }

    /// The name given to [`new`](Self::new) (or the file the template was read from).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The template's source, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The special tokens the template sees.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Whether the template marks assistant text with `{% generation %}` blocks.
    pub fn has_generation_blocks(&self) -> bool {
        self.generation_blocks
    }

    /// The conversation rendered, followed by the template's assistant header when
    /// `add_generation_prompt` (the prompt to generate the next answer from). An empty
    /// conversation is refused, as transformers refuses it; a `raise_exception` call of the
    /// template is an [`AdapterError::ChatTemplate`] whose `raised` holds its message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(template_err(
                &self.name,
                "cannot render an empty conversation: give at least one message",
            ));
        }
        self.render_raw(messages, add_generation_prompt, false)
    }

    fn render_raw(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        track: bool,
    ) -> Result<String> {
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        ctx.insert("tools", Value::from(()));
        ctx.insert("documents", Value::from(()));
        let tokens = [
            ("bos_token", &self.special.bos),
            ("eos_token", &self.special.eos),
            ("unk_token", &self.special.unk),
            ("pad_token", &self.special.pad),
        ];
        for (key, token) in tokens {
            if let Some(t) = token {
                ctx.insert(key, Value::from(t.as_str()));
            }
        }
        if track {
            ctx.insert(TRACK_VAR, Value::from(true));
        }
        let template = self
            .env
            .get_template(MAIN)
            .map_err(|e| render_err(&self.name, &e))?;
        // minijinja 2.24 panics on some templates (an out-of-range index reversing an empty
        // iterable with `[::-1]`, found by the `chat_template` fuzz target): a panic while
        // rendering becomes this typed error.
        let rendered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| template.render(ctx)))
                .map_err(|_| {
                    template_err(
                        &self.name,
                        "the template engine (minijinja) panicked rendering this template",
                    )
                })?;
        rendered.map_err(|e| render_err(&self.name, &e))
    }

    /// Refuses messages holding the marker characters spans are tracked with.
    fn check_no_marks(&self, messages: &[Message]) -> Result<()> {
        for (i, m) in messages.iter().enumerate() {
            if m.content.contains([MARK_START, MARK_END]) || m.role.contains([MARK_START, MARK_END])
            {
                return Err(template_err(
                    &self.name,
                    format!(
                        "message {i} holds U+FDD0 or U+FDD1, the noncharacters assistant spans are tracked with; remove them from the data"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml(extra: &str) -> ChatTemplate {
        let source = format!(
            "{{% for m in messages %}}<|im_start|>{{{{ m.role }}}}\n{extra}{{{{ m.content }}}}<|im_end|>\n{{% endfor %}}{{% if add_generation_prompt %}}<|im_start|>assistant\n{{% endif %}}"
        );
        ChatTemplate::new(&source, SpecialTokens::default(), "chatml").unwrap()
    }

    #[test]
    fn templates_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync + Clone>() {}
        send_sync::<ChatTemplate>();
    }

    #[test]
    fn generation_tags_become_filter_blocks() {
        let (out, found) = rewrite_generation_tags(
            "a{% generation %}b{%- endgeneration -%}c{%-generation+%}{%+ endgeneration%}",
        );
        assert!(found);
        assert_eq!(
            out,
            "a{% filter __adapters_generation %}{% with %}b{%- endwith %}{% endfilter -%}c\
             {%- filter __adapters_generation %}{% with +%}{%+ endwith %}{% endfilter %}"
        );
        assert!(!rewrite_generation_tags("{% if generation %}{{ generation }}{% endif %}").1);
    }

    #[test]
    fn marks_pair_up_into_ranges() {
        let (text, ranges) =
            strip_marks("a\u{FDD0}bc\u{FDD1}d\u{FDD0}\u{FDD0}é\u{FDD1}\u{FDD1}").unwrap();
        assert_eq!(text, "abcdé");
        assert_eq!(ranges, vec![1..3, 4..6]);
        assert!(strip_marks("\u{FDD1}").is_none());
        assert!(strip_marks("\u{FDD0}").is_none());
    }

    #[test]
    fn spans_of_a_plain_template() {
        let t = chatml("");
        let chat = [
            Message::new("system", "S"),
            Message::new("user", "U"),
            Message::new("assistant", "A1"),
            Message::new("user", "U2"),
            Message::new("assistant", "A2 "),
        ];
        let (text, spans) = t.render_with_assistant_spans(&chat).unwrap();
        assert_eq!(text, t.render(&chat, false).unwrap());
        let got: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
        assert_eq!(got, ["A1<|im_end|>", "A2 <|im_end|>"]);
        // No assistant message, no span.
        let (_, spans) = t.render_with_assistant_spans(&chat[..2]).unwrap();
        assert!(spans.is_empty());
        // Template text between the header and the content belongs to the turn.
        let t = chatml("> ");
        let (text, spans) = t.render_with_assistant_spans(&chat).unwrap();
        assert_eq!(&text[spans[0].clone()], "> A1<|im_end|>");
    }

    #[test]
    fn raise_exception_is_typed() {
        let t = ChatTemplate::new(
            "{% if messages | length > 1 %}{{ raise_exception('only ' ~ 1 ~ ' message') }}{% endif %}ok",
            SpecialTokens::default(),
            "one",
        )
        .unwrap();
        let m = Message::new("user", "x");
        assert_eq!(t.render(std::slice::from_ref(&m), false).unwrap(), "ok");
        match t.render(&[m.clone(), m], false) {
            Err(AdapterError::ChatTemplate {
                source_name,
                raised: Some(msg),
                reason,
            }) => {
                assert_eq!(
                    (source_name.as_str(), msg.as_str()),
                    ("one", "only 1 message")
                );
                assert!(reason.contains("only 1 message"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jinja2_environment_settings() {
        let t = |src: &str| {
            ChatTemplate::new(
                src,
                SpecialTokens {
                    eos: Some("</s>".into()),
                    ..SpecialTokens::default()
                },
                "t",
            )
            .unwrap()
            .render(&[Message::new("user", "<b>&</b>")], true)
            .unwrap()
        };
        // trim_blocks, lstrip_blocks, no trailing newline, no HTML escaping.
        assert_eq!(
            t("  {% if true %}\nA\n  {% endif %}\n{{ messages[0].content }}\n"),
            "A\n<b>&</b>"
        );
        // Undefined prints as nothing; tools and documents are none; unset tokens undefined.
        assert_eq!(
            t("{{ nope }}|{{ tools is none }}|{{ documents }}|{{ bos_token is defined }}|{{ eos_token }}|{{ add_generation_prompt }}"),
            "|True|None|False|</s>|True"
        );
        // A `set` inside a generation block stays inside it, as in jinja2's call block.
        assert_eq!(
            t("{% set x = 1 %}{% generation %}{% set x = 2 %}{{ x }}{% endgeneration %}{{ x }}"),
            "21"
        );
        // Loop controls.
        assert_eq!(t("{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "02");
    }
}
