//! The Llama family in GGUF: `llama.*` metadata ↔ [`LlamaConfig`], llama.cpp tensor names ↔ HF
//! names, and the row permutation llama.cpp's converter applies to `q_proj` / `k_proj`.
//!
//! llama.cpp computes rope on adjacent pairs (`x[2i], x[2i+1]`), HF on halves (`x[i],
//! x[i + d/2]`); its converter therefore reorders the rows of each head of `q_proj` and `k_proj`:
//! GGUF row `h·d + 2j + t` is HF row `h·d + t·d/2 + j` (`t ∈ {0, 1}`, `j < d/2`). Loading undoes
//! this, so the model computes HF's function and saved adapters are in HF's layout; exporting
//! applies it again.

use crate::error::Result;
use crate::gguf::GgufFile;
use crate::hf::llama_config::{LlamaConfig, RopeParameters};
use crate::hf::llama_layout as layout;
use candle_core::Tensor;

/// The architectures read as Llama (llama.cpp writes Mistral and many Llama derivatives as
/// `llama`).
pub const ARCHITECTURES: [&str; 1] = ["llama"];

/// The GGUF name of each projection, in [`layout::PROJECTIONS`] order.
pub const GGUF_PROJECTIONS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// The HF name of a llama.cpp tensor name (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`); `None` for names outside the Llama layout.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some(format!("{}.weight", layout::EMBED_TOKENS)),
        "output_norm.weight" => return Some(format!("{}.weight", layout::FINAL_NORM)),
        "output.weight" => return Some(format!("{}.weight", layout::LM_HEAD)),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (digits, rest) = rest.split_once('.')?;
    let layer: usize = digits.parse().ok()?;
    // One spelling per layer (`blk.3`, not `blk.03` or `blk.+3`): two names never map to one.
    if layer.to_string() != digits {
        return None;
    }
    let (module, suffix) = rest.split_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let name = match module {
        "attn_norm" => format!("{}.{layer}.{}", layout::LAYERS, layout::LAYER_NORMS[0]),
        "ffn_norm" => format!("{}.{layer}.{}", layout::LAYERS, layout::LAYER_NORMS[1]),
        m => {
            let i = GGUF_PROJECTIONS.iter().position(|p| *p == m)?;
            layout::LlamaLayout::projection_path(layer, &layout::PROJECTIONS[i])
        }
    };
    Some(format!("{name}.{suffix}"))
}

/// The llama.cpp name of an HF tensor name (the inverse of [`hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf.strip_suffix(".weight") {
        Some(layout::EMBED_TOKENS) => return Some("token_embd.weight".into()),
        Some(layout::FINAL_NORM) => return Some("output_norm.weight".into()),
        Some(layout::LM_HEAD) => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix(layout::LAYERS)?.strip_prefix('.')?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (path, suffix) = rest.rsplit_once('.')?;
    let module = if path == layout::LAYER_NORMS[0] {
        "attn_norm"
    } else if path == layout::LAYER_NORMS[1] {
        "ffn_norm"
    } else {
        let i = layout::PROJECTIONS
            .iter()
            .position(|p| path == format!("{}.{}", p.block, p.name))?;
        GGUF_PROJECTIONS[i]
    };
    let candidate = format!("blk.{layer}.{module}.{suffix}");
    (hf_name(&candidate).as_deref() == Some(hf)).then_some(candidate)
}

/// How many heads' rows a projection's weight is permuted by (`q_proj`: query heads, `k_proj`:
/// key/value heads), from its HF name; `None` for every other tensor.
pub fn permuted_heads(hf: &str, config: &LlamaConfig) -> Option<usize> {
    let path = hf.strip_suffix(".weight").or(hf.strip_suffix(".bias"))?;
    if path.ends_with(".self_attn.q_proj") {
        Some(config.num_attention_heads)
    } else if path.ends_with(".self_attn.k_proj") {
        Some(config.kv_heads())
    } else {
        None
    }
}

