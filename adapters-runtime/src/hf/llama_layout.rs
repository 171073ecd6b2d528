//! The one table of a Llama-family checkpoint's tensors (names, shapes, biases, what is adaptable),
//! which drives loading, saving, random initialisation, module lists and memory estimates.
//!
//! Llama, Mistral, Qwen2 and the like share this layout: `model.embed_tokens`, per decoder layer
//! `input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`,
//! `mlp.{gate,up,down}_proj`, then `model.norm` and `lm_head` (absent when tied).

use crate::hf::llama_config::{Family, LlamaConfig};

/// The embedding table's module path.
pub const EMBED_TOKENS: &str = "model.embed_tokens";
/// The decoder layers' module path (`model.layers.N`).
pub const LAYERS: &str = "model.layers";
/// The final norm's module path.
pub const FINAL_NORM: &str = "model.norm";
/// The output projection's module path (absent from tied checkpoints).
pub const LM_HEAD: &str = "lm_head";
/// The two RMS norms of every decoder layer, in checkpoint order.
pub const LAYER_NORMS: [&str; 2] = ["input_layernorm", "post_attention_layernorm"];

/// A linear projection of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Projection {
    /// The sub-module holding it: `self_attn` or `mlp`.
    pub block: &'static str,
    /// Its name, as PEFT's `target_modules` names it (`q_proj`, …).
    pub name: &'static str,
}

/// Gemma 2's two further norms of each layer, around the MLP (its `post_attention_layernorm`
/// normalises the attention output instead of the MLP input).
pub const GEMMA_MLP_NORMS: [&str; 2] = ["pre_feedforward_layernorm", "post_feedforward_layernorm"];

/// Qwen3's per-head query and key norms, under `self_attn` (`model.layers.N.self_attn.q_norm`).
pub const QK_NORMS: [&str; 2] = ["q_norm", "k_norm"];

/// The seven projections of every decoder layer, in checkpoint order (what PEFT's `all-linear`
/// targets in a Llama).
pub const PROJECTIONS: [Projection; 7] = [
    Projection {
        block: "self_attn",
        name: "q_proj",
    },
    Projection {
        block: "self_attn",
        name: "k_proj",
    },
    Projection {
        block: "self_attn",
        name: "v_proj",
    },
    Projection {
        block: "self_attn",
        name: "o_proj",
    },
    Projection {
        block: "mlp",
        name: "gate_proj",
    },
    Projection {
        block: "mlp",
        name: "up_proj",
    },
    Projection {
        block: "mlp",
        name: "down_proj",
    },
];

/// Phi-3's four projections per layer: q, k and v fused into `qkv_proj` (rows: q, then k, then
/// v), gate and up into `gate_up_proj` (rows: gate, then up); PEFT adapts each fused module as
/// one.
pub const FUSED_PROJECTIONS: [Projection; 4] = [
    Projection {
        block: "self_attn",
        name: "qkv_proj",
    },
    Projection {
        block: "self_attn",
        name: "o_proj",
    },
    Projection {
        block: "mlp",
        name: "gate_up_proj",
    },
    Projection {
        block: "mlp",
        name: "down_proj",
    },
];

/// One kind of weight of the model, with its dimensions.
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

/// What a checkpoint tensor is (random initialisation draws each kind as HF does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// A weight matrix or the embedding table: N(0, 0.02).
    Matrix,
    /// A norm scale: ones.
    NormScale,
    /// A bias: zeros.
    Bias,
}

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its HF name (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// What it is.
    pub role: TensorRole,
}

/// The layout of one configuration's checkpoint.
#[derive(Clone, Copy, Debug)]
pub struct LlamaLayout<'a> {
    config: &'a LlamaConfig,
}

impl<'a> LlamaLayout<'a> {
    /// The layout of `config`'s checkpoint.
    pub fn new(config: &'a LlamaConfig) -> Self {
        Self { config }
    }

    /// `(in, out, bias)` of a projection, by name; `None` for an unknown name, or when
    /// `heads × head_dim` overflows (never for a config that passed [`LlamaConfig::validate`]).
    pub fn projection_dims(&self, name: &str) -> Option<(usize, usize, bool)> {
        let c = self.config;
        let h = c.hidden_size;
        let q = c.num_attention_heads.checked_mul(c.head_dim())?;
        let kv = c.kv_heads().checked_mul(c.head_dim())?;
        let i = c.intermediate_size;
        // Biases as each family's transformers class builds them.
        let (qkv_b, o_b, mb) = match c.family() {
            Family::Llama => (c.attention_bias, c.attention_bias, c.mlp_bias),
            Family::Mistral => (false, false, false),
            Family::Qwen2 => (true, false, false),
            Family::Phi3 => (false, false, false),
            Family::Qwen3 | Family::Gemma2 | Family::Gemma3 => {
                (c.attention_bias, c.attention_bias, false)
            }
        };
        let fused = c.family() == Family::Phi3;
        Some(match name {
            "qkv_proj" if fused => (h, q.checked_add(kv.checked_mul(2)?)?, false),
            "gate_up_proj" if fused => (h, i.checked_mul(2)?, false),
            "q_proj" | "k_proj" | "v_proj" | "gate_proj" | "up_proj" if fused => return None,
            "q_proj" => (h, q, qkv_b),
            "k_proj" | "v_proj" => (h, kv, qkv_b),
            "o_proj" => (q, h, o_b),
            "gate_proj" | "up_proj" => (h, i, mb),
            "down_proj" => (i, h, mb),
            _ => return None,
        })
    }

