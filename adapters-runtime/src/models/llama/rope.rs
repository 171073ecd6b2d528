//! Rotary position embeddings, HF's non-interleaved (`rotate_half`) form: tables with llama3
//! scaling, applied by [`crate::nn::rotary_emb::rope`] (candle's fused kernel, with a backward).

use crate::hf::llama_config::RopeParameters;
use crate::nn::rotary_emb::rope;
use candle_core::{DType, Device, Tensor};

/// Precomputed `cos` / `sin` tables `[max_positions, head_dim / 2]`.
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// Inverse frequencies `θ^(−2i/d)`, with llama3 scaling when configured.
fn inv_freq(head_dim: usize, p: &RopeParameters) -> Vec<f64> {
    let theta = p.rope_theta.unwrap_or(10_000.0);
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    if p.rope_type.as_deref() != Some("llama3") {
        return base;
    }
    let factor = p.factor.unwrap_or(8.0);
    let low = p.low_freq_factor.unwrap_or(1.0);
    let high = p.high_freq_factor.unwrap_or(4.0);
    let old = p.original_max_position_embeddings.unwrap_or(8192) as f64;
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

impl Rope {
    /// Tables for `max_positions` positions, in `dtype`.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        p: &RopeParameters,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let inv = inv_freq(head_dim, p);
        let half = inv.len();
        let mut angles = Vec::with_capacity(max_positions * half);
        for t in 0..max_positions {
            angles.extend(inv.iter().map(|f| t as f64 * f));
        }
        let angles = Tensor::from_vec(angles, (max_positions, half), device)?;
        Ok(Self {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }

    /// Positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Applies the rotation to `x [batch, heads, seq, head_dim]` at positions `0..seq`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply_at(x, 0)
    }

    /// Applies the rotation to `x [batch, heads, seq, head_dim]` at positions
    /// `offset..offset + seq` (incremental decoding).
    pub fn apply_at(&self, x: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        let (_, _, seq, _) = x.dims4()?;
        let end = offset.saturating_add(seq);
        if end > self.max_positions() {
            candle_core::bail!(
                "positions {offset}..{end} exceed max_position_embeddings = {}",
                self.max_positions()
            )
        }
        let cos = self.cos.narrow(0, offset, seq)?;
        let sin = self.sin.narrow(0, offset, seq)?;
        rope(&x.contiguous()?, &cos, &sin)
    }
}
