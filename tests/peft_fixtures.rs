//! PEFT golden cases (`tests/fixtures/peft`, made by PEFT 0.21.2 in float64): forward outputs,
//! gradients of `sum(y·g)` with respect to every adapter tensor, and merged weights.
//!
//! Bounds (relative: max |ours − PEFT| / max |PEFT|): 1e-6 in f64 (observed ≤ 1.1e-15), and
//! 5e-6 in f32 for forward, gradients and merged weights (observed ≤ 4.3e-7). In bf16 (base
//! weights and activations in bf16, adapters in f32) the bound is 3e-2 (observed ≤ 1.4e-2 on
//! the CPU: bf16 rounding of the inputs, weights and outputs); in f16 it is 5e-3 (observed
//! ≤ 2.3e-3).
//!
//! The models run on `ADAPTERS_TEST_DEVICE` (default `cpu`; `cuda` on a GPU machine), with the
//! same bounds; the fixtures are read from `ADAPTERS_FIXTURES` when set.

mod common;

use adapters_runtime::candle_core::{DType, Module, Tensor, Var};
use adapters_runtime::{AdaptedEmbedding, AdaptedLinear, AdapterConfig};
use common::{assert_close, case_json, load, test_device};
use std::collections::HashMap;

const F64_TOL: f64 = 1e-6;
const F32_TOL: f64 = 5e-6;
/// bf16 keeps 8 significant bits (relative rounding 2⁻⁹ ≈ 2e-3 per value).
const BF16_TOL: f64 = 3e-2;
/// f16 keeps 11 significant bits (relative rounding 2⁻¹² ≈ 2.4e-4 per value).
const F16_TOL: f64 = 5e-3;

/// `t` cast to `dt` on the test device.
fn on_device(t: &Tensor, dt: DType) -> Tensor {
    t.to_dtype(dt).unwrap().to_device(&test_device()).unwrap()
}

fn config(case: &serde_json::Value) -> AdapterConfig {
    let r = case["r"].as_u64().unwrap() as usize;
    let alpha = case["alpha"].as_f64().unwrap();
    let base = match case["kind"].as_str().unwrap() {
        "dora" => AdapterConfig::dora(r, alpha),
        "lora" => AdapterConfig::lora(r, alpha),
        k => panic!("unknown kind {k}"),
    };
    base.with_rslora(case["rslora"].as_bool().unwrap())
}

fn key(module: &str, name: &str) -> String {
    format!("base_model.model.{module}.{name}")
}

fn linear(
    name: &str,
    base: &HashMap<String, Tensor>,
    ad: &HashMap<String, Tensor>,
    cfg: AdapterConfig,
    dt: DType,
) -> AdaptedLinear {
    let w = on_device(&base[&format!("{name}.weight")], dt);
    let b = base.get(&format!("{name}.bias")).map(|b| on_device(b, dt));
    let mut l = AdaptedLinear::new(w, b).with_path(name);
    l.attach_weights(
        cfg,
        &ad[&key(name, "lora_A.weight")],
        &ad[&key(name, "lora_B.weight")],
        ad.get(&key(name, "lora_magnitude_vector")),
    )
    .unwrap();
    l
}

/// The fixture's model, built in `dt`.
enum Model {
    Mlp {
        fc1: AdaptedLinear,
        fc2: AdaptedLinear,
    },
    Emb {
        emb: AdaptedEmbedding,
        fc1: AdaptedLinear,
    },
}

impl Model {
    fn build(case: &str, dt: DType) -> Self {
        let cfg = config(&case_json(case));
        let base = load(case, "base.safetensors");
        let ad = load(case, "adapter/adapter_model.safetensors");
        if base.contains_key("emb.weight") {
            let mut emb =
                AdaptedEmbedding::new(on_device(&base["emb.weight"], dt)).with_path("emb");
            emb.attach_weights(
                cfg,
                &ad[&key("emb", "lora_embedding_A")],
                &ad[&key("emb", "lora_embedding_B")],
                ad.get(&key("emb", "lora_magnitude_vector")),
            )
            .unwrap();
            Model::Emb {
                emb,
                fc1: linear("fc1", &base, &ad, cfg, dt),
            }
        } else {
            Model::Mlp {
                fc1: linear("fc1", &base, &ad, cfg, dt),
                fc2: linear("fc2", &base, &ad, cfg, dt),
            }
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Model::Mlp { fc1, fc2 } => fc2
                .forward(&fc1.forward(x).unwrap().silu().unwrap())
                .unwrap(),
            Model::Emb { emb, fc1 } => fc1.forward(&emb.forward(x).unwrap()).unwrap(),
        }
    }

