//! HuggingFace model checkpoints: the files of a model folder (single or sharded safetensors),
//! Llama-family `config.json`, the tensor layout that drives loading and saving, and writing a
//! model folder.

pub mod llama_config;
pub mod llama_layout;
pub(crate) mod model_files;
pub mod model_folder;

pub use llama_config::{Family, LlamaConfig, RopeParameters};
pub use llama_layout::{LlamaLayout, ModuleDims, Projection, TensorRole, TensorSpec};
pub use model_folder::{save_model_folder, save_model_folder_with, FolderFiles};
