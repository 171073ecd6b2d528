//! Non-finite weights are never written or resumed from (NaN / ±Inf in adapters, merged weights,
//! training checkpoints, model folders), and DoRA over bases with all-zero rows stays finite and
//! equals PEFT's formula wherever that is finite. On `ADAPTERS_TEST_DEVICE` (default `cpu`).

// Both helper modules include `tests/common/device.rs`, as when their own test files use them.
#![allow(clippy::duplicate_mod)]

mod peft_support;
mod train_support;

use adapters_runtime::candle_core::{DType, Device, Module, Tensor, Var};
use adapters_runtime::candle_nn::{AdamW, Optimizer, ParamsAdamW};
use adapters_runtime::estimate::BaseDType;
use adapters_runtime::hf::{save_model_folder, LlamaConfig};
use adapters_runtime::peft::{self, LoadOptions, MergeOptions, SaveOptions};
use adapters_runtime::train::{
    prepare, BatchLoader, Example, PackMode, PackOptions, Tokenizer, TrainConfig, Trainer,
};
use adapters_runtime::{
    AdaptedEmbedding, AdaptedLinear, AdapterConfig, AdapterError, Adapters, Result,
};
use peft_support::{
    assert_close, case_config, copy_dir, fixture, load, save, test_device, CaseModel, TempDir,
};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Helpers

/// `t` with its element `i` (in row-major order) replaced by `v`, same dtype and device.
fn poisoned(t: &Tensor, i: usize, v: f64) -> Tensor {
    let mut vals = t
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    vals[i] = v;
    Tensor::from_vec(vals, t.dims(), &Device::Cpu)
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap()
        .to_device(t.device())
        .unwrap()
}

/// Replaces tensor `key` of the safetensors file `path` by itself with element 0 set to `v`.
fn poison_file(path: &Path, key: &str, v: f64) {
    let mut t = load(path);
    let p = poisoned(&t[key], 0, v);
    t.insert(key.to_string(), p);
    save(&t, path);
}

/// How many values of `t` are NaN or infinite.
fn non_finite(t: &Tensor) -> usize {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .filter(|v| !v.is_finite())
        .count()
}

#[track_caller]
fn assert_finite(what: &str, t: &Tensor) {
    assert_eq!(non_finite(t), 0, "{what} holds non-finite values: {t}");
}

/// Asserts `r` is `NonFiniteWeights` naming `tensor` with `count` bad values; returns its message.
#[track_caller]
fn expect_non_finite<T: std::fmt::Debug>(r: Result<T>, tensor: &str, count: usize) -> String {
    let e = match r {
        Err(e) => e,
        Ok(v) => panic!("expected NonFiniteWeights for `{tensor}`, got Ok({v:?})"),
    };
    match &e {
        AdapterError::NonFiniteWeights {
            tensor: t,
            count: c,
            ..
        } => assert_eq!((t.as_str(), *c), (tensor, count), "{e}"),
        other => panic!("expected NonFiniteWeights for `{tensor}`, got {other:?}"),
    }
    e.to_string()
}

/// A copy of `case`'s adapter in `dir/adapter` with element 0 of `key` set to `v`.
fn poisoned_adapter(dir: &TempDir, case: &str, key: &str, v: f64) -> std::path::PathBuf {
    let ad = dir.join("adapter");
    copy_dir(&fixture(case).join("adapter"), &ad);
    poison_file(&ad.join("adapter_model.safetensors"), key, v);
    ad
}

// ---------------------------------------------------------------------------------------------
// Item 8: non-finite weights are refused

#[test]
fn merge_refuses_a_nan_adapter_naming_the_tensor() {
    let dir = TempDir::new("nf-merge-nan");
    let key = "base_model.model.fc1.lora_A.weight";
    let ad = poisoned_adapter(&dir, "dora_r4", key, f64::NAN);
    let base = fixture("dora_r4").join("base.safetensors");
    let out = dir.join("merged.safetensors");
    let msg = expect_non_finite(
        peft::merge_checkpoint(&base, &ad, &out, &MergeOptions::default()),
        key,
        1,
    );
    assert!(msg.contains("--allow-non-finite"), "{msg}");
    assert!(!out.exists(), "nothing written");
    // Explicitly allowed: written, NaN included.
    let allow = MergeOptions {
        allow_non_finite: true,
        ..Default::default()
    };
    peft::merge_checkpoint(&base, &ad, &out, &allow).unwrap();
    assert!(non_finite(&load(&out)["fc1.weight"]) > 0);
}

