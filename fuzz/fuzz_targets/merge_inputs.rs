//! Fuzz target: `merge_checkpoint` of a base `.safetensors` file and an adapter folder.
#![no_main]

mod common;

use adapters_runtime::peft::{merge_checkpoint, MergeOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // base.safetensors SEP adapter_config.json SEP adapter_model.safetensors
    let parts = common::split(data, 3);
    let dir = common::fresh("merge");
    let adapter = dir.join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let base = dir.join("base.safetensors");
    std::fs::write(&base, parts[0]).unwrap();
    std::fs::write(adapter.join("adapter_config.json"), parts[1]).unwrap();
    std::fs::write(adapter.join("adapter_model.safetensors"), parts[2]).unwrap();
    let options = MergeOptions {
        overwrite: true,
        progress: false,
        allow_non_finite: false,
    };
    let _ = merge_checkpoint(&base, &adapter, &dir.join("merged.safetensors"), &options);
});
