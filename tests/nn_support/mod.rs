//! Helpers of the `nn` drop-in tests: deterministic tensors, gradients, errors, finite differences.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
/// `max |a − b| / max |b|` in f64: the suite's one relative error.
pub use common::rel_err as rel;
pub use common::test_device;

use adapters_runtime::candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic values in `[-scale, scale)` (xorshift), as a tensor of `dtype` on the test device
/// (`ADAPTERS_TEST_DEVICE`, default CPU).
pub fn rand(seed: u64, shape: &[usize], scale: f64, dtype: DType) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_device(&test_device())
        .unwrap()
}

/// `max |a − b|` in f64.
pub fn abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
    d.to_scalar::<f64>().unwrap()
}

/// Asserts `rel(a, b) <= tol`, printing the observed error.
pub fn assert_rel(what: &str, a: &Tensor, b: &Tensor, tol: f64) -> f64 {
    let e = rel(a, b);
    println!("{what}: rel err {e:.3e} (bound {tol:.0e})");
    assert!(e <= tol, "{what}: rel err {e:e} > {tol:e}");
    e
}

/// The fixed upstream gradient used for output `y`: random values of `y`'s shape, rounded to
/// bf16 so that every dtype sees the same values.
pub fn upstream(y: &Tensor) -> Tensor {
    let r = rand(99, y.dims(), 1.0, DType::BF16);
    r.to_dtype(y.dtype()).unwrap()
}

/// `sum(f(inputs) ⊙ r)` with `r` = [`upstream`].
pub fn loss(y: &Tensor) -> Result<Tensor> {
    (y * upstream(y))?.sum_all()
}

/// Output and gradients of `sum(f(vars) ⊙ r)` with respect to each input (made a `Var`).
pub fn grads(f: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[&Tensor]) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let g = loss(&y).unwrap().backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| g.get(v.as_tensor()).expect("no gradient recorded").clone())
        .collect();
    (y, gs)
}

/// Central finite differences of `sum(f(inputs) ⊙ r)` w.r.t. input `k` (f64 inputs), step `h`.
pub fn finite_diff(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[&Tensor],
    k: usize,
) -> Tensor {
    let h = 1e-6;
    let base: Vec<f64> = inputs[k].flatten_all().unwrap().to_vec1().unwrap();
    let eval = |vals: &[f64]| -> f64 {
        let mut ts: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        ts[k] = Tensor::from_vec(vals.to_vec(), inputs[k].dims(), inputs[k].device()).unwrap();
        let y = f(&ts).unwrap();
        loss(&y).unwrap().to_scalar::<f64>().unwrap()
    };
    let mut out = Vec::with_capacity(base.len());
    for i in 0..base.len() {
        let mut v = base.clone();
        v[i] = base[i] + h;
        let up = eval(&v);
        v[i] = base[i] - h;
        out.push((up - eval(&v)) / (2.0 * h));
    }
    Tensor::from_vec(out, inputs[k].dims(), inputs[k].device()).unwrap()
}
