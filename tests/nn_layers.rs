//! `adapters_runtime::nn::{RmsNorm, LayerNorm}`: candle-nn's constructors and forwards, with
//! gradients to inputs and (when they are `Var`s) weights; usable as `#[frozen]` fields.

mod nn_support;

use adapters_runtime::candle_core::{DType, Module, Tensor, Var};
use adapters_runtime::candle_nn::{self, Linear, VarBuilder, VarMap};
use adapters_runtime::nn::{layer_norm, rms_norm, LayerNorm, LayerNormConfig, RmsNorm};
use adapters_runtime::{adapter, Adapters};
use nn_support::{abs_diff, assert_rel, grads, rand, test_device};

const H: usize = 33;

/// Forwards equal candle-nn's layers bit for bit, fused (contiguous) and composed (transposed).
#[test]
fn layers_forward_like_candle() {
    for dt in [DType::F32, DType::BF16] {
        let w = rand(1, &[H], 1.5, dt);
        let b = rand(2, &[H], 0.5, dt);
        let x = rand(3, &[2, 5, H], 2.0, dt);
        let xt = rand(3, &[2, H, 5], 2.0, dt).transpose(1, 2).unwrap();
        for x in [&x, &xt] {
            let pairs = [
                (
                    "rms",
                    RmsNorm::new(w.clone(), 1e-6).forward(x),
                    candle_nn::RmsNorm::new(w.clone(), 1e-6).forward(x),
                ),
                (
                    "ln",
                    LayerNorm::new(w.clone(), b.clone(), 1e-5).forward(x),
                    candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-5).forward(x),
                ),
                (
                    "ln no bias",
                    LayerNorm::new_no_bias(w.clone(), 1e-5).forward(x),
                    candle_nn::LayerNorm::new_no_bias(w.clone(), 1e-5).forward(x),
                ),
                (
                    "rms forward_diff",
                    RmsNorm::new(w.clone(), 1e-6).forward_diff(x),
                    candle_nn::RmsNorm::new(w.clone(), 1e-6).forward_diff(x),
                ),
            ];
            for (name, ours, theirs) in pairs {
                let (ours, theirs) = (ours.unwrap(), theirs.unwrap());
                assert_eq!(ours.dtype(), theirs.dtype(), "{name}");
                assert_eq!(abs_diff(&ours, &theirs), 0.0, "{name} {dt:?}");
            }
        }
    }
}

/// `rms_norm` / `layer_norm` read the same tensors as candle-nn's and train their weights.
#[test]
fn constructors_and_weight_grads() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &test_device());
    let rms = rms_norm(H, 1e-6, vb.pp("rms")).unwrap();
    let config = LayerNormConfig {
        eps: 1e-5,
        ..Default::default()
    };
    let ln = layer_norm(H, config, vb.pp("ln")).unwrap();
    let ln_eps = layer_norm(H, 1e-5, vb.pp("ln")).unwrap();
    assert!(ln_eps.bias().is_some() && ln.remove_mean() && !rms.into_inner().remove_mean());
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["ln.bias", "ln.weight", "rms.weight"]);

    // Weight and bias gradients against candle's composed (autograd) layer norm.
    let (w, b) = (
        rand(4, &[H], 1.0, DType::F32),
        rand(5, &[H], 1.0, DType::F32),
    );
    let x = rand(6, &[3, 4, H], 2.0, DType::F32);
    let ours = |t: &[Tensor]| LayerNorm::new(t[1].clone(), t[2].clone(), 1e-5).forward(&t[0]);
    let slow = |t: &[Tensor]| candle_nn::ops::layer_norm_slow(&t[0], &t[1], &t[2], 1e-5);
    let (_, g) = grads(&ours, &[&x, &w, &b]);
    let (_, g_ref) = grads(&slow, &[&x, &w, &b]);
    for k in 0..3 {
        assert_rel(&format!("LayerNorm grad {k}"), &g[k], &g_ref[k], 1e-5);
    }
    let ours = |t: &[Tensor]| RmsNorm::new(t[1].clone(), 1e-6).forward(&t[0]);
    let slow = |t: &[Tensor]| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-6);
    let (_, g) = grads(&ours, &[&x, &w]);
    let (_, g_ref) = grads(&slow, &[&x, &w]);
    for k in 0..2 {
        assert_rel(&format!("RmsNorm grad {k}"), &g[k], &g_ref[k], 1e-5);
    }
}

/// A LoRA block whose norms are frozen base modules.
#[adapter(lora, rank = 2, alpha = 4.0, dtype = "f32")]
pub struct NormBlock {
    #[adapt(in = H, out = H)]
    q: Linear,
    #[frozen(params = H)]
    norm: RmsNorm,
    #[frozen(params = 2 * H)]
    ln: LayerNorm,
}

impl Module for NormBlock {
    fn forward(&self, x: &Tensor) -> adapters_runtime::candle_core::Result<Tensor> {
        self.ln.forward(&self.norm.forward(&self.q.forward(x)?)?)
    }
}

/// Norms as `#[frozen]` fields are counted, and the adapter before them receives gradients
/// (with candle-nn's fused norms no gradient reaches it).
#[test]
fn frozen_norm_fields_pass_gradients() {
    let t = |s, shape: &[usize]| rand(s, shape, 1.0, DType::F32);
    let mut block = NormBlock {
        q: adapters_runtime::AdaptedLinear::from(Linear::new(t(1, &[H, H]), None)).with_path("q"),
        norm: RmsNorm::new(t(2, &[H]), 1e-6),
        ln: LayerNorm::new(t(3, &[H]), t(4, &[H]), 1e-5),
    };
    let varmap = VarMap::new();
    block.attach_adapters(&varmap, 7).unwrap();
    assert_eq!(block.frozen_params().unwrap(), H * H + 3 * H);
    assert_eq!(NormBlock::FROZEN_PARAMS, H * H + 3 * H);
    let x = Var::from_tensor(&t(5, &[2, 3, H])).unwrap();
    let y = block.forward(&x).unwrap();
    let grads = (&y * t(6, y.dims()))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    // LoRA starts with B = 0, so A's gradient is zero; B's is not.
    let mut largest = 0f32;
    for var in varmap.all_vars() {
        let g = grads
            .get(var.as_tensor())
            .expect("adapter tensor has a gradient");
        largest = largest.max(g.abs().unwrap().max_all().unwrap().to_scalar().unwrap());
    }
    assert!(largest > 0.0, "no gradient reached the adapter");
    assert!(grads.get(x.as_tensor()).is_some());
}
