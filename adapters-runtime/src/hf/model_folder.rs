//! Writing an HF model folder: `config.json` + `model.safetensors` (metadata `{"format": "pt"}`),
//! replaced atomically.

use crate::error::{AdapterError, Result};
use crate::hf::llama_config::LlamaConfig;
use crate::io::atomic::Staging;
use crate::io::finite::check_finite;
use crate::io::safetensors_write::{pt_metadata, write_tensors};
use candle_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// transformers' `torch_dtype` name of a dtype.
fn torch_dtype(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Writes `tensors` and `config` as an HF Llama-family folder (`config.json` with the family's
/// `architectures` and `model_type`, `hidden_act` and `torch_dtype` filled in, and `model.safetensors`), atomically;
/// `extra` files (e.g. `tokenizer.json`) are copied in. A tensor holding NaN / ±Inf fails with
/// [`AdapterError::NonFiniteWeights`] naming it, before anything is written.
pub fn save_model_folder(
    dir: &Path,
    config: &LlamaConfig,
    tensors: &[(String, Tensor)],
    extra: &[PathBuf],
) -> Result<()> {
    let files = FolderFiles {
        copy: extra,
        ..Default::default()
    };
    save_model_folder_with(dir, config, tensors, &files)
}

/// What [`save_model_folder_with`] writes besides `config.json` and `model.safetensors`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FolderFiles<'a> {
    /// Files copied in (e.g. `tokenizer.json`).
    pub copy: &'a [PathBuf],
    /// Files written from memory: `(name, bytes)` (e.g. a tokenizer built from GGUF metadata).
    pub generated: &'a [(String, Vec<u8>)],
    /// Keep files already in `dir` that this save does not write (as `adapters merge --force`
    /// does); otherwise the folder is replaced whole.
    pub keep_others: bool,
}

/// [`save_model_folder`] with generated files and the choice to keep other files of `dir`; every
/// file is written into the staged folder, which replaces `dir` atomically.
pub fn save_model_folder_with(
    dir: &Path,
    config: &LlamaConfig,
    tensors: &[(String, Tensor)],
    files: &FolderFiles,
) -> Result<()> {
    let extra = files.copy;
    let what = format!("saving model folder `{}`", dir.display());
    for (name, t) in tensors {
        check_finite(t, &what, name, "")?;
    }
    let staging = Staging::new(dir)?;
    let cfg_path = staging.path().join("config.json");
    let json_err = |source| AdapterError::Json {
        path: cfg_path.clone(),
        source,
    };
    let mut json = serde_json::to_value(config).map_err(json_err)?;
    if let Some(obj) = json.as_object_mut() {
        let family = config.family();
        obj.insert(
            "architectures".into(),
            serde_json::json!([family.architecture()]),
        );
        obj.insert("model_type".into(), family.model_type().into());
        // Gemma 3: transformers 5's per-layer-type RoPE.
        if family == crate::hf::llama_config::Family::Gemma3 {
            let full = obj
                .remove("rope_parameters")
                .unwrap_or(serde_json::json!({}));
            let local = obj
                .remove("rope_local_parameters")
                .unwrap_or(serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}));
            obj.insert(
                "rope_parameters".into(),
                serde_json::json!({"full_attention": full, "sliding_attention": local}),
            );
        }
        obj.insert("hidden_act".into(), "silu".into());
        let dt = tensors.first().map_or(DType::F32, |(_, t)| t.dtype());
        obj.insert("torch_dtype".into(), torch_dtype(dt).into());
    }
    let text = serde_json::to_string_pretty(&json).map_err(json_err)?;
    std::fs::write(&cfg_path, text).map_err(|e| AdapterError::io("writing", &cfg_path, e))?;
    write_tensors(
        &staging.path().join("model.safetensors"),
        tensors,
        pt_metadata(),
    )?;
    for f in extra {
        if let Some(name) = f.file_name() {
            let to = staging.path().join(name);
            std::fs::copy(f, &to).map_err(|e| AdapterError::io("copying", f, e))?;
        }
    }
    for (name, bytes) in files.generated {
        let to = staging.path().join(name);
        std::fs::write(&to, bytes).map_err(|e| AdapterError::io("writing", &to, e))?;
    }
    staging.commit(files.keep_others)
}
