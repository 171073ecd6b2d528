//! [`FrozenModule`]: how a `#[frozen(in, out)]` or bare `#[frozen]` field reports its parameter
//! count and dimensions, implemented for candle's layers, the adapted layers and tensors.

use crate::layers::{AdaptedEmbedding, AdaptedLinear};
use candle_core::Tensor;

/// A frozen (never adapted) module whose parameters are counted.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[frozen]` field: it does not implement `FrozenModule`",
    label = "`#[frozen]` needs a type that reports its parameter count",
    note = "implement `adapters_runtime::FrozenModule` for `{Self}` (its parameter count), or leave the field without an attribute"
)]
pub trait FrozenModule {
    /// Number of parameters.
    fn frozen_params(&self) -> usize;
    /// `(in, out)` for linear layers, `(vocab, dim)` for embeddings, when the module has them.
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        None
    }
    /// Whether the module has a bias.
    fn has_bias(&self) -> bool {
        false
    }
}

fn dims2(t: &Tensor) -> Option<(usize, usize)> {
    t.dims2().ok()
}

impl FrozenModule for candle_nn::Linear {
    fn frozen_params(&self) -> usize {
        self.weight().elem_count() + self.bias().map_or(0, |b| b.elem_count())
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        dims2(self.weight()).map(|(o, i)| (i, o))
    }
    fn has_bias(&self) -> bool {
        self.bias().is_some()
    }
}

impl FrozenModule for candle_nn::Embedding {
    fn frozen_params(&self) -> usize {
        self.embeddings().elem_count()
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        dims2(self.embeddings())
    }
}

impl FrozenModule for AdaptedLinear {
    fn frozen_params(&self) -> usize {
        AdaptedLinear::frozen_params(self)
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        Some((self.in_features(), self.out_features()))
    }
    fn has_bias(&self) -> bool {
        self.bias().is_some()
    }
}

impl FrozenModule for AdaptedEmbedding {
    fn frozen_params(&self) -> usize {
        AdaptedEmbedding::frozen_params(self)
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        Some((self.vocab_size(), self.hidden_size()))
    }
}

impl FrozenModule for candle_nn::LayerNorm {
    fn frozen_params(&self) -> usize {
        self.weight().elem_count() + self.bias().map_or(0, |b| b.elem_count())
    }
}

impl FrozenModule for candle_nn::RmsNorm {
    fn frozen_params(&self) -> usize {
        self.weight().elem_count()
    }
}

impl FrozenModule for Tensor {
    fn frozen_params(&self) -> usize {
        self.elem_count()
    }
}

/// An optional module (e.g. Qwen3's query / key norms, absent in other families): its
/// parameters when present, 0 otherwise.
impl<T: FrozenModule> FrozenModule for Option<T> {
    fn frozen_params(&self) -> usize {
        self.as_ref().map_or(0, T::frozen_params)
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        self.as_ref().and_then(T::dims_in_out)
    }
    fn has_bias(&self) -> bool {
        self.as_ref().is_some_and(T::has_bias)
    }
}
