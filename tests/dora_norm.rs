//! The factored DoRA norm equals the dense `‖W0 + s·B·A‖`, in f64, f32, bf16 and f16, at large
//! dimensions (several row chunks) and for embeddings; plus property tests over random shapes.

mod common;

use adapters_runtime::candle_core::{DType, Module, Tensor, D};
use adapters_runtime::layers::dora_norm::{factored_norm, row_sq_norms, weight_times_at};
use adapters_runtime::{AdaptedEmbedding, AdaptedLinear, AdapterConfig};
use common::{assert_close, rand_tensor, rel_err, test_device};
use proptest::prelude::*;

/// The dense reference: `‖W + s·B·A‖` per row, forming the full matrix.
fn dense_norm(
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s: f64,
) -> adapters_runtime::candle_core::Result<Tensor> {
    let dt = a.dtype();
    let full = (w.to_dtype(dt)? + (b.matmul(a)? * s)?)?;
    full.sqr()?.sum(D::Minus1)?.sqrt()
}

/// A DoRA layer over `w` with random A and B (no magnitude given: m = n).
fn dora(w: Tensor, r: usize, alpha: f64, seed: u64) -> AdaptedLinear {
    let (dout, din) = w.dims2().unwrap();
    let mut l = AdaptedLinear::new(w, None).with_path("l");
    let a = rand_tensor(seed, &[r, din], 1.0 / (din as f64).sqrt(), DType::F32);
    let b = rand_tensor(seed + 1, &[dout, r], 0.2, DType::F32);
    l.attach_weights(AdapterConfig::dora(r, alpha), &a, &b, None)
        .unwrap();
    l
}

/// The dense norm in f64 from the layer's own (possibly low-precision) W0, A and B.
fn dense_f64(l: &AdaptedLinear) -> Tensor {
    let ad = l.adapter().unwrap();
    let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    dense_norm(
        &f(l.weight()),
        &f(ad.lora_a().as_tensor()),
        &f(ad.lora_b().as_tensor()),
        ad.scaling(),
    )
    .unwrap()
}

#[test]
fn factored_equals_dense_in_f64() {
    let w = rand_tensor(1, &[96, 80], 0.1, DType::F64);
    let l = dora(w, 8, 16.0, 2);
    assert_close("f64 norm", &l.weight_norm().unwrap(), &dense_f64(&l), 1e-13);
}

#[test]
fn factored_equals_dense_at_large_dims_in_low_precision() {
    // 3000 × 5000: a bf16/f16 weight is cast to f32 in chunks of 1677 rows (two chunks).
    let w32 = rand_tensor(3, &[3000, 5000], 0.02, DType::F32);
    for (dt, tol) in [(DType::F32, 2e-6), (DType::BF16, 2e-6), (DType::F16, 2e-6)] {
        let l = dora(w32.to_dtype(dt).unwrap(), 16, 32.0, 4);
        let got = l.weight_norm().unwrap();
        assert_eq!(got.dtype(), DType::F32, "the norm is accumulated in f32");
        assert_close(
            &format!("{dt:?} norm at 3000×5000"),
            &got,
            &dense_f64(&l),
            tol,
        );
    }
}

#[test]
fn the_norm_clamps_cancellation_at_zero() {
    // W0 = −s·B·A exactly: the true norm is 0; rounding may make the squared norm negative.
    let a = rand_tensor(5, &[4, 32], 0.5, DType::F64);
    let b = rand_tensor(6, &[16, 4], 0.5, DType::F64);
    let s = 2.0;
    let w = (b.matmul(&a).unwrap() * -s).unwrap();
    let n = factored_norm(
        &row_sq_norms(&w, DType::F64).unwrap(),
        &weight_times_at(&w, &a).unwrap(),
        &a,
        &b,
        s,
    )
    .unwrap();
    let v: Vec<f64> = n.to_vec1().unwrap();
    assert!(
        v.iter().all(|x| x.is_finite() && *x >= 0.0 && *x < 1e-6),
        "{v:?}"
    );
}

#[test]
fn embedding_norm_runs_over_the_vocab_axis() {
    let table = rand_tensor(7, &[300, 24], 0.5, DType::F64);
    let mut e = AdaptedEmbedding::new(table.clone()).with_path("emb");
    let a = rand_tensor(8, &[4, 300], 0.3, DType::F64);
    let b = rand_tensor(9, &[24, 4], 0.3, DType::F64);
    e.attach_weights(AdapterConfig::dora(4, 8.0), &a, &b, None)
        .unwrap();
    // ‖E + s·Aᵀ·Bᵀ‖ over the vocab axis = dense norm of the transposed table.
    let dense = dense_norm(&table.t().unwrap().contiguous().unwrap(), &a, &b, 2.0).unwrap();
    assert_close("embedding norm", &e.weight_norm().unwrap(), &dense, 1e-13);
}

fn shapes() -> impl Strategy<Value = (usize, usize, usize, u64, bool)> {
    (
        1usize..40,
        1usize..40,
        1usize..9,
        any::<u64>(),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_factored_norm_equals_dense((din, dout, r, seed, _b) in shapes(), alpha in 0.5f64..64.0) {
        let l = dora(rand_tensor(seed, &[dout, din], 0.5, DType::F64), r, alpha, seed ^ 1);
        prop_assert!(rel_err(&l.weight_norm().unwrap(), &dense_f64(&l)) < 1e-12);
    }

    #[test]
    fn prop_merge_then_forward_equals_forward((din, dout, r, seed, lora) in shapes()) {
        let mut l = AdaptedLinear::new(rand_tensor(seed, &[dout, din], 0.5, DType::F64), Some(rand_tensor(seed ^ 3, &[dout], 0.5, DType::F64)));
        let cfg = if lora { AdapterConfig::lora(r, 2.0 * r as f64) } else { AdapterConfig::dora(r, 2.0 * r as f64) };
        let a = rand_tensor(seed ^ 4, &[r, din], 0.4, DType::F64);
        let b = rand_tensor(seed ^ 5, &[dout, r], 0.4, DType::F64);
        l.attach_weights(cfg, &a, &b, None).unwrap();
        let x = rand_tensor(seed ^ 6, &[3, din], 1.0, DType::F64);
        let w0 = l.weight().clone();
        let y = l.forward(&x).unwrap();
        l.merge().unwrap();
        prop_assert!(rel_err(&l.forward(&x).unwrap(), &y) < 1e-12);
        l.unmerge().unwrap();
        prop_assert!(rel_err(l.weight(), &w0) < 1e-12);
    }

    #[test]
    fn prop_zero_b_adapter_is_the_base((din, dout, r, seed, lora) in shapes()) {
        let w = rand_tensor(seed, &[dout, din], 0.5, DType::F64);
        let mut l = AdaptedLinear::new(w.clone(), None);
        let cfg = if lora { AdapterConfig::lora(r, 8.0) } else { AdapterConfig::dora(r, 8.0) };
        l.attach(cfg, seed).unwrap();
        let x = rand_tensor(seed ^ 7, &[2, din], 1.0, DType::F64);
        let base = x.matmul(&w.t().unwrap()).unwrap();
        prop_assert!(rel_err(&l.forward(&x).unwrap(), &base) < 1e-12);
        let mut e = AdaptedEmbedding::new(w);
        e.attach(cfg, seed).unwrap();
        let ids = Tensor::new(&[0u32, (dout - 1) as u32], &test_device()).unwrap();
        let rows = e.embeddings().index_select(&ids, 0).unwrap();
        prop_assert!(rel_err(&e.forward(&ids).unwrap(), &rows) < 1e-12);
    }
}
