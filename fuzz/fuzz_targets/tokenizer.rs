//! Fuzz target: a `tokenizer.json` loaded from memory, then used to encode and decode.
#![no_main]

use adapters_runtime::train::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = Tokenizer::from_bytes(data, "fuzz/tokenizer.json", None) else {
        return;
    };
    let _ = (tok.vocab_size(), tok.bos_id(), tok.eos_id(), tok.pad_id());
    if let Ok(ids) = tok.encode("hello world, <s> héllo </s> 123") {
        let _ = tok.decode(&ids);
    }
});
