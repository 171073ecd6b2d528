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
    /// Phi-3 (transformers 5): the share of each head's width RoPE rotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads` (not written when absent:
    /// transformers reads a `null` as a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// PAD token id (kept so a written `config.json` matches the model: transformers' defaults
    /// can lie outside a small vocabulary, e.g. Phi-3's 32000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<serde_json::Value>,
    /// `model_type`: which decoder of the family ([`Family`]); absent: `llama`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// `architectures` (`["Qwen2ForCausalLM"]`); read when `model_type` is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// The MLP activation; only `silu` is implemented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_act: Option<String>,
    /// Mistral's attention window (each position sees itself and the `sliding_window − 1` before
    /// it); `null`: full causal attention. Read for Mistral only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen2 / Qwen3's switch for sliding-window attention (not implemented: `true` is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Gemma 2's MLP activation (`gelu_pytorch_tanh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma 2: queries are scaled by `query_pre_attn_scalar^-1/2` (default 256; written as an
    /// integer when whole, as transformers' config class expects).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "integer_if_whole"
    )]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: attention scores become `cap · tanh(scores / cap)` before the mask (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 2: logits become `cap · tanh(logits / cap)` (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Per layer `full_attention` or `sliding_attention` (Gemma 2: alternating, the first
    /// sliding; Gemma 3: every sixth full, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Phi-3: the share of each head's width that RoPE rotates (only 1.0 is implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_rotary_factor: Option<f64>,
    /// Gemma 3: every `sliding_window_pattern`-th layer is full when `layer_types` is absent
    /// (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3's bidirectional attention (not implemented: `true` is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
    /// Gemma 3: the RoPE of the sliding-window layers (`rope_parameters.sliding_attention` in
    /// transformers 5, `rope_local_base_freq` before; θ = 10 000 when absent). Read from either;
    /// written back in transformers 5's nested form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_parameters: Option<RopeParameters>,
}

/// The decoders this model implements: Llama and the families that differ from it only in ways
/// it covers. Each reproduces its transformers class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `LlamaForCausalLM`: biases where `attention_bias` / `mlp_bias` say.
    Llama,
    /// `MistralForCausalLM`: no biases; sliding-window attention when `sliding_window` is set.
    Mistral,
    /// `Qwen2ForCausalLM`: biases on q, k and v (never on o or the MLP).
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm of queries and keys (`q_norm`, `k_norm`) before
    /// RoPE; biases on q, k, v and o where `attention_bias` says.
    Qwen3,
    /// `Gemma3ForCausalLM` (text; `model_type` `gemma3_text`): Gemma 2 plus per-head `(1 + w)`
    /// RMSNorm of q and k before RoPE, a second RoPE base for the sliding layers, every sixth
    /// layer full by default, soft-capping only when configured.
    Gemma3,
    /// `Phi3ForCausalLM`: q, k and v fused in `qkv_proj`, gate and up in `gate_up_proj` (adapted
    /// as single modules, as PEFT does); sliding-window attention on every layer when
    /// `sliding_window` is set; no biases.
    Phi3,
    /// `Gemma2ForCausalLM`: RMSNorm with `(1 + w)`, four norms per layer (post-attention and
    /// pre/post-MLP), embeddings scaled by `√hidden`, GeGLU (tanh GELU), queries scaled by
    /// `query_pre_attn_scalar^-1/2`, soft-capped attention scores and logits, sliding-window
    /// attention on the layers `layer_types` names (every other one, from the first).
    Gemma2,
}

impl Family {
    /// Every family, in the order messages list them.
    pub const ALL: [Family; 7] = [
        Family::Llama,
        Family::Mistral,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma2,
        Family::Gemma3,
        Family::Phi3,
    ];

    /// Gemma 2 or 3.
    pub const fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// The `model_type` of its `config.json`.
    pub const fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma2 => "gemma2",
            Family::Gemma3 => "gemma3_text",
            Family::Phi3 => "phi3",
        }
    }

    /// Its transformers class (`architectures[0]`).
    pub const fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma2 => "Gemma2ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
            Family::Phi3 => "Phi3ForCausalLM",
        }
    }

    /// The supported `model_type`s, comma-separated.
    pub fn names() -> String {
        Self::ALL.map(|f| f.model_type()).join(", ")
    }

    fn from_model_type(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.model_type() == s)
    }

    fn from_architecture(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.architecture() == s)
    }
}