/// For `rows = heads · d` rows: `perm[i]` is the GGUF row holding HF row `i` (apply with
/// "row `i` of the result is row `perm[i]` of the source" to go from GGUF to HF).
pub fn gguf_to_hf_rows(heads: usize, rows: usize) -> Option<Vec<usize>> {
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return None;
    }
    let d = rows / heads;
    let half = d / 2;
    let mut perm = Vec::with_capacity(rows);
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                perm.push(h * d + 2 * j + t);
            }
        }
    }
    Some(perm)
}

/// The inverse of [`gguf_to_hf_rows`]: `perm[g]` is the HF row that GGUF row `g` holds.
pub fn hf_to_gguf_rows(heads: usize, rows: usize) -> Option<Vec<usize>> {
    let fwd = gguf_to_hf_rows(heads, rows)?;
    let mut inv = vec![0; rows];
    for (hf, g) in fwd.into_iter().enumerate() {
        inv[g] = hf;
    }
    Some(inv)
}

/// The row order of HF tensor `hf` (`rows` rows) from the file's, when llama.cpp permuted it:
/// `Some((to_hf, to_gguf))` as index lists (see [`gguf_to_hf_rows`] / [`hf_to_gguf_rows`]),
/// `None` for tensors kept in order; an error when `rows` cannot be that many heads of an even
/// width.
pub fn row_orders(
    file: &GgufFile,
    hf: &str,
    config: &LlamaConfig,
    rows: usize,
) -> Result<Option<(Vec<usize>, Vec<usize>)>> {
    let Some(heads) = permuted_heads(hf, config) else {
        return Ok(None);
    };
    match (gguf_to_hf_rows(heads, rows), hf_to_gguf_rows(heads, rows)) {
        (Some(to_hf), Some(to_gguf)) => Ok(Some((to_hf, to_gguf))),
        _ => Err(file.error(format!(
            "`{hf}` has {rows} rows, which {heads} heads of an even width cannot hold"
        ))),
    }
}

/// `t` with its rows (axis 0) taken in `order` (an index list from [`row_orders`]).
pub fn reorder_rows(t: &Tensor, order: &[usize]) -> candle_core::Result<Tensor> {
    let idx: Vec<u32> = order.iter().map(|&r| r as u32).collect();
    let idx = Tensor::from_vec(idx, order.len(), t.device())?;
    t.index_select(&idx, 0)
}

