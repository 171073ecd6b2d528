//! HF `config.json` of Llama-family models.

use crate::error::{AdapterError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `rope_parameters` (transformers 5) / `rope_scaling` (older): the RoPE base and scaling.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// The RoPE base θ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// `default` or `llama3`.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "type")]
    pub rope_type: Option<String>,
    /// llama3 scaling: factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// llama3 scaling: low-frequency factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    /// llama3 scaling: high-frequency factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    /// llama3 scaling: the original context length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

/// The fields of a Llama-family `config.json` this model uses (others are ignored when read).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key / value heads (GQA); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE parameters (transformers 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// RoPE scaling (older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    /// Whether `lm_head` shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Context length.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Bias on q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// BOS token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<serde_json::Value>,
    /// EOS token id(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Reads and checks a `config.json`; a multimodal config's `text_config` is used when the top
    /// level has no `hidden_size`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| AdapterError::Io {
            what: "reading model config".into(),
            path: path.into(),
            source,
        })?;
        let json = |source| AdapterError::Json {
            path: path.into(),
            source,
        };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(json)?;
        if value.get("hidden_size").is_none() {
            if let Some(inner) = value.get_mut("text_config").map(serde_json::Value::take) {
                value = inner;
            }
        }
        let cfg: Self = serde_json::from_value(value).map_err(json)?;
        cfg.validate()
            .map_err(|(field, expected, actual)| AdapterError::Config {
                path: path.into(),
                field: field.into(),
                expected,
                actual,
            })?;
        Ok(cfg)
    }

    /// Checks that the dimensions fit together; the error is `(field, expected, actual)`.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String, String)> {
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err((field, "at least 1".into(), "0".into()));
            }
        }
        let nh = self.num_attention_heads;
        let nkv = self.kv_heads();
        if nh == 0 || nkv == 0 || !nh.is_multiple_of(nkv) {
            return Err((
                "num_attention_heads",
                format!("a positive multiple of num_key_value_heads = {nkv}"),
                nh.to_string(),
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(nh) {
            return Err((
                "num_attention_heads",
                format!(
                    "a divisor of hidden_size = {} (or a head_dim field)",
                    self.hidden_size
                ),
                nh.to_string(),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err((
                "head_dim",
                "an even number (RoPE rotates pairs)".into(),
                self.head_dim().to_string(),
            ));
        }
        match self.rope().rope_type.as_deref() {
            None | Some("default") | Some("llama3") => Ok(()),
            Some(other) => Err((
                "rope_type",
                "`default` or `llama3`".into(),
                format!("`{other}`"),
            )),
        }
    }

    /// Key / value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE parameters merged from `rope_parameters`, `rope_scaling` and `rope_theta`.
    pub fn rope(&self) -> RopeParameters {
        let mut p = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default();
        if p.rope_theta.is_none() {
            p.rope_theta = self.rope_theta.or(Some(10_000.0));
        }
        p
    }

    /// The RoPE base θ (`rope_parameters.rope_theta`, else `rope_theta`, else 10 000).
    pub fn rope_theta(&self) -> f64 {
        self.rope().rope_theta.unwrap_or(10_000.0)
    }
}