    /// Every adapter tensor under its PEFT key.
    fn vars(&self) -> Vec<(String, Var)> {
        let named = |m: &str, v: Vec<(String, Var)>| {
            v.into_iter()
                .map(|(k, v)| (key(m, &k), v))
                .collect::<Vec<_>>()
        };
        match self {
            Model::Mlp { fc1, fc2 } => [
                named("fc1", fc1.named_vars()),
                named("fc2", fc2.named_vars()),
            ]
            .concat(),
            Model::Emb { emb, fc1 } => [
                named("emb", emb.named_vars()),
                named("fc1", fc1.named_vars()),
            ]
            .concat(),
        }
    }

    fn merged(&self) -> Vec<(String, Tensor)> {
        match self {
            Model::Mlp { fc1, fc2 } => vec![
                ("fc1.weight".into(), fc1.merged_weight_tensor().unwrap()),
                ("fc2.weight".into(), fc2.merged_weight_tensor().unwrap()),
            ],
            Model::Emb { emb, fc1 } => vec![
                ("emb.weight".into(), emb.merged_weight_tensor().unwrap()),
                ("fc1.weight".into(), fc1.merged_weight_tensor().unwrap()),
            ],
        }
    }

    fn merge(&mut self) {
        match self {
            Model::Mlp { fc1, fc2 } => {
                fc1.merge().unwrap();
                fc2.merge().unwrap();
            }
            Model::Emb { emb, fc1 } => {
                emb.merge().unwrap();
                fc1.merge().unwrap();
            }
        }
    }
}

fn check_case(case: &str, dt: DType, tol: f64) {
    let io = load(case, "io.safetensors");
    let mut model = Model::build(case, dt);
    let x = if io["x"].dtype().is_float() {
        on_device(&io["x"], dt)
    } else {
        on_device(&io["x"], io["x"].dtype())
    };
    let y = model.forward(&x);
    assert_close(&format!("{case} y ({dt:?})"), &y, &io["y"], tol);

    // Gradients of sum(y·g) with respect to every adapter tensor.
    let g = on_device(&io["g"], dt);
    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let vars = model.vars();
    let expected: Vec<_> = io.keys().filter(|k| k.starts_with("grad.")).collect();
    assert_eq!(
        expected.len(),
        vars.len(),
        "{case}: every adapter tensor has a PEFT gradient"
    );
    for (name, var) in &vars {
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
        assert_close(
            &format!("{case} grad.{name} ({dt:?})"),
            got,
            &io[&format!("grad.{name}")],
            tol,
        );
    }

    // Merged weights, then the merged model's forward.
    let merged = load(case, "merged.safetensors");
    for (name, w) in model.merged() {
        assert_close(
            &format!("{case} merged {name} ({dt:?})"),
            &w,
            &merged[&name],
            tol,
        );
    }
    model.merge();
    assert_close(
        &format!("{case} merged forward ({dt:?})"),
        &model.forward(&x),
        &io["y"],
        tol,
    );
}

const CASES: [&str; 4] = ["lora_r4", "dora_r4", "dora_rslora_r8", "dora_embedding_r4"];

#[test]
fn peft_cases_f64() {
    for case in CASES {
        check_case(case, DType::F64, F64_TOL);
    }
}

#[test]
fn peft_cases_f32() {
    for case in CASES {
        check_case(case, DType::F32, F32_TOL);
    }
}

#[test]
fn peft_cases_bf16() {
    for case in CASES {
        check_case(case, DType::BF16, BF16_TOL);
    }
}

#[test]
fn peft_cases_f16() {
    for case in CASES {
        check_case(case, DType::F16, F16_TOL);
    }
}
