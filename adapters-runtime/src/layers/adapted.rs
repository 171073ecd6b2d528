//! [`Adapted`]: the one adapted-layer core — a frozen base tensor that may carry a LoRA / DoRA
//! [`Adapter`] — generic over [`LayerKind`] (linear or embedding).

use crate::adapter_config::AdapterConfig;
use crate::error::{AdapterError, InLayer, Result};
use crate::estimate;
use crate::layers::adapter::{check_float, check_shape, Adapter};
use crate::layers::init;
use crate::layers::kind::LayerKind;
use crate::quant::QuantWeight;
use candle_core::{Tensor, Var};
use std::marker::PhantomData;
use std::sync::Arc;

/// A frozen base tensor (a linear weight or an embedding table) with an optional adapter. Use it
/// as [`AdaptedLinear`](crate::AdaptedLinear) or [`AdaptedEmbedding`](crate::AdaptedEmbedding).
///
/// `Clone` shares the adapter's `Var`s (as cloning a `candle_nn::Linear` shares its tensors): a
/// clone trains the same parameters.
#[derive(Clone, Debug)]
pub struct Adapted<K: LayerKind> {
    pub(crate) path: Option<String>,
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    pub(crate) adapter: Option<Adapter>,
    pub(crate) trainable_base: bool,
    /// A quantized base (linear layers only). `weight` then holds a zero-stride placeholder of
    /// the base's shape and compute dtype (one element of storage) — or, while merged, the
    /// dense merged weight; values are always read from here (see [`Adapted::base_is_quantized`]).
    pub(crate) quant: Option<Arc<QuantWeight>>,
    pub(crate) kind: PhantomData<K>,
}

impl<K: LayerKind> Adapted<K> {
    /// A bare layer over `weight`; frozen (detached) unless `trainable`.
    pub(crate) fn from_parts(weight: Tensor, bias: Option<Tensor>, trainable: bool) -> Self {
        let (weight, bias) = if trainable {
            (weight, bias)
        } else {
            (weight.detach(), bias.map(|b| b.detach()))
        };
        Self {
            path: None,
            weight,
            bias,
            adapter: None,
            trainable_base: trainable,
            quant: None,
            kind: PhantomData,
        }
    }

    /// The placeholder standing for a quantized base: its shape and dtype, one element stored.
    pub(crate) fn quant_placeholder(
        q: &QuantWeight,
        dtype: candle_core::DType,
    ) -> candle_core::Result<Tensor> {
        let (rows, cols) = q.dims();
        let shape = if K::IS_EMBEDDING {
            (cols, rows)
        } else {
            (rows, cols)
        };
        Tensor::zeros((), dtype, &q.device())?.broadcast_as(shape)
    }

    /// Whether the forward reads a quantized base (quantized and not merged).
    pub fn base_is_quantized(&self) -> bool {
        self.quant.is_some() && !self.adapter.as_ref().is_some_and(|a| a.merged)
    }

    /// The quantized base, if the layer has one (kept while merged, to unmerge exactly).
    pub fn quantized(&self) -> Option<&Arc<QuantWeight>> {
        self.quant.as_ref()
    }

