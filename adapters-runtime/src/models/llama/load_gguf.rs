//! Building a [`Llama`] from a llama.cpp GGUF file: quantized projections stay quantized as the
//! frozen base (QLoRA / QDoRA), everything else is dequantized to the base dtype; `q_proj` /
//! `k_proj` rows are put back in HF's order, so the model is the HF model and its adapters are
//! HF adapters.

use super::load::LoadedLlama;
use super::model::{BaseMode, BaseQuant, Llama};
use crate::error::{AdapterError, Result};
use crate::gguf::llama::{gguf_to_hf_rows, hf_name, llama_config, permuted_heads};
use crate::gguf::GgufFile;
use crate::quant::{format_of_ggml, QuantWeight};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The rows of an HF tensor as they were permuted in the file, as a `u32` index tensor.
fn unpermute_index(
    file: &GgufFile,
    hf: &str,
    heads: usize,
    rows: usize,
    device: &Device,
) -> Result<(Vec<usize>, Tensor)> {
    let perm = gguf_to_hf_rows(heads, rows).ok_or_else(|| {
        file.error(format!(
            "`{hf}` has {rows} rows, which {heads} heads of an even width cannot hold"
        ))
    })?;
    let idx: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
    let t = Tensor::from_vec(idx, rows, device)?;
    Ok((perm, t))
}

/// Loads a Llama-family GGUF file with its base in `dtype` on `device`: each quantized
/// projection weight (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q8_K) stays quantized and frozen; F32 /
/// F16 / BF16 projections, the embedding table, the norms and the output head are dequantized
/// to `dtype`. Every tensor of the file must belong to the Llama layout.
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
        let q = file.tensor(&name, device)?;
        let rows = q.shape().dims().first().copied().unwrap_or(0);
        let perm = match permuted_heads(&hf, &config) {
            Some(heads) => Some(unpermute_index(&file, &hf, heads, rows, device)?),
            None => None,
        };
        let projection = hf.ends_with("_proj.weight");
        if projection && format_of_ggml(q.dtype()).is_some() {
            let mut w = QuantWeight::from_qtensor(&hf, q)?;
            if let Some((perm, _)) = &perm {
                w = w.permute_rows(&hf, perm)?;
            }
            quant.insert(hf, Arc::new(w));
        } else {
            let in_file = |e: candle_core::Error| AdapterError::Gguf {
                path: path.into(),
                reason: format!("tensor `{name}`: {e}"),
            };
            let mut t = q.dequantize(device).map_err(in_file)?;
            if let Some((_, idx)) = &perm {
                t = t.index_select(idx, 0).map_err(in_file)?;
            }
            dense.insert(hf, t.to_dtype(dtype).map_err(in_file)?);
        }
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
