//! The adapter state shared by adapted linear and embedding layers: `A`, `B`, the DoRA magnitude,
//! the cached base norm and the merged / enabled / training flags.

use crate::adapter_config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::estimate::Method;
use crate::layers::dora_norm;
use crate::ops::dropout_mask;
use crate::seed::mix_seed;
use candle_core::{DType, Shape, Tensor, Var};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

/// The DoRA norm kept while norm caching is on (PEFT's `DoraCaching`; see
/// [`crate::Adapters::set_dora_norm_caching`]). A clone starts off and empty.
#[derive(Debug, Default)]
pub(crate) struct NormCache {
    on: AtomicBool,
    norm: RwLock<Option<Tensor>>,
}

/// One attached adapter. `A` is `[r, in]` (`[r, vocab]` for embeddings) and `B` is `[out, r]`
/// (`[dim, r]`), both in the adapter dtype; the DoRA magnitude is `[out]` (`[dim]`).
///
/// `Clone` shares the `Var`s (the clone trains the same tensors); the dropout counter is copied.
#[derive(Debug)]
pub struct Adapter {
    pub(crate) config: AdapterConfig,
    pub(crate) scaling: f64,
    pub(crate) a: Var,
    pub(crate) b: Var,
    pub(crate) magnitude: Option<Var>,
    /// `‖W0‖²` per output row (per embedding dim), cached at attach: W0 is frozen.
    pub(crate) base_sq: Option<Tensor>,
    /// The norm used when merging, kept to unmerge exactly as PEFT does.
    pub(crate) merged_norm: Option<Tensor>,
    /// Outputs whose DoRA scale was 0 when merging (`m = 0`), as `(indices [k] u32, rows of
    /// W0 + s·B·A [k] along the output axis)`: the merged weight is zero there, so unmerge restores
    /// them from here instead of dividing by 0. `None` when there are none.
    pub(crate) merged_lost: Option<(Tensor, Tensor)>,
    pub(crate) merged: bool,
    pub(crate) enabled: bool,
    pub(crate) training: bool,
    pub(crate) seed: u64,
    pub(crate) dropout_step: AtomicU64,
    pub(crate) norm_cache: NormCache,
}

impl Clone for Adapter {
    fn clone(&self) -> Self {
        Self {
            config: self.config,
            scaling: self.scaling,
            a: self.a.clone(),
            b: self.b.clone(),
            magnitude: self.magnitude.clone(),
            base_sq: self.base_sq.clone(),
            merged_norm: self.merged_norm.clone(),
            merged_lost: self.merged_lost.clone(),
            merged: self.merged,
            enabled: self.enabled,
            training: self.training,
            seed: self.seed,
            dropout_step: AtomicU64::new(self.dropout_step()),
            norm_cache: NormCache::default(),
        }
    }
}

