//! Building a [`Llama`] from a llama.cpp GGUF file: quantized projections stay quantized as the
//! frozen base (QLoRA / QDoRA), everything else is dequantized to the base dtype; `q_proj` /
//! `k_proj` rows are put back in HF's order, so the model is the HF model and its adapters are
//! HF adapters.

use super::load::LoadedLlama;
use super::model::{BaseMode, BaseQuant, Llama};
use crate::error::{AdapterError, Result};
use crate::gguf::llama::{hf_name, llama_config, reorder_rows, row_orders};
use crate::gguf::GgufFile;
use crate::hf::llama_layout::LlamaLayout;
use crate::quant::{format_of_ggml, QuantWeight};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Loads a Llama-family GGUF file with its base in `dtype` on `device`: each quantized
/// projection weight (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q8_K) stays quantized and frozen; F32 /
/// F16 / BF16 projections, the embedding table, the norms and the output head are dequantized
/// to `dtype`. The file's tensors must be exactly those of the Llama its metadata describes (each
/// spelled once, none missing or left over).
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<LoadedLlama> {
    let mut file = GgufFile::open(path)?;
    let config = llama_config(&file)?;
    let mut dense = HashMap::new();
    let mut quant = HashMap::new();
    for name in file.tensor_names() {
        let hf = hf_name(&name).ok_or_else(|| {
            file.error(format!(
                "tensor `{name}` is not part of a Llama model (expected token_embd, output_norm, \
                 output and blk.N.{{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, \
                 ffn_gate, ffn_up, ffn_down}})"
            ))
        })?;
        if dense.contains_key(&hf) || quant.contains_key(&hf) {
            return Err(file.error(format!("two tensors map to `{hf}`")));
        }
        let q = file.tensor(&name, device)?;
        let rows = q.shape().dims().first().copied().unwrap_or(0);
        let order = row_orders(&file, &hf, &config, rows)?;
        let projection = hf.ends_with("_proj.weight");
        if projection && format_of_ggml(q.dtype()).is_some() {
            let mut w = QuantWeight::from_qtensor(&hf, q)?;
            if let Some((to_hf, _)) = &order {
                w = w.permute_rows(&hf, to_hf)?;
            }
            quant.insert(hf, Arc::new(w));
        } else {
            let in_file = |e: candle_core::Error| AdapterError::Gguf {
                path: path.into(),
                reason: format!("tensor `{name}`: {e}"),
            };
            let mut t = q.dequantize(device).map_err(in_file)?;
            if let Some((to_hf, _)) = &order {
                t = reorder_rows(&t, to_hf).map_err(in_file)?;
            }
            dense.insert(hf, t.to_dtype(dtype).map_err(in_file)?);
        }
    }
    // Nothing left over: tensors of layers past `block_count`, or biases the configuration
    // does not have, would otherwise be ignored.
    let expected: std::collections::HashSet<String> = LlamaLayout::new(&config)
        .tensors()
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut extra: Vec<&String> = dense
        .keys()
        .chain(quant.keys())
        .filter(|n| !expected.contains(*n))
        .collect();
    extra.sort();
    if let Some(first) = extra.first() {
        return Err(file.error(format!(
            "{} tensor(s) are not part of the model its metadata describes ({} layers, attention \
             bias {}, MLP bias {}), e.g. `{first}`",
            extra.len(),
            config.num_hidden_layers,
            config.attention_bias,
            config.mlp_bias
        )));
    }
    let vb = VarBuilder::from_tensors(dense, dtype, device);
    let quant = BaseQuant::Prequantized(Arc::new(quant));
    let model = Llama::load_with(&config, vb, BaseMode::Frozen, &quant).map_err(|source| {
        AdapterError::InLayer {
            layer: path.display().to_string(),
            source,
        }
    })?;
    Ok(LoadedLlama {
        model,
        config,
        files: vec![path.to_path_buf()],
        varmap: None,
    })
}
