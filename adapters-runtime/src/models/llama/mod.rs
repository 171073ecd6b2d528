//! A Llama-family decoder (`LlamaForCausalLM`) with adaptable projections and embedding, loading
//! HF checkpoints (`config.json` + `model.safetensors`, single or sharded).

mod checkpoint;
mod config;
mod model;
mod norm;
mod rope;

pub use checkpoint::{
    init_random, load_checkpoint, random_weights, save_checkpoint, tensor_shapes, LoadedLlama,
};
pub use config::{LlamaConfig, RopeParameters};
pub use model::{softmax_last, Attention, BaseMode, Block, Llama, LmHead, Mlp};
pub use norm::RmsNorm;
pub use rope::Rope;
