//! The annotated Llama model reproduces the PEFT/transformers fixture `tiny_llama_dora` (f32):
//! base logits, logits with the PEFT DoRA adapter loaded, and merged logits / weights; and every
//! adapter tensor of every layer receives a gradient (no silently non-differentiable op). On
//! `ADAPTERS_TEST_DEVICE` (default `cpu`).

mod common;

use adapters_runtime::candle_core::{DType, Tensor};
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::models::llama::{load_pretrained, BaseMode};
use adapters_runtime::{load_adapter, Adapters, LoadOptions};
use common::{assert_close, fixture_dir, load, test_device};

/// Relative bound in f32 (observed ≤ 2e-6).
const TOL: f64 = 1e-5;

fn ids() -> Tensor {
    let ids = load("tiny_llama_dora", "io.safetensors")["input_ids"]
        .to_dtype(DType::U32)
        .unwrap();
    ids.to_device(&test_device()).unwrap()
}

#[test]
fn reproduces_transformers_and_peft_logits() {
    let dir = fixture_dir("tiny_llama_dora");
    let io = load("tiny_llama_dora", "io.safetensors");
    let mut m = load_pretrained(
        &dir.join("model"),
        DType::F32,
        &test_device(),
        BaseMode::Frozen,
    )
    .unwrap()
    .model;
    assert_close(
        "logits_base",
        &m.forward(&ids()).unwrap(),
        &io["logits_base"],
        TOL,
    );

    let report = load_adapter(&mut m, dir.join("adapter"), &LoadOptions::default()).unwrap();
    let _ = report;
    assert_eq!(
        m.adapter_layers().unwrap().len(),
        14,
        "7 projections × 2 layers"
    );
    assert_close(
        "logits_adapted",
        &m.forward(&ids()).unwrap(),
        &io["logits_adapted"],
        TOL,
    );

    let merged_expected = load("tiny_llama_dora", "merged.safetensors");
    for (name, t) in m.base_tensors(true).unwrap() {
        assert_close(&format!("merged {name}"), &t, &merged_expected[&name], TOL);
    }
    m.merge_adapters().unwrap();
    assert_close(
        "logits_merged",
        &m.forward(&ids()).unwrap(),
        &io["logits_merged"],
        TOL,
    );
}

#[test]
fn every_adapter_tensor_gets_a_gradient() {
    let dir = fixture_dir("tiny_llama_dora").join("model");
    let mut m = load_pretrained(&dir, DType::F32, &test_device(), BaseMode::Frozen)
        .unwrap()
        .model;
    let varmap = VarMap::new();
    // Embedding too, so the lowest layer of the model is covered.
    m.attach_adapters(&varmap, 7).unwrap();
    let vars = m.named_trainable_vars().unwrap();
    assert_eq!(
        vars.len(),
        3 * 15,
        "embedding + 14 projections, each A, B and m"
    );
    // Perturb B (zero at init) and A of the embedding (zero at init) so every path carries signal.
    for (name, v) in &vars {
        if name.ends_with("lora_B.weight") || name.ends_with("lora_embedding_A") {
            v.set(&Tensor::randn(0f32, 0.01, v.shape(), &test_device()).unwrap())
                .unwrap();
        }
    }
    let logits = m.forward(&ids()).unwrap();
    let grads = logits
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}