/// Bound on `hidden_size` (2^20; the largest released models use 2^14–2^15).
pub const MAX_HIDDEN_SIZE: usize = 1 << 20;
/// Bound on `intermediate_size` (2^22).
pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 22;
/// Bound on `num_hidden_layers` (2^12).
pub const MAX_LAYERS: usize = 1 << 12;
/// Bound on `num_attention_heads` and `num_key_value_heads` (2^12).
pub const MAX_HEADS: usize = 1 << 12;
/// Bound on `head_dim` (2^12).
pub const MAX_HEAD_DIM: usize = 1 << 12;
/// Bound on `vocab_size` (2^24).
pub const MAX_VOCAB_SIZE: usize = 1 << 24;
/// Bound on `max_position_embeddings` and `original_max_position_embeddings` (2^26, 64 Mi
/// positions; RoPE tables are built only for the positions used).
pub const MAX_POSITIONS: usize = 1 << 26;
/// Bound on the query and key / value widths, `heads × head_dim` (2^20, as `hidden_size`).
pub const MAX_ATTENTION_WIDTH: usize = 1 << 20;
/// Bound on the elements of one weight matrix (`vocab_size × hidden_size`, …): 2^40.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 40;

/// transformers 5 writes Gemma 3's RoPE per layer type (`rope_parameters: {full_attention: {…},
/// sliding_attention: {…}}`); older files give `rope_local_base_freq`. Both become
/// `rope_parameters` (the full layers') and `rope_local_parameters`.
fn lift_layer_rope(value: &mut serde_json::Value) {
    let Some(obj) = value.as_object_mut() else {
        return;
    };
    let nested = obj
        .get("rope_parameters")
        .and_then(|r| r.as_object())
        .filter(|r| r.contains_key("full_attention") || r.contains_key("sliding_attention"))
        .cloned();
    if let Some(mut r) = nested {
        let full = r.remove("full_attention").unwrap_or(serde_json::json!({}));
        obj.insert("rope_parameters".into(), full);
        if let Some(local) = r.remove("sliding_attention") {
            obj.insert("rope_local_parameters".into(), local);
        }
    }
    if let Some(theta) = obj.remove("rope_local_base_freq") {
        obj.entry("rope_local_parameters")
            .or_insert(serde_json::json!({"rope_type": "default", "rope_theta": theta}));
    }
}

/// A whole number as a JSON integer (`24`, not `24.0`), else as a float.
fn integer_if_whole<S: serde::Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => s.serialize_some(&(*x as i64)),
        other => other.serialize(s),
    }
}

fn default_eps() -> f64 {
    1e-6
}

fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Reads and checks a `config.json` (refused unread when larger than
    /// [`MAX_CONFIG_BYTES`](crate::io::bounded::MAX_CONFIG_BYTES)); a multimodal config's
    /// `text_config` is used when the top level has no `hidden_size`. Every size is bounded (see
    /// [`LlamaConfig::validate`]); a bad one is an [`AdapterError::Config`] naming the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::io::bounded::read_to_string_bounded(
            path,
            crate::io::bounded::MAX_CONFIG_BYTES,
            "reading model config",
        )?;
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
        lift_layer_rope(&mut value);
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

    /// Checks that the dimensions fit together and lie within the bounds ([`MAX_HIDDEN_SIZE`],
    /// [`MAX_INTERMEDIATE_SIZE`], [`MAX_LAYERS`], [`MAX_HEADS`], [`MAX_HEAD_DIM`],
    /// [`MAX_VOCAB_SIZE`], [`MAX_POSITIONS`]), and that every product used for a shape fits
    /// ([`MAX_ATTENTION_WIDTH`], [`MAX_TENSOR_ELEMENTS`]); the error is
    /// `(field, expected, actual)`.
    pub fn validate(&self) -> std::result::Result<(), (&'static str, String, String)> {
        let family = self.family_checked()?;
        match family {
            Family::Gemma2 | Family::Gemma3 => {
                let act = self
                    .hidden_activation
                    .as_deref()
                    .or(self.hidden_act.as_deref());
                if let Some(act) = act.filter(|a| *a != "gelu_pytorch_tanh") {
                    return Err((
                        "hidden_activation",
                        "`gelu_pytorch_tanh`".into(),
                        format!("`{act}`"),
                    ));
                }
                for (field, v) in [
                    ("query_pre_attn_scalar", self.query_pre_attn_scalar),
                    ("attn_logit_softcapping", self.attn_logit_softcapping),
                    ("final_logit_softcapping", self.final_logit_softcapping),
                ] {
                    if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                        return Err((field, "finite and > 0".into(), v.to_string()));
                    }
                }
            }
            _ => {
                if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
                    return Err(("hidden_act", "`silu`".into(), format!("`{act}`")));
                }
            }
        }
        // Settings a family's transformers class ignores are refused rather than ignored here
        // too: a checkpoint made under them would not be what the config says.
        let ignores_attention_bias =
            matches!(family, Family::Mistral | Family::Qwen2 | Family::Phi3);
        if ignores_attention_bias && self.attention_bias {
            return Err((
                "attention_bias",
                format!("false ({} has no such setting)", family.model_type()),
                "true".into(),
            ));
        }
        if family != Family::Llama && self.mlp_bias {
            return Err((
                "mlp_bias",
                format!("false ({} has no such setting)", family.model_type()),
                "true".into(),
            ));
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err((
                "use_bidirectional_attention",
                "false (bidirectional attention is not implemented)".into(),
                "true".into(),
            ));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return Err((
                    "layer_types",
                    format!("{} entries (num_hidden_layers)", self.num_hidden_layers),
                    types.len().to_string(),
                ));
            }
            let sliding_ok = family.is_gemma();
            if let Some(bad) = types
                .iter()
                .find(|t| !(*t == "full_attention" || (sliding_ok && *t == "sliding_attention")))
            {
                return Err((
                    "layer_types",
                    if sliding_ok {
                        "`full_attention` or `sliding_attention` entries".into()
                    } else {
                        "`full_attention` entries (this family's sliding layers are not implemented)"
                            .into()
                    },
                    format!("`{bad}`"),
                ));
            }
        }
        if matches!(family, Family::Qwen2 | Family::Qwen3) && self.use_sliding_window == Some(true)
        {
            return Err((
                "use_sliding_window",
                format!(
                    "false ({}'s sliding-window layers are not implemented)",
                    family.model_type()
                ),
                "true".into(),
            ));
        }
        if family == Family::Phi3 {
            let factor = self
                .partial_rotary_factor
                .or(self.rope().partial_rotary_factor)
                .unwrap_or(1.0);
            if factor != 1.0 {
                return Err((
                    "partial_rotary_factor",
                    "1.0 (partial rotary embeddings are not implemented)".into(),
                    factor.to_string(),
                ));
            }
        }
        if matches!(family, Family::Mistral | Family::Phi3) && self.sliding_window == Some(0) {
            return Err(("sliding_window", "null or at least 1".into(), "0".into()));
        }
        let mut sizes = vec![
            ("hidden_size", self.hidden_size, MAX_HIDDEN_SIZE),
            (
                "intermediate_size",
                self.intermediate_size,
                MAX_INTERMEDIATE_SIZE,
            ),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_HEADS),
            ("vocab_size", self.vocab_size, MAX_VOCAB_SIZE),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ];
        if let Some(kv) = self.num_key_value_heads {
            sizes.push(("num_key_value_heads", kv, MAX_HEADS));
        }
        if let Some(d) = self.head_dim {
            sizes.push(("head_dim", d, MAX_HEAD_DIM));
        }
        if let Some(o) = self.rope().original_max_position_embeddings {
            sizes.push(("original_max_position_embeddings", o, MAX_POSITIONS));
        }
        for (field, v, max) in sizes {
            if v == 0 || v > max {
                return Err((field, format!("between 1 and {max}"), v.to_string()));
            }
        }
        let nh = self.num_attention_heads;
        let nkv = self.kv_heads();
        if !nh.is_multiple_of(nkv) {
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
        let hd = self.head_dim();
        if hd == 0 || hd > MAX_HEAD_DIM || !hd.is_multiple_of(2) {
            return Err((
                "head_dim",
                format!("an even number between 2 and {MAX_HEAD_DIM} (RoPE rotates pairs)"),
                hd.to_string(),
            ));
        }
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let (attn, elems) = (MAX_ATTENTION_WIDTH, MAX_TENSOR_ELEMENTS);
        let q = nh.saturating_mul(hd);
        let products = [
            (
                "num_attention_heads",
                "num_attention_heads × head_dim",
                nh,
                hd,
                attn,
            ),
            (
                "num_key_value_heads",
                "num_key_value_heads × head_dim",
                nkv,
                hd,
                attn,
            ),
            ("vocab_size", "vocab_size × hidden_size", v, h, elems),
            (
                "intermediate_size",
                "intermediate_size × hidden_size",
                i,
                h,
                elems,
            ),
            (
                "hidden_size",
                "hidden_size × num_attention_heads × head_dim",
                h,
                q,
                elems,
            ),
        ];
        for (field, what, a, b, max) in products {
            match a.checked_mul(b) {
                Some(p) if p <= max => {}
                p => {
                    let p = p.map_or_else(|| "an overflow".to_string(), |p| p.to_string());
                    return Err((
                        field,
                        format!("{what} at most {max}"),
                        format!("{a} × {b} = {p}"),
                    ));
                }
            }
        }
        let theta = self.rope_theta();
        if !(theta.is_finite() && theta > 0.0) {
            return Err(("rope_theta", "finite and > 0".into(), theta.to_string()));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err((
                "rms_norm_eps",
                "finite and ≥ 0".into(),
                self.rms_norm_eps.to_string(),
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

    /// The family from `model_type` (else `architectures[0]`, else Llama), or why it is not one
    /// this model implements.
    fn family_checked(&self) -> std::result::Result<Family, (&'static str, String, String)> {
        let expected = || {
            format!(
                "one of {} (the decoders this crate implements)",
                Family::names()
            )
        };
        if let Some(t) = self.model_type.as_deref() {
            return Family::from_model_type(t)
                .ok_or_else(|| ("model_type", expected(), format!("`{t}`")));
        }
        match self.architectures.as_deref().and_then(|a| a.first()) {
            Some(a) => Family::from_architecture(a).ok_or_else(|| {
                (
                    "architectures",
                    Family::ALL.map(|f| f.architecture()).join(", "),
                    format!("`{a}`"),
                )
            }),
            None => Ok(Family::Llama),
        }
    }

    /// The decoder family ([`Family::Llama`] for a configuration [`LlamaConfig::validate`]
    /// refuses).
    pub fn family(&self) -> Family {
        self.family_checked().unwrap_or(Family::Llama)
    }

    /// The attention window of decoder layer `layer` (Mistral's `sliding_window` on every layer,
    /// Gemma 2's on its `sliding_attention` layers, default 4096), `None` for full causal
    /// attention.
    pub fn attention_window(&self, layer: usize) -> Option<usize> {
        match self.family() {
            Family::Mistral | Family::Phi3 => self.sliding_window,
            Family::Gemma2 | Family::Gemma3 => {
                let sliding = match &self.layer_types {
                    Some(t) => t.get(layer).is_some_and(|t| t == "sliding_attention"),
                    None if self.family() == Family::Gemma2 => layer.is_multiple_of(2),
                    None => {
                        let pattern = self.sliding_window_pattern.unwrap_or(6).max(1);
                        !(layer + 1).is_multiple_of(pattern)
                    }
                };
                sliding.then_some(self.sliding_window.unwrap_or(4096))
            }
            _ => None,
        }
    }

    /// The RoPE of decoder layer `layer`: Gemma 3's local parameters on its sliding layers
    /// (θ = 10 000 by default), [`LlamaConfig::rope`] elsewhere.
    pub fn layer_rope(&self, layer: usize) -> RopeParameters {
        if self.family() == Family::Gemma3 && self.attention_window(layer).is_some() {
            return self.local_rope();
        }
        self.rope()
    }

    /// Gemma 3's RoPE of the sliding layers (`rope_local_parameters`, θ = 10 000 by default).
    pub fn local_rope(&self) -> RopeParameters {
        let mut p = self.rope_local_parameters.clone().unwrap_or_default();
        if p.rope_theta.is_none() {
            p.rope_theta = Some(10_000.0);
        }
        p
    }

    /// The norms' weight offset: Gemma's RMSNorm scales by `1 + w`, the others by `w`.
    pub fn norm_offset(&self) -> f64 {
        if self.family().is_gemma() {
            1.0
        } else {
            0.0
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
