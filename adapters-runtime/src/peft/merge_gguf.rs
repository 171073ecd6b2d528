//! Merging a PEFT adapter into a GGUF base: to a GGUF file re-quantized to the base's own types
//! (what llama.cpp / ollama users run), or to a dequantized HF checkpoint (safetensors, f32; a
//! folder gets `config.json` and the file's tokenizer, from the metadata). The HF outputs hold
//! the whole model dense in memory before writing (f32: 4 bytes per parameter).
//!
//! The adapter is in HF's layout (as every adapter this crate saves, also those trained over a
//! GGUF base): each adapted weight is dequantized, its `q_proj` / `k_proj` rows put in HF order,
//! merged with the runtime's math, and — for a GGUF output — permuted back and quantized again.

use crate::error::{AdapterError, KeyIssue, Result};
use crate::estimate::QuantFormat;
use crate::gguf::llama::{gguf_name, hf_name, llama_config, reorder_rows, row_orders};
use crate::gguf::tokenizer::gguf_tokenizer_json;
use crate::gguf::write::write_gguf;
use crate::gguf::{is_gguf_path, GgufFile};
use crate::hf::model_folder::{save_model_folder_with, FolderFiles};
use crate::io::finite::check_finite;
use crate::io::safetensors_write::write_tensors;
use crate::peft::adapter_file::{AdapterCheckpoint, ModuleAdapter};
use crate::peft::keys;
use crate::peft::merge::{
    check_output_paths, merged_weight, MergeOptions, MergeReport, ALLOW_HINT,
};
use crate::quant::ggml_of_format;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Merges `adapter` into the GGUF file `base` and writes `out`: a `.gguf` file (every tensor in
/// its original type, merged ones re-quantized — to `requantize` instead when given; metadata and
/// tokenizer copied), a `.safetensors` file, or an HF model folder (`config.json` and, when the
/// file has one, `tokenizer.json` / `tokenizer_config.json` from the metadata, and
/// `model.safetensors`, f32; `--force` keeps the folder's other files). Merged weights are checked finite unless
/// `options.allow_non_finite`; nothing is written unless every adapted weight exists with a
/// matching shape; outputs appear atomically.
pub fn merge_gguf(
    base: &Path,
    adapter: &Path,
    out: &Path,
    options: &MergeOptions,
    requantize: Option<QuantFormat>,
) -> Result<MergeReport> {
    let ckpt = AdapterCheckpoint::read(adapter)?;
    if !options.allow_non_finite {
        ckpt.check_finite(ALLOW_HINT)?;
    }
    let to_gguf = is_gguf_path(out);
    let to_file = to_gguf
        || out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    check_output_paths(
        &[
            ("the base model", base.to_path_buf()),
            ("the adapter", adapter.to_path_buf()),
        ],
        !to_file,
        out,
        options.overwrite,
    )?;
    if requantize.is_some() && !to_gguf {
        return Err(AdapterError::InvalidArgument {
            name: "quant".into(),
            expected: "a `.gguf` output (other outputs are written dequantized)".into(),
            actual: out.display().to_string(),
        });
    }
    let requant_dtype = match requantize {
        Some(f) => Some(
            ggml_of_format(f).ok_or_else(|| AdapterError::InvalidArgument {
                name: "quant".into(),
                expected: "a GGML type for a GGUF output (q4_0, q4_1, q5_0, q5_1, q8_0, q2k…q8k)"
                    .into(),
                actual: f.name().into(),
            })?,
        ),
        None => None,
    };
    let mut file = GgufFile::open(base)?;
    let config = llama_config(&file)?;
    let targets = plan(&ckpt, &file)?;
    // An HF folder gets the file's tokenizer, built before anything is written.
    let tokenizer = match (to_file, file.get("tokenizer.ggml.model")) {
        (false, Some(_)) => {
            let t = gguf_tokenizer_json(file.metadata(), base)?;
            let json = |v: &serde_json::Value, name: &str| {
                serde_json::to_vec_pretty(v).map_err(|source| AdapterError::Json {
                    path: out.join(name),
                    source,
                })
            };
            vec![
                (
                    "tokenizer.json".to_string(),
                    json(&t.tokenizer_json, "tokenizer.json")?,
                ),
                (
                    "tokenizer_config.json".to_string(),
                    json(&t.config, "tokenizer_config.json")?,
                ),
            ]
        }
        _ => Vec::new(),
    };
    let dev = Device::Cpu;
    let mut report = MergeReport {
        output: out.to_path_buf(),
        merged: targets.keys().cloned().collect(),
        files: 1,
        ..Default::default()
    };
    report.merged.sort();
    let mut quantized: Vec<(String, QTensor)> = Vec::new();
    let mut dense: Vec<(String, Tensor)> = Vec::new();
    for name in file.tensor_names() {
        let Some(hf) = hf_name(&name) else {
            return Err(file.error(format!("tensor `{name}` is not part of a Llama model")));
        };
        let q = file.tensor(&name, &dev)?;
        let ad = targets.get(&hf).copied();
        if to_gguf && ad.is_none() {
            report.passed_through += 1;
            quantized.push((name, q));
            continue;
        }
        let rows = q.shape().dims().first().copied().unwrap_or(0);
        let perm = row_orders(&file, &hf, &config, rows)?;
        let in_file = |e: candle_core::Error| file.error(format!("tensor `{name}`: {e}"));
        let mut w = q.dequantize(&dev).map_err(in_file)?;
        if let Some((to_hf, _)) = &perm {
            w = reorder_rows(&w, to_hf).map_err(in_file)?;
        }
        if let Some(ad) = ad {
            w = merged_weight(w, ad)?;
            if !options.allow_non_finite {
                let what = format!(
                    "merging adapter module `{}` into `{}`",
                    ad.module,
                    base.display()
                );
                check_finite(&w, &what, &hf, ALLOW_HINT)?;
            }
        } else {
            report.passed_through += 1;
        }
        if to_gguf {
            if let Some((_, to_gguf)) = &perm {
                w = reorder_rows(&w, to_gguf)?;
            }
            let dtype = requant_dtype.unwrap_or(q.dtype());
            let requantized = quantize(&w, dtype).map_err(|e| {
                file.error(format!("re-quantizing merged `{name}` to {dtype:?}: {e}"))
            })?;
            quantized.push((name, requantized));
        } else {
            dense.push((hf, w.to_dtype(DType::F32)?));
        }
    }
    if to_gguf {
        // With `--quant` the types change: llama.cpp's `general.file_type` would be stale.
        let mut metadata: Vec<(String, _)> = file
            .metadata()
            .iter()
            .filter(|(k, _)| requantize.is_none() || k.as_str() != "general.file_type")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        write_gguf(out, &metadata, &quantized)?;
    } else if to_file {
        write_tensors(out, &dense, None)?;
    } else {
        // `--force` replaces what the merge writes; other files already in `out` stay.
        let files = FolderFiles {
            generated: &tokenizer,
            keep_others: true,
            ..Default::default()
        };
        save_model_folder_with(out, &config, &dense, &files)?;
        report
            .copied
            .push("config.json (from the GGUF metadata)".into());
        for (name, _) in &tokenizer {
            report
                .copied
                .push(format!("{name} (from the GGUF metadata)"));
        }
    }
    Ok(report)
}

/// `w` (2-D, in the file's row order) stored as `dtype` (float types included).
fn quantize(w: &Tensor, dtype: GgmlDType) -> candle_core::Result<QTensor> {
    QTensor::quantize(w, dtype)
}

/// Maps every adapted HF weight name to its adapter, checking the GGUF file holds it with the
/// adapter's shape.
fn plan<'c>(
    ckpt: &'c AdapterCheckpoint,
    file: &GgufFile,
) -> Result<HashMap<String, &'c ModuleAdapter>> {
    let mut issues = Vec::new();
    let mut targets = HashMap::new();
    for ad in &ckpt.modules {
        let key = keys::base_weight(&ad.module);
        let info = gguf_name(&key).and_then(|g| file.tensor_infos().get(&g));
        let Some(info) = info else {
            issues.push(KeyIssue::new(
                &key,
                format!("a GGUF tensor for adapter module `{}`", ad.module),
                "missing",
            ));
            continue;
        };
        let want = ad.base_shape();
        if info.shape.dims() != want.as_slice() {
            issues.push(KeyIssue::new(
                &key,
                format!("shape {want:?}"),
                format!("shape {:?}", info.shape.dims()),
            ));
            continue;
        }
        targets.insert(key, ad);
    }
    if !issues.is_empty() {
        return Err(AdapterError::Keys {
            context: format!(
                "merging adapter `{}` into `{}`",
                ckpt.dir.display(),
                file.path().display()
            ),
            issues,
        });
    }
    Ok(targets)
}
