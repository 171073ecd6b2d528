//! [`AdaptedEmbedding`]: a frozen embedding table with an optional LoRA / DoRA adapter, in PEFT's
//! layout (`lora_embedding_A [r, vocab]`, `lora_embedding_B [dim, r]`) — the embedding
//! constructors, accessors and lookup over the shared [`Adapted`] core.

use crate::error::{AdapterError, InLayer, Result};
use crate::layers::adapted::Adapted;
use crate::layers::kind::EmbeddingBase;
use crate::ops::row_scale;
use candle_core::Tensor;

/// An embedding `y = E[ids]` over a frozen table `E [vocab, dim]` that may carry an adapter:
///
/// * LoRA: `y = E[ids] + s·Aᵀ[ids]·Bᵀ`
/// * DoRA: `y = (m/n) ⊙ (E[ids] + s·Aᵀ[ids]·Bᵀ)` with `n = ‖E + s·Aᵀ·Bᵀ‖` over the vocab axis
///   (one value per embedding dimension), detached; where `n = 0` (an all-zero column of
///   `E + s·Aᵀ·Bᵀ`) the scale is `1` instead of PEFT's NaN `0/0`, as for
///   [`AdaptedLinear`](crate::AdaptedLinear).
///
/// PEFT applies no dropout to embedding adapters; neither does this layer.
pub type AdaptedEmbedding = Adapted<EmbeddingBase>;

impl From<candle_nn::Embedding> for AdaptedEmbedding {
    /// A bare embedding without a checkpoint path (attach needs one: prefer
    /// [`crate::nn::embedding`], which records the `VarBuilder` path).
    fn from(e: candle_nn::Embedding) -> Self {
        Self::new(e.embeddings().clone())
    }
}

impl Adapted<EmbeddingBase> {
    /// A bare (not yet adapted) embedding over `table [vocab, dim]`.
    pub fn new(table: Tensor) -> Self {
        Self::from_parts(table, None, false)
    }

    /// An embedding whose table is trained directly (full training, e.g. pretraining): pass a
    /// `Var`'s tensor; lookups then carry its gradient.
    pub fn new_trainable(table: Tensor) -> Self {
        Self::from_parts(table, None, true)
    }

    /// The current table (`E`, or the merged table while merged).
    pub fn embeddings(&self) -> &Tensor {
        &self.weight
    }

    /// Number of rows (`num_embeddings`).
    pub fn vocab_size(&self) -> usize {
        self.dims_in_out().0
    }

    /// Embedding dimension.
    pub fn hidden_size(&self) -> usize {
        self.dims_in_out().1
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
        let base = self.weight.index_select(&flat, 0)?;
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
