//! A Llama written against candle-nn's API (as in candle-transformers), forked and annotated the
//! way users do, on the transformers-made `tiny_llama_dora` checkpoint:
//!
//! * with `adapters_runtime::nn`'s drop-ins (only `use` lines differ) it reproduces transformers'
//!   logits, every adapter tensor of every layer gets a gradient at step 1 (non-zero by step 2),
//!   and the loss falls;
//! * the same file with candle's fused ops left in (`rms_norm`, `softmax_last_dim`, `rope` record
//!   no gradient) is rejected by `check_gradients` and by the trainer, with the modules named.

mod common;

use adapters_runtime::candle_core::{DType, Device, Tensor, Var};
use adapters_runtime::candle_nn::{VarBuilder, VarMap};
use adapters_runtime::train::{
    masked_cross_entropy, AdamW, AdamWConfig, Batch, BatchLoader, Sequence, TrainConfig, Trainer,
};
use adapters_runtime::{AdapterError, Adapters};
use common::{assert_close, fixture_dir, load, test_device};

/// The user's model file with the drop-ins: the migration is these `use` lines.
mod with_dropins {
    use adapters_runtime::adapter;
    use adapters_runtime::candle_core::{DType, Device, Module, Result, Tensor};
    use adapters_runtime::candle_nn::{self, Embedding, Linear, VarBuilder};
    use adapters_runtime::nn::ops::{silu, softmax_last_dim};
    use adapters_runtime::nn::rotary_emb::rope;
    use adapters_runtime::nn::{embedding, linear_no_bias, rms_norm, RmsNorm};
    include!("fork_support/llama_body.rs");
}

/// The same file with candle's fused ops left in.
mod with_candle_ops {
    use adapters_runtime::adapter;
    use adapters_runtime::candle_core::{DType, Device, Module, Result, Tensor};
    use adapters_runtime::candle_nn::ops::{silu, softmax_last_dim};
    use adapters_runtime::candle_nn::rotary_emb::rope;
    use adapters_runtime::candle_nn::{self, rms_norm, Embedding, Linear, RmsNorm, VarBuilder};
    use adapters_runtime::nn::{embedding, linear_no_bias};
    include!("fork_support/llama_body.rs");
}

macro_rules! config {
    ($m:ident) => {
        $m::Config {
            hidden_size: 64,
            intermediate_size: 160,
            vocab_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 64,
        }
    };
}

fn builder(device: &Device) -> VarBuilder<'static> {
    let file = fixture_dir("tiny_llama_dora").join("model/model.safetensors");
    // SAFETY: the fixture is read-only while the test runs.
    unsafe { VarBuilder::from_mmaped_safetensors(&[file], DType::F32, device) }.unwrap()
}

