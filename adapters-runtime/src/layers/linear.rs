//! [`AdaptedLinear`]: a frozen linear layer with an optional LoRA / DoRA adapter.

use crate::config::AdapterConfig;
use crate::error::{AdapterError, InLayer, Result};
use crate::estimate;
use crate::layers::adapter::{check_float, check_shape, Adapter};
use crate::layers::{dora_norm, init};
use crate::ops::{frozen_matmul, row_scale};
use candle_core::{Tensor, Var};

/// A linear layer `y = x·W0ᵀ + b` whose frozen weight `W0 [out, in]` may carry an adapter:
///
/// * LoRA: `y = x·W0ᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ`
/// * DoRA: `y = (m/n) ⊙ (x·W0ᵀ + s·(x·Aᵀ)·Bᵀ) + b` with `n = ‖W0 + s·B·A‖` per row, detached; with
///   dropout in training, PEFT's form `x·W0ᵀ + b + (m/n − 1) ⊙ drop(x)·W0ᵀ + (m/n) ⊙ s·(drop(x)·Aᵀ)·Bᵀ`.
///
/// The base weight is never a `Var` and never receives a gradient (see [`frozen_matmul`]).
/// Implements [`candle_nn::Module`], so it drops in where a `candle_nn::Linear` was.
#[derive(Debug)]
pub struct AdaptedLinear {
    path: Option<String>,
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
    trainable_base: bool,
}

impl From<candle_nn::Linear> for AdaptedLinear {
    fn from(l: candle_nn::Linear) -> Self {
        Self::new(l.weight().clone(), l.bias().cloned())
    }
}

