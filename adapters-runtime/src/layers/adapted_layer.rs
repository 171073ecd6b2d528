//! [`AdaptedLayer`]: an adapted layer of either kind behind one object-safe trait, for
//! whole-model passes (attach, list, save, load, merge, count).

use crate::adapter_config::AdapterConfig;
use crate::error::Result;
use crate::layers::adapted::Adapted;
use crate::layers::adapter::Adapter;
use crate::layers::kind::LayerKind;
use candle_core::{Tensor, Var};

/// An adapted layer of either kind, as whole-model passes see it.
pub trait AdaptedLayer {
    /// The checkpoint path recorded at construction, when known.
    fn path(&self) -> Option<&str>;
    /// Records the checkpoint path.
    fn set_path(&mut self, path: String);
    /// Whether this is an embedding (PEFT's `lora_embedding_*` layout).
    fn is_embedding(&self) -> bool;
    /// `(in, out)` for linear layers, `(vocab, dim)` for embeddings.
    fn dims_in_out(&self) -> (usize, usize);
    /// Whether the base layer has a bias.
    fn has_bias(&self) -> bool;
    /// The attached adapter, if any.
    fn adapter(&self) -> Option<&Adapter>;
    /// Attaches a freshly initialised adapter.
    fn attach(&mut self, config: AdapterConfig, seed: u64) -> Result<()>;
    /// Attaches given adapter weights.
    fn attach_weights(
        &mut self,
        config: AdapterConfig,
        a: &Tensor,
        b: &Tensor,
        magnitude: Option<&Tensor>,
    ) -> Result<()>;
    /// The trainable tensors under their PEFT names relative to the layer.
    fn named_vars(&self) -> Vec<(String, Var)>;
    /// Trainable parameters (0 when bare).
    fn trainable_params(&self) -> usize;
    /// Frozen base parameters.
    fn frozen_params(&self) -> usize;
    /// Folds the adapter into the base weight.
    fn merge(&mut self) -> Result<()>;
    /// Restores the base weight.
    fn unmerge(&mut self) -> Result<()>;
    /// Turns the adapter on or off.
    fn set_enabled(&mut self, enabled: bool) -> Result<()>;
    /// Training mode (dropout).
    fn set_training(&mut self, training: bool);
    /// Whether the forward reads a quantized base (QLoRA / QDoRA).
    fn base_is_quantized(&self) -> bool;
    /// The quantized base's format, when the layer has one.
    fn quant_format(&self) -> Option<crate::estimate::QuantFormat>;
    /// Bytes the frozen base (weight and bias) holds in memory: the quantized storage (plus the
    /// dense merged weight while a quantized layer is merged), or the dense tensors.
    fn base_bytes(&self) -> usize;
}

impl<K: LayerKind> AdaptedLayer for Adapted<K> {
    fn path(&self) -> Option<&str> {
        Adapted::path(self)
    }
    fn set_path(&mut self, path: String) {
        Adapted::set_path(self, path)
    }
    fn is_embedding(&self) -> bool {
        K::IS_EMBEDDING
    }
    fn dims_in_out(&self) -> (usize, usize) {
        Adapted::dims_in_out(self)
    }
    fn has_bias(&self) -> bool {
        self.bias.is_some()
    }
    fn adapter(&self) -> Option<&Adapter> {
        Adapted::adapter(self)
    }
    fn attach(&mut self, config: AdapterConfig, seed: u64) -> Result<()> {
        Adapted::attach(self, config, seed)
    }
    fn attach_weights(
        &mut self,
        config: AdapterConfig,
        a: &Tensor,
        b: &Tensor,
        magnitude: Option<&Tensor>,
    ) -> Result<()> {
        Adapted::attach_weights(self, config, a, b, magnitude)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        Adapted::named_vars(self)
    }
    fn trainable_params(&self) -> usize {
        Adapted::trainable_params(self)
    }
    fn frozen_params(&self) -> usize {
        Adapted::frozen_params(self)
    }
    fn merge(&mut self) -> Result<()> {
        Adapted::merge(self)
    }
    fn unmerge(&mut self) -> Result<()> {
        Adapted::unmerge(self)
    }
    fn set_enabled(&mut self, enabled: bool) -> Result<()> {
        Adapted::set_enabled(self, enabled)
    }
    fn set_training(&mut self, training: bool) {
        Adapted::set_training(self, training)
    }
    fn base_is_quantized(&self) -> bool {
        Adapted::base_is_quantized(self)
    }
    fn quant_format(&self) -> Option<crate::estimate::QuantFormat> {
        self.quant.as_ref().map(|q| q.format())
    }
    fn base_bytes(&self) -> usize {
        Adapted::base_bytes(self)
    }
}
