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

/// `Σ g²` of `v`'s gradient in `grads`, panicking with `name` when there is none.
fn grad_sq(
    grads: &adapters_runtime::candle_core::backprop::GradStore,
    v: &Tensor,
    name: &str,
) -> f32 {
    grads
        .get(v)
        .unwrap_or_else(|| panic!("{name}: no gradient"))
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

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

/// The fixture's base model (f32, frozen) with the default DoRA adapters attached everywhere
/// (embedding and all projections), seeded by `seed`.
fn adapted_fixture(seed: u64) -> (adapters_runtime::models::llama::Llama, VarMap) {
    let dir = fixture_dir("tiny_llama_dora").join("model");
    let mut m = load_pretrained(&dir, DType::F32, &test_device(), BaseMode::Frozen)
        .unwrap()
        .model;
    let varmap = VarMap::new();
    m.attach_adapters(&varmap, seed).unwrap();
    (m, varmap)
}

#[test]
fn every_adapter_tensor_gets_a_gradient() {
    // Embedding too, so the lowest layer of the model is covered.
    let (m, _varmap) = adapted_fixture(7);
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
        assert!(
            grad_sq(&grads, v.as_tensor(), name) > 0.0,
            "{name}: zero gradient"
        );
    }
}

/// Training through `llama_loss` (the chunked loss through the frozen head, the fused adapter
/// nodes): its value equals the masked cross entropy of the model's logits; every adapter tensor
/// of every layer (DoRA on the embedding and all 14 projections: A, B and m) has a gradient at
/// step 1 and a non-zero one by step 2, from initialisation (B and the embedding's A start at
/// zero); and the loss falls.
#[test]
fn llama_loss_trains_every_adapter_tensor() {
    use adapters_runtime::train::{
        llama_loss, masked_cross_entropy, AdamW, AdamWConfig, Batch, Grads,
    };
    let (m, _varmap) = adapted_fixture(11);
    let vars = m.named_trainable_vars().unwrap();
    assert_eq!(vars.len(), 3 * 15);
    let all = ids();
    let (b, t) = all.dims2().unwrap();
    let batch = Batch {
        input_ids: all.narrow(1, 0, t - 1).unwrap(),
        targets: all.narrow(1, 1, t - 1).unwrap(),
        loss_mask: Tensor::ones((b, t - 1), DType::F32, &test_device()).unwrap(),
        tokens: b * (t - 1),
        target_tokens: b * (t - 1),
    };
    let params = vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let mut opt = AdamW::new(params, AdamWConfig::default()).unwrap();
    let mut losses = Vec::new();
    for step in 1..=4 {
        let loss = llama_loss(&m, &batch).unwrap();
        let reference = masked_cross_entropy(
            &m.forward(&batch.input_ids).unwrap(),
            &batch.targets,
            &batch.loss_mask,
        )
        .unwrap();
        let (l, r) = (
            loss.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        assert!((l - r).abs() <= 1e-5 * r.abs(), "step {step}: {l} vs {r}");
        losses.push(l);
        let grads = loss.backward().unwrap();
        m.check_gradients(&grads).unwrap();
        if step == 2 {
            for (name, v) in &vars {
                let n = grad_sq(&grads, v.as_tensor(), name);
                assert!(n > 0.0, "{name}: zero gradient at step 2");
            }
        }
        let g = Grads::from_store(&vars, &grads).unwrap();
        opt.step(&g, 1e-2).unwrap();
    }
    assert!(losses[3] < losses[0], "the loss falls: {losses:?}");
}

/// Pretraining (`init_random`, every base weight a variable) trains an untied `lm_head` too: its
/// weight gets a non-zero gradient, as every other base weight does.
#[test]
fn trainable_untied_head_gets_a_gradient() {
    use adapters_runtime::models::llama::{init_random, LlamaConfig};
    let cfg: LlamaConfig = serde_json::from_str(
        r#"{"hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,
            "num_attention_heads":2,"num_key_value_heads":1,"vocab_size":11,
            "tie_word_embeddings":false}"#,
    )
    .unwrap();
    let (m, varmap) = init_random(&cfg, DType::F32, &test_device(), 5).unwrap();
    let ids = Tensor::new(&[[1u32, 4, 7, 2]], &test_device()).unwrap();
    let grads = m
        .forward(&ids)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    let vars = varmap.data().lock().unwrap();
    for (name, v) in vars.iter() {
        assert!(
            grad_sq(&grads, v.as_tensor(), name) > 0.0,
            "{name}: zero gradient"
        );
    }
    assert!(
        vars.keys().any(|k| k.contains("lm_head")),
        "{:?}",
        vars.keys()
    );
}
