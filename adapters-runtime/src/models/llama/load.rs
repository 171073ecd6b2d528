//! Building a [`Llama`]: from an HF checkpoint folder (`config.json` + `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`), or randomly initialised.

use super::model::{BaseMode, BaseQuant, Llama};
use crate::adapters::register_vars;
use crate::error::{AdapterError, Result};
use crate::estimate::QuantFormat;
use crate::hf::llama_config::LlamaConfig;
use crate::hf::llama_layout::{LlamaLayout, TensorRole};
use crate::hf::model_files::BaseModel;
use candle_core::Var;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::path::{Path, PathBuf};

/// A loaded model with its configuration and the files it came from.
pub struct LoadedLlama {
    /// The model.
    pub model: Llama,
    /// Its `config.json`.
    pub config: LlamaConfig,
    /// The weights files read.
    pub files: Vec<PathBuf>,
    /// The variables, when loaded trainable.
    pub varmap: Option<VarMap>,
}

/// The weights files of an HF folder (`model.safetensors`, or the shards of
/// `model.safetensors.index.json`), their headers checked so a corrupt file is a clear error.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let base = BaseModel::open(dir)?;
    Ok(base.shards.iter().map(|(name, _)| dir.join(name)).collect())
}

/// Loads an HF Llama folder with its base weights in `dtype` on `device`. Frozen: the files are
/// memory-mapped. Trainable: every tensor becomes a variable of the returned [`VarMap`].
pub fn load_pretrained(
    dir: &Path,
    dtype: DType,
    device: &Device,
    mode: BaseMode,
) -> Result<LoadedLlama> {
    load_pretrained_with(dir, dtype, device, mode, &BaseQuant::None)
}

/// A model for fine-tuning from `path`: an HF folder, its projections quantized on load to
/// `quant` when given (QLoRA / QDoRA; `--quant nf4`), or a `.gguf` file, whose quantized
/// projections are the frozen base as stored (`quant` must then be `None`: the file is already
/// quantized).
pub fn load_model(
    path: &Path,
    dtype: DType,
    device: &Device,
    quant: Option<QuantFormat>,
) -> Result<LoadedLlama> {
    if crate::gguf::is_gguf_path(path) {
        if let Some(q) = quant {
            return Err(AdapterError::InvalidArgument {
                name: "quant".into(),
                expected: "no re-quantization of a GGUF file (its tensors are already quantized)"
                    .into(),
                actual: q.name().into(),
            });
        }
        return super::load_gguf::load_gguf(path, dtype, device);
    }
    let quant = quant.map_or(BaseQuant::None, BaseQuant::Quantize);
    load_pretrained_with(path, dtype, device, BaseMode::Frozen, &quant)
}

/// [`load_pretrained`] with the projections stored as `quant` says (frozen mode only).
pub fn load_pretrained_with(
    dir: &Path,
    dtype: DType,
    device: &Device,
    mode: BaseMode,
    quant: &BaseQuant,
) -> Result<LoadedLlama> {
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let files = weight_files(dir)?;
    let in_dir = |source| AdapterError::InLayer {
        layer: dir.display().to_string(),
        source,
    };
    let (model, varmap) = match mode {
        BaseMode::Frozen => {
            // SAFETY: the files are mapped read-only and not modified while the model is loaded.
            let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
                .map_err(in_dir)?;
            (
                Llama::load_with(&config, vb, mode, quant).map_err(in_dir)?,
                None,
            )
        }
        BaseMode::Trainable => {
            let varmap = VarMap::new();
            for f in &files {
                let tensors = candle_core::safetensors::load(f, device).map_err(in_dir)?;
                let vars = tensors
                    .into_iter()
                    .map(|(name, t)| Ok((name, Var::from_tensor(&t.to_dtype(dtype)?)?)));
                register_vars(&varmap, &dir.display().to_string(), vars)?;
            }
            let vb = VarBuilder::from_varmap(&varmap, dtype, device);
            (
                Llama::load_with(&config, vb, mode, quant).map_err(in_dir)?,
                Some(varmap),
            )
        }
    };
    Ok(LoadedLlama {
        model,
        config,
        files,
        varmap,
    })
}

/// Random base weights under their HF names, as HF initialises a Llama (matrices N(0, 0.02),
/// norm scales 1, biases 0), drawn from a seeded generator in checkpoint order
/// ([`LlamaLayout::tensors`]).
pub fn random_weights(
    config: &LlamaConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<Vec<(String, Tensor)>> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    LlamaLayout::new(config)
        .tensors()
        .into_iter()
        .map(|spec| {
            let t = init_tensor(&spec, &mut rng, dtype, device)?;
            Ok((spec.name, t))
        })
        .collect()
}

/// One tensor as HF initialises it (matrices N(0, 0.02) from `rng`, norm scales 1, biases 0).
fn init_tensor(
    spec: &crate::hf::llama_layout::TensorSpec,
    rng: &mut rand::rngs::StdRng,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    use rand_distr::{Distribution, Normal};
    let n: usize = spec.shape.iter().product();
    let values: Vec<f32> = match spec.role {
        TensorRole::NormScale => vec![1.0; n],
        TensorRole::Bias => vec![0.0; n],
        TensorRole::Matrix => {
            let normal = Normal::new(0.0f32, 0.02).map_err(candle_core::Error::wrap)?;
            (0..n).map(|_| normal.sample(rng)).collect()
        }
    };
    Tensor::from_vec(values, spec.shape.clone(), device)?.to_dtype(dtype)
}

/// A [`VarBuilder`] that makes each base tensor of `config`'s model when it is asked for, as
/// [`random_weights`] would (N(0, 0.02) matrices, norm scales 1, biases 0) but seeded per tensor
/// name, so no tensor exists before it is loaded: with [`Llama::load_with`] and a
/// [`BaseQuant::Quantize`] the dense projections are quantized one at a time (benchmarks of
/// quantized bases measure the quantized model, not a transient dense copy of all of it).
pub fn random_var_builder(
    config: &LlamaConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> VarBuilder<'static> {
    let specs = LlamaLayout::new(config)
        .tensors()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    VarBuilder::from_backend(
        Box::new(RandomBackend { specs, seed }),
        dtype,
        device.clone(),
    )
}

/// The backend of [`random_var_builder`].
struct RandomBackend {
    specs: std::collections::HashMap<String, crate::hf::llama_layout::TensorSpec>,
    seed: u64,
}

impl candle_nn::var_builder::SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "`{name}`: the layout's shape is {:?}, asked for {s:?}",
                t.shape()
            )
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        use rand::SeedableRng;
        let Some(spec) = self.specs.get(name) else {
            candle_core::bail!("no tensor `{name}` in the model's layout")
        };
        let seed = crate::seed::mix_seed(self.seed, crate::seed::fnv1a(name));
        init_tensor(
            spec,
            &mut rand::rngs::StdRng::seed_from_u64(seed),
            dtype,
            dev,
        )
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.specs.contains_key(name)
    }
}

/// A randomly initialised, fully trainable model ([`random_weights`]); its variables are in the
/// returned [`VarMap`].
pub fn init_random(
    config: &LlamaConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<(Llama, VarMap)> {
    let varmap = VarMap::new();
    let weights = random_weights(config, dtype, device, seed)?;
    let vars = weights
        .into_iter()
        .map(|(name, t)| Ok((name, Var::from_tensor(&t)?)));
    register_vars(&varmap, "llama", vars)?;
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    let model = Llama::load(config, vb, BaseMode::Trainable)?;
    Ok((model, varmap))
}
