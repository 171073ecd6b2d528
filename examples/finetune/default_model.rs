//! The embedded default model: a small Llama-architecture decoder whose dimensions are
//! compile-time constants, so `#[adapter]` computes its parameter counts and training memory at
//! compile time and checks a budget. The run-time model (`adapters_runtime::models::llama::Llama`)
//! loads any checkpoint; this spec mirrors it for the default shape, and `main` checks that the
//! constants equal the counts of the loaded model.

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear};
use adapters_runtime::models::llama::{LlamaConfig, LmHead, RmsNorm};

/// Byte-level vocabulary: 256 bytes + BOS, EOS, PAD.
pub const VOCAB: usize = 259;
/// Model width.
pub const HIDDEN: usize = 128;
/// SwiGLU width.
pub const MLP: usize = 352;
/// Decoder layers.
pub const LAYERS: usize = 4;
/// Query heads.
pub const HEADS: usize = 4;
/// Key / value heads (GQA: two queries per key / value head).
pub const KV_HEADS: usize = 2;
/// Per-head width.
pub const HEAD_DIM: usize = HIDDEN / HEADS;
/// Width of the key / value projections.
pub const KV_DIM: usize = KV_HEADS * HEAD_DIM;
/// Tokens per training batch of the default run (32 sequences of 24 tokens).
pub const BATCH_TOKENS: usize = 32 * 24;

/// Attention projections of one layer, DoRA r = 8 on all four.
#[adapter(dora, rank = 8, alpha = 16.0, dtype = "f32")]
pub struct DefaultAttention {
    #[adapt(in = HIDDEN, out = HIDDEN)]
    q_proj: Linear,
    #[adapt(in = HIDDEN, out = KV_DIM)]
    k_proj: Linear,
    #[adapt(in = HIDDEN, out = KV_DIM)]
    v_proj: Linear,
    #[adapt(in = HIDDEN, out = HIDDEN)]
    o_proj: Linear,
}

/// The SwiGLU MLP of one layer.
#[adapter(dora, rank = 8, alpha = 16.0, dtype = "f32")]
pub struct DefaultMlp {
    #[adapt(in = HIDDEN, out = MLP)]
    gate_proj: Linear,
    #[adapt(in = HIDDEN, out = MLP)]
    up_proj: Linear,
    #[adapt(in = MLP, out = HIDDEN)]
    down_proj: Linear,
}

/// One decoder layer.
#[adapter(dora, rank = 8, alpha = 16.0, dtype = "f32")]
pub struct DefaultBlock {
    #[frozen(params = HIDDEN)]
    input_layernorm: RmsNorm,
    #[nested]
    self_attn: DefaultAttention,
    #[frozen(params = HIDDEN)]
    post_attention_layernorm: RmsNorm,
    #[nested]
    mlp: DefaultMlp,
}

/// The whole model, with a compile-time budget: the build fails if the adapters outgrow it.
#[adapter(
    dora,
    rank = 8,
    alpha = 16.0,
    dtype = "f32",
    batch_tokens = 768,
    max_trainable_params = 100_000,
    max_vram = "64 MiB"
)]
pub struct DefaultLlama {
    #[frozen(in = VOCAB, out = HIDDEN)]
    embed_tokens: Embedding,
    #[nested(count = LAYERS)]
    layers: Vec<DefaultBlock>,
    #[frozen(params = HIDDEN)]
    norm: RmsNorm,
    #[frozen(params = VOCAB * HIDDEN)]
    lm_head: LmHead,
}

// The constants are ordinary `const`s: usable in `const` contexts like this one.
const _: () = assert!(DefaultLlama::TRAINABLE_PARAMS == LAYERS * 19_904);
const _: () = assert!(BATCH_TOKENS == 768);

/// The `config.json` of the default model.
pub fn config() -> LlamaConfig {
    serde_json::from_value(serde_json::json!({
        "hidden_size": HIDDEN,
        "intermediate_size": MLP,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "max_position_embeddings": 64,
        "bos_token_id": 256,
        "eos_token_id": 257
    }))
    .expect("the default config is valid")
}
