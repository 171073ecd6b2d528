//! Drop-in constructors with `candle_nn`'s signatures that return adapted layers and remember the
//! `VarBuilder` path, so adapter tensors are named like the checkpoint's weights.
//!
//! Swap `use candle_nn::{linear, linear_no_bias, embedding}` for `use adapters_runtime::nn::{…}`.

use crate::layers::{AdaptedEmbedding, AdaptedLinear};
use candle_nn::VarBuilder;

/// `candle_nn::linear` (with bias), returning a bare [`AdaptedLinear`] that knows its path.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<AdaptedLinear> {
    let path = vb.prefix();
    Ok(AdaptedLinear::from(candle_nn::linear(in_dim, out_dim, vb)?).with_path(path))
}

/// `candle_nn::linear_no_bias`, returning a bare [`AdaptedLinear`] that knows its path.
pub fn linear_no_bias(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
) -> candle_core::Result<AdaptedLinear> {
    let path = vb.prefix();
    Ok(AdaptedLinear::from(candle_nn::linear_no_bias(in_dim, out_dim, vb)?).with_path(path))
}

/// `candle_nn::linear_b`, returning a bare [`AdaptedLinear`] that knows its path.
pub fn linear_b(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<AdaptedLinear> {
    let path = vb.prefix();
    Ok(AdaptedLinear::from(candle_nn::linear_b(in_dim, out_dim, bias, vb)?).with_path(path))
}

/// `candle_nn::embedding`, returning a bare [`AdaptedEmbedding`] that knows its path.
pub fn embedding(
    in_size: usize,
    out_size: usize,
    vb: VarBuilder,
) -> candle_core::Result<AdaptedEmbedding> {
    let path = vb.prefix();
    Ok(AdaptedEmbedding::from(candle_nn::embedding(in_size, out_size, vb)?).with_path(path))
}
