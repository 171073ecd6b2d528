//! Helpers shared by the integration tests: fixture loading and numeric comparison.
#![allow(dead_code)]

mod device;
pub use device::{fixtures_root, test_device};

use adapters_runtime::candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// `tests/fixtures/peft/<case>` (under `ADAPTERS_FIXTURES` when set).
pub fn fixture_dir(case: &str) -> PathBuf {
    fixtures_root().join("peft").join(case)
}

/// Loads a safetensors file of a fixture case onto the CPU (reference values stay there).
pub fn load(case: &str, file: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir(case).join(file);
    adapters_runtime::candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// `case.json` of a fixture case.
pub fn case_json(case: &str) -> serde_json::Value {
    let path = fixture_dir(case).join("case.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// `max |a − b| / max |b|`, computed in f64 on the CPU (either may live on the test device).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let b = b
        .to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let diff = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    diff / scale.max(1e-300)
}

/// Asserts `rel_err(a, b) <= tol`, naming `what`.
#[track_caller]
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let e = rel_err(a, b);
    if std::env::var_os("ADAPTERS_SHOW_ERRORS").is_some() {
        eprintln!("{what}: {e:.3e}");
    }
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// A deterministic pseudo-random tensor with entries in [-scale, scale), on the test device.
pub fn rand_tensor(seed: u64, dims: &[usize], scale: f64, dtype: DType) -> Tensor {
    let n: usize = dims.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    let t = Tensor::from_vec(v, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    t.to_device(&test_device()).unwrap()
}

/// Trains the adapters of `m` (the bundled Llama, adapters attached) for 4 AdamW steps at `lr`
/// on `batch` through `llama_loss`, proving the gradients flow: `check_gradients` passes at
/// every step, every adapter tensor's gradient is non-zero at step 2, and the loss falls.
/// Returns the losses; `what` names the case in messages.
pub fn train_four_steps(
    m: &adapters_runtime::models::llama::Llama,
    batch: &adapters_runtime::train::Batch,
    lr: f64,
    what: &str,
) -> Vec<f32> {
    use adapters_runtime::train::{llama_loss, AdamW, AdamWConfig, Grads};
    use adapters_runtime::Adapters;
    let vars = m.named_trainable_vars().unwrap();
    let params = vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    let mut opt = AdamW::new(params, AdamWConfig::default()).unwrap();
    let mut losses = Vec::new();
    for step in 1..=4 {
        let loss = llama_loss(m, batch).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = loss.backward().unwrap();
        m.check_gradients(&grads).unwrap();
        if step == 2 {
            for (name, v) in &vars {
                let g = grads.get(v.as_tensor()).unwrap();
                let n = g
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(n > 0.0, "{what} {name}: zero gradient at step 2");
            }
        }
        let g = Grads::from_store(&vars, &grads).unwrap();
        opt.step(&g, lr).unwrap();
    }
    assert!(losses[3] < losses[0], "{what}: the loss falls: {losses:?}");
    losses
}

/// A next-token batch over `ids [b, t]`: inputs are the first `t − 1` ids, targets the last
/// `t − 1`, every position in the loss.
pub fn next_token_batch(ids: &Tensor) -> adapters_runtime::train::Batch {
    let (b, t) = ids.dims2().unwrap();
    adapters_runtime::train::Batch {
        input_ids: ids.narrow(1, 0, t - 1).unwrap(),
        targets: ids.narrow(1, 1, t - 1).unwrap(),
        loss_mask: Tensor::ones((b, t - 1), DType::F32, ids.device()).unwrap(),
        tokens: b * (t - 1),
        target_tokens: b * (t - 1),
    }
}
