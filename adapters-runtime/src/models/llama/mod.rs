//! A Llama-family decoder (`LlamaForCausalLM`) with adaptable projections and embedding, loading
//! HF checkpoints (`config.json` + `model.safetensors`, single or sharded). Norms, softmax, SiLU and
//! RoPE are [`crate::nn`]'s differentiable fused ops, the same ones users' models get.

mod kv_cache;
mod load;
mod load_gguf;
mod model;
mod rope;

pub use crate::hf::llama_config::{LlamaConfig, RopeParameters};
pub use crate::nn::RmsNorm;
pub use kv_cache::KvCache;
pub use load::{
    init_random, load_model, load_pretrained, load_pretrained_with, random_var_builder,
    random_weights, LoadedLlama,
};
pub use load_gguf::load_gguf;
pub use model::{
    Attention, BaseMode, BaseQuant, Block, FusedAttention, FusedMlp, Llama, LmHead, Mlp,
};
pub use rope::Rope;
