//! [`AdaptedLinear`]: a frozen linear layer with an optional LoRA / DoRA adapter — the linear
//! constructors, accessors and forward pass over the shared [`Adapted`] core.

use crate::error::{AdapterError, InLayer, Result};
use crate::layers::adapted::Adapted;
use crate::layers::adapter::Adapter;
use crate::layers::dora_norm::dora_scale;
use crate::layers::kind::LinearBase;
use crate::ops::{
    dora_matmul, dora_matmul_quant, frozen_matmul, lora_matmul, lora_matmul_quant, quant_matmul,
    row_scale, DoraRows,
};
use crate::quant::QuantWeight;
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// A linear layer `y = x·W0ᵀ + b` whose frozen weight `W0 [out, in]` may carry an adapter:
///
/// * LoRA: `y = x·W0ᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ`
/// * DoRA: `y = (m/n) ⊙ (x·W0ᵀ + s·(x·Aᵀ)·Bᵀ) + b` with `n = ‖W0 + s·B·A‖` per row, detached; with
///   dropout in training, PEFT's form `x·W0ᵀ + b + (m/n − 1) ⊙ drop(x)·W0ᵀ + (m/n) ⊙ s·(drop(x)·Aᵀ)·Bᵀ`.
///
/// Zero norms: where a row of `W0 + s·B·A` is all zero (`n = 0`; real checkpoints have all-zero
/// rows, and there `m = ‖W0‖ = 0` too), `m/n` is `0/0` and PEFT gives NaN. Here the scale is `1`
/// on such rows and exactly `m/n` wherever `n > 0`, so outputs, gradients and merged weights stay
/// finite and equal PEFT's wherever PEFT's are finite (see
/// [`dora_scale`](crate::layers::dora_norm::dora_scale) for why `1`).
///
/// The base weight is never a `Var` and never receives a gradient (see [`frozen_matmul`]).
/// Implements [`candle_nn::Module`], so it drops in where a `candle_nn::Linear` was.
pub type AdaptedLinear = Adapted<LinearBase>;

impl From<candle_nn::Linear> for AdaptedLinear {
    /// A bare layer without a checkpoint path (attach needs one: prefer
    /// [`crate::nn::linear`] and friends, which record the `VarBuilder` path).
    fn from(l: candle_nn::Linear) -> Self {
        Self::new(l.weight().clone(), l.bias().cloned())
    }
}

