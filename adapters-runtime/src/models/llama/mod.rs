//! A Llama-family decoder (`LlamaForCausalLM`) with adaptable projections and embedding, loading
//! HF checkpoints (`config.json` + `model.safetensors`, single or sharded).

mod load;
mod model;
mod norm;
mod rope;

pub use crate::hf::llama_config::{LlamaConfig, RopeParameters};
pub use load::{init_random, load_pretrained, random_weights, LoadedLlama};
pub use model::{softmax_last, Attention, BaseMode, Block, Llama, LmHead, Mlp};
pub use norm::RmsNorm;
pub use rope::Rope;
