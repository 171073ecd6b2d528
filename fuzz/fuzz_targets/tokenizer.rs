//! Fuzz target: a `tokenizer.json` loaded from memory, then used to encode and decode.
#![no_main]

use adapters_runtime::train::Tokenizer;
use libfuzzer_sys::fuzz_target;

/// libfuzzer-sys aborts on every panic, caught or not. `Tokenizer::from_bytes` catches the
/// panics of the `tokenizers` crate's own parser and returns a typed error (a finding of this
/// target, see TESTING.md), so panics raised inside that crate's sources pass through to that
/// handler; a panic anywhere else still aborts and is a finding.
fn allow_caught_tokenizers_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tokenizers = info
                .location()
                .is_some_and(|l| l.file().contains("/tokenizers-"));
            if !in_tokenizers {
                abort_hook(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    allow_caught_tokenizers_panics();
    let Ok(tok) = Tokenizer::from_bytes(data, "fuzz/tokenizer.json", None) else {
        return;
    };
    let _ = (tok.vocab_size(), tok.bos_id(), tok.eos_id(), tok.pad_id());
    if let Ok(ids) = tok.encode("hello world, <s> héllo </s> 123") {
        let _ = tok.decode(&ids);
    }
});
