//! Fuzz target: a chat template (as a model folder's `chat_template.jinja` would hold it) compiled
//! and rendered, with and without the generation prompt, and its assistant spans found.
#![no_main]

mod common;

use adapters_runtime::chat::{ChatTemplate, Message, SpecialTokens};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // minijinja panics on some templates and `ChatTemplate` turns that panic into a typed error
    // (`catch_unwind`): without libfuzzer-sys' aborting hook such a caught panic is not a
    // finding, while an uncaught one still aborts (libfuzzer-sys catches it and aborts).
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let parts = common::split(data, 2);
    let Ok(source) = std::str::from_utf8(parts[0]) else {
        return;
    };
    let answer = String::from_utf8_lossy(parts[1]).into_owned();
    let special = SpecialTokens {
        bos: Some("<s>".into()),
        eos: Some("</s>".into()),
        ..SpecialTokens::default()
    };
    let Ok(t) = ChatTemplate::new(source, special, "fuzz.jinja") else {
        return;
    };
    let chat = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", answer),
    ];
    let _ = t.render(&chat[..2], true);
    let _ = t.render(&chat, false);
    if let Ok((text, spans)) = t.render_with_assistant_spans(&chat) {
        for s in spans {
            assert!(s.start <= s.end && s.end <= text.len() && text.is_char_boundary(s.start));
        }
    }
});
