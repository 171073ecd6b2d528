//! RMSNorm as HF Llama computes it (in f32, scaled in the input dtype), from ops that record
//! gradients (candle's fused `rms_norm` records none).

use crate::adapters::FrozenModule;
use candle_core::{DType, Tensor, D};

/// `weight ⊙ (x / √(mean(x²) + ε))`, the normalisation done in f32.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A norm over `weight [dim]`.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// The scale vector.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl candle_core::Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.to_dtype(dt)?.broadcast_mul(&self.weight)
    }
}

impl FrozenModule for RmsNorm {
    fn frozen_params(&self) -> usize {
        self.weight.elem_count()
    }
}
