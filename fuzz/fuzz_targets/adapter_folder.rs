//! Fuzz target: a PEFT adapter folder (adapter_config.json, adapter_model.safetensors) read and inspected.
#![no_main]

mod common;

use adapters_runtime::peft::{inspect_adapter, AdapterCheckpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = common::split(data, 2);
    let dir = common::fresh("adapter");
    std::fs::write(dir.join("adapter_config.json"), parts[0]).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), parts[1]).unwrap();
    let _ = AdapterCheckpoint::read(&dir);
    let _ = inspect_adapter(&dir);
});
