//! The trainer's numerics against hand-computed values: the learning-rate schedule, PyTorch's
//! AdamW, global-norm clipping, gradient accumulation, and the masked cross entropy (values and a
//! finite-difference gradient check), and the chunked loss through a frozen head against hand
//! computation and finite differences. On `ADAPTERS_TEST_DEVICE` (default `cpu`).

mod train_support;

use adapters_runtime::candle_core::{DType, Tensor, Var};
use adapters_runtime::train::{
    causal_lm_loss, causal_lm_loss_sum, clip_grad_norm, masked_cross_entropy,
    masked_cross_entropy_sum, token_accuracy, AdamW, AdamWConfig, GradAccumulator, Grads,
    LrSchedule,
};
use adapters_runtime::AdapterError;
use train_support::{tensor, test_device, vals};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * b.abs().max(1.0)
}

#[test]
fn cosine_schedule_with_warmup_matches_transformers() {
    let s = LrSchedule::cosine(1e-3, 10, 110);
    let expect = [
        (0, 0.0),
        (5, 5e-4),
        (10, 1e-3),
        (35, 1e-3 * 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos())), // 8.5355e-4
        (60, 5e-4),
        (110, 0.0),
        (500, 0.0),
    ];
    for (step, lr) in expect {
        assert!(
            close(s.lr_at(step), lr, 1e-12),
            "step {step}: {} vs {lr}",
            s.lr_at(step)
        );
    }
    assert!(close(s.lr_at(35), 8.535533905932737e-4, 1e-12));
    // get_cosine_with_min_lr_schedule_with_warmup(min_lr = 1e-4)
    let f = s.with_min_lr(1e-4);
    assert!(close(f.lr_at(60), 5.5e-4, 1e-12));
    assert!(close(f.lr_at(110), 1e-4, 1e-12));
    assert!(close(f.lr_at(1000), 1e-4, 1e-12));
    assert!(
        close(f.lr_at(5), 5e-4, 1e-12),
        "the warmup ignores the floor"
    );
    // No warmup: the first step uses the peak.
    assert_eq!(LrSchedule::cosine(2e-4, 0, 100).lr_at(0), 2e-4);
    let c = LrSchedule::constant(3e-4, 4);
    assert_eq!(
        (c.lr_at(0), c.lr_at(2), c.lr_at(4), c.lr_at(10_000)),
        (0.0, 1.5e-4, 3e-4, 3e-4)
    );
}

/// PyTorch's single-tensor AdamW for one scalar, in f64.
fn torch_adamw(mut p: f64, grads: &[f64], lr: f64, wd: f64) -> Vec<f64> {
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
    let (mut m, mut v) = (0.0, 0.0);
    let mut out = Vec::new();
    for (i, &g) in grads.iter().enumerate() {
        let t = (i + 1) as i32;
        p *= 1.0 - lr * wd;
        m += (1.0 - b1) * (g - m);
        v = v * b2 + (1.0 - b2) * g * g;
        let denom = v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
        p -= lr / (1.0 - b1.powi(t)) * m / denom;
        out.push(p);
    }
    out
}

#[test]
fn adamw_matches_pytorch_step_by_step() {
    let var = Var::from_vec(vec![1.0f32, -2.0], 2, &test_device()).unwrap();
    let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default()).unwrap();
    let grads = [[0.5, 0.0], [-0.25, 1e-3], [0.125, -3.0]];
    // torch.optim.AdamW(lr=0.1, weight_decay=0.01), values written out from the formula.
    let expected = [
        [0.899000002, -1.998],
        [0.8714672987058463, -2.0704146302663102],
        [0.8365529176159483, -2.00448202401705],
    ];
    for (g, want) in grads.iter().zip(expected) {
        let g = Tensor::new(&[g[0] as f32, g[1] as f32], &test_device()).unwrap();
        opt.step(&Grads::from_map([("w".to_string(), g)]).unwrap(), 0.1)
            .unwrap();
        let got = vals(var.as_tensor());
        for (a, b) in got.iter().zip(want) {
            assert!(close(*a, b, 2e-6), "{got:?} vs {want:?}");
        }
    }
    let reference = torch_adamw(1.0, &[0.5, -0.25, 0.125], 0.1, 0.01);
    assert!(close(vals(var.as_tensor())[0], reference[2], 2e-6));
    assert_eq!(opt.param_step("w"), 3);
}

