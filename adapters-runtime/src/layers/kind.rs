//! [`LayerKind`]: what differs between an adapted linear layer and an adapted embedding — the
//! orientation of the delta, the axis of the DoRA norm, the initial `A`/`B` and the tensor names.

use crate::adapter_config::AdapterConfig;
use crate::estimate;
use crate::layers::{dora_norm, init};
use candle_core::{DType, Device, Tensor};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::LinearBase {}
    impl Sealed for super::EmbeddingBase {}
}

/// The two kinds of base layer an adapter attaches to. Sealed: [`LinearBase`] and
/// [`EmbeddingBase`] are the only ones.
pub trait LayerKind:
    sealed::Sealed + Clone + Copy + std::fmt::Debug + Default + Send + Sync + 'static
{
    /// The layer's name in messages when it has no checkpoint path.
    const UNNAMED: &'static str;
    /// What the base tensor is called in messages.
    const BASE: &'static str;
    /// Whether this is an embedding (PEFT's `lora_embedding_*` layout).
    const IS_EMBEDDING: bool;
    /// PEFT's names of `A` and `B` relative to the layer.
    const VAR_NAMES: (&'static str, &'static str);
    /// The axis of the base tensor that DoRA's per-output scale runs along (the other is reduced
    /// by the norm).
    const OUT_AXIS: usize;

    /// `(in, out)` of a base tensor: `[out, in]` for linear, `[vocab, dim]` (in = vocab) for
    /// embeddings.
    fn dims(base: &Tensor) -> (usize, usize);
    /// `‖W0‖²` per output, in `dtype`.
    fn base_sq_norms(base: &Tensor, dtype: DType) -> candle_core::Result<Tensor>;
    /// `W0·Aᵀ` (`[out, r]`) for the factored DoRA norm.
    fn base_times_at(base: &Tensor, a: &Tensor) -> candle_core::Result<Tensor>;
    /// `s·B·A` (`[out, in]`) in the base tensor's layout.
    fn delta_in_base_layout(delta: Tensor) -> candle_core::Result<Tensor>;
    /// Fresh `(A [r, in], B [out, r])` as PEFT initialises them (the output is unchanged).
    fn init(
        config: &AdapterConfig,
        din: usize,
        dout: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)>;
    /// Frozen parameters of the base (weight and bias).
    fn frozen_params(din: usize, dout: usize, bias: bool) -> Option<usize>;
}

/// A linear layer's weight `[out, in]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinearBase;

/// An embedding table `[vocab, dim]`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmbeddingBase;

impl LayerKind for LinearBase {
    const UNNAMED: &'static str = "<linear>";
    const BASE: &'static str = "base weight";
    const IS_EMBEDDING: bool = false;
    const VAR_NAMES: (&'static str, &'static str) = ("lora_A.weight", "lora_B.weight");
    const OUT_AXIS: usize = 0;

    fn dims(base: &Tensor) -> (usize, usize) {
        let d = base.dims();
        (
            d.get(1).copied().unwrap_or(0),
            d.first().copied().unwrap_or(0),
        )
    }
    fn base_sq_norms(base: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        dora_norm::row_sq_norms(base, dtype)
    }
    fn base_times_at(base: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
        dora_norm::weight_times_at(base, a)
    }
    fn delta_in_base_layout(delta: Tensor) -> candle_core::Result<Tensor> {
        Ok(delta)
    }
    fn init(
        config: &AdapterConfig,
        din: usize,
        dout: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let a = init::lora_a(config.init, config.rank, din, seed, dtype, device)?;
        let b = Tensor::zeros((dout, config.rank), dtype, device)?;
        Ok((a, b))
    }
    fn frozen_params(din: usize, dout: usize, bias: bool) -> Option<usize> {
        estimate::linear_params(din, dout, bias)
    }
}

impl LayerKind for EmbeddingBase {
    const UNNAMED: &'static str = "<embedding>";
    const BASE: &'static str = "embedding table";
    const IS_EMBEDDING: bool = true;
    const VAR_NAMES: (&'static str, &'static str) = ("lora_embedding_A", "lora_embedding_B");
    const OUT_AXIS: usize = 1;

    fn dims(base: &Tensor) -> (usize, usize) {
        let d = base.dims();
        (
            d.first().copied().unwrap_or(0),
            d.get(1).copied().unwrap_or(0),
        )
    }
    fn base_sq_norms(base: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
        dora_norm::col_sq_norms(base, dtype)
    }
    fn base_times_at(base: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
        dora_norm::embedding_times_at(base, a)
    }
    fn delta_in_base_layout(delta: Tensor) -> candle_core::Result<Tensor> {
        delta.t()
    }
    /// PEFT's embedding init: `A = 0`, `B ~ N(0, 1)` (whatever `config.init` says).
    fn init(
        config: &AdapterConfig,
        din: usize,
        dout: usize,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let a = Tensor::zeros((config.rank, din), dtype, device)?;
        let b = init::lora_embedding_b(config.rank, dout, seed, dtype, device)?;
        Ok((a, b))
    }
    fn frozen_params(din: usize, dout: usize, _bias: bool) -> Option<usize> {
        estimate::embedding_params(din, dout)
    }
}