/// The Llama configuration a GGUF file's metadata describes (`{arch}.embedding_length`,
/// `.block_count`, `.feed_forward_length`, `.attention.head_count[_kv]`,
/// `.attention.key_length`, `.attention.layer_norm_rms_epsilon`, `.rope.freq_base`,
/// `.context_length`, `.vocab_size` or the embedding's shape), checked like a
/// `config.json`. The head is tied when the file has no `output.weight`.
pub fn llama_config(file: &GgufFile) -> Result<LlamaConfig> {
    let arch = file
        .get_str("general.architecture")?
        .ok_or_else(|| file.error("no `general.architecture` in the metadata"))?
        .to_string();
    if !ARCHITECTURES.contains(&arch.as_str()) {
        return Err(file.error(format!(
            "architecture `{arch}` is not supported (supported: {})",
            ARCHITECTURES.join(", ")
        )));
    }
    if file.tensor_infos().contains_key("rope_freqs.weight") {
        return Err(file.error(
            "it has a `rope_freqs.weight` tensor (llama3-style rope scaling baked into the file), \
             which is not supported",
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| -> Result<usize> {
        file.get_usize(&key(k))?
            .ok_or_else(|| file.error(format!("no `{}` in the metadata", key(k))))
    };
    let hidden = need("embedding_length")?;
    let embd = file.tensor_infos().get("token_embd.weight");
    let vocab = match file.get_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => match embd.map(|i| i.shape.dims().to_vec()) {
            Some(d) if d.len() == 2 => d[0],
            _ => {
                return Err(file.error(format!(
                    "neither `{arch}.vocab_size` nor a 2-D `token_embd.weight` gives the vocabulary size"
                )))
            }
        },
    };
    let heads = need("attention.head_count")?;
    let theta = file.get_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let cfg = LlamaConfig {
        hidden_size: hidden,
        intermediate_size: need("feed_forward_length")?,
        num_hidden_layers: need("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: file.get_usize(&key("attention.head_count_kv"))?,
        head_dim: file.get_usize(&key("attention.key_length"))?,
        vocab_size: vocab,
        rms_norm_eps: file
            .get_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5),
        // Both spellings, so a config.json written from it reads the same in transformers 4 and 5.
        rope_theta: Some(theta),
        rope_parameters: Some(RopeParameters {
            rope_theta: Some(theta),
            rope_type: Some("default".into()),
            ..Default::default()
        }),
        rope_scaling: None,
        tie_word_embeddings: !file.tensor_infos().contains_key("output.weight"),
        max_position_embeddings: file.get_usize(&key("context_length"))?.unwrap_or(2048),
        attention_bias: file.tensor_infos().contains_key("blk.0.attn_q.bias"),
        mlp_bias: file.tensor_infos().contains_key("blk.0.ffn_up.bias"),
        bos_token_id: file
            .get_usize("tokenizer.ggml.bos_token_id")?
            .map(serde_json::Value::from),
        eos_token_id: file
            .get_usize("tokenizer.ggml.eos_token_id")?
            .map(serde_json::Value::from),
        model_type: Some("llama".into()),
        architectures: None,
        hidden_act: None,
        sliding_window: None,
        use_sliding_window: None,
        hidden_activation: None,
        query_pre_attn_scalar: None,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        layer_types: None,
        rope_local_parameters: None,
        sliding_window_pattern: None,
        use_bidirectional_attention: None,
        partial_rotary_factor: None,
        pad_token_id: file
            .get_usize("tokenizer.ggml.padding_token_id")?
            .map(serde_json::Value::from),
    };
    if let Some(d) = file.get_usize(&key("rope.dimension_count"))? {
        if d != cfg.head_dim() {
            return Err(file.error(format!(
                "`{}` is {d}, but the head width is {}: partial rotary embeddings are not supported",
                key("rope.dimension_count"),
                cfg.head_dim()
            )));
        }
    }
    if let Some(kind) = file.get_str(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(file.error(format!(
                "`{}` is `{kind}`: rope scaling is not supported for GGUF files",
                key("rope.scaling.type")
            )));
        }
    }
    cfg.validate().map_err(|(field, expected, actual)| {
        file.error(format!(
            "the metadata gives `{field}` = {actual}, expected {expected}"
        ))
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for g in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.0.attn_norm.weight",
            "blk.11.ffn_norm.weight",
            "blk.3.attn_q.weight",
            "blk.3.attn_k.bias",
            "blk.3.attn_output.weight",
            "blk.7.ffn_down.weight",
        ] {
            let hf = hf_name(g).unwrap();
            assert_eq!(gguf_name(&hf).as_deref(), Some(g), "{g} → {hf}");
        }
        assert_eq!(
            hf_name("blk.2.ffn_gate.weight").unwrap(),
            "model.layers.2.mlp.gate_proj.weight"
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary.weight"), None);
    }

    #[test]
    fn row_permutation_matches_llama_cpp() {
        // llama.cpp: w.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(rows, in).
        let (heads, d) = (3, 8);
        let rows = heads * d;
        let mut converted = Vec::new();
        for h in 0..heads {
            for j in 0..d / 2 {
                for t in 0..2 {
                    converted.push(h * d + t * (d / 2) + j);
                }
            }
        }
        // GGUF row g holds HF row converted[g].
        assert_eq!(hf_to_gguf_rows(heads, rows).unwrap(), converted);
        let back = gguf_to_hf_rows(heads, rows).unwrap();
        for (hf, g) in back.iter().enumerate() {
            assert_eq!(converted[*g], hf);
        }
        assert!(gguf_to_hf_rows(3, 9).is_none());
        assert!(gguf_to_hf_rows(0, 8).is_none());
    }
}
