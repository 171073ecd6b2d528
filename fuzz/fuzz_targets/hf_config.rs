//! Fuzz target: an HF model `config.json` read by `LlamaConfig::from_file`.
#![no_main]

mod common;

use adapters_runtime::hf::LlamaConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::fresh("model");
    let path = dir.join("config.json");
    std::fs::write(&path, data).unwrap();
    let _ = LlamaConfig::from_file(&path);
});
