//! Chat templates rendered as transformers' `apply_chat_template` renders them: every golden
//! rendering of `tests/fixtures/chat_templates/expected.json` (made by
//! `scripts/make_chat_template_fixtures.py`) byte for byte, `raise_exception` refusals, the spans
//! of `{% generation %}` blocks as transformers reports them, and the assistant spans of
//! templates without such blocks. `ADAPTERS_CHAT_FIXTURES=DIR[:DIR…]` adds fixture folders made by the
//! script's `--templates DIR --out OUT` (real templates kept outside the repository).

use adapters_runtime::chat::{ChatTemplate, DateTime, Message, SpecialTokens};
use adapters_runtime::AdapterError;
use serde_json::Value;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A fixture folder: templates and their `expected.json`.
struct Fixtures {
    dir: PathBuf,
    expected: Value,
}

fn repo_fixtures() -> Fixtures {
    let root = std::env::var_os("ADAPTERS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    Fixtures::load(&root.join("chat_templates"))
}

/// The repository's fixtures, then those of `ADAPTERS_CHAT_FIXTURES`.
fn all_fixtures() -> Vec<Fixtures> {
    let mut out = vec![repo_fixtures()];
    if let Some(dirs) = std::env::var_os("ADAPTERS_CHAT_FIXTURES") {
        out.extend(std::env::split_paths(&dirs).map(|d| Fixtures::load(&d)));
    }
    out
}

impl Fixtures {
    fn load(dir: &Path) -> Self {
        let path = dir.join("expected.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self {
            dir: dir.to_path_buf(),
            expected: serde_json::from_str(&text).unwrap(),
        }
    }

    fn now(&self) -> DateTime {
        let n: Vec<i64> = self.expected["now"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let u = |i: usize| u8::try_from(n[i]).unwrap();
        DateTime::new(i32::try_from(n[0]).unwrap(), u(1), u(2), u(3), u(4), u(5)).unwrap()
    }

    fn template_names(&self) -> Vec<String> {
        self.expected["templates"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    /// The compiled template `name`, its special tokens from the fixture, `strftime_now` pinned.
    fn template(&self, name: &str) -> ChatTemplate {
        let info = &self.expected["templates"][name];
        let tok = |k: &str| info["special_tokens"][k].as_str().map(String::from);
        let special = SpecialTokens {
            bos: tok("bos"),
            eos: tok("eos"),
            unk: tok("unk"),
            pad: tok("pad"),
        };
        let file = self.dir.join(info["file"].as_str().unwrap());
        let source = std::fs::read_to_string(&file).unwrap();
        ChatTemplate::new(&source, special, &file.display().to_string())
            .unwrap_or_else(|e| panic!("compiling {name}: {e}"))
            .with_now(self.now())
    }

    fn conversation(&self, name: &str) -> Vec<Message> {
        serde_json::from_value(self.expected["conversations"][name].clone()).unwrap()
    }

    fn conversation_names(&self) -> Vec<String> {
        self.expected["conversations"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn renderings(&self) -> &Vec<Value> {
        self.expected["renderings"].as_array().unwrap()
    }

    /// transformers' rendering of `conversation` without a generation prompt, if it has one.
    fn expected_text(&self, template: &str, conversation: &str) -> Option<&str> {
        self.renderings()
            .iter()
            .find(|r| {
                r["template"] == template
                    && r["conversation"] == conversation
                    && r["add_generation_prompt"] == false
            })
            .and_then(|r| r["text"].as_str())
    }
}

/// The first line where `a` and `b` differ, for failure messages.
fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i);
    let from = a[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = |s: &str| (at + 60).min(s.len());
    let cut = |s: &str| {
        let mut e = end(s);
        while !s.is_char_boundary(e) {
            e += 1;
        }
        s[from..e].to_string()
    };
    format!("at byte {at}: got {:?}, expected {:?}", cut(a), cut(b))
}

#[test]
fn renderings_match_transformers_byte_for_byte() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for fx in all_fixtures() {
        for r in fx.renderings() {
            let (name, conv) = (
                r["template"].as_str().unwrap(),
                r["conversation"].as_str().unwrap(),
            );
            let gen = r["add_generation_prompt"].as_bool().unwrap();
            let got = fx.template(name).render(&fx.conversation(conv), gen);
            let case = format!(
                "{} / {name} / {conv} / add_generation_prompt={gen}",
                fx.dir.display()
            );
            match (r["text"].as_str(), got) {
                (Some(want), Ok(got)) if got == want => {}
                (Some(want), Ok(got)) => {
                    failures.push(format!("{case}: {}", first_difference(&got, want)))
                }
                (Some(_), Err(e)) => failures.push(format!("{case}: failed: {e}")),
                (None, Ok(got)) => failures.push(format!(
                    "{case}: rendered {got:?}, but transformers raised {}",
                    r["error"]
                )),
                (None, Err(_)) => {}
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "only {checked} renderings checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} renderings differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn raise_exception_refusals_carry_the_templates_message() {
    let mut refusals = 0;
    for fx in all_fixtures() {
        for r in fx.renderings() {
            let Some(msg) = r["error"].as_str() else {
                continue;
            };
            let (name, conv) = (
                r["template"].as_str().unwrap(),
                r["conversation"].as_str().unwrap(),
            );
            let err = fx
                .template(name)
                .render(
                    &fx.conversation(conv),
                    r["add_generation_prompt"].as_bool().unwrap(),
                )
                .expect_err("transformers refused this conversation");
            let text = err.to_string();
            let AdapterError::ChatTemplate {
                source_name,
                raised,
                ..
            } = err
            else {
                panic!("{name} / {conv}: not a chat template error: {text}");
            };
            assert!(source_name.ends_with(".jinja"), "{source_name}");
            if r["raised"] == true {
                assert_eq!(raised.as_deref(), Some(msg), "{name} / {conv}: {text}");
                assert!(text.contains(msg) && text.contains(&source_name), "{text}");
                refusals += 1;
            }
        }
    }
    assert!(refusals >= 6, "only {refusals} raise_exception cases");
}

#[test]
fn generation_block_spans_match_transformers() {
    let mut cases = 0;
    for fx in all_fixtures() {
        for case in fx.expected["generation_spans"].as_array().unwrap() {
            let (name, conv) = (
                case["template"].as_str().unwrap(),
                case["conversation"].as_str().unwrap(),
            );
            let template = fx.template(name);
            assert!(template.has_generation_blocks());
            let (text, spans) = template
                .render_with_assistant_spans(&fx.conversation(conv))
                .unwrap_or_else(|e| panic!("{name} / {conv}: {e}"));
            assert_eq!(text, case["text"].as_str().unwrap(), "{name} / {conv}");
            let want: Vec<&str> = case["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .filter(|s| !s.is_empty())
                .collect();
            let got: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
            assert_eq!(got, want, "{name} / {conv}");
            cases += 1;
        }
    }
    assert!(cases >= 5, "only {cases} generation-span cases");
}

/// End-of-turn markers of the fixtures' templates, longest first.
const END_MARKERS: [&str; 7] = [
    "<｜end▁of▁sentence｜>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "</s>",
];

/// Role headers that must never be inside an assistant span.
const HEADERS: [&str; 9] = [
    "<|start_header_id|>",
    "<|im_start|>",
    "[INST]",
    "<start_of_turn>",
    "<|assistant|>",
    "<|user|>",
    "<|system|>",
    "<｜Assistant｜>",
    "<｜User｜>",
];

/// The part of an answer every template renders: the text after any reasoning, trimmed.
fn answer_text(content: &str) -> &str {
    content.rsplit("</think>").next().unwrap_or(content).trim()
}

/// Spans of the conversations that end with an answer, checked for what every span must hold;
/// returns the span texts by (template, conversation).
fn checked_spans(fx: &Fixtures, name: &str, conv: &str) -> Option<Vec<String>> {
    let template = fx.template(name);
    let messages = fx.conversation(conv);
    if template.has_generation_blocks()
        || name == "features"
        || messages.last().is_none_or(|m| !m.is_assistant())
        || fx.expected_text(name, conv).is_none()
    {
        return None;
    }
    let (text, spans) = match template.render_with_assistant_spans(&messages) {
        Ok(v) => v,
        Err(e) => {
            // Refused only where the template rewrites the content of earlier answers.
            assert!(conv == "thinking", "{name} / {conv}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("assistant message") && msg.contains("{% generation %}"),
                "{msg}"
            );
            return Some(Vec::new());
        }
    };
    assert_eq!(
        text,
        fx.expected_text(name, conv).unwrap(),
        "{name} / {conv}"
    );
    let answers: Vec<&Message> = messages.iter().filter(|m| m.is_assistant()).collect();
    assert_eq!(spans.len(), answers.len(), "{name} / {conv}: {spans:?}");
    let mut prev = 0;
    let mut out = Vec::new();
    for (span, answer) in spans.iter().zip(answers) {
        let Range { start, end } = span.clone();
        assert!(
            prev <= start && start <= end && end <= text.len(),
            "{name} / {conv}: {spans:?}"
        );
        prev = end;
        let s = &text[start..end];
        assert!(
            s.contains(answer_text(&answer.content)),
            "{name} / {conv}: {s:?}"
        );
        assert!(
            END_MARKERS.iter().any(|m| s.ends_with(m)),
            "{name} / {conv}: {s:?} ends with no end-of-turn marker"
        );
        assert!(
            !HEADERS.iter().any(|h| s.contains(h)),
            "{name} / {conv}: header inside {s:?}"
        );
        assert_eq!(s.trim_end(), s, "{name} / {conv}");
        out.push(s.to_string());
    }
    Some(out)
}

#[test]
fn assistant_spans_cover_each_answer_through_its_end_of_turn_marker() {
    let mut checked = 0;
    for fx in all_fixtures() {
        for name in fx.template_names() {
            for conv in fx.conversation_names() {
                if checked_spans(&fx, &name, &conv).is_some() {
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} conversations checked");
}

#[test]
fn assistant_spans_of_templates_that_rewrite_earlier_turns() {
    let fx = repo_fixtures();
    let spans = |name: &str, conv: &str| checked_spans(&fx, name, conv).unwrap();
    assert_eq!(
        spans("llama3", "multi_turn_system"),
        ["2 + 2 = 4.<|eot_id|>", "(2 + 2) × 3 = 12.<|eot_id|>"]
    );
    // The system message moves into the last user turn: earlier turns are found in place.
    assert_eq!(
        spans("mistral", "multi_turn_system"),
        ["2 + 2 = 4.</s>", "(2 + 2) × 3 = 12.</s>"]
    );
    // EOS ends only the whole conversation.
    assert_eq!(
        spans("phi3", "multi_turn_no_system"),
        ["Blue.<|end|>", "Green.<|end|>\n<|endoftext|>"]
    );
    assert_eq!(
        spans("zephyr", "unicode"),
        ["  Voilà — «OK».\n\nLine 2\\n (a literal backslash-n)\r\n  </s>"]
    );
    assert_eq!(
        spans("gemma3", "unicode"),
        ["Voilà — «OK».\n\nLine 2\\n (a literal backslash-n)<end_of_turn>"]
    );
    // Qwen3: the last answer gets an (empty) <think> block; earlier ones are rendered bare.
    assert_eq!(
        spans("qwen3", "multi_turn_no_system"),
        ["Blue.<|im_end|>", "<think>\n\n</think>\n\nGreen.<|im_end|>"]
    );
    // DeepSeek-R1: the generation prompt opens <think>, the answers are rendered without it.
    assert_eq!(
        spans("deepseek_r1", "multi_turn_no_system"),
        ["Blue.<｜end▁of▁sentence｜>", "Green.<｜end▁of▁sentence｜>"]
    );
}

#[test]
fn reasoning_in_earlier_answers_is_located_or_refused() {
    let fx = repo_fixtures();
    let messages = fx.conversation("thinking");
    // Qwen3 keeps the reasoning of the last answer only: the earlier answer is what the full
    // rendering holds after its header, without the reasoning the template dropped.
    let (text, spans) = fx
        .template("qwen3")
        .render_with_assistant_spans(&messages)
        .unwrap();
    let got: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
    assert_eq!(
        got,
        [
            "Yes, 17 is prime.<|im_end|>",
            "<think>\n21 = 3 × 7.\n</think>\n\nNo: 21 = 3 × 7.<|im_end|>"
        ]
    );
    // DeepSeek-R1 drops every answer's reasoning, keeping the newlines after it.
    let (text, spans) = fx
        .template("deepseek_r1")
        .render_with_assistant_spans(&messages)
        .unwrap();
    let got: Vec<&str> = spans.iter().map(|s| &text[s.clone()]).collect();
    assert_eq!(
        got,
        [
            "\n\nYes, 17 is prime.<｜end▁of▁sentence｜>",
            "\n\nNo: 21 = 3 × 7.<｜end▁of▁sentence｜>"
        ]
    );
    // A template that renders a changed copy of the content cannot be located: refused.
    let shouting = ChatTemplate::new(
        "{% for m in messages %}<|{{ m.role }}|>{% if loop.last %}{{ m.content }}{% else %}{{ m.content | upper }}{% endif %}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
        SpecialTokens::default(),
        "shouting",
    )
    .unwrap();
    let err = shouting
        .render_with_assistant_spans(&messages)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`shouting`")
            && err.contains("assistant message 1")
            && err.contains("{% generation %}"),
        "{err}"
    );
}

#[test]
fn strftime_now_uses_the_pinned_or_the_current_date() {
    let source = "{{ strftime_now('%d %b %Y') }}";
    let t = ChatTemplate::new(source, SpecialTokens::default(), "date").unwrap();
    let chat = [Message::new("user", "hi")];
    let pinned = t
        .clone()
        .with_now(DateTime::new(2025, 2, 3, 4, 5, 6).unwrap())
        .render(&chat, false)
        .unwrap();
    assert_eq!(pinned, "03 Feb 2025");
    let now = t.render(&chat, false).unwrap();
    let today = DateTime::now_local().strftime("%d %b %Y");
    let utc = DateTime::now_utc().strftime("%d %b %Y");
    assert!(now == today || now == utc, "{now} vs {today}");
}

#[test]
fn loads_templates_from_model_folders() {
    let dir = std::env::temp_dir().join(format!("chat-templates-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let chat = [Message::new("user", "Hi")];
    assert!(ChatTemplate::from_model_dir(&dir).unwrap().is_none());

    // tokenizer_config.json: a list of named templates, tokens as strings or {"content"}.
    let config = serde_json::json!({
        "bos_token": {"content": "<s>", "lstrip": false},
        "eos_token": "</s>",
        "pad_token": null,
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{{ pad_token is defined }}"}
        ]
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("special_tokens_map.json"),
        r#"{"unk_token": "<unk>", "eos_token": "<eos>"}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
    assert_eq!(t.render(&chat, false).unwrap(), "<s>Hi</s>False");
    assert_eq!(
        t.special_tokens(),
        &SpecialTokens {
            bos: Some("<s>".into()),
            eos: Some("</s>".into()),
            unk: Some("<unk>".into()),
            pad: None
        }
    );
    assert!(t.name().ends_with("tokenizer_config.json"));

    // chat_template.json comes before it, chat_template.jinja before both.
    std::fs::write(
        dir.join("chat_template.json"),
        r#"{"chat_template": "json:{{ messages[0].content }}"}"#,
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
    assert_eq!(t.render(&chat, false).unwrap(), "json:Hi");
    std::fs::write(
        dir.join("chat_template.jinja"),
        "jinja:{{ messages[0].content }}{{ eos_token }}\n",
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
    assert_eq!(t.render(&chat, false).unwrap(), "jinja:Hi</s>");
    assert!(t.name().ends_with("chat_template.jinja"));

    // A list without a default is refused; no chat_template at all is None.
    let config = serde_json::json!({"chat_template": [{"name": "rag", "template": "x"}]});
    let err = ChatTemplate::from_tokenizer_config(&config, "cfg")
        .unwrap_err()
        .to_string();
    assert!(err.contains("default") && err.contains("rag"), "{err}");
    assert!(
        ChatTemplate::from_tokenizer_config(&serde_json::json!({"eos_token": "</s>"}), "cfg")
            .unwrap()
            .is_none()
    );
    // Broken JSON names the file.
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    std::fs::write(dir.join("chat_template.json"), "{").unwrap();
    let err = ChatTemplate::from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(err, AdapterError::Json { ref path, .. } if path.ends_with("chat_template.json")),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_template() {
    let err = ChatTemplate::new(
        "{% for m in messages %}",
        SpecialTokens::default(),
        "broken.jinja",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, AdapterError::ChatTemplate { raised: None, .. })
            && msg.contains("broken.jinja"),
        "{msg}"
    );
    let t = ChatTemplate::new(
        "{{ messages[0].content.nope() }}",
        SpecialTokens::default(),
        "m.jinja",
    )
    .unwrap();
    let msg = t
        .render(&[Message::new("user", "x")], false)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("m.jinja"), "{msg}");
    let msg = t.render(&[], false).unwrap_err().to_string();
    assert!(msg.contains("empty conversation"), "{msg}");
    // The markers spans are tracked with are refused in messages.
    let chatml = repo_fixtures().template("chatml_generation");
    let msg = chatml
        .render_with_assistant_spans(&[
            Message::new("user", "a\u{FDD0}b"),
            Message::new("assistant", "c"),
        ])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("U+FDD0"), "{msg}");
}

/// A hostile template neither hangs nor allocates without bound: an endless loop runs out of
/// fuel (`MAX_FUEL` instructions per rendering) and a huge repetition is refused, both as typed
/// errors naming the template.
#[test]
fn hostile_templates_are_bounded() {
    let start = std::time::Instant::now();
    for (source, says) in [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "fuel",
        ),
        ("{{ 'x' * 1000000000000 }}", "too large"),
    ] {
        let t = ChatTemplate::new(source, SpecialTokens::default(), "hostile.jinja").unwrap();
        let msg = t
            .render(&[Message::new("user", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("hostile.jinja") && msg.contains(says), "{msg}");
    }
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
}

/// Templates that make minijinja 2.24 panic (reversing an empty iterable, found by the
/// `chat_template` fuzz target: `tests/fixtures/fuzz/chat_template_reverse_empty.jinja`) are a
/// typed error naming the template.
#[test]
fn a_panic_in_the_template_engine_is_a_typed_error() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    for source in [
        "{{ (nothing | map(attribute='role'))[::-1] | list }}".to_string(),
        std::fs::read_to_string(dir.join("chat_template_reverse_empty.jinja")).unwrap(),
    ] {
        let t = ChatTemplate::new(&source, SpecialTokens::default(), "panics.jinja").unwrap();
        let e = t
            .render(&[Message::new("user", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("panics.jinja") && e.contains("panicked"), "{e}");
    }
}
