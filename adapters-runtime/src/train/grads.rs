//! Gradients by parameter name, in f32: collected from a candle `GradStore`, accumulated over
//! micro-batches, and clipped by global L2 norm like `torch.nn.utils.clip_grad_norm_`.

use crate::error::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::collections::BTreeMap;

/// Named f32 gradients (parameters that received no gradient are absent).
#[derive(Clone, Debug, Default)]
pub struct Grads {
    map: BTreeMap<String, Tensor>,
}

impl Grads {
    /// The gradients of `params` found in `store`, converted to f32.
    pub fn from_store(params: &[(String, Var)], store: &GradStore) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, var) in params {
            if let Some(g) = store.get(var.as_tensor()) {
                map.insert(name.clone(), g.to_dtype(DType::F32)?);
            }
        }
        Ok(Self { map })
    }

    /// Builds from explicit named tensors (converted to f32).
    pub fn from_map(map: impl IntoIterator<Item = (String, Tensor)>) -> Result<Self> {
        let map = map
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(Self { map })
    }

    /// The gradient of a parameter.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    /// Parameter names and gradients, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no parameter has a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        for g in self.map.values_mut() {
            *g = (&*g * factor)?;
        }
        Ok(())
    }

    /// The total L2 norm over all gradients (f32 sums, one device sync).
    pub fn global_norm(&self) -> Result<f64> {
        if self.map.is_empty() {
            return Ok(0.0);
        }
        let sums = self
            .map
            .values()
            .map(|g| g.sqr()?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let total = Tensor::stack(&sums, 0)?.sum_all()?.sqrt()?;
        Ok(f64::from(total.to_scalar::<f32>()?))
    }
}

/// Clips `grads` in place so their global L2 norm is at most `max_norm`, exactly as
/// `torch.nn.utils.clip_grad_norm_`: when the norm exceeds `max_norm`, every gradient is scaled by
/// `max_norm / (norm + 1e-6)`. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    let norm = grads.global_norm()?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        grads.scale(coef)?;
    }
    Ok(norm)
}

/// Sums gradients over micro-batches and averages them (the gradient of the mean of the
/// micro-batch losses, as transformers' `loss / gradient_accumulation_steps`).
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sum: BTreeMap<String, Tensor>,
    count: usize,
}

impl GradAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one micro-batch's gradients of `params` from `store`.
    pub fn add_store(&mut self, params: &[(String, Var)], store: &GradStore) -> Result<()> {
        self.add(Grads::from_store(params, store)?)
    }

    /// Adds one micro-batch's gradients.
    pub fn add(&mut self, grads: Grads) -> Result<()> {
        for (name, g) in grads.map {
            let summed = match self.sum.remove(&name) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            self.sum.insert(name, summed);
        }
        self.count += 1;
        Ok(())
    }

    /// Micro-batches added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The averaged gradients (sum / micro-batches); empty if nothing was added.
    pub fn finish(self) -> Result<Grads> {
        let mut grads = Grads { map: self.sum };
        if self.count > 1 {
            grads.scale(1.0 / self.count as f64)?;
        }
        Ok(grads)
    }
}