#[test]
fn merge_refuses_a_non_finite_merged_weight() {
    // A finite adapter over a base weight holding +Inf: the merged tensor is checked too (inside
    // the writer's lazy closure), the error names the base key, and no file appears.
    let dir = TempDir::new("nf-merge-inf");
    let base = dir.join("base.safetensors");
    std::fs::copy(fixture("dora_r4").join("base.safetensors"), &base).unwrap();
    poison_file(&base, "fc2.weight", f64::INFINITY);
    let ad = fixture("dora_r4").join("adapter");
    let out = dir.join("merged.safetensors");
    let r = peft::merge_checkpoint(&base, &ad, &out, &MergeOptions::default());
    match r {
        Err(AdapterError::NonFiniteWeights { tensor, count, .. }) => {
            assert_eq!(tensor, "fc2.weight");
            assert!(count >= 1);
        }
        other => panic!("expected NonFiniteWeights, got {other:?}"),
    }
    assert!(!out.exists(), "nothing written");
    assert_eq!(
        dir.entries(),
        ["base.safetensors"],
        "no temporary file left"
    );
}

#[test]
fn load_adapter_refuses_a_non_finite_adapter() {
    let dir = TempDir::new("nf-load");
    let key = "base_model.model.fc2.lora_magnitude_vector";
    let ad = poisoned_adapter(&dir, "dora_r4", key, f64::NEG_INFINITY);
    let cfg = case_config("dora_r4");
    let mut m = CaseModel::bare("dora_r4", DType::F64, cfg);
    expect_non_finite(
        peft::load_adapter(&mut m, &ad, &LoadOptions::default()),
        key,
        1,
    );
    assert!(
        m.named_trainable_vars().unwrap().is_empty(),
        "nothing attached"
    );
    let allow = LoadOptions {
        allow_non_finite: true,
        ..Default::default()
    };
    peft::load_adapter(&mut m, &ad, &allow).unwrap();
}

#[test]
fn save_adapter_refuses_non_finite_tensors() {
    let dir = TempDir::new("nf-save");
    let mut m = CaseModel::bare("dora_r4", DType::F64, case_config("dora_r4"));
    peft::load_adapter(
        &mut m,
        fixture("dora_r4").join("adapter"),
        &LoadOptions::default(),
    )
    .unwrap();
    let vars = m.named_trainable_vars().unwrap();
    let (name, var) = vars.iter().find(|(n, _)| n == "fc1.lora_B.weight").unwrap();
    let good = var.as_tensor().copy().unwrap();
    var.set(&poisoned(&good, 3, f64::NAN)).unwrap();
    let out = dir.join("adapter");
    let key = format!("base_model.model.{name}");
    expect_non_finite(
        peft::save_adapter(&m, &out, &SaveOptions::default()),
        &key,
        1,
    );
    assert!(!out.exists(), "nothing written");
    let allow = SaveOptions {
        allow_non_finite: true,
        ..Default::default()
    };
    peft::save_adapter(&m, &out, &allow).unwrap();
    assert_eq!(
        non_finite(&load(&out.join("adapter_model.safetensors"))[&key]),
        1
    );

    // Finite in f64 but not in the saved dtype: 1e6 overflows f16.
    var.set(&poisoned(&good, 0, 1e6)).unwrap();
    let half = SaveOptions {
        dtype: Some(BaseDType::F16),
        ..Default::default()
    };
    let out16 = dir.join("adapter16");
    expect_non_finite(peft::save_adapter(&m, &out16, &half), &key, 1);
    assert!(!out16.exists());
}

