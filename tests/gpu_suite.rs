//! The device-parameterised integration tests in one binary, so that a CUDA build carries one
//! ~50 MB executable (candle's kernels are linked into each test binary) instead of seven.
//!
//! Built only with `--features cuda` (see `scripts/cuda-build.sh`); run on a GPU machine with
//! `ADAPTERS_TEST_DEVICE=cuda ADAPTERS_FIXTURES=<repo>/tests/fixtures` (`scripts/gpu-check.sh`).
//! Each module is the test file of the same name, unchanged: the PEFT fixtures (f64, f32, bf16,
//! f16), the layers (merge, dropout, no base gradient, training), the DoRA norm, the Llama
//! fixture, PEFT checkpoints (save / load), the training loop and the trainer's numerics, the
//! `nn` drop-ins (forwards against candle's fused ops, gradients against finite differences and
//! the unfused compositions), a forked candle-transformers Llama trained with them, and the
//! non-finite-weight refusals and DoRA over all-zero base rows, QLoRA / QDoRA over NF4 and GGML
//! bases (the quantized product and dequantization on the device), and generation through the
//! key / value cache against the full forward pass and transformers' greedy tokens.

// Each test file declares its own helper module (`mod common;`, …), as when built alone.
#![allow(clippy::duplicate_mod)]

#[path = "checkpoints.rs"]
mod checkpoints;
#[path = "dora_norm.rs"]
mod dora_norm;
#[path = "fork_llama.rs"]
mod fork_llama;
#[path = "generate.rs"]
mod generate;
#[path = "layers.rs"]
mod layers;
#[path = "llama.rs"]
mod llama;
#[path = "nn_layers.rs"]
mod nn_layers;
#[path = "nn_ops.rs"]
mod nn_ops;
#[path = "nn_rope_tables.rs"]
mod nn_rope_tables;
#[path = "non_finite.rs"]
mod non_finite;
#[path = "peft_fixtures.rs"]
mod peft_fixtures;
#[path = "qlora.rs"]
mod qlora;
#[path = "train_loop.rs"]
mod train_loop;
#[path = "train_numerics.rs"]
mod train_numerics;

/// The suite runs where `ADAPTERS_TEST_DEVICE` says; printed so a log shows which device ran.
#[test]
fn reports_the_test_device() {
    let name = std::env::var("ADAPTERS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = adapters_runtime::device(&name).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("gpu_suite: ADAPTERS_TEST_DEVICE={name} -> {device:?}");
    let again = adapters_runtime::device(&name).unwrap_or_else(|e| panic!("{e}"));
    assert!(again.same_device(&device), "one handle per device");
}
