//! Seeded, reproducible dropout masks.
//!
//! candle's `ops::dropout` draws from an unseedable CPU generator; training must be reproducible
//! and resumable, so masks come from a counter-based seed: `mix_seed(layer_seed, step)`.

use candle_core::{DType, Device, Shape, Tensor};
use rand::{Rng, SeedableRng};

/// An inverted-dropout mask: each element is `0` with probability `p`, else `1 / (1 - p)`.
pub fn dropout_mask(
    shape: &Shape,
    p: f64,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability must be in [0, 1), got {p}")
    }
    let keep = 1.0 / (1.0 - p);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut draw = move || if rng.random::<f64>() < p { 0.0 } else { keep };
    let n = shape.elem_count();
    if dtype == DType::F64 {
        Tensor::from_vec((0..n).map(|_| draw()).collect::<Vec<f64>>(), shape, device)
    } else {
        let mask: Vec<f32> = (0..n).map(|_| draw() as f32).collect();
        Tensor::from_vec(mask, shape, device)?.to_dtype(dtype)
    }
}
