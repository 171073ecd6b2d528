//! Fuzz target: a `.gguf` file read by `GgufFile::open` (the bounded header check, then candle's
//! parser), summarised by `inspect_gguf`, its tokenizer built from the metadata, and loaded as a
//! Llama (`load_gguf`, CPU, f32) when it claims to be one.
#![no_main]

mod common;

use adapters_runtime::candle_core::{DType, Device};
use adapters_runtime::gguf::{inspect_gguf, GgufFile};
use adapters_runtime::models::llama::load_gguf;
use adapters_runtime::train::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::fresh("gguf");
    let path = dir.join("model.gguf");
    std::fs::write(&path, data).unwrap();
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    let _ = Tokenizer::from_gguf_metadata(file.metadata(), &path);
    drop(file);
    let _ = inspect_gguf(&path);
    let _ = load_gguf(&path, DType::F32, &Device::Cpu);
});
