//! Differentiable drop-ins for `candle_nn::rotary_emb`: the same fused kernels, with a backward.
//!
//! The backward of a rotation is the transposed rotation: the same kernel with `−sin`.
//! Gradients flow to `xs` (fused), and to `cos` / `sin` when they are tracked (a few tensor ops;
//! they are constants in a Llama, so usually skipped). As in candle, the caller
//! narrows `cos` / `sin` (`[seq, head_dim/2]`, or `[b, seq, head_dim/2]`) for a position offset.

use crate::ops::{rope_any, RopeKind};
use candle_core::{Result, Tensor};

/// Rotary embedding of `xs: [b, h, t, d]`, rotating element `i` with `i + d/2`.
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope_any(RopeKind::Halves, xs, cos, sin)
}

/// Interleaved rotary embedding of `xs: [b, h, t, d]`, rotating element `2i` with `2i + 1`.
pub fn rope_i(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope_any(RopeKind::Interleaved, xs, cos, sin)
}

/// Rotary embedding of `xs: [b, t, h, d]`, rotating element `i` with `i + d/2`.
pub fn rope_thd(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rope_any(RopeKind::Thd, xs, cos, sin)
}
