//! HuggingFace PEFT adapter files: a model's adapters saved and loaded in PEFT's format, merged into
//! base checkpoints, and inspected.
//!
//! * [`save_adapter`] / [`load_adapter`]: a model's adapters as a PEFT adapter folder
//!   (`adapter_model.safetensors` + `adapter_config.json`), which `PeftModel.from_pretrained` loads,
//!   and back. Round trips are bit-exact.
//! * [`merge_checkpoint`]: a PEFT adapter folded into a base `.safetensors` file or HF model folder
//!   (sharded or not), streamed tensor by tensor; or into a GGUF file ([`merge_gguf()`]), written
//!   back as GGUF re-quantized to its own types, or dequantized as an HF checkpoint.
//! * [`inspect_adapter`]: what an adapter folder holds (the `inspect` report).

pub mod adapter_file;
pub mod inspect;
pub mod keys;
pub mod load;
pub mod merge;
pub mod merge_gguf;
pub mod peft_config;
pub mod save;

pub use adapter_file::{AdapterCheckpoint, ModuleAdapter, WEIGHTS_FILE};
pub use inspect::{inspect_adapter, Inspection};
pub use load::{load_adapter, LoadOptions, LoadReport};
pub use merge::{merge_checkpoint, MergeOptions, MergeReport};
pub use merge_gguf::merge_gguf;
pub use peft_config::{PeftConfig, TargetModules, CONFIG_FILE};
pub use save::{save_adapter, SaveOptions};