impl Adapted<LinearBase> {
    /// A bare (not yet adapted) layer over `weight [out, in]` and an optional `bias [out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::from_parts(weight, bias, false)
    }

    /// A layer whose base weight and bias are trained directly (full training, e.g. pretraining a
    /// base model): `weight` and `bias` keep their graph identity (pass `Var`s' tensors) and the
    /// forward uses a plain matmul, so they receive gradients. Adapters can still be attached.
    pub fn new_trainable(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::from_parts(weight, bias, true)
    }

    /// A bare layer over a quantized frozen weight `[out, in]` (QLoRA / QDoRA), computing in
    /// `dtype` (inputs, bias and outputs), with an optional `bias [out]`. The weight stays
    /// quantized: forward and backward dequantize it transiently (see
    /// [`quant_matmul`](crate::ops::quant_matmul)); merging stores a dense merged weight and
    /// unmerging returns to the quantized one exactly.
    pub fn new_quantized(
        weight: Arc<QuantWeight>,
        bias: Option<Tensor>,
        dtype: DType,
    ) -> Result<Self> {
        let placeholder = Self::quant_placeholder(&weight, dtype)?;
        let mut layer = Self::from_parts(placeholder, bias, false);
        if let Some(b) = &layer.bias {
            if b.dtype() != dtype {
                return Err(AdapterError::DTypeMismatch {
                    layer: layer.name().into(),
                    what: "bias".into(),
                    expected: format!("{dtype:?} (the layer's compute dtype)"),
                    actual: b.dtype(),
                });
            }
        }
        layer.quant = Some(weight);
        Ok(layer)
    }

    /// The current base weight (`W0`, or the merged weight while merged). For a quantized base
    /// in use ([`Adapted::base_is_quantized`]) this is a zero-stride placeholder with the base's
    /// shape and dtype: read values with [`Adapted::dense_weight`].
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.dims_in_out().0
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.dims_in_out().1
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let name = self.name();
        let din = self.in_features();
        if x.dims().last() != Some(&din) {
            let mut expected = x.dims().to_vec();
            match expected.last_mut() {
                Some(last) => *last = din,
                None => expected.push(din),
            }
            return Err(AdapterError::ShapeMismatch {
                layer: name.into(),
                what: "input".into(),
                expected,
                actual: x.dims().to_vec(),
            });
        }
        if x.dtype() != self.weight.dtype() {
            return Err(AdapterError::DTypeMismatch {
                layer: name.into(),
                what: "input".into(),
                expected: format!("{:?} (the base weight's dtype)", self.weight.dtype()),
                actual: x.dtype(),
            });
        }
        Ok(())
    }

    /// Forward pass with an explicit training flag (dropout only when `train`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        let name = self.name();
        self.forward_unchecked(x, train).in_layer(name)
    }

    fn forward_unchecked(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = match self.adapter.as_ref().filter(|a| a.active()) {
            None => self.base_product(x)?,
            Some(ad) if self.fused(ad, x, train) => self.adapted_fused(ad, x)?,
            Some(ad) => self.adapted(ad, x, self.base_product(x)?, train)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x·W0ᵀ`: the no-weight-gradient op for a frozen base (dense or quantized), a plain matmul
    /// for a trainable one.
    fn base_product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let (Some(q), true) = (&self.quant, self.base_is_quantized()) {
            quant_matmul(x, q)
        } else if self.trainable_base {
            x.broadcast_matmul(&self.weight.t()?)
        } else {
            frozen_matmul(x, &self.weight)
        }
    }

    /// Whether the forward runs as one [`lora_matmul`] node: a frozen base (dense, or quantized:
    /// [`lora_matmul_quant`]), no dropout in this call, and adapters in the activation dtype
    /// (else the composed path below, same numerics).
    fn fused(&self, ad: &Adapter, x: &Tensor, train: bool) -> bool {
        !self.trainable_base && !ad.dropout_active(train) && ad.dtype() == x.dtype()
    }

    /// `x·W0ᵀ + s·(x·Aᵀ)·Bᵀ` in one node; for DoRA then scaled by `m / ‖W0 + s·B·A‖` per output
    /// (the norm detached, as PEFT).
    fn adapted_fused(&self, ad: &Adapter, x: &Tensor) -> candle_core::Result<Tensor> {
        let (a, b) = (ad.a.as_tensor(), ad.b.as_tensor());
        let quant = self.quant.as_ref().filter(|_| self.base_is_quantized());
        let m = match (&ad.magnitude, ad.is_dora(), quant) {
            (Some(m), true, _) => m.as_tensor(),
            (_, _, Some(q)) => return lora_matmul_quant(x, q, a, b, ad.scaling),
            _ => return lora_matmul(x, &self.weight, a, b, ad.scaling),
        };
        let norm = self.norm_of(ad)?;
        let scale = dora_scale(&m.detach(), &norm)?;
        let rows = DoraRows { norm, scale };
        match quant {
            Some(q) => dora_matmul_quant(x, q, a, b, m, ad.scaling, rows),
            None => dora_matmul(x, &self.weight, a, b, m, ad.scaling, rows),
        }
    }

    /// The adapted output before the bias, given the base product `x·W0ᵀ`.
    fn adapted(
        &self,
        ad: &Adapter,
        x: &Tensor,
        base: Tensor,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let act = x.dtype();
        let dropout = ad.dropout_active(train);
        let xd = if dropout {
            ad.apply_dropout(x)?
        } else {
            x.clone()
        };
        // One cast in, one cast out: the adapter path runs in the adapter dtype.
        let din = self.in_features();
        let xa = xd.reshape(((), din))?.to_dtype(ad.dtype())?;
        let lora = xa
            .matmul(&ad.a.as_tensor().t()?)?
            .matmul(&ad.b.as_tensor().t()?)?;
        let lora = (lora * ad.scaling)?.to_dtype(act)?.reshape(base.shape())?;
        if !ad.is_dora() {
            return base + lora;
        }
        let norm = self.norm_of(ad)?;
        let scale = ad.magnitude_scale(&norm)?.to_dtype(act)?;
        if dropout {
            // PEFT: base(x) + (m/n − 1)·W0·drop(x) + (m/n)·lora(drop(x)).
            let base_d = self.base_product(&xd)?;
            let term = row_scale(&base_d, &(scale.clone() - 1.0)?)?;
            (base + term)? + row_scale(&lora, &scale)?
        } else {
            row_scale(&(base + lora)?, &scale)
        }
    }
}

impl candle_core::Module for AdaptedLinear {
    /// Forward in the layer's own mode (see [`AdaptedLinear::set_training`]).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let train = self.adapter.as_ref().is_some_and(|a| a.training);
        self.forward_t(x, train).map_err(AdapterError::into_candle)
    }
}
