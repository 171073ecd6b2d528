//! HuggingFace PEFT interoperability: adapter checkpoints both ways, merged checkpoints, and the
//! reports behind the `adapters` command.
//!
//! * [`save_adapter`] / [`load_adapter`]: a model's adapters as a PEFT adapter folder
//!   (`adapter_model.safetensors` + `adapter_config.json`), which `PeftModel.from_pretrained` loads,
//!   and back. Round trips are bit-exact.
//! * [`merge_checkpoint`]: a PEFT adapter folded into a base `.safetensors` file or HF model folder
//!   (sharded or not), streamed tensor by tensor.
//! * [`inspect_adapter`], [`estimate_training`]: the `inspect` and `estimate` reports.

pub(crate) mod atomic;
pub mod budget;
pub mod checkpoint;
pub mod config;
pub mod hf_config;
pub mod inspect;
pub mod keys;
pub mod load;
pub mod merge;
pub mod model_files;
pub mod patterns;
pub mod save;
pub mod st_file;
pub mod st_write;
pub mod table;

pub use budget::{estimate_training, EstimateRequest, TrainingEstimate};
pub use checkpoint::{AdapterCheckpoint, ModuleAdapter, WEIGHTS_FILE};
pub use config::{PeftConfig, TargetModules, CONFIG_FILE};
pub use hf_config::LlamaConfig;
pub use inspect::{inspect_adapter, Inspection};
pub use load::{load_adapter, LoadOptions, LoadReport};
pub use merge::{merge_checkpoint, MergeOptions, MergeReport};
pub use save::{save_adapter, SaveOptions};
