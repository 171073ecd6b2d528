//! [`AdaptedEmbedding`]: a frozen embedding table with an optional LoRA / DoRA adapter, in PEFT's
//! layout (`lora_embedding_A [r, vocab]`, `lora_embedding_B [dim, r]`).

use crate::config::AdapterConfig;
use crate::error::{AdapterError, InLayer, Result};
use crate::estimate;
use crate::layers::adapter::{check_float, check_shape, Adapter};
use crate::layers::{dora_norm, init};
use crate::ops::row_scale;
use candle_core::{Tensor, Var};

/// An embedding `y = E[ids]` over a frozen table `E [vocab, dim]` that may carry an adapter:
///
/// * LoRA: `y = E[ids] + s·Aᵀ[ids]·Bᵀ`
/// * DoRA: `y = (m/n) ⊙ (E[ids] + s·Aᵀ[ids]·Bᵀ)` with `n = ‖E + s·Aᵀ·Bᵀ‖` over the vocab axis
///   (one value per embedding dimension), detached.
///
/// PEFT applies no dropout to embedding adapters; neither does this layer.
#[derive(Debug)]
pub struct AdaptedEmbedding {
    path: Option<String>,
    table: Tensor,
    adapter: Option<Adapter>,
}

// The table lookup (`index_select`) only forms a gradient for the table when the table itself
// tracks one: a frozen table is detached at construction, a trainable one (see
// `AdaptedEmbedding::new_trainable`) keeps its graph identity.

impl From<candle_nn::Embedding> for AdaptedEmbedding {
    fn from(e: candle_nn::Embedding) -> Self {
        Self::new(e.embeddings().clone())
    }
}

impl AdaptedEmbedding {
    /// A bare (not yet adapted) embedding over `table [vocab, dim]`.
    pub fn new(table: Tensor) -> Self {
        Self {
            path: None,
            table: table.detach(),
            adapter: None,
        }
    }

    /// An embedding whose table is trained directly (full training, e.g. pretraining): pass a
    /// `Var`'s tensor; lookups then carry its gradient.
    pub fn new_trainable(table: Tensor) -> Self {
        Self {
            path: None,
            table,
            adapter: None,
        }
    }

