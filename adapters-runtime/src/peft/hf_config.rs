//! The dimensions of a Llama-family model from its HF `config.json` (Llama, Mistral, Qwen2 and
//! the like: embeddings, per-layer q/k/v/o and gate/up/down projections, RMS norms, lm_head).
//! The configuration type itself is the model's ([`crate::models::llama::LlamaConfig`]).

pub use crate::models::llama::LlamaConfig;

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
    /// Every weight kind: the embedding, the seven projections per layer, and `lm_head` (marked
    /// `tied` when it shares the embedding table).
    pub fn modules(&self) -> Vec<ModuleDims> {
        let (h, i, n) = (
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        );
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
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
