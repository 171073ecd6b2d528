//! The dimensions of a Llama-family model from its HF `config.json` (Llama, Mistral, Qwen2 and
//! the like: embeddings, per-layer q/k/v/o and gate/up/down projections, RMS norms, lm_head).

use crate::error::{AdapterError, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The fields of `config.json` the estimate needs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LlamaConfig {
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key / value heads (defaults to the query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width (defaults to `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether `lm_head` shares the embedding table.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on gate/up/down.
    #[serde(default)]
    pub mlp_bias: bool,
}

/// One kind of weight of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleDims {
    /// Its name (`q_proj`, `embed_tokens`, `lm_head`, …), as PEFT's `target_modules` names it.
    pub name: &'static str,
    /// Input features (vocab size for the embedding).
    pub din: usize,
    /// Output features (embedding width for the embedding).
    pub dout: usize,
    /// Whether it has a bias.
    pub bias: bool,
    /// How many the model holds (`num_hidden_layers` for per-layer projections).
    pub count: usize,
    /// Whether it is an embedding table.
    pub embedding: bool,
    /// Whether its weight is the embedding table's (a tied `lm_head`: no parameters of its own).
    pub tied: bool,
}

/// The linear projections of every decoder layer (what PEFT's `all-linear` targets).
pub const LAYER_PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LlamaConfig {
    /// Reads `path`; a multimodal config's `text_config` is used when the top level has no
    /// `hidden_size`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AdapterError::io("reading model config", path, e))?;
        let json = |source| AdapterError::Json {
            path: path.into(),
            source,
        };
        let mut value: Value = serde_json::from_str(&text).map_err(json)?;
        if value.get("hidden_size").is_none() {
            if let Some(inner) = value.get_mut("text_config").map(Value::take) {
                value = inner;
            }
        }
        let config: LlamaConfig = serde_json::from_value(value).map_err(json)?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, expected: &str, actual: String| AdapterError::Config {
            path: path.into(),
            field: field.into(),
            expected: expected.into(),
            actual,
        };
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err(bad(field, "at least 1", "0".into()));
            }
        }
        if self.head_dim.is_none() && self.head_dim() * self.num_attention_heads != self.hidden_size
        {
            return Err(bad(
                "num_attention_heads",
                &format!(
                    "a divisor of hidden_size = {} (or a head_dim field)",
                    self.hidden_size
                ),
                self.num_attention_heads.to_string(),
            ));
        }
        Ok(())
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Every weight kind: the embedding, the seven projections per layer, and `lm_head` (marked
    /// `tied` when it shares the embedding table).
    pub fn modules(&self) -> Vec<ModuleDims> {
        let (h, i, n) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        );
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.num_key_value_heads.unwrap_or(self.num_attention_heads) * self.head_dim();
        let (ab, mb) = (self.attention_bias, self.mlp_bias);
        let lin = |name, din, dout, bias| ModuleDims {
            name,
            din,
            dout,
            bias,
            count: n,
            embedding: false,
            tied: false,
        };
        vec![
            ModuleDims {
                name: "embed_tokens",
                din: self.vocab_size,
                dout: h,
                bias: false,
                count: 1,
                embedding: true,
                tied: false,
            },
            lin("q_proj", h, q, ab),
            lin("k_proj", h, kv, ab),
            lin("v_proj", h, kv, ab),
            lin("o_proj", q, h, ab),
            lin("gate_proj", h, i, mb),
            lin("up_proj", h, i, mb),
            lin("down_proj", i, h, mb),
            ModuleDims {
                name: "lm_head",
                din: h,
                dout: self.vocab_size,
                bias: false,
                count: 1,
                embedding: false,
                tied: self.tie_word_embeddings,
            },
        ]
    }

    /// Parameters of the RMS norms (two per layer and the final one), which are never adapted.
    pub fn norm_params(&self) -> usize {
        (2 * self.num_hidden_layers + 1) * self.hidden_size
    }
}