impl AdaptedLinear {
    /// A bare (not yet adapted) layer over `weight [out, in]` and an optional `bias [out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            path: None,
            weight: weight.detach(),
            bias: bias.map(|b| b.detach()),
            adapter: None,
            trainable_base: false,
        }
    }

    /// A layer whose base weight and bias are trained directly (full training, e.g. pretraining a
    /// base model): `weight` and `bias` keep their graph identity (pass `Var`s' tensors) and the
    /// forward uses a plain matmul, so they receive gradients. Adapters can still be attached.
    pub fn new_trainable(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            path: None,
            weight,
            bias,
            adapter: None,
            trainable_base: true,
        }
    }

    /// Whether the base weight receives gradients (see [`AdaptedLinear::new_trainable`]).
    pub fn is_base_trainable(&self) -> bool {
        self.trainable_base
    }

    /// Records the checkpoint path of the weight (without `.weight`), e.g. `model.layers.0.self_attn.q_proj`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets the checkpoint path (see [`AdaptedLinear::with_path`]).
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.path = Some(path.into());
    }

    /// The checkpoint path, when known.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    fn name(&self) -> &str {
        self.path.as_deref().unwrap_or("<linear>")
    }

    /// The current base weight (`W0`, or the merged weight while merged).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims().get(1).copied().unwrap_or(0)
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }

    /// The attached adapter, if any.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    fn adapter_mut(&mut self, op: &'static str) -> Result<&mut Adapter> {
        let layer = self.name().to_string();
        self.adapter
            .as_mut()
            .ok_or(AdapterError::NotAttached { layer, op })
    }

    fn check_base(&self) -> Result<()> {
        let name = self.name();
        if self.weight.rank() != 2 {
            return Err(AdapterError::ShapeMismatch {
                layer: name.into(),
                what: "base weight".into(),
                expected: vec![self.out_features(), self.in_features()],
                actual: self.weight.dims().to_vec(),
            });
        }
        check_float(name, "base weight", &self.weight)?;
        if let Some(b) = &self.bias {
            check_shape(name, "bias", b, &[self.out_features()])?;
        }
        Ok(())
    }

    /// Attaches a freshly initialised adapter: A by `config.init` (seeded by `seed` and the
    /// layer's path), B = 0, and for DoRA m = ‖W0‖ per row, so the output is unchanged.
    pub fn attach(&mut self, config: AdapterConfig, seed: u64) -> Result<()> {
        let name = self.name().to_string();
        config.validate(&name)?;
        self.check_base()?;
        let dt = init::adapter_dtype(self.weight.dtype());
        let dev = self.weight.device().clone();
        let (dout, din) = (self.out_features(), self.in_features());
        let seed = init::layer_seed(seed, &name);
        let a = init::lora_a(config.init, config.rank, din, seed, dt, &dev).in_layer(&name)?;
        let b = Tensor::zeros((dout, config.rank), dt, &dev)?;
        self.install(config, a, b, None, seed)
    }

    /// Attaches an adapter with given weights (e.g. loaded from a PEFT checkpoint): `a [r, in]`,
    /// `b [out, r]`, and for DoRA `magnitude [out]` (when `None`, m = ‖W0 + s·B·A‖).
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
        let dt = init::adapter_dtype(self.weight.dtype());
        let (dout, din, r) = (self.out_features(), self.in_features(), config.rank);
        check_shape(&name, "lora_A", a, &[r, din])?;
        check_shape(&name, "lora_B", b, &[dout, r])?;
        if let Some(m) = magnitude {
            check_shape(&name, "lora_magnitude_vector", m, &[dout])?;
        }
        let dev = self.weight.device();
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
            ad.base_sq = Some(dora_norm::row_sq_norms(&self.weight, ad.dtype()).in_layer(&name)?);
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
        let w_at = dora_norm::weight_times_at(&self.weight, &ad.a.as_tensor().detach())?;
        ad.norm_from(&w_at)
    }

    /// The DoRA weight norm `‖W0 + s·B·A‖` per output row, computed without the `out × in` matrix.
    pub fn weight_norm(&self) -> Result<Tensor> {
        let name = self.name();
        let ad = self
            .adapter
            .as_ref()
            .ok_or_else(|| AdapterError::NotAttached {
                layer: name.into(),
                op: "weight_norm",
            })?;
        if ad.merged || !ad.is_dora() {
            return Err(AdapterError::InvalidState {
                layer: name.into(),
                op: "weight_norm",
                reason: "needs an unmerged DoRA adapter".into(),
            });
        }
        self.norm_of(ad).in_layer(name)
    }

    /// The trainable tensors with their PEFT names relative to the layer
    /// (`lora_A.weight`, `lora_B.weight`, `lora_magnitude_vector`). Empty when bare.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.adapter
            .as_ref()
            .map_or_else(Vec::new, |a| a.named_vars("lora_A.weight", "lora_B.weight"))
    }

    /// Frozen parameters: the base weight and bias.
    pub fn frozen_params(&self) -> usize {
        estimate::linear_params(self.in_features(), self.out_features(), self.bias.is_some())
    }

    /// Trainable parameters (0 when bare); equals [`estimate::adapter_params`].
    pub fn trainable_params(&self) -> usize {
        self.adapter.as_ref().map_or(0, |a| {
            estimate::adapter_params(
                a.config.method,
                self.in_features(),
                self.out_features(),
                a.config.rank,
            )
        })
    }

    /// Turns the adapter path on or off (a disabled adapter gives the base output). Disabling a
    /// merged adapter unmerges it first, as PEFT does.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<()> {
        if !enabled && self.adapter.as_ref().is_some_and(|a| a.merged) {
            self.unmerge()?;
        }
        self.adapter_mut("set_enabled")?.enabled = enabled;
        Ok(())
    }

    /// Training mode: dropout on the adapter input is active only in training.
    pub fn set_training(&mut self, training: bool) {
        if let Some(a) = self.adapter.as_mut() {
            a.training = training;
        }
    }

    /// Folds the adapter into the base weight: `W0 + s·B·A` (LoRA) or `(m/n) ⊙ (W0 + s·B·A)` (DoRA),
    /// computed in the adapter dtype and stored in the base dtype.
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
        let (merged, norm) = self.merged_weight(ad).in_layer(&name)?;
        self.weight = merged;
        let ad = self.adapter_mut("merge")?;
        ad.merged_norm = norm;
        ad.merged = true;
        Ok(())
    }

    /// The merged weight without changing the layer (and the DoRA norm used for it).
    fn merged_weight(&self, ad: &Adapter) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let dt = ad.dtype();
        let full = (self.weight.to_dtype(dt)? + ad.delta()?)?;
        if ad.is_dora() {
            let norm = self.norm_of(ad)?;
            let scale = ad.magnitude_scale(&norm)?.detach();
            let merged = full.broadcast_mul(&scale.unsqueeze(1)?)?;
            Ok((merged.to_dtype(self.weight.dtype())?, Some(norm)))
        } else {
            Ok((full.to_dtype(self.weight.dtype())?, None))
        }
    }

    /// Restores `W0` from the merged weight (to floating-point tolerance).
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
            let dt = ad.dtype();
            let w = self.weight.to_dtype(dt)?;
            let w = match (&ad.merged_norm, ad.is_dora()) {
                (Some(norm), true) => {
                    let scale = ad.magnitude_scale(norm)?.detach();
                    w.broadcast_div(&scale.unsqueeze(1)?)?
                }
                _ => w,
            };
            (w - ad.delta()?)?.to_dtype(self.weight.dtype())
        };
        self.weight = restore().in_layer(&name)?;
        let ad = self.adapter_mut("unmerge")?;
        ad.merged = false;
        ad.merged_norm = None;
        Ok(())
    }

    /// The weight as it would be merged, without merging (for exporting merged checkpoints).
    pub fn merged_weight_tensor(&self) -> Result<Tensor> {
        match &self.adapter {
            Some(ad) if !ad.merged => Ok(self.merged_weight(ad).in_layer(self.name())?.0),
            _ => Ok(self.weight.clone()),
        }
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
        let base = self.base_product(x)?;
        let y = match self.adapter.as_ref().filter(|a| a.active()) {
            None => base,
            Some(ad) => self.adapted(ad, x, base, train)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x·W0ᵀ`: the no-weight-gradient op for a frozen base, a plain matmul for a trainable one.
    fn base_product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.trainable_base {
            x.broadcast_matmul(&self.weight.t()?)
        } else {
            frozen_matmul(x, &self.weight)
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