/// The fixture's token ids `[b, t]`.
fn ids(device: &Device) -> Tensor {
    load("tiny_llama_dora", "io.safetensors")["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_device(device)
        .unwrap()
}

/// Next-token loss over the fixture's ids.
fn loss(logits: &Tensor, ids: &Tensor) -> Tensor {
    let t = ids.dim(1).unwrap();
    let logits = logits.narrow(1, 0, t - 1).unwrap();
    let targets = ids.narrow(1, 1, t - 1).unwrap();
    let mask = targets.ones_like().unwrap().to_dtype(DType::F32).unwrap();
    masked_cross_entropy(&logits, &targets, &mask).unwrap()
}

fn grad_norm(grads: &adapters_runtime::candle_core::backprop::GradStore, v: &Var) -> Option<f32> {
    grads.get(v.as_tensor()).map(|g| {
        g.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    })
}

#[test]
fn forked_model_with_dropins_reproduces_transformers_and_trains() {
    let device = test_device();
    let cfg = config!(with_dropins);
    let mut model = with_dropins::Llama::load(builder(&device), &cfg).unwrap();
    let ids = ids(&device);
    let io = load("tiny_llama_dora", "io.safetensors");
    assert_close(
        "fork logits vs transformers",
        &model.forward(&ids, 0).unwrap(),
        &io["logits_base"],
        1e-5,
    );

    let varmap = VarMap::new();
    model.attach_adapters(&varmap, 3).unwrap();
    let vars = model.named_trainable_vars().unwrap();
    assert_eq!(
        vars.len(),
        3 * (1 + 2 * 7),
        "embedding + 14 projections, A, B and m each"
    );
    assert!(
        vars.iter()
            .any(|(n, _)| n == "model.layers.1.self_attn.q_proj.lora_A.weight"),
        "adapters are named like the checkpoint"
    );
    let params = vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let mut opt = AdamW::new(params, AdamWConfig::default()).unwrap();
    let mut losses = Vec::new();
    for step in 1..=6 {
        let l = loss(&model.forward(&ids, 0).unwrap(), &ids);
        losses.push(l.to_scalar::<f32>().unwrap());
        let grads = l.backward().unwrap();
        model.check_gradients(&grads).unwrap();
        if step == 2 {
            for (name, v) in &vars {
                let n = grad_norm(&grads, v).unwrap();
                assert!(n > 0.0, "{name}: zero gradient at step 2");
            }
        }
        let g = adapters_runtime::train::Grads::from_store(&vars, &grads).unwrap();
        opt.step(&g, 1e-2).unwrap();
    }
    assert!(losses[5] < losses[0] - 0.05, "the loss falls: {losses:?}");
}

#[test]
fn forked_model_with_candle_ops_is_rejected_with_the_modules_named() {
    let device = test_device();
    let cfg = config!(with_candle_ops);
    let mut model = with_candle_ops::Llama::load(builder(&device), &cfg).unwrap();
    let ids = ids(&device);
    // Same function: only the gradients differ.
    let io = load("tiny_llama_dora", "io.safetensors");
    assert_close(
        "candle-ops fork logits",
        &model.forward(&ids, 0).unwrap(),
        &io["logits_base"],
        1e-5,
    );
    model.attach_adapters(&VarMap::new(), 3).unwrap();
    let grads = loss(&model.forward(&ids, 0).unwrap(), &ids)
        .backward()
        .unwrap();
    let err = model.check_gradients(&grads).unwrap_err();
    let AdapterError::MissingGradients { missing, total, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        (*missing, *total),
        (45, 45),
        "the final fused norm cuts every path: {err}"
    );
    let text = err.to_string();
    for part in [
        "q_proj",
        "k_proj",
        "gate_proj",
        "embed_tokens",
        "in 2 of 2 layers",
        "rms_norm",
    ] {
        assert!(text.contains(part), "`{part}` missing from: {text}");
    }

    // The trainer stops at the first step with the same error, unless told not to check.
    let row = ids.get(0).unwrap().to_vec1::<u32>().unwrap();
    let seqs: Vec<Sequence> = (0..4)
        .map(|_| Sequence {
            mask: vec![true; row.len()],
            ids: row.clone(),
        })
        .collect();
    for check in [true, false] {
        let mut loader = BatchLoader::new(seqs.clone(), 2, 0, &device, 1, true).unwrap();
        let mut tc = TrainConfig::new(2, 1e-3);
        tc.progress = false;
        tc.check_gradients = check;
        let mut trainer = Trainer::new(&model, tc).unwrap();
        let result = trainer.train(&mut model, &mut loader, |m, b: &Batch, _| {
            let logits = m.forward(&b.input_ids, 0)?;
            masked_cross_entropy(&logits, &b.targets, &b.loss_mask)
        });
        match (check, result) {
            (true, Err(AdapterError::MissingGradients { missing: 45, .. })) => {}
            (false, Ok(summary)) => assert_eq!(summary.steps, 2),
            (_, other) => panic!("check_gradients = {check}: {other:?}"),
        }
    }
}