#[test]
fn adamw_keeps_f32_state_for_bf16_params_and_skips_missing_grads() {
    let w = Var::from_tensor(
        &Tensor::new(&[0.5f32, 0.25], &test_device())
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap(),
    )
    .unwrap();
    let untouched = Var::from_vec(vec![3.0f32], 1, &test_device()).unwrap();
    let mut opt = AdamW::new(
        vec![("w".into(), w.clone()), ("u".into(), untouched.clone())],
        AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let g = Tensor::new(&[1.0f32, -1.0], &test_device())
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    opt.step(&Grads::from_map([("w".to_string(), g)]).unwrap(), 0.125)
        .unwrap();
    assert_eq!(w.dtype(), DType::BF16);
    assert_eq!(vals(w.as_tensor()), vec![0.375, 0.375]);
    let state = opt.state_tensors().unwrap();
    assert_eq!(state["w.exp_avg"].dtype(), DType::F32);
    assert_eq!(
        vals(&state["w.exp_avg"]),
        vec![0.10000000149011612, -0.10000000149011612]
    );
    assert!(
        !state.contains_key("u.exp_avg"),
        "no gradient, no state (PyTorch's lazy init)"
    );
    assert_eq!(vals(untouched.as_tensor()), vec![3.0]);
    assert_eq!(opt.param_step("u"), 0);
}

#[test]
fn adamw_state_round_trips_exactly_and_rejects_mismatches() {
    let mk = || Var::from_tensor(&tensor(5, &[3, 4], 1.0)).unwrap();
    let (a, b) = (mk(), mk());
    let mut oa = AdamW::new(vec![("p".into(), a.clone())], AdamWConfig::default()).unwrap();
    let mut ob = AdamW::new(vec![("p".into(), b.clone())], AdamWConfig::default()).unwrap();
    let grad = |s| Grads::from_map([("p".to_string(), tensor(s, &[3, 4], 1.0))]).unwrap();
    oa.step(&grad(10), 0.01).unwrap();
    ob.step(&grad(10), 0.01).unwrap();
    // Restore a's state into a fresh optimizer over b and continue both identically.
    let saved = oa.state_tensors().unwrap();
    let mut oc = AdamW::new(vec![("p".into(), b.clone())], AdamWConfig::default()).unwrap();
    oc.load_state(&saved, "test").unwrap();
    oa.step(&grad(11), 0.01).unwrap();
    oc.step(&grad(11), 0.01).unwrap();
    let bits = |v: &Var| {
        vals(v.as_tensor())
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(oc.param_step("p"), 2);
    drop(ob);

    let mut bad = saved.clone();
    bad.insert(
        "p.exp_avg".into(),
        Tensor::zeros((4, 3), DType::F32, &test_device()).unwrap(),
    );
    bad.insert(
        "q.exp_avg".into(),
        Tensor::zeros(1, DType::F32, &test_device()).unwrap(),
    );
    match oc.load_state(&bad, "optimizer.safetensors") {
        Err(AdapterError::Keys { context, issues }) => {
            assert_eq!(context, "optimizer.safetensors");
            let keys: Vec<_> = issues.iter().map(|i| i.key.as_str()).collect();
            assert!(
                keys.contains(&"q.exp_avg") && keys.contains(&"p.exp_avg"),
                "{issues:?}"
            );
        }
        other => panic!("expected a Keys error, got {other:?}"),
    }
}

#[test]
fn clip_grad_norm_matches_torch() {
    // Gradients [3, 4] and [12]: total norm 13.
    let mut g = Grads::from_map([
        (
            "a".to_string(),
            Tensor::new(&[3.0f32, 4.0], &test_device()).unwrap(),
        ),
        (
            "b".to_string(),
            Tensor::new(&[12.0f32], &test_device()).unwrap(),
        ),
    ])
    .unwrap();
    let norm = clip_grad_norm(&mut g, 1.0).unwrap();
    assert!(close(norm, 13.0, 1e-7));
    let coef = 1.0 / (13.0 + 1e-6);
    assert!(close(vals(g.get("a").unwrap())[1], 4.0 * coef, 1e-6));
    assert!(close(g.global_norm().unwrap(), 1.0, 1e-6));
    // Below the threshold nothing changes.
    let norm = clip_grad_norm(&mut g, 5.0).unwrap();
    assert!(close(norm, 1.0, 1e-6));
    assert!(close(vals(g.get("b").unwrap())[0], 12.0 * coef, 1e-6));
}

#[test]
fn grad_accumulation_averages_micro_batches() {
    let w = Var::from_vec(vec![1.0f32, 2.0], 2, &test_device()).unwrap();
    let params = vec![("w".to_string(), w.clone())];
    let mut acc = GradAccumulator::new();
    for s in [1.0f64, 3.0] {
        // d/dw (s · Σ w²) = 2 s w
        let loss = (w.as_tensor().sqr().unwrap().sum_all().unwrap() * s).unwrap();
        acc.add_store(&params, &loss.backward().unwrap()).unwrap();
    }
    assert_eq!(acc.count(), 2);
    let g = acc.finish().unwrap();
    assert_eq!(vals(g.get("w").unwrap()), vec![4.0, 8.0]);
}

fn logsumexp(xs: &[f64]) -> f64 {
    let m = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

#[test]
fn masked_cross_entropy_matches_manual() {
    let logits: Vec<f32> = vec![
        1.0, 2.0, 3.0, /**/ 0.5, -1.0, 0.0, /**/ 10.0, 0.0, -10.0, /**/ 0.0, 0.0,
        0.0,
    ];
    let l = Tensor::from_vec(logits.clone(), (2, 2, 3), &test_device()).unwrap();
    let targets = Tensor::new(&[[2u32, 0], [1, 1]], &test_device()).unwrap();
    let mask = Tensor::new(&[[1f32, 1.0], [1.0, 0.0]], &test_device()).unwrap();
    let row = |i: usize| {
        logits[i * 3..i * 3 + 3]
            .iter()
            .map(|&x| f64::from(x))
            .collect::<Vec<_>>()
    };
    let nll = |i: usize, t: usize| logsumexp(&row(i)) - row(i)[t];
    let want = (nll(0, 2) + nll(1, 0) + nll(2, 1)) / 3.0;
    let got = masked_cross_entropy(&l, &targets, &mask).unwrap();
    assert_eq!(got.dims(), &[] as &[usize]);
    assert!(
        close(vals(&got)[0], want, 1e-6),
        "{} vs {want}",
        vals(&got)[0]
    );
    let (sum, count) = masked_cross_entropy_sum(&l, &targets, &mask).unwrap();
    assert!(close(vals(&sum)[0], want * 3.0, 1e-6));
    assert_eq!(vals(&count)[0], 3.0);
    // bf16 logits are reduced in f32.
    let lb = l.to_dtype(DType::BF16).unwrap();
    let gb = masked_cross_entropy(&lb, &targets, &mask).unwrap();
    assert_eq!(gb.dtype(), DType::F32);
    assert!(close(vals(&gb)[0], want, 2e-2));
    // Accuracy: argmax rows are [2, 0, 0, 0]; masked targets [2, 0, 1] → 2 of 3.
    assert_eq!(token_accuracy(&l, &targets, &mask).unwrap(), (2, 3));
    // No target at all: 0, not NaN.
    let none = masked_cross_entropy(&l, &targets, &mask.zeros_like().unwrap()).unwrap();
    assert_eq!(vals(&none)[0], 0.0);
    // Shape errors are typed.
    let bad = masked_cross_entropy(
        &l,
        &targets,
        &Tensor::ones((2, 3), DType::F32, &test_device()).unwrap(),
    );
    assert!(
        matches!(bad, Err(AdapterError::ShapeMismatch { .. })),
        "{bad:?}"
    );
}

#[test]
fn masked_cross_entropy_gradient_matches_finite_differences() {
    let (b, t, v) = (2, 3, 5);
    let base = tensor(21, &[b, t, v], 2.0).to_dtype(DType::F64).unwrap();
    let targets = Tensor::new(&[[4u32, 0, 2], [1, 3, 3]], &test_device()).unwrap();
    let mask = Tensor::new(&[[1f32, 0.0, 1.0], [1.0, 1.0, 0.0]], &test_device()).unwrap();
    // Analytic gradient through a Var (f32 logits).
    let x = Var::from_tensor(&base.to_dtype(DType::F32).unwrap()).unwrap();
    let loss = masked_cross_entropy(x.as_tensor(), &targets, &mask).unwrap();
    let grad = loss.backward().unwrap();
    let analytic = vals(grad.get(x.as_tensor()).expect("logits get a gradient"));
    // Central differences in f64 on the same function (which reduces in f32).
    let f = |t: &Tensor| vals(&masked_cross_entropy(t, &targets, &mask).unwrap())[0];
    let flat = vals(&base);
    let eps = 1e-2;
    let mut max_err: f64 = 0.0;
    for i in 0..flat.len() {
        let bump = |d: f64| {
            let mut p = flat.clone();
            p[i] += d;
            Tensor::from_vec(p, (b, t, v), &test_device()).unwrap()
        };
        let fd = (f(&bump(eps)) - f(&bump(-eps))) / (2.0 * eps);
        max_err = max_err.max((fd - analytic[i]).abs());
    }
    assert!(max_err < 2e-4, "max |fd - analytic| = {max_err}");
    // Masked-out positions get exactly zero gradient.
    assert!(analytic[v..2 * v].iter().all(|&g| g == 0.0));
    // The analytic gradient is (softmax - onehot) / n at a masked position.
    let row: Vec<f64> = flat[..v].to_vec();
    let lse = logsumexp(&row);
    for j in 0..v {
        let want = ((row[j] - lse).exp() - if j == 4 { 1.0 } else { 0.0 }) / 4.0;
        assert!(
            (analytic[j] - want).abs() < 1e-6,
            "j {j}: {} vs {want}",
            analytic[j]
        );
    }
    // bf16 logits: the gradient flows back through the cast.
    let xb = Var::from_tensor(&base.to_dtype(DType::BF16).unwrap()).unwrap();
    let gb = masked_cross_entropy(xb.as_tensor(), &targets, &mask)
        .unwrap()
        .backward()
        .unwrap();
    let gb = vals(gb.get(xb.as_tensor()).expect("bf16 logits get a gradient"));
    assert!(gb.iter().zip(&analytic).all(|(a, b)| (a - b).abs() < 2e-2));
}

/// `causal_lm_loss` from hidden states and a frozen head: the value against logsumexp computed
/// here in f64 from `h·Wᵀ`, `∂/∂h` against central differences, bf16 within bf16's precision,
/// and no gradient for the head.
#[test]
fn causal_lm_loss_matches_manual_and_finite_differences() {
    let (b, t, hid, v) = (2, 3, 4, 7);
    let h0 = tensor(31, &[b, t, hid], 1.5).to_dtype(DType::F64).unwrap();
    let w = tensor(32, &[v, hid], 1.0).to_dtype(DType::F64).unwrap();
    let targets = Tensor::new(&[[6u32, 0, 2], [1, 3, 3]], &test_device()).unwrap();
    let mask = Tensor::new(&[[1f32, 0.0, 1.0], [1.0, 1.0, 1.0]], &test_device()).unwrap();
    let (hv, wv) = (vals(&h0), vals(&w));
    let tv = [6usize, 0, 2, 1, 3, 3];
    let mv = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0];
    let manual = |hv: &[f64]| {
        let mut sum = 0.0;
        for i in 0..b * t {
            let row: Vec<f64> = (0..v)
                .map(|j| (0..hid).map(|k| hv[i * hid + k] * wv[j * hid + k]).sum())
                .collect();
            sum += mv[i] * (logsumexp(&row) - row[tv[i]]);
        }
        sum / mv.iter().sum::<f64>()
    };
    let want = manual(&hv);
    let x = Var::from_tensor(&h0).unwrap();
    let loss = causal_lm_loss(x.as_tensor(), &w, &targets, &mask).unwrap();
    assert_eq!(loss.dims(), &[] as &[usize]);
    assert!(
        close(vals(&loss)[0], want, 1e-6),
        "{} vs {want}",
        vals(&loss)[0]
    );
    let (sum, count) = causal_lm_loss_sum(x.as_tensor(), &w, &targets, &mask).unwrap();
    assert!(close(vals(&sum)[0], want * 5.0, 1e-6));
    assert_eq!(vals(&count)[0], 5.0);
    let grads = loss.backward().unwrap();
    assert!(grads.get(&w).is_none(), "the head is frozen");
    let analytic = vals(
        grads
            .get(x.as_tensor())
            .expect("hidden states get a gradient"),
    );
    let eps = 1e-5;
    for i in 0..hv.len() {
        let (mut p, mut m) = (hv.clone(), hv.clone());
        p[i] += eps;
        m[i] -= eps;
        let fd = (manual(&p) - manual(&m)) / (2.0 * eps);
        assert!(
            (analytic[i] - fd).abs() < 1e-6,
            "dh[{i}]: {} vs {fd}",
            analytic[i]
        );
    }
    // bf16 hidden states and head: the loss is reduced in f32.
    let lb = causal_lm_loss(
        &h0.to_dtype(DType::BF16).unwrap(),
        &w.to_dtype(DType::BF16).unwrap(),
        &targets,
        &mask,
    )
    .unwrap();
    assert_eq!(lb.dtype(), DType::F32);
    assert!(
        close(vals(&lb)[0], want, 3e-2),
        "{} vs {want}",
        vals(&lb)[0]
    );
    // Shape errors are typed.
    let bad = causal_lm_loss(&h0, &w, &targets.narrow(1, 0, 2).unwrap(), &mask);
    assert!(
        matches!(bad, Err(AdapterError::ShapeMismatch { .. })),
        "{bad:?}"
    );
}