#[test]
fn save_model_folder_refuses_non_finite_tensors() {
    let dir = TempDir::new("nf-folder");
    let cfg =
        LlamaConfig::from_file(&fixture("tiny_llama_dora").join("model/config.json")).unwrap();
    let good = Tensor::ones((4, 3), DType::F32, &test_device()).unwrap();
    let bad = poisoned(&good, 5, f64::NAN);
    let tensors = vec![
        ("a.weight".to_string(), good),
        ("b.weight".to_string(), bad),
    ];
    let out = dir.join("model");
    expect_non_finite(save_model_folder(&out, &cfg, &tensors, &[]), "b.weight", 1);
    assert!(!out.exists(), "nothing written");
}

fn loader() -> BatchLoader {
    let tok = Tokenizer::byte_level();
    let texts: Vec<Example> = (0..8)
        .map(|i| Example::Text(format!("dora {i} rows")))
        .collect();
    let p = prepare(
        &texts,
        &tok,
        PackOptions {
            seq_len: 16,
            mode: PackMode::Pad,
        },
    )
    .unwrap();
    BatchLoader::new(p.sequences, 4, tok.pad_id(), &test_device(), 1, true).unwrap()
}

#[test]
fn resume_refuses_a_checkpoint_with_non_finite_weights() {
    use train_support::{param_bits, TinyLm};
    let dir = TempDir::new("nf-resume");
    let (model, _vars) = TinyLm::new(259, 4);
    let data = loader();
    let config = || TrainConfig {
        checkpoint_dir: Some(dir.join("ckpt")),
        progress: false,
        ..TrainConfig::new(4, 1e-2)
    };
    let mut trainer = Trainer::new(&model, config()).unwrap();
    let ckpt = trainer.save_checkpoint(&model, &data).unwrap();
    let name = model.named_trainable_vars().unwrap()[0].0.clone();
    poison_file(&ckpt.join("trainable.safetensors"), &name, f64::NAN);

    let (fresh, _vars) = TinyLm::new(259, 5);
    let before = param_bits(&fresh);
    let mut data = loader();
    let mut trainer = Trainer::new(&fresh, config()).unwrap();
    let msg = expect_non_finite(trainer.resume(&fresh, &mut data, &ckpt), &name, 1);
    assert!(msg.contains("resuming from"), "{msg}");
    assert_eq!(param_bits(&fresh), before, "nothing restored");
    assert_eq!(trainer.step(), 0);

    // Writing a checkpoint of NaN weights is refused as well.
    let (nan_model, _vars) = TinyLm::new(259, 6);
    let (name, var) = nan_model.named_trainable_vars().unwrap().remove(0);
    var.set(&poisoned(var.as_tensor(), 1, f64::NAN)).unwrap();
    let cfg = TrainConfig {
        checkpoint_dir: Some(dir.join("nan-ckpt")),
        ..config()
    };
    let mut trainer = Trainer::new(&nan_model, cfg).unwrap();
    expect_non_finite(trainer.save_checkpoint(&nan_model, &data), &name, 1);
    let left = std::fs::read_dir(dir.join("nan-ckpt")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "no checkpoint folder written");
}

// ---------------------------------------------------------------------------------------------
// Item 9: DoRA over all-zero base rows

