//! Reading and writing HF Llama checkpoints: `config.json` + `model.safetensors` (or shards listed
//! in `model.safetensors.index.json`).

use super::config::LlamaConfig;
use super::model::{BaseMode, Llama};
use crate::error::{AdapterError, Result};
use crate::peft::atomic::Staging;
use crate::peft::model_files::BaseModel;
use crate::peft::st_write::tensor_bytes;
use candle_core::Var;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
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
pub fn load_checkpoint(
    dir: &Path,
    dtype: DType,
    device: &Device,
    mode: BaseMode,
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
            (Llama::load(&config, vb, mode).map_err(in_dir)?, None)
        }
        BaseMode::Trainable => {
            let varmap = VarMap::new();
            {
                let mut data = varmap
                    .data()
                    .lock()
                    .map_err(|_| AdapterError::InvalidState {
                        layer: dir.display().to_string(),
                        op: "load",
                        reason: "the VarMap's lock is poisoned".into(),
                    })?;
                for f in &files {
                    for (name, t) in candle_core::safetensors::load(f, device).map_err(in_dir)? {
                        data.insert(name, Var::from_tensor(&t.to_dtype(dtype)?)?);
                    }
                }
            }
            let vb = VarBuilder::from_varmap(&varmap, dtype, device);
            (
                Llama::load(&config, vb, mode).map_err(in_dir)?,
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

/// Every base tensor of a model with this configuration, in checkpoint order:
/// `(HF name, shape, whether it is a norm scale)`.
pub fn tensor_shapes(config: &LlamaConfig) -> Vec<(String, Vec<usize>, bool)> {
    let (h, i, v, hd) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
        config.head_dim(),
    );
    let (nh, nkv) = (config.num_attention_heads, config.kv_heads());
    let mut shapes: Vec<(String, Vec<usize>, bool)> =
        vec![("model.embed_tokens.weight".into(), vec![v, h], false)];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h], true));
        shapes.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            true,
        ));
        for (name, dims) in [
            ("self_attn.q_proj", vec![nh * hd, h]),
            ("self_attn.k_proj", vec![nkv * hd, h]),
            ("self_attn.v_proj", vec![nkv * hd, h]),
            ("self_attn.o_proj", vec![h, nh * hd]),
            ("mlp.gate_proj", vec![i, h]),
            ("mlp.up_proj", vec![i, h]),
            ("mlp.down_proj", vec![h, i]),
        ] {
            shapes.push((format!("{p}.{name}.weight"), dims, false));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![h], true));
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![v, h], false));
    }
    shapes
}

/// Random base weights under their HF names, as HF initialises a Llama (matrices N(0, 0.02),
/// norm scales 1), drawn from a seeded generator in [`tensor_shapes`] order.
pub fn random_weights(
    config: &LlamaConfig,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Result<Vec<(String, Tensor)>> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).map_err(candle_core::Error::wrap)?;
    tensor_shapes(config)
        .into_iter()
        .map(|(name, dims, ones)| {
            let n: usize = dims.iter().product();
            let values: Vec<f32> = if ones {
                vec![1.0; n]
            } else {
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            Ok((
                name,
                Tensor::from_vec(values, dims, device)?.to_dtype(dtype)?,
            ))
        })
        .collect()
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
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| AdapterError::InvalidState {
                layer: "llama".into(),
                op: "init",
                reason: "the VarMap's lock is poisoned".into(),
            })?;
        for (name, t) in random_weights(config, dtype, device, seed)? {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    let model = Llama::load(config, vb, BaseMode::Trainable)?;
    Ok((model, varmap))
}

/// Writes `tensors` and `config` as an HF folder (`config.json` + `model.safetensors` with
/// metadata `{"format": "pt"}`), atomically; `extra` files (e.g. `tokenizer.json`) are copied in.
pub fn save_checkpoint(
    dir: &Path,
    config: &LlamaConfig,
    tensors: &[(String, Tensor)],
    extra: &[PathBuf],
) -> Result<()> {
    let staging = Staging::new(dir)?;
    let cfg_path = staging.path().join("config.json");
    let mut json = serde_json::to_value(config).map_err(|source| AdapterError::Json {
        path: cfg_path.clone(),
        source,
    })?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!(["LlamaForCausalLM"]),
        );
        obj.insert("model_type".into(), "llama".into());
        obj.insert("hidden_act".into(), "silu".into());
        let dt = tensors.first().map_or(DType::F32, |(_, t)| t.dtype());
        obj.insert(
            "torch_dtype".into(),
            format!("{dt:?}")
                .to_lowercase()
                .replace("bf16", "bfloat16")
                .replace("f32", "float32")
                .replace("f16", "float16")
                .into(),
        );
    }
    let text = serde_json::to_string_pretty(&json).map_err(|source| AdapterError::Json {
        path: cfg_path.clone(),
        source,
    })?;
    std::fs::write(&cfg_path, text).map_err(|e| AdapterError::io("writing", &cfg_path, e))?;
    let mut data = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, bytes) = tensor_bytes(t)?;
        data.push((name.clone(), dtype, t.dims().to_vec(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, dt, shape, b)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|source| AdapterError::SafeTensors {
                    path: dir.join("model.safetensors"),
                    source,
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let st_path = staging.path().join("model.safetensors");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), &st_path).map_err(|source| {
        AdapterError::SafeTensors {
            path: st_path.clone(),
            source,
        }
    })?;
    crate::peft::atomic::publish_mode(&st_path)?;
    for f in extra {
        if let Some(name) = f.file_name() {
            let to = staging.path().join(name);
            std::fs::copy(f, &to).map_err(|e| AdapterError::io("copying", f, e))?;
        }
    }
    staging.commit(false)
}
