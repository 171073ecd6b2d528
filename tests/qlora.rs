//! QLoRA / QDoRA: adapters over a quantized frozen base (NF4 and GGML types) compute exactly
//! what they compute over the dequantized-f32 base, pass input gradients only, and train every
//! adapter tensor of the bundled Llama.

mod common;

use adapters_runtime::candle_core::quantized::QTensor;
use adapters_runtime::candle_core::{DType, Device, Module, Tensor, Var};
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::estimate::{quant_weight_bytes, QuantFormat};
use adapters_runtime::models::llama::{load_model, load_pretrained, BaseMode};
use adapters_runtime::quant::QuantWeight;
use adapters_runtime::train::Batch;
use adapters_runtime::{AdaptedLinear, AdapterConfig, Adapters, Init, Method};
use common::{
    assert_close, fixture_dir, load, rand_tensor, rel_err, test_device, train_four_steps,
};
use std::sync::Arc;

const FORMATS: [QuantFormat; 6] = [
    QuantFormat::Nf4,
    QuantFormat::Q4_0,
    QuantFormat::Q4_1,
    QuantFormat::Q8_0,
    QuantFormat::Q4K,
    QuantFormat::Q6K,
];

/// The device under test (`ADAPTERS_TEST_DEVICE`, CPU by default).
fn device() -> Device {
    test_device()
}

/// A `[out, in]` weight N(0, 0.05) quantized to `format`, and its dequantized f32 values.
fn quantized(format: QuantFormat, out: usize, inp: usize, seed: u64) -> (Arc<QuantWeight>, Tensor) {
    let w = rand_tensor(seed, &[out, inp], 0.05, DType::F32);
    let q = QuantWeight::quantize("test.proj", &w, format).unwrap();
    let deq = q.dequantize(DType::F32).unwrap();
    assert_eq!(q.dims(), (out, inp));
    assert_eq!(
        Some(q.storage_bytes()),
        quant_weight_bytes(format, out, inp),
        "{format:?}: storage bytes"
    );
    // The quantization error is that of a 4–8 bit format, not garbage.
    let err = rel_err(&deq, &w);
    assert!(err < 0.2, "{format:?}: dequantized vs original {err}");
    (Arc::new(q), deq)
}

fn cfg(method: Method) -> AdapterConfig {
    AdapterConfig {
        method,
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        init: Init::Kaiming,
    }
}

/// Random adapter weights (B non-zero, m perturbed) so every term of the forward matters.
fn adapter_weights(out: usize, inp: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    (
        rand_tensor(seed, &[4, inp], 0.1, DType::F32),
        rand_tensor(seed + 1, &[out, 4], 0.1, DType::F32),
        (rand_tensor(seed + 2, &[out], 0.1, DType::F32) + 1.0).unwrap(),
    )
}

/// Forward, input gradient and adapter gradients of `sum(y · g)`.
fn run(layer: &AdaptedLinear, x: &Var, g: &Tensor) -> (Tensor, Tensor, Vec<Tensor>) {
    let y = layer.forward(x.as_tensor()).unwrap();
    let grads = (&y * g).unwrap().sum_all().unwrap().backward().unwrap();
    let gx = grads.get(x.as_tensor()).unwrap().clone();
    let gad = layer
        .named_vars()
        .iter()
        .map(|(n, v)| {
            grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{n}: no gradient"))
                .clone()
        })
        .collect();
    (y, gx, gad)
}