    /// The projections of every layer: the seven of Llama, or Phi-3's four fused ones.
    pub fn projections(&self) -> &'static [Projection] {
        if self.config.family() == Family::Phi3 {
            &FUSED_PROJECTIONS
        } else {
            &PROJECTIONS
        }
    }

    /// The module path of layer `layer`'s projection (`model.layers.3.self_attn.q_proj`).
    pub fn projection_path(layer: usize, p: &Projection) -> String {
        format!("{LAYERS}.{layer}.{}.{}", p.block, p.name)
    }

    /// Every weight kind: the embedding, the seven projections per layer, and `lm_head` (marked
    /// `tied` when it shares the embedding table).
    pub fn modules(&self) -> Vec<ModuleDims> {
        let c = self.config;
        let mut out = vec![ModuleDims {
            name: "embed_tokens",
            din: c.vocab_size,
            dout: c.hidden_size,
            bias: false,
            count: 1,
            embedding: true,
            tied: false,
        }];
        for p in self.projections() {
            let (din, dout, bias) = self.projection_dims(p.name).unwrap_or_default();
            out.push(ModuleDims {
                name: p.name,
                din,
                dout,
                bias,
                count: c.num_hidden_layers,
                embedding: false,
                tied: false,
            });
        }
        out.push(ModuleDims {
            name: "lm_head",
            din: c.hidden_size,
            dout: c.vocab_size,
            bias: false,
            count: 1,
            embedding: false,
            tied: c.tie_word_embeddings,
        });
        out
    }

    /// Parameters of the RMS norms (two per layer and the final one), which are never adapted;
    /// saturates at `usize::MAX` (never for a config that passed [`LlamaConfig::validate`]).
    pub fn norm_params(&self) -> usize {
        let c = self.config;
        let hidden = LAYER_NORMS
            .len()
            .saturating_mul(c.num_hidden_layers)
            .saturating_add(1)
            .saturating_mul(c.hidden_size);
        // Qwen3: a query and a key norm over the head width per layer.
        let per_head = QK_NORMS.len().saturating_mul(c.num_hidden_layers);
        let qk = if c.family() == Family::Qwen3 || c.family() == Family::Gemma3 {
            per_head.saturating_mul(c.head_dim())
        } else {
            0
        };
        let mlp = if c.family().is_gemma() {
            GEMMA_MLP_NORMS
                .len()
                .saturating_mul(c.num_hidden_layers)
                .saturating_mul(c.hidden_size)
        } else {
            0
        };
        hidden.saturating_add(qk).saturating_add(mlp)
    }

    /// Every tensor of the checkpoint, in checkpoint order.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let c = self.config;
        let (h, v) = (c.hidden_size, c.vocab_size);
        let spec = |name: String, shape: Vec<usize>, role| TensorSpec { name, shape, role };
        let mut out = vec![spec(
            format!("{EMBED_TOKENS}.weight"),
            vec![v, h],
            TensorRole::Matrix,
        )];
        for l in 0..c.num_hidden_layers {
            for norm in LAYER_NORMS {
                let name = format!("{LAYERS}.{l}.{norm}.weight");
                out.push(spec(name, vec![h], TensorRole::NormScale));
            }
            if c.family().is_gemma() {
                for norm in GEMMA_MLP_NORMS {
                    let name = format!("{LAYERS}.{l}.{norm}.weight");
                    out.push(spec(name, vec![h], TensorRole::NormScale));
                }
            }
            if matches!(c.family(), Family::Qwen3 | Family::Gemma3) {
                for norm in QK_NORMS {
                    let name = format!("{LAYERS}.{l}.self_attn.{norm}.weight");
                    out.push(spec(name, vec![c.head_dim()], TensorRole::NormScale));
                }
            }
            for p in self.projections() {
                let (din, dout, bias) = self.projection_dims(p.name).unwrap_or_default();
                let path = Self::projection_path(l, p);
                out.push(spec(
                    format!("{path}.weight"),
                    vec![dout, din],
                    TensorRole::Matrix,
                ));
                if bias {
                    out.push(spec(format!("{path}.bias"), vec![dout], TensorRole::Bias));
                }
            }
        }
        out.push(spec(
            format!("{FINAL_NORM}.weight"),
            vec![h],
            TensorRole::NormScale,
        ));
        if !c.tie_word_embeddings {
            out.push(spec(
                format!("{LM_HEAD}.weight"),
                vec![v, h],
                TensorRole::Matrix,
            ));
        }
        out
    }
}