/// Matrix product of f64 tensors on the CPU.
fn cpu(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

/// `w` with rows `rows` zeroed (`axis` 0) or columns (`axis` 1).
fn zero_lines(w: &Tensor, lines: &[usize], axis: usize) -> Tensor {
    let n = w.dim(axis).unwrap();
    let keep: Vec<f64> = (0..n)
        .map(|i| if lines.contains(&i) { 0.0 } else { 1.0 })
        .collect();
    let shape = if axis == 0 { (n, 1) } else { (1, n) };
    let mask = Tensor::from_vec(keep, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(w.dtype())
        .unwrap()
        .to_device(w.device())
        .unwrap();
    w.broadcast_mul(&mask).unwrap()
}

/// The DoRA scale with the documented rule, computed densely in f64: `m/‖V_i‖`, 1 where 0.
fn reference_scale(v_rows: &Tensor, m: &Tensor) -> Tensor {
    let n: Vec<f64> = v_rows
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .sqrt()
        .unwrap()
        .to_vec1()
        .unwrap();
    let m: Vec<f64> = cpu(m).to_vec1().unwrap();
    let s: Vec<f64> = n
        .iter()
        .zip(&m)
        .map(|(n, m)| if *n > 0.0 { m / n } else { 1.0 })
        .collect();
    Tensor::new(s, &Device::Cpu).unwrap()
}

/// All gradients of `vars` exist and are finite; returns them on the CPU in f64.
fn finite_grads(what: &str, loss: &Tensor, vars: &[(String, Var)]) -> Vec<Tensor> {
    let grads = loss.backward().unwrap();
    vars.iter()
        .map(|(n, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{what}: no gradient for {n}"));
            assert_finite(&format!("{what}: gradient of {n}"), g);
            cpu(g)
        })
        .collect()
}

#[test]
fn dora_linear_with_zero_rows_is_finite_and_matches_peft_where_the_norm_is_positive() {
    let dev = test_device();
    let (din, dout, r, alpha) = (6, 5, 2, 4.0);
    let cfg = AdapterConfig::dora(r, alpha);
    let s = alpha / r as f64;
    let w0 = zero_lines(
        &peft_support::rand_tensor(1, &[dout, din], 0.5, DType::F64),
        &[1, 3],
        0,
    );
    let x = peft_support::rand_tensor(2, &[3, din], 1.0, DType::F64);

    // Fresh attach: m = ‖W0‖ = 0 and n = 0 on rows 1 and 3. The output is the base's.
    let mut l = AdaptedLinear::new(w0.clone(), None).with_path("o_proj");
    l.attach(cfg, 3).unwrap();
    let y = l.forward(&x).unwrap();
    assert_finite("fresh forward", &y);
    assert_close(
        "fresh = base",
        &y,
        &x.matmul(&w0.t().unwrap()).unwrap(),
        1e-12,
    );
    let vars = l.named_vars();
    finite_grads("fresh", &y.sqr().unwrap().sum_all().unwrap(), &vars);

    // Trained-looking weights: lora_B's row 1 is zero (so n = 0 there with m = 0.7), row 3 is not
    // (n > 0 although W0's row is zero, and m = 0 there: scale 0).
    let a = peft_support::rand_tensor(4, &[r, din], 0.5, DType::F64);
    let b = zero_lines(
        &peft_support::rand_tensor(5, &[dout, r], 0.5, DType::F64),
        &[1],
        0,
    );
    let m = Tensor::new(&[0.9f64, 0.7, 1.3, 0.0, 0.4], &dev).unwrap();
    let mut l = AdaptedLinear::new(w0.clone(), None).with_path("o_proj");
    l.attach_weights(cfg, &a, &b, Some(&m)).unwrap();
    let v = (cpu(&w0) + (cpu(&b).matmul(&cpu(&a)).unwrap() * s).unwrap()).unwrap();
    let scale = reference_scale(&v, &m);
    let merged_ref = v.broadcast_mul(&scale.unsqueeze(1).unwrap()).unwrap();
    let y_ref = cpu(&x).matmul(&merged_ref.t().unwrap()).unwrap();

    let y = l.forward(&x).unwrap();
    assert_finite("forward", &y);
    assert_close(
        "forward = PEFT's formula (n > 0), 0 (n = 0)",
        &y,
        &y_ref,
        1e-12,
    );
    let vars = l.named_vars();
    // A linear loss, so that rows whose output is 0 still get a gradient.
    let c = peft_support::rand_tensor(6, y.dims(), 1.0, DType::F64);
    let loss = (&y * &c).unwrap().sum_all().unwrap();
    let grads = finite_grads("trained", &loss, &vars);
    let gm: Vec<f64> = grads[2].to_vec1().unwrap();
    assert_eq!(
        gm[1], 0.0,
        "the zero-norm row's output does not depend on m"
    );
    assert!(gm[3] != 0.0, "m gets a gradient where n > 0 and m = 0");

    let merged = l.merged_weight_tensor().unwrap();
    assert_finite("merged", &merged);
    assert_close("merged = PEFT's formula", &merged, &merged_ref, 1e-12);
    l.merge().unwrap();
    assert_close("merged forward", &l.forward(&x).unwrap(), &y_ref, 1e-12);
    l.unmerge().unwrap();
    assert_finite("unmerged", l.weight());
    assert_close("unmerge restores W0", l.weight(), &w0, 1e-12);
    assert_close(
        "forward after unmerge",
        &l.forward(&x).unwrap(),
        &y_ref,
        1e-12,
    );
}

#[test]
fn unmerge_restores_rows_whose_magnitude_is_zero() {
    // m = 0 on a non-zero row: the merged row is 0 and PEFT's unmerge divides 0 by 0. Here the
    // row is kept at merge and restored.
    let (din, dout, r) = (5, 4, 2);
    let w0 = peft_support::rand_tensor(11, &[dout, din], 0.5, DType::F64);
    let a = peft_support::rand_tensor(12, &[r, din], 0.5, DType::F64);
    let b = peft_support::rand_tensor(13, &[dout, r], 0.5, DType::F64);
    let m = Tensor::new(&[0.5f64, 0.0, 1.1, 0.8], &test_device()).unwrap();
    let mut l = AdaptedLinear::new(w0.clone(), None).with_path("q_proj");
    l.attach_weights(AdapterConfig::dora(r, 4.0), &a, &b, Some(&m))
        .unwrap();
    l.merge().unwrap();
    let row1 = cpu(l.weight()).get(1).unwrap();
    assert_eq!(non_finite(&row1), 0);
    assert_eq!(
        row1.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap(),
        0.0
    );
    l.unmerge().unwrap();
    assert_finite("unmerged", l.weight());
    assert_close("unmerge restores W0", l.weight(), &w0, 1e-12);
    // Twice, to check nothing stale is kept.
    l.merge().unwrap();
    l.unmerge().unwrap();
    assert_close("second unmerge", l.weight(), &w0, 1e-12);

    // The same for an embedding (the output axis is the table's columns).
    let (vocab, dim) = (6, 3);
    let e0 = peft_support::rand_tensor(14, &[vocab, dim], 0.5, DType::F64);
    let ea = peft_support::rand_tensor(15, &[r, vocab], 0.5, DType::F64);
    let eb = peft_support::rand_tensor(16, &[dim, r], 0.5, DType::F64);
    let em = Tensor::new(&[0.0f64, 0.9, 1.2], &test_device()).unwrap();
    let mut e = AdaptedEmbedding::new(e0.clone()).with_path("embed_tokens");
    e.attach_weights(AdapterConfig::dora(r, 4.0), &ea, &eb, Some(&em))
        .unwrap();
    e.merge().unwrap();
    e.unmerge().unwrap();
    assert_close("embedding unmerge", e.embeddings(), &e0, 1e-12);
}

#[test]
fn dora_embedding_with_zero_columns_is_finite_and_matches_peft_elsewhere() {
    let dev = test_device();
    let (vocab, dim, r, alpha) = (7, 4, 2, 4.0);
    let cfg = AdapterConfig::dora(r, alpha);
    let s = alpha / r as f64;
    let e0 = zero_lines(
        &peft_support::rand_tensor(21, &[vocab, dim], 0.5, DType::F64),
        &[2],
        1,
    );
    let ids = Tensor::new(&[[0u32, 3, 6], [2, 2, 5]], &dev).unwrap();

    // Fresh attach: A = 0, so V = E and n = 0 for dimension 2.
    let mut e = AdaptedEmbedding::new(e0.clone()).with_path("embed_tokens");
    e.attach(cfg, 9).unwrap();
    let y = e.forward(&ids).unwrap();
    assert_finite("fresh forward", &y);
    let base = e0.index_select(&ids.flatten_all().unwrap(), 0).unwrap();
    assert_close("fresh = base", &y.reshape((6, dim)).unwrap(), &base, 1e-12);
    finite_grads(
        "fresh",
        &y.sqr().unwrap().sum_all().unwrap(),
        &e.named_vars(),
    );

    // Given weights: B's row 2 is zero (n = 0 there), the others are not.
    let a = peft_support::rand_tensor(22, &[r, vocab], 0.5, DType::F64);
    let b = zero_lines(
        &peft_support::rand_tensor(23, &[dim, r], 0.5, DType::F64),
        &[2],
        0,
    );
    let m = Tensor::new(&[0.8f64, 1.1, 0.6, 0.9], &dev).unwrap();
    let mut e = AdaptedEmbedding::new(e0.clone()).with_path("embed_tokens");
    e.attach_weights(cfg, &a, &b, Some(&m)).unwrap();
    let v = (cpu(&e0) + (cpu(&b).matmul(&cpu(&a)).unwrap().t().unwrap() * s).unwrap()).unwrap();
    let scale = reference_scale(&v.t().unwrap(), &m);
    let merged_ref = v.broadcast_mul(&scale.unsqueeze(0).unwrap()).unwrap();
    let y_ref = merged_ref
        .index_select(
            &ids.flatten_all().unwrap().to_device(&Device::Cpu).unwrap(),
            0,
        )
        .unwrap();
    let y = e.forward(&ids).unwrap();
    assert_close("forward", &y.reshape((6, dim)).unwrap(), &y_ref, 1e-12);
    finite_grads(
        "given",
        &y.sqr().unwrap().sum_all().unwrap(),
        &e.named_vars(),
    );
    assert_close(
        "merged",
        &e.merged_weight_tensor().unwrap(),
        &merged_ref,
        1e-12,
    );
    e.merge().unwrap();
    e.unmerge().unwrap();
    assert_close("unmerge restores E", e.embeddings(), &e0, 1e-12);
}

#[test]
fn training_dora_over_zero_rows_stays_finite() {
    let dt = DType::F32;
    let (din, dout, vocab) = (8, 6, 10);
    let w0 = zero_lines(
        &peft_support::rand_tensor(31, &[dout, din], 0.5, dt),
        &[0, 4],
        0,
    );
    let e0 = zero_lines(
        &peft_support::rand_tensor(32, &[vocab, din], 0.5, dt),
        &[3],
        1,
    );
    let mut lin = AdaptedLinear::new(w0, None).with_path("o_proj");
    lin.attach(AdapterConfig::dora(2, 4.0).with_dropout(0.1), 1)
        .unwrap();
    lin.set_training(true);
    let mut emb = AdaptedEmbedding::new(e0).with_path("embed_tokens");
    emb.attach(AdapterConfig::dora(2, 4.0), 2).unwrap();
    let vars: Vec<(String, Var)> = lin
        .named_vars()
        .into_iter()
        .chain(emb.named_vars())
        .collect();
    let mut opt = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = Tensor::new(&[[1u32, 3, 5, 7], [0, 2, 4, 9]], &test_device()).unwrap();
    let target = peft_support::rand_tensor(33, &[2, 4, dout], 1.0, dt);
    for step in 0..6 {
        let h = emb.forward(&ids).unwrap();
        let y = lin.forward(&h).unwrap();
        let loss = (y - &target).unwrap().sqr().unwrap().mean_all().unwrap();
        let l = loss.to_scalar::<f32>().unwrap();
        assert!(l.is_finite(), "step {step}: loss {l}");
        finite_grads(&format!("step {step}"), &loss, &vars);
        opt.backward_step(&loss).unwrap();
        for (n, v) in &vars {
            assert_finite(&format!("step {step}: {n}"), v.as_tensor());
        }
    }
    assert_finite("merged linear", &lin.merged_weight_tensor().unwrap());
    assert_finite("merged embedding", &emb.merged_weight_tensor().unwrap());
    lin.merge().unwrap();
    lin.unmerge().unwrap();
    assert_finite("unmerged linear", lin.weight());
}
