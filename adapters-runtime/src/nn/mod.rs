//! Drop-in constructors with `candle_nn`'s signatures that return adapted layers and remember the
//! `VarBuilder` path, so adapter tensors are named like the checkpoint's weights.
//!
//! Swap `use candle_nn::{linear, linear_no_bias, embedding}` for `use adapters_runtime::nn::{…}`.
//! The norm layers ([`RmsNorm`], [`LayerNorm`]), [`ops`] and [`rotary_emb`] are drop-ins for
//! candle-nn's fused ops, which record no gradient in candle 0.11: these do.

mod norm;
pub mod ops;
pub mod rotary_emb;

pub use norm::{layer_norm, layer_norm_no_bias, rms_norm, LayerNorm, LayerNormConfig, RmsNorm};

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
