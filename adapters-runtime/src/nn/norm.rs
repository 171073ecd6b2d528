//! `LayerNorm` / `RmsNorm` layers with candle-nn 0.11's API whose fused paths record gradients.

use crate::adapters::FrozenModule;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

pub use candle_nn::LayerNormConfig;

/// `candle_nn::LayerNorm` whose fused path (contiguous input, bias, mean removed) is
/// differentiable; the other paths compose the same tensor ops as candle.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    remove_mean: bool,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm with a weight and a bias.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias: Some(bias),
            remove_mean: true,
            eps,
        }
    }

    /// A layer norm without bias.
    pub fn new_no_bias(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias: None,
            remove_mean: true,
            eps,
        }
    }

    /// An RMS norm (the mean is not removed), without bias.
    pub fn rms_norm(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias: None,
            remove_mean: false,
            eps,
        }
    }

    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Whether the mean is removed (`false` for an RMS norm).
    pub fn remove_mean(&self) -> bool {
        self.remove_mean
    }

    /// candle-nn's composed forward (in `f32` for half types), differentiable by autograd.
    fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let x_dtype = x.dtype();
        let internal_dtype = match x_dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let hidden_size = x.dim(D::Minus1)?;
        let x = x.to_dtype(internal_dtype)?;
        let x = if self.remove_mean {
            let mean_x = (x.sum_keepdim(D::Minus1)? / hidden_size as f64)?;
            x.broadcast_sub(&mean_x)?
        } else {
            x
        };
        let norm_x = (x.sqr()?.sum_keepdim(D::Minus1)? / hidden_size as f64)?;
        let x_normed = x.broadcast_div(&(norm_x + self.eps)?.sqrt()?)?;
        let x = x_normed.to_dtype(x_dtype)?.broadcast_mul(&self.weight)?;
        match &self.bias {
            None => Ok(x),
            Some(bias) => x.broadcast_add(bias),
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.is_contiguous() && self.remove_mean {
            if let Some(bias) = self.bias.as_ref() {
                return crate::nn::ops::layer_norm(x, &self.weight, bias, self.eps as f32);
            }
        }
        self.forward_composed(x)
    }
}

impl From<candle_nn::LayerNorm> for LayerNorm {
    fn from(ln: candle_nn::LayerNorm) -> Self {
        Self {
            weight: ln.weight().clone(),
            bias: ln.bias().cloned(),
            remove_mean: ln.remove_mean(),
            eps: ln.eps(),
        }
    }
}

impl FrozenModule for LayerNorm {
    fn frozen_params(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, Tensor::elem_count)
    }
    fn has_bias(&self) -> bool {
        self.bias.is_some()
    }
}

/// `candle_nn::layer_norm`: weight (`weight` or `gamma`) and, when `config.affine`, bias.
pub fn layer_norm<C: Into<LayerNormConfig>>(
    size: usize,
    config: C,
    vb: VarBuilder,
) -> Result<LayerNorm> {
    candle_nn::layer_norm(size, config, vb).map(LayerNorm::from)
}

/// `candle_nn::layer_norm_no_bias`.
pub fn layer_norm_no_bias(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    candle_nn::layer_norm_no_bias(size, eps, vb).map(LayerNorm::from)
}

/// `candle_nn::RmsNorm` whose fused path (contiguous input) is differentiable.
#[derive(Clone, Debug)]
pub struct RmsNorm(LayerNorm);

impl RmsNorm {
    /// An RMS norm with this weight.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self(LayerNorm::rms_norm(weight, eps))
    }

    /// The underlying [`LayerNorm`] (mean not removed).
    pub fn into_inner(self) -> LayerNorm {
        self.0
    }

    /// The weight.
    pub fn weight(&self) -> &Tensor {
        self.0.weight()
    }

    /// The epsilon added to the mean square.
    pub fn eps(&self) -> f64 {
        self.0.eps()
    }

    /// The composed forward of candle's `RmsNorm::forward_diff` (any layout).
    pub fn forward_diff(&self, xs: &Tensor) -> Result<Tensor> {
        self.0.forward(xs)
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.is_contiguous() {
            crate::nn::ops::rms_norm(xs, &self.0.weight, self.0.eps as f32)
        } else {
            self.0.forward(xs)
        }
    }
}

impl From<candle_nn::RmsNorm> for RmsNorm {
    fn from(norm: candle_nn::RmsNorm) -> Self {
        Self(norm.into_inner().into())
    }
}

impl FrozenModule for RmsNorm {
    fn frozen_params(&self) -> usize {
        self.0.frozen_params()
    }
}

/// `candle_nn::rms_norm`: an [`RmsNorm`] with the weight at `vb`'s `weight` (or `gamma`).
pub fn rms_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    candle_nn::rms_norm(size, eps, vb).map(RmsNorm::from)
}