impl Adapter {
    pub(crate) fn new(config: AdapterConfig, a: Var, b: Var, seed: u64) -> Self {
        Self {
            scaling: config.scaling(),
            config,
            a,
            b,
            magnitude: None,
            base_sq: None,
            merged_norm: None,
            merged_lost: None,
            merged: false,
            enabled: true,
            training: false,
            seed,
            dropout_step: AtomicU64::new(0),
            norm_cache: NormCache::default(),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdapterConfig {
        &self.config
    }

    /// The factor applied to `B·A` (α/r or α/√r).
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// `lora_A`.
    pub fn lora_a(&self) -> &Var {
        &self.a
    }

    /// `lora_B`.
    pub fn lora_b(&self) -> &Var {
        &self.b
    }

    /// The DoRA magnitude vector (`None` for LoRA).
    pub fn magnitude(&self) -> Option<&Var> {
        self.magnitude.as_ref()
    }

    /// The dtype adapter weights are kept in.
    pub fn dtype(&self) -> DType {
        self.a.dtype()
    }

    /// Whether the adapter is merged into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// Whether the adapter contributes to the output.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the adapter is in training mode (dropout active).
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// How many dropout masks this adapter has drawn (saved with a training checkpoint so a
    /// resumed run draws the same masks).
    pub fn dropout_step(&self) -> u64 {
        self.dropout_step.load(Ordering::Relaxed)
    }

    /// Restores the dropout counter (see [`Adapter::dropout_step`]).
    pub fn set_dropout_step(&self, step: u64) {
        self.dropout_step.store(step, Ordering::Relaxed)
    }

    /// The trainable tensors under PEFT's names (`lora_A.weight`, `lora_B.weight`,
    /// `lora_magnitude_vector`), for linear layers.
    pub(crate) fn named_vars(&self, a_name: &str, b_name: &str) -> Vec<(String, Var)> {
        let mut v = vec![
            (a_name.to_string(), self.a.clone()),
            (b_name.to_string(), self.b.clone()),
        ];
        if let Some(m) = &self.magnitude {
            v.push(("lora_magnitude_vector".to_string(), m.clone()));
        }
        v
    }

    /// Trainable parameter count.
    pub fn trainable_params(&self) -> usize {
        self.a.elem_count()
            + self.b.elem_count()
            + self.magnitude.as_ref().map_or(0, |m| m.elem_count())
    }

    /// Whether the adapter path runs in `forward`.
    pub(crate) fn active(&self) -> bool {
        self.enabled && !self.merged
    }

    /// Dropout is applied in training when `p > 0`.
    pub(crate) fn dropout_active(&self, train: bool) -> bool {
        train && self.config.dropout > 0.0
    }

    /// `x` with a fresh seeded inverted-dropout mask applied.
    pub(crate) fn apply_dropout(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let step = self.dropout_step.fetch_add(1, Ordering::Relaxed);
        let shape: &Shape = x.shape();
        let mask = dropout_mask(
            shape,
            self.config.dropout,
            mix_seed(self.seed, step),
            x.dtype(),
            x.device(),
        )?;
        x * mask
    }

    /// Turns DoRA norm caching on or off; either way the cached norm is dropped.
    pub(crate) fn set_norm_caching(&self, on: bool) {
        self.norm_cache.on.store(on, Ordering::Relaxed);
        *self
            .norm_cache
            .norm
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The cached norm, while caching is on and one was computed.
    pub(crate) fn cached_norm(&self) -> Option<Tensor> {
        if !self.norm_cache.on.load(Ordering::Relaxed) {
            return None;
        }
        let guard = self
            .norm_cache
            .norm
            .read()
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }

    /// Keeps `norm` while caching is on.
    pub(crate) fn store_norm(&self, norm: &Tensor) {
        if self.norm_cache.on.load(Ordering::Relaxed) {
            *self
                .norm_cache
                .norm
                .write()
                .unwrap_or_else(|e| e.into_inner()) = Some(norm.clone());
        }
    }

    /// The detached DoRA norm `‖W0 + s·B·A‖` given `W0·Aᵀ` (computed by the layer).
    pub(crate) fn norm_from(&self, w_at: &Tensor) -> candle_core::Result<Tensor> {
        let base_sq = self
            .base_sq
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("DoRA base norm not cached".into()))?;
        dora_norm::factored_norm(
            base_sq,
            w_at,
            self.a.as_tensor(),
            self.b.as_tensor(),
            self.scaling,
        )
    }

    /// `m / n` in the adapter dtype, and 1 where `n = 0` (see [`dora_norm::dora_scale`]);
    /// carries the magnitude's gradient.
    pub(crate) fn magnitude_scale(&self, norm: &Tensor) -> candle_core::Result<Tensor> {
        let m = self
            .magnitude
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("DoRA magnitude missing".into()))?;
        dora_norm::dora_scale(m.as_tensor(), norm)
    }

    /// `s·B·A` (`[out, in]`), detached — for merging only.
    pub(crate) fn delta(&self) -> candle_core::Result<Tensor> {
        self.b
            .as_tensor()
            .detach()
            .matmul(&self.a.as_tensor().detach())?
            * self.scaling
    }

    pub(crate) fn is_dora(&self) -> bool {
        self.config.method == Method::Dora
    }
}

/// Checks an adapter tensor's shape, naming the layer.
pub(crate) fn check_shape(layer: &str, what: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(AdapterError::ShapeMismatch {
            layer: layer.into(),
            what: what.into(),
            expected: expected.to_vec(),
            actual: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// Checks that a tensor holds floats, naming the layer.
pub(crate) fn check_float(layer: &str, what: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(AdapterError::DTypeMismatch {
            layer: layer.into(),
            what: what.into(),
            expected: "a float dtype (f64, f32, bf16, f16)".into(),
            actual: t.dtype(),
        });
    }
    Ok(())
}
