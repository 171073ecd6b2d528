//! Fuzz target: JSONL training data parsed, then tokenized and packed / padded by `prepare`.
#![no_main]

use adapters_runtime::train::data::parse_jsonl;
use adapters_runtime::train::{prepare, JsonlOptions, PackMode, PackOptions, Tokenizer};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the options; the rest is the file.
    let (&flags, bytes) = data.split_first().unwrap_or((&0, &[]));
    let options = JsonlOptions {
        skip_bad_lines: flags & 1 != 0,
        max_line_bytes: if flags & 2 != 0 { 64 } else { JsonlOptions::default().max_line_bytes },
    };
    let Ok(dataset) = parse_jsonl(bytes, Path::new("fuzz.jsonl"), &options) else {
        return;
    };
    let tok = Tokenizer::byte_level();
    for mode in [PackMode::Pad, PackMode::Pack] {
        let seq_len = 1 + (flags as usize >> 2) % 16;
        let _ = prepare(&dataset.examples, &tok, PackOptions { seq_len, mode });
    }
});
