//! [`AdaptedLayer`]: what adapted linear and embedding layers share, so whole-model operations
//! (attach, list, save, load, merge, count) are written once for both.

use crate::config::AdapterConfig;
use crate::error::Result;
use crate::layers::{AdaptedEmbedding, AdaptedLinear, Adapter};
use candle_core::{Tensor, Var};

/// A frozen base layer that can carry an adapter.
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
}

macro_rules! delegate {
    ($ty:ty, embedding: $emb:expr, dims: |$l:ident| $dims:expr, bias: |$b:ident| $bias:expr) => {
        impl AdaptedLayer for $ty {
            fn path(&self) -> Option<&str> {
                <$ty>::path(self)
            }
            fn set_path(&mut self, path: String) {
                <$ty>::set_path(self, path)
            }
            fn is_embedding(&self) -> bool {
                $emb
            }
            fn dims_in_out(&self) -> (usize, usize) {
                let $l = self;
                $dims
            }
            fn has_bias(&self) -> bool {
                let $b = self;
                $bias
            }
            fn adapter(&self) -> Option<&Adapter> {
                <$ty>::adapter(self)
            }
            fn attach(&mut self, config: AdapterConfig, seed: u64) -> Result<()> {
                <$ty>::attach(self, config, seed)
            }
            fn attach_weights(
                &mut self,
                config: AdapterConfig,
                a: &Tensor,
                b: &Tensor,
                magnitude: Option<&Tensor>,
            ) -> Result<()> {
                <$ty>::attach_weights(self, config, a, b, magnitude)
            }
            fn named_vars(&self) -> Vec<(String, Var)> {
                <$ty>::named_vars(self)
            }
            fn trainable_params(&self) -> usize {
                <$ty>::trainable_params(self)
            }
            fn frozen_params(&self) -> usize {
                <$ty>::frozen_params(self)
            }
            fn merge(&mut self) -> Result<()> {
                <$ty>::merge(self)
            }
            fn unmerge(&mut self) -> Result<()> {
                <$ty>::unmerge(self)
            }
            fn set_enabled(&mut self, enabled: bool) -> Result<()> {
                <$ty>::set_enabled(self, enabled)
            }
            fn set_training(&mut self, training: bool) {
                <$ty>::set_training(self, training)
            }
        }
    };
}

delegate!(AdaptedLinear, embedding: false,
    dims: |l| (l.in_features(), l.out_features()),
    bias: |l| l.bias().is_some());
delegate!(AdaptedEmbedding, embedding: true,
    dims: |l| (l.vocab_size(), l.hidden_size()),
    bias: |_l| false);