/// Every format: the quantized layer's forward, input gradient and adapter gradients equal the
/// dense layer's over the dequantized weight (bare: bit for bit; LoRA and DoRA: within f32
/// rounding, since the products are associated differently), and merge / unmerge agree.
#[test]
fn quantized_base_equals_the_dequantized_dense_base() {
    let (out, inp) = (48, 256);
    for (i, format) in FORMATS.into_iter().enumerate() {
        let (q, deq) = quantized(format, out, inp, 10 + i as u64);
        let x = Var::from_tensor(&rand_tensor(3, &[2, 5, inp], 1.0, DType::F32)).unwrap();
        let g = rand_tensor(4, &[2, 5, out], 1.0, DType::F32);
        let bias = rand_tensor(5, &[out], 0.1, DType::F32);

        // Bare: y = x·deq(W)ᵀ + b exactly, dx = g·deq(W) exactly.
        let ql = AdaptedLinear::new_quantized(q.clone(), Some(bias.clone()), DType::F32).unwrap();
        let dl = AdaptedLinear::new(deq.clone(), Some(bias.clone()));
        let y = ql.forward(x.as_tensor()).unwrap();
        let yd = dl.forward(x.as_tensor()).unwrap();
        assert_eq!(rel_err(&y, &yd), 0.0, "{format:?}: bare forward");
        let gq = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gd = (&yd * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (gxq, gxd) = (
            gq.get(x.as_tensor()).unwrap(),
            gd.get(x.as_tensor()).unwrap(),
        );
        assert_eq!(rel_err(gxq, gxd), 0.0, "{format:?}: bare input gradient");

        for method in [Method::Lora, Method::Dora] {
            let (a, b, m) = adapter_weights(out, inp, 20 + i as u64);
            let m = (method == Method::Dora).then_some(&m);
            let mut ql = AdaptedLinear::new_quantized(q.clone(), Some(bias.clone()), DType::F32)
                .unwrap()
                .with_path("test.proj");
            let mut dl = AdaptedLinear::new(deq.clone(), Some(bias.clone())).with_path("test.proj");
            ql.attach_weights(cfg(method), &a, &b, m).unwrap();
            dl.attach_weights(cfg(method), &a, &b, m).unwrap();
            let (yq, gxq, gaq) = run(&ql, &x, &g);
            let (yd, gxd, gad) = run(&dl, &x, &g);
            let what = format!("{format:?} {method:?}");
            assert_close(&format!("{what}: forward"), &yq, &yd, 1e-6);
            assert_close(&format!("{what}: input gradient"), &gxq, &gxd, 1e-6);
            for (k, (p, r)) in gaq.iter().zip(&gad).enumerate() {
                assert_close(&format!("{what}: adapter gradient {k}"), p, r, 1e-5);
            }
            if method == Method::Dora {
                let (nq, nd) = (ql.weight_norm().unwrap(), dl.weight_norm().unwrap());
                assert_close(&format!("{what}: DoRA norm"), &nq, &nd, 1e-6);
            }
            // Merged: a dense merged weight, same outputs; unmerged: the quantized base again.
            let merged = ql.merged_weight_tensor().unwrap();
            assert_close(
                &format!("{what}: merged weight"),
                &merged,
                &dl.merged_weight_tensor().unwrap(),
                1e-6,
            );
            ql.merge().unwrap();
            assert!(!ql.base_is_quantized());
            let ym = ql.forward(x.as_tensor()).unwrap();
            assert_close(&format!("{what}: merged forward"), &ym, &yq, 1e-5);
            ql.unmerge().unwrap();
            assert!(ql.base_is_quantized());
            let yu = ql.forward(x.as_tensor()).unwrap();
            assert_eq!(rel_err(&yu, &yq), 0.0, "{what}: unmerge is exact");
        }
    }
}

/// With dropout in training (the composed, not the fused, path) the quantized layer still equals
/// the dense one over the dequantized weight.
#[test]
fn dropout_path_equals_the_dense_base() {
    let (out, inp) = (40, 64);
    let (q, deq) = quantized(QuantFormat::Q8_0, out, inp, 7);
    let x = Var::from_tensor(&rand_tensor(3, &[6, inp], 1.0, DType::F32)).unwrap();
    let g = rand_tensor(4, &[6, out], 1.0, DType::F32);
    for method in [Method::Lora, Method::Dora] {
        let (a, b, m) = adapter_weights(out, inp, 30);
        let m = (method == Method::Dora).then_some(&m);
        let mut c = cfg(method);
        c.dropout = 0.25;
        let mut ql = AdaptedLinear::new_quantized(q.clone(), None, DType::F32)
            .unwrap()
            .with_path("test.proj");
        let mut dl = AdaptedLinear::new(deq.clone(), None).with_path("test.proj");
        ql.attach_weights(c, &a, &b, m).unwrap();
        dl.attach_weights(c, &a, &b, m).unwrap();
        ql.set_training(true);
        dl.set_training(true);
        let (yq, gxq, gaq) = run(&ql, &x, &g);
        let (yd, gxd, gad) = run(&dl, &x, &g);
        assert_close(&format!("{method:?} dropout: forward"), &yq, &yd, 1e-6);
        assert_close(&format!("{method:?} dropout: dx"), &gxq, &gxd, 1e-6);
        for (p, r) in gaq.iter().zip(&gad) {
            assert_close(&format!("{method:?} dropout: adapter gradient"), p, r, 1e-5);
        }
    }
}

/// The quantized product passes a gradient to its input only: the layer has no `Var`, and no
/// gradient of the weight's shape is ever formed (every gradient in the store has the input's,
/// the output's or a scalar's shape).
#[test]
fn only_the_input_gets_a_gradient() {
    let (q, _) = quantized(QuantFormat::Q8_0, 32, 64, 1);
    let l = AdaptedLinear::new_quantized(q, None, DType::F32).unwrap();
    assert!(l.named_vars().is_empty());
    let x = Var::from_tensor(&rand_tensor(2, &[3, 64], 1.0, DType::F32)).unwrap();
    let grads = l
        .forward(x.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    let shapes: Vec<Vec<usize>> = grads
        .get_ids()
        .map(|id| grads.get_id(*id).unwrap().dims().to_vec())
        .collect();
    assert!(!shapes.is_empty());
    for dims in &shapes {
        assert!(
            dims.is_empty() || dims == &[3, 64] || dims == &[3, 32],
            "a gradient of shape {dims:?}: {shapes:?}"
        );
    }
}

/// Shapes a format cannot store are typed errors naming the layer, the format and the block.
#[test]
fn unstorable_shapes_are_errors() {
    let w = rand_tensor(1, &[8, 100], 0.1, DType::F32);
    let err = QuantWeight::quantize("model.layers.0.mlp.up_proj", &w, QuantFormat::Q4K)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.up_proj") && err.contains("q4k") && err.contains("256"),
        "{err}"
    );
    // NF4 blocks run over the flattened weight: any shape works.
    let q = QuantWeight::quantize("x", &w, QuantFormat::Nf4).unwrap();
    assert_eq!(q.dims(), (8, 100));
    // GGML rows are reordered whole; NF4 rows cannot be.
    assert!(q
        .permute_rows("x", &(0..8).rev().collect::<Vec<_>>())
        .is_err());
    let w = rand_tensor(1, &[4, 32], 0.1, DType::F32);
    let q = QuantWeight::quantize("x", &w, QuantFormat::Q8_0).unwrap();
    let p = q.permute_rows("x", &[2, 0, 3, 1]).unwrap();
    let (a, b) = (
        q.dequantize(DType::F32).unwrap(),
        p.dequantize(DType::F32).unwrap(),
    );
    let idx = Tensor::new(&[2u32, 0, 3, 1], a.device()).unwrap();
    assert_eq!(rel_err(&b, &a.index_select(&idx, 0).unwrap()), 0.0);
    assert!(q.permute_rows("x", &[0, 0, 1, 2]).is_err());
    // GGML storage is exactly candle's.
    let t = q.as_qtensor().unwrap();
    assert_eq!(t.storage_size_in_bytes(), q.storage_bytes());
    let _: &QTensor = t;
}

fn batch() -> Batch {
    let ids = load("tiny_llama_dora", "io.safetensors")["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_device(&device())
        .unwrap();
    common::next_token_batch(&ids)
}

/// The bundled Llama loaded with `--quant` (NF4, Q8_0, Q4_0): its logits stay within the
/// format's quantization error of the dense model's; every adapter tensor of every layer (DoRA
/// on the embedding and the 14 quantized projections) has a gradient at step 1 and a non-zero
/// one at step 2; the loss falls.
#[test]
fn qdora_trains_every_adapter_tensor_of_the_llama() {
    let dir = fixture_dir("tiny_llama_dora").join("model");
    let dense = load_pretrained(&dir, DType::F32, &device(), BaseMode::Frozen)
        .unwrap()
        .model;
    let b = batch();
    let reference = dense.forward(&b.input_ids).unwrap();
    for (format, tol) in [
        (QuantFormat::Nf4, 0.2),
        (QuantFormat::Q8_0, 0.01),
        (QuantFormat::Q4_0, 0.2),
    ] {
        let mut m = load_model(&dir, DType::F32, &device(), Some(format))
            .unwrap()
            .model;
        let logits = m.forward(&b.input_ids).unwrap();
        let err = rel_err(&logits, &reference);
        assert!(err < tol, "{format:?}: logits vs dense {err}");
        let varmap = VarMap::new();
        m.attach_adapters(&varmap, 5).unwrap();
        let vars = m.named_trainable_vars().unwrap();
        assert_eq!(vars.len(), 3 * 15);
        train_four_steps(&m, &b, 1e-2, &format!("{format:?}"));
        // Adapters and their optimizer state stay f32.
        assert!(vars.iter().all(|(_, v)| v.dtype() == DType::F32));
    }
}

/// A partly adapted quantized model exports every weight (`base_tensors(true)`, what `finetune`
/// writes as `merged/`): the bare quantized projections dequantized, not their placeholders.
#[test]
fn merged_export_of_a_partly_adapted_quantized_model() {
    let dir = fixture_dir("tiny_llama_dora").join("model");
    let mut m = load_model(&dir, DType::F32, &device(), Some(QuantFormat::Q8_0))
        .unwrap()
        .model;
    let varmap = VarMap::new();
    let c = cfg(Method::Dora);
    m.attach_adapters_with(&varmap, 3, &mut |path, _| {
        (path.ends_with("q_proj") || path.ends_with("v_proj")).then_some(c)
    })
    .unwrap();
    let plain = m.base_tensors(false).unwrap();
    let merged = m.base_tensors(true).unwrap();
    let mut bare = 0;
    for ((name, p), (_, q)) in plain.iter().zip(&merged) {
        let norm = q
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name} exported as zeros");
        if name.contains("k_proj") || name.contains("mlp") {
            // Not adapted: exported as the dequantized base.
            assert_eq!(rel_err(p, q), 0.0, "{name}");
            bare += 1;
        }
    }
    assert_eq!(bare, 2 * 4);
}

/// A bf16 model over a quantized base: the DoRA norm and the forward use the same bf16-rounded
/// `W0` as a dense bf16 layer over the dequantized weight (equal norms; outputs within bf16
/// rounding of the product order).
#[test]
fn bf16_compute_uses_the_rounded_base() {
    let (out, inp) = (48, 256);
    let (q, deq) = quantized(QuantFormat::Nf4, out, inp, 41);
    let deq16 = deq.to_dtype(DType::BF16).unwrap();
    let (a, b, m) = adapter_weights(out, inp, 42);
    let mut ql = AdaptedLinear::new_quantized(q, None, DType::BF16)
        .unwrap()
        .with_path("test.proj");
    let mut dl = AdaptedLinear::new(deq16, None).with_path("test.proj");
    ql.attach_weights(cfg(Method::Dora), &a, &b, Some(&m))
        .unwrap();
    dl.attach_weights(cfg(Method::Dora), &a, &b, Some(&m))
        .unwrap();
    assert_eq!(
        rel_err(&ql.weight_norm().unwrap(), &dl.weight_norm().unwrap()),
        0.0
    );
    let x = rand_tensor(3, &[4, inp], 1.0, DType::BF16);
    let (yq, yd) = (ql.forward(&x).unwrap(), dl.forward(&x).unwrap());
    assert_eq!(yq.dtype(), DType::BF16);
    assert_close("bf16 QDoRA forward", &yq, &yd, 1e-2);
    assert_close(
        "bf16 merged weight",
        &ql.merged_weight_tensor().unwrap(),
        &dl.merged_weight_tensor().unwrap(),
        1e-2,
    );
}

/// A trainable (fully trained) base is never quantized: asking for both is an error.
#[test]
fn a_trainable_base_is_not_quantized() {
    use adapters_runtime::models::llama::{load_pretrained_with, BaseQuant};
    let dir = fixture_dir("tiny_llama_dora").join("model");
    let err = load_pretrained_with(
        &dir,
        DType::F32,
        &device(),
        BaseMode::Trainable,
        &BaseQuant::Quantize(QuantFormat::Nf4),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("cannot be quantized"), "{err}");
}