    /// Records the checkpoint path of the table (without `.weight`), e.g. `model.embed_tokens`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets the checkpoint path.
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.path = Some(path.into());
    }

    /// The checkpoint path, when known.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    fn name(&self) -> &str {
        self.path.as_deref().unwrap_or("<embedding>")
    }

    /// The current table (`E`, or the merged table while merged).
    pub fn embeddings(&self) -> &Tensor {
        &self.table
    }

    /// Number of rows (`num_embeddings`).
    pub fn vocab_size(&self) -> usize {
        self.table.dims().first().copied().unwrap_or(0)
    }

    /// Embedding dimension.
    pub fn hidden_size(&self) -> usize {
        self.table.dims().get(1).copied().unwrap_or(0)
    }

    /// The attached adapter, if any.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    fn check_base(&self) -> Result<()> {
        let name = self.name();
        if self.table.rank() != 2 {
            return Err(AdapterError::ShapeMismatch {
                layer: name.into(),
                what: "embedding table".into(),
                expected: vec![self.vocab_size(), self.hidden_size()],
                actual: self.table.dims().to_vec(),
            });
        }
        check_float(name, "embedding table", &self.table)
    }

    /// Attaches a freshly initialised adapter as PEFT does for embeddings: A = 0, B ~ N(0, 1)
    /// (seeded by `seed` and the path); for DoRA m = ‖E‖ per dimension. The output is unchanged.
    pub fn attach(&mut self, config: AdapterConfig, seed: u64) -> Result<()> {
        let name = self.name().to_string();
        config.validate(&name)?;
        self.check_base()?;
        let dt = init::adapter_dtype(self.table.dtype());
        let dev = self.table.device().clone();
        let seed = init::layer_seed(seed, &name);
        let a = Tensor::zeros((config.rank, self.vocab_size()), dt, &dev)?;
        let b = init::lora_embedding_b(config.rank, self.hidden_size(), seed, dt, &dev)
            .in_layer(&name)?;
        self.install(config, a, b, None, seed)
    }

    /// Attaches given weights: `a [r, vocab]`, `b [dim, r]`, and for DoRA `magnitude [dim]`
    /// (when `None`, m = ‖E + s·Aᵀ·Bᵀ‖).
    pub fn attach_weights(
        &mut self,
        config: AdapterConfig,
        a: &Tensor,
        b: &Tensor,
        magnitude: Option<&Tensor>,
    ) -> Result<()> {
        let name = self.name().to_string();
        config.validate(&name)?;
        self.check_base()?;
        let dt = init::adapter_dtype(self.table.dtype());
        let (vocab, dim, r) = (self.vocab_size(), self.hidden_size(), config.rank);
        check_shape(&name, "lora_embedding_A", a, &[r, vocab])?;
        check_shape(&name, "lora_embedding_B", b, &[dim, r])?;
        if let Some(m) = magnitude {
            check_shape(&name, "lora_magnitude_vector", m, &[dim])?;
        }
        let dev = self.table.device();
        let to = |t: &Tensor| t.to_device(dev)?.to_dtype(dt);
        let a = to(a).in_layer(&name)?;
        let b = to(b).in_layer(&name)?;
        let m = magnitude.map(to).transpose().in_layer(&name)?;
        let seed = init::layer_seed(0, &name);
        self.install(config, a, b, m, seed)
    }

    fn install(
        &mut self,
        config: AdapterConfig,
        a: Tensor,
        b: Tensor,
        magnitude: Option<Tensor>,
        seed: u64,
    ) -> Result<()> {
        let name = self.name().to_string();
        if self.adapter.is_some() {
            return Err(AdapterError::AlreadyAttached { layer: name });
        }
        let mut ad = Adapter::new(config, Var::from_tensor(&a)?, Var::from_tensor(&b)?, seed);
        if ad.is_dora() {
            ad.base_sq = Some(dora_norm::col_sq_norms(&self.table, ad.dtype()).in_layer(&name)?);
            let m = match magnitude {
                Some(m) => m,
                None => self.norm_of(&ad).in_layer(&name)?,
            };
            ad.magnitude = Some(Var::from_tensor(&m)?);
        }
        self.adapter = Some(ad);
        Ok(())
    }

    fn norm_of(&self, ad: &Adapter) -> candle_core::Result<Tensor> {
        let w_at = dora_norm::embedding_times_at(&self.table, &ad.a.as_tensor().detach())?;
        ad.norm_from(&w_at)
    }

    /// The DoRA norm `‖E + s·Aᵀ·Bᵀ‖` per embedding dimension, without the `vocab × dim` matrix.
    pub fn weight_norm(&self) -> Result<Tensor> {
        let name = self.name();
        match &self.adapter {
            Some(ad) if ad.is_dora() && !ad.merged => self.norm_of(ad).in_layer(name),
            _ => Err(AdapterError::InvalidState {
                layer: name.into(),
                op: "weight_norm",
                reason: "needs an unmerged DoRA adapter".into(),
            }),
        }
    }

    /// The trainable tensors with their PEFT names (`lora_embedding_A`, `lora_embedding_B`,
    /// `lora_magnitude_vector`). Empty when bare.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.adapter.as_ref().map_or_else(Vec::new, |a| {
            a.named_vars("lora_embedding_A", "lora_embedding_B")
        })
    }

    /// Frozen parameters: the table.
    pub fn frozen_params(&self) -> usize {
        estimate::embedding_params(self.vocab_size(), self.hidden_size())
    }

    /// Trainable parameters (0 when bare); equals [`estimate::adapter_params`] with in = vocab.
    pub fn trainable_params(&self) -> usize {
        self.adapter.as_ref().map_or(0, |a| {
            estimate::adapter_params(
                a.config.method,
                self.vocab_size(),
                self.hidden_size(),
                a.config.rank,
            )
        })
    }

    /// Turns the adapter on or off; disabling a merged adapter unmerges it first.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<()> {
        if !enabled && self.adapter.as_ref().is_some_and(|a| a.merged) {
            self.unmerge()?;
        }
        let layer = self.name().to_string();
        self.adapter
            .as_mut()
            .ok_or(AdapterError::NotAttached {
                layer,
                op: "set_enabled",
            })?
            .enabled = enabled;
        Ok(())
    }

    /// Training mode (kept for symmetry with linear layers; embeddings use no dropout).
    pub fn set_training(&mut self, training: bool) {
        if let Some(a) = self.adapter.as_mut() {
            a.training = training;
        }
    }

    /// `(merged table, DoRA norm)`: `E + s·Aᵀ·Bᵀ`, times `m/n` per column for DoRA.
    fn merged_table(&self, ad: &Adapter) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let full = (self.table.to_dtype(ad.dtype())? + ad.delta()?.t()?)?;
        if ad.is_dora() {
            let norm = self.norm_of(ad)?;
            let scale = ad.magnitude_scale(&norm)?.detach();
            let merged = full.broadcast_mul(&scale.unsqueeze(0)?)?;
            Ok((merged.to_dtype(self.table.dtype())?, Some(norm)))
        } else {
            Ok((full.to_dtype(self.table.dtype())?, None))
        }
    }

    /// Folds the adapter into the table.
    pub fn merge(&mut self) -> Result<()> {
        let name = self.name().to_string();
        let ad = self.adapter.as_ref().ok_or(AdapterError::NotAttached {
            layer: name.clone(),
            op: "merge",
        })?;
        if ad.merged {
            return Err(AdapterError::InvalidState {
                layer: name,
                op: "merge",
                reason: "already merged".into(),
            });
        }
        let (table, norm) = self.merged_table(ad).in_layer(&name)?;
        self.table = table;
        if let Some(ad) = self.adapter.as_mut() {
            ad.merged_norm = norm;
            ad.merged = true;
        }
        Ok(())
    }

    /// Restores the original table from the merged one (to floating-point tolerance).
    pub fn unmerge(&mut self) -> Result<()> {
        let name = self.name().to_string();
        let ad = self.adapter.as_ref().ok_or(AdapterError::NotAttached {
            layer: name.clone(),
            op: "unmerge",
        })?;
        if !ad.merged {
            return Err(AdapterError::InvalidState {
                layer: name,
                op: "unmerge",
                reason: "not merged".into(),
            });
        }
        let restore = || -> candle_core::Result<Tensor> {
            let t = self.table.to_dtype(ad.dtype())?;
            let t = match (&ad.merged_norm, ad.is_dora()) {
                (Some(norm), true) => {
                    let scale = ad.magnitude_scale(norm)?.detach();
                    t.broadcast_div(&scale.unsqueeze(0)?)?
                }
                _ => t,
            };
            (t - ad.delta()?.t()?)?.to_dtype(self.table.dtype())
        };
        self.table = restore().in_layer(&name)?;
        if let Some(ad) = self.adapter.as_mut() {
            ad.merged = false;
            ad.merged_norm = None;
        }
        Ok(())
    }

    /// The table as it would be merged, without merging.
    pub fn merged_weight_tensor(&self) -> Result<Tensor> {
        match &self.adapter {
            Some(ad) if !ad.merged => Ok(self.merged_table(ad).in_layer(self.name())?.0),
            _ => Ok(self.table.clone()),
        }
    }

    /// Looks up `ids` (any integer dtype and shape): output `ids.dims() + [dim]`.
    pub fn forward_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let name = self.name();
        if ids.dtype().is_float() {
            return Err(AdapterError::DTypeMismatch {
                layer: name.into(),
                what: "ids".into(),
                expected: "an integer dtype (u8, u32, i64)".into(),
                actual: ids.dtype(),
            });
        }
        self.lookup(ids).in_layer(name)
    }

    fn lookup(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let flat = ids.flatten_all()?;
        let base = self.table.index_select(&flat, 0)?;
        let y = match self.adapter.as_ref().filter(|a| a.active()) {
            None => base,
            Some(ad) => {
                let act = base.dtype();
                let at = ad.a.as_tensor().t()?.contiguous()?;
                let lora = at.index_select(&flat, 0)?.matmul(&ad.b.as_tensor().t()?)?;
                let lora = (lora * ad.scaling)?.to_dtype(act)?;
                let y = (base + lora)?;
                if ad.is_dora() {
                    let scale = ad.magnitude_scale(&self.norm_of(ad)?)?.to_dtype(act)?;
                    row_scale(&y, &scale)?
                } else {
                    y
                }
            }
        };
        let mut dims = ids.dims().to_vec();
        dims.push(self.hidden_size());
        y.reshape(dims)
    }
}

impl candle_core::Module for AdaptedEmbedding {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_ids(ids).map_err(AdapterError::into_candle)
    }
}