    /// Bytes the frozen base (weight and bias) holds in memory: the quantized storage (plus the
    /// merged dense weight while merged), or the dense tensors.
    pub fn base_bytes(&self) -> usize {
        let bias = self
            .bias
            .as_ref()
            .map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes());
        let dense = self.weight.elem_count() * self.weight.dtype().size_in_bytes();
        match &self.quant {
            Some(q) if self.base_is_quantized() => q.storage_bytes() + bias,
            Some(q) => q.storage_bytes() + dense + bias,
            None => dense + bias,
        }
    }

    /// The base weight's values in the layer's dtype: the stored tensor, or the quantized base
    /// dequantized (a new tensor) while it is in use.
    pub fn dense_weight(&self) -> Result<Tensor> {
        match (&self.quant, self.base_is_quantized()) {
            (Some(q), true) => Ok(q.dequantize(self.weight.dtype()).in_layer(self.name())?),
            _ => Ok(self.weight.clone()),
        }
    }

    /// `W0` in `dtype`, dense (for a quantized base: dequantized to the layer's dtype, as the
    /// forward sees it, then cast).
    fn base_values(&self, dtype: candle_core::DType) -> candle_core::Result<Tensor> {
        match &self.quant {
            Some(q) => q.dequantize(self.weight.dtype())?.to_dtype(dtype),
            None => self.weight.to_dtype(dtype),
        }
    }

    /// Whether the base receives gradients (built with `new_trainable`, for full training).
    pub fn is_base_trainable(&self) -> bool {
        self.trainable_base
    }

    /// Records the checkpoint path of the base (without `.weight`), e.g.
    /// `model.layers.0.self_attn.q_proj`; adapters are saved under it.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets the checkpoint path (see [`Adapted::with_path`]).
    pub fn set_path(&mut self, path: impl Into<String>) {
        self.path = Some(path.into());
    }

    /// The checkpoint path, when known.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    pub(crate) fn name(&self) -> &str {
        self.path.as_deref().unwrap_or(K::UNNAMED)
    }

    /// `(in, out)`: `(in_features, out_features)` for linear layers, `(vocab, dim)` for embeddings.
    pub fn dims_in_out(&self) -> (usize, usize) {
        K::dims(&self.weight)
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
            let (din, dout) = self.dims_in_out();
            let expected = if K::IS_EMBEDDING {
                vec![din, dout]
            } else {
                vec![dout, din]
            };
            return Err(AdapterError::ShapeMismatch {
                layer: name.into(),
                what: K::BASE.into(),
                expected,
                actual: self.weight.dims().to_vec(),
            });
        }
        check_float(name, K::BASE, &self.weight)?;
        if let Some(b) = &self.bias {
            check_shape(name, "bias", b, &[self.dims_in_out().1])?;
        }
        Ok(())
    }

    /// Attaches a freshly initialised adapter, seeded by `seed` and the layer's path, so the output
    /// is unchanged: linear `A` by `config.init`, `B = 0`; embedding `A = 0`, `B ~ N(0, 1)` (as
    /// PEFT does); for DoRA `m = ‖W0‖` per output.
    pub fn attach(&mut self, config: AdapterConfig, seed: u64) -> Result<()> {
        let name = self.name().to_string();
        config.validate(&name)?;
        self.check_base()?;
        let (din, dout) = self.dims_in_out();
        config.check_size(&name, din, dout)?;
        let dt = init::adapter_dtype(self.weight.dtype());
        let dev = self.weight.device().clone();
        let seed = init::layer_seed(seed, &name);
        let (a, b) = K::init(&config, din, dout, seed, dt, &dev).in_layer(&name)?;
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
        let ((din, dout), r) = (self.dims_in_out(), config.rank);
        config.check_size(&name, din, dout)?;
        let (a_name, b_name) = K::VAR_NAMES;
        check_shape(&name, a_name.trim_end_matches(".weight"), a, &[r, din])?;
        check_shape(&name, b_name.trim_end_matches(".weight"), b, &[dout, r])?;
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
            let sq = match &self.quant {
                Some(q) => q
                    .dequantize(self.weight.dtype())
                    .and_then(|w| K::base_sq_norms(&w, ad.dtype())),
                None => K::base_sq_norms(&self.weight, ad.dtype()),
            };
            ad.base_sq = Some(sq.in_layer(&name)?);
            let m = match magnitude {
                Some(m) => m,
                None => self.norm_of(&ad).in_layer(&name)?,
            };
            ad.magnitude = Some(Var::from_tensor(&m)?);
        }
        self.adapter = Some(ad);
        Ok(())
    }

    /// The detached DoRA norm `‖W0 + s·B·A‖` per output, without forming the `out × in` matrix.
    pub(crate) fn norm_of(&self, ad: &Adapter) -> candle_core::Result<Tensor> {
        if let Some(norm) = ad.cached_norm() {
            return Ok(norm);
        }
        let norm = self.compute_norm(ad)?;
        ad.store_norm(&norm);
        Ok(norm)
    }

    fn compute_norm(&self, ad: &Adapter) -> candle_core::Result<Tensor> {
        let a = ad.a.as_tensor().detach();
        let w_at = match &self.quant {
            // Inference through GGML's kernels (`QuantWeight::set_ggml_kernels`).
            Some(q) if q.ggml_kernels() && !K::IS_EMBEDDING => match q.ggml_times_at(&a) {
                Some(w_at) => w_at?,
                None => K::base_times_at(&q.dequantize(self.weight.dtype())?, &a)?,
            },
            // W0 as the forward sees it: dequantized to the layer's dtype (bf16-rounded for a
            // bf16 model), then cast in chunks like a dense base.
            Some(q) => K::base_times_at(&q.dequantize(self.weight.dtype())?, &a)?,
            None => K::base_times_at(&self.weight, &a)?,
        };
        ad.norm_from(&w_at)
    }

    /// The DoRA weight norm `‖W0 + s·B·A‖` per output, computed without the `out × in` matrix.
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

    /// The trainable tensors with their PEFT names relative to the layer (`lora_A.weight`,
    /// `lora_B.weight` — `lora_embedding_A`, `lora_embedding_B` for embeddings — and
    /// `lora_magnitude_vector`). Empty when bare.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let (a, b) = K::VAR_NAMES;
        self.adapter
            .as_ref()
            .map_or_else(Vec::new, |ad| ad.named_vars(a, b))
    }

    /// Frozen parameters: the base weight (and bias).
    pub fn frozen_params(&self) -> usize {
        let (din, dout) = self.dims_in_out();
        let bias = self.bias.as_ref().map_or(0, |b| b.elem_count());
        // The tensors exist, so the checked formula cannot overflow; the fallback is their count.
        K::frozen_params(din, dout, self.bias.is_some())
            .unwrap_or_else(|| self.weight.elem_count() + bias)
    }

    /// Trainable parameters (0 when bare); equals [`estimate::adapter_params`].
    pub fn trainable_params(&self) -> usize {
        let (din, dout) = self.dims_in_out();
        self.adapter.as_ref().map_or(0, |a| {
            // Counts of allocated tensors: the checked formula cannot overflow here.
            estimate::adapter_params(a.config.method, din, dout, a.config.rank)
                .unwrap_or(a.trainable_params())
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

    /// Training mode: dropout on the adapter input is active only in training (embeddings use
    /// none, as in PEFT).
    pub fn set_training(&mut self, training: bool) {
        if let Some(a) = self.adapter.as_mut() {
            a.training = training;
        }
    }

    /// The merged base: `W0 + s·B·A` (LoRA) or `(m/n) ⊙ (W0 + s·B·A)` (DoRA, with the zero-norm
    /// rule of [`dora_scale`](crate::layers::dora_norm::dora_scale)), computed in the adapter
    /// dtype and returned in the base dtype; with `for_unmerge`, also what unmerge needs.
    fn merged_base(&self, ad: &Adapter, for_unmerge: bool) -> candle_core::Result<MergedBase> {
        let dt = ad.dtype();
        let full = (self.base_values(dt)? + K::delta_in_base_layout(ad.delta()?)?)?;
        if !ad.is_dora() {
            let weight = full.to_dtype(self.weight.dtype())?;
            return Ok(MergedBase::plain(weight));
        }
        let norm = self.norm_of(ad)?;
        let scale = ad.magnitude_scale(&norm)?.detach();
        let merged = full.broadcast_mul(&scale.unsqueeze(1 - K::OUT_AXIS)?)?;
        let lost = if for_unmerge {
            lost_rows(&full, &scale, K::OUT_AXIS)?
        } else {
            None
        };
        Ok(MergedBase {
            weight: merged.to_dtype(self.weight.dtype())?,
            norm: Some(norm),
            lost,
        })
    }

    /// Folds the adapter into the base weight (see [`Adapted::merged_weight_tensor`]).
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
        let merged = self.merged_base(ad, true).in_layer(&name)?;
        self.weight = merged.weight;
        let ad = self.adapter_mut("merge")?;
        ad.merged_norm = merged.norm;
        ad.merged_lost = merged.lost;
        ad.merged = true;
        Ok(())
    }

    /// Restores `W0` from the merged weight (to floating-point tolerance). DoRA outputs whose scale
    /// was 0 at merge (`m = 0`, where the merged weight is zero) are restored from rows kept by
    /// [`Adapted::merge`], so unmerging never divides by zero.
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
            if let Some(q) = &self.quant {
                // W0 was never touched: back to reading it quantized, exactly.
                return Self::quant_placeholder(q, self.weight.dtype());
            }
            let w = self.weight.to_dtype(ad.dtype())?;
            let w = match (&ad.merged_norm, ad.is_dora()) {
                (Some(norm), true) => {
                    let scale = ad.magnitude_scale(norm)?.detach();
                    // Rows with scale 0 are divided by 1 here and restored below.
                    let safe = scale.ne(0.0)?.where_cond(&scale, &scale.ones_like()?)?;
                    w.broadcast_div(&safe.unsqueeze(1 - K::OUT_AXIS)?)?
                }
                _ => w,
            };
            let w = (w - K::delta_in_base_layout(ad.delta()?)?)?;
            let w = match &ad.merged_lost {
                // Those rows of `w` hold 0 − s·B·A; adding the kept W0 + s·B·A gives W0.
                Some((idx, rows)) => w.index_add(idx, rows, K::OUT_AXIS)?,
                None => w,
            };
            w.to_dtype(self.weight.dtype())
        };
        self.weight = restore().in_layer(&name)?;
        let ad = self.adapter_mut("unmerge")?;
        ad.merged = false;
        ad.merged_norm = None;
        ad.merged_lost = None;
        Ok(())
    }

    /// The base as it would be merged, without merging (for exporting merged checkpoints); the
    /// current base when bare or already merged.
    pub fn merged_weight_tensor(&self) -> Result<Tensor> {
        match &self.adapter {
            Some(ad) if !ad.merged => Ok(self.merged_base(ad, false).in_layer(self.name())?.weight),
            // Bare or merged: the base as it is (dequantized when a quantized base is in use).
            _ => self.dense_weight(),
        }
    }
}

/// What [`Adapted::merge`] computes: the merged weight, the DoRA norm and the zero-scale rows.
struct MergedBase {
    weight: Tensor,
    norm: Option<Tensor>,
    lost: Option<(Tensor, Tensor)>,
}

impl MergedBase {
    fn plain(weight: Tensor) -> Self {
        Self {
            weight,
            norm: None,
            lost: None,
        }
    }
}

/// The outputs (along `axis` of `full = W0 + s·B·A`) whose DoRA scale is 0 and their rows of
/// `full`, which the merged weight loses; `None` when every scale is non-zero (the usual case).
fn lost_rows(
    full: &Tensor,
    scale: &Tensor,
    axis: usize,
) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    let zero = scale.eq(0.0)?.to_vec1::<u8>()?;
    let idx: Vec<u32> = (0u32..)
        .zip(&zero)
        .filter(|(_, z)| **z != 0)
        .map(|(i, _)| i)
        .collect();
    if idx.is_empty() {
        return Ok(None);
    }
    let idx = Tensor::new(idx.as_slice(), full.device())?;
    let rows = full.index_select(&idx, axis)?;
    Ok(Some((idx, rows)))
}
