//! Rotary position embeddings, HF's non-interleaved (`rotate_half`) form: tables with llama3
//! scaling, built lazily for the positions used, applied by [`crate::nn::rotary_emb::rope`]
//! (candle's fused kernel, with a backward).

use crate::hf::llama_config::RopeParameters;
use crate::nn::rotary_emb::rope;
use candle_core::{DType, Device, Tensor};
use std::sync::RwLock;

/// `cos` / `sin` tables `[positions, head_dim / 2]`, built lazily: only up to the longest position
/// used so far (grown to the next power of two, at most `max_positions`), so a long-context
/// config costs nothing until long sequences are run. Every row is computed on its own, so the
/// values do not depend on how far the tables have grown.
#[derive(Debug)]
pub struct Rope {
    inv: Vec<f64>,
    max_positions: usize,
    dtype: DType,
    device: Device,
    tables: RwLock<Option<Tables>>,
}

/// Built rows of the tables.
#[derive(Clone, Debug)]
struct Tables {
    cos: Tensor,
    sin: Tensor,
}

impl Tables {
    fn positions(&self) -> usize {
        self.cos.dims()[0]
    }
}

impl Clone for Rope {
    fn clone(&self) -> Self {
        Self {
            inv: self.inv.clone(),
            max_positions: self.max_positions,
            dtype: self.dtype,
            device: self.device.clone(),
            tables: RwLock::new(self.read_tables().clone()),
        }
    }
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
    /// Tables for up to `max_positions` positions, in `dtype`; no row is built yet.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        p: &RopeParameters,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            inv: inv_freq(head_dim, p),
            max_positions,
            dtype,
            device: device.clone(),
            tables: RwLock::new(None),
        })
    }

    /// Positions the tables may cover (`max_position_embeddings`).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Positions built so far (the longest `offset + seq` used, rounded up to a power of two).
    pub fn built_positions(&self) -> usize {
        self.read_tables().as_ref().map_or(0, Tables::positions)
    }

    fn read_tables(&self) -> std::sync::RwLockReadGuard<'_, Option<Tables>> {
        // The tables are only ever replaced whole, so a poisoned lock still holds valid ones.
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Rows `0..positions` of the tables, as the full-length tables would hold them.
    fn build(&self, positions: usize) -> candle_core::Result<Tables> {
        let half = self.inv.len();
        let len = positions.checked_mul(half).ok_or_else(|| {
            candle_core::Error::Msg(format!("rope tables of {positions} × {half} overflow"))
        })?;
        let mut angles = Vec::with_capacity(len);
        for t in 0..positions {
            angles.extend(self.inv.iter().map(|f| t as f64 * f));
        }
        let angles = Tensor::from_vec(angles, (positions, half), &self.device)?;
        Ok(Tables {
            cos: angles.cos()?.to_dtype(self.dtype)?,
            sin: angles.sin()?.to_dtype(self.dtype)?,
        })
    }

    /// `cos` / `sin` rows `offset..offset + seq`, growing the tables when needed.
    fn rows(&self, offset: usize, seq: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let end = offset.checked_add(seq).filter(|&e| e <= self.max_positions);
        let Some(end) = end else {
            candle_core::bail!(
                "positions {offset}..{} exceed max_position_embeddings = {}",
                offset.saturating_add(seq),
                self.max_positions
            )
        };
        let narrow = |t: &Tables| -> candle_core::Result<(Tensor, Tensor)> {
            Ok((t.cos.narrow(0, offset, seq)?, t.sin.narrow(0, offset, seq)?))
        };
        if let Some(t) = self.read_tables().as_ref().filter(|t| t.positions() >= end) {
            return narrow(t);
        }
        let mut guard = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = guard.as_ref().filter(|t| t.positions() >= end) {
            return narrow(t);
        }
        let positions = end
            .checked_next_power_of_two()
            .unwrap_or(end)
            .min(self.max_positions);
        let tables = self.build(positions)?;
        let out = narrow(&tables);
        *guard = Some(tables);
        out
    }

    /// Applies the rotation to `x [batch, heads, seq, head_dim]` at positions `0..seq`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.apply_at(x, 0)
    }

    /// Applies the rotation to `x [batch, heads, seq, head_dim]` at positions
    /// `offset..offset + seq` (incremental decoding).
    pub fn apply_at(&self, x: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        let (_, _, seq, _) = x.dims4()?;
        let (cos, sin) = self.rows(offset, seq)?;
        rope(&x.contiguous()?, &cos, &sin)
    }
}
