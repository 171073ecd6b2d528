//! Differentiable drop-ins for `candle_nn::ops`: swap `use candle_nn::ops` for this module.
//!
//! candle-nn 0.11 builds `softmax_last_dim`, `rms_norm` and `layer_norm` with `apply_op*_no_bwd`,
//! so no gradient flows through them. These run the same fused forward kernels (CPU and CUDA)
//! and record a hand-written backward (a fused kernel on CPU).

use candle_core::shape::Dim;
use candle_core::{Result, Tensor};

/// Softmax over the last dimension; differentiable `candle_nn::ops::softmax_last_dim`.
/// Unlike candle's, a non-contiguous input is accepted (copied to contiguous first).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    crate::ops::softmax_last_dim(xs)
}

/// `candle_nn::ops::softmax`: the fused [`softmax_last_dim`] over the last dimension, candle's
/// composition of tensor ops (differentiable) over any other.
pub fn softmax<D: Dim>(xs: &Tensor, dim: D) -> Result<Tensor> {
    let dim = dim.to_index(xs.shape(), "softmax")?;
    if dim + 1 == xs.rank() {
        softmax_last_dim(xs)
    } else {
        candle_nn::ops::softmax(xs, dim)
    }
}

/// RMS norm over the last dimension; differentiable `candle_nn::ops::rms_norm` (gradients to
/// `xs` and `alpha`). Also accepts `f64` and non-contiguous inputs.
pub fn rms_norm(xs: &Tensor, alpha: &Tensor, eps: f32) -> Result<Tensor> {
    crate::ops::rms_norm(xs, alpha, eps)
}

/// Layer norm over the last dimension; differentiable `candle_nn::ops::layer_norm` (gradients to
/// `xs`, `alpha` and `beta`). Also accepts `f64` and non-contiguous inputs.
pub fn layer_norm(xs: &Tensor, alpha: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    crate::ops::layer_norm(xs, alpha, beta, eps)
}

/// `candle_nn::ops::silu` (candle's forward kernel) with a fused backward.
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    crate::ops::silu(xs)
}

/// `candle_nn::ops::swiglu`: `silu(a) * b` for the two halves of the last dimension.
pub fn swiglu(xs: &Tensor) -> Result<Tensor> {
    let xs = xs.chunk(2, candle_core::D::Minus1)?;
    &silu(&xs[0])? * &xs[1]
}

/// `candle_nn::ops::sigmoid`, which already records its backward (`σ(1 − σ)`); re-exported so
/// that one `use` line covers every op.
pub fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    candle_nn::ops::sigmoid(xs)
}
