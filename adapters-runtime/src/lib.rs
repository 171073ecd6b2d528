//! # adapters-runtime
//!
//! DoRA and LoRA adapters for [candle](https://github.com/huggingface/candle) models, with
//! HuggingFace PEFT's numerics:
//!
//! * [`AdaptedLinear`] / [`AdaptedEmbedding`]: frozen base layers carrying a LoRA or DoRA adapter,
//!   drop-in `candle_nn::Module`s; the base weight never gets a gradient ([`ops::frozen_matmul`]).
//! * The DoRA norm is computed without the `out × in` matrix ([`layers::dora_norm`]).
//! * [`estimate`]: the parameter / memory formulas as `const fn`s, shared with the `#[adapter]`
//!   macro ([`adapter`]) and the CLI.
//! * [`device()`]: `cpu` / `cuda` / `cuda:N` by name, with a typed error when CUDA is missing.
//! * [`Adapters`]: whole-model attach / merge / enable / count over an `#[adapter]` struct.
//! * [`peft`]: PEFT adapter checkpoints both ways ([`save_adapter`], [`load_adapter`]) and merged
//!   checkpoints ([`merge_checkpoint`]).

#![warn(missing_docs)]

pub mod config;
pub mod device;
pub mod error;
pub mod estimate;
pub mod layers;
pub mod model;
pub mod models;
pub mod nn;
pub mod ops;
pub mod peft;
pub mod train;

pub use adapters_macros::adapter;
pub use candle_core;
pub use candle_nn;
pub use config::{AdapterConfig, Init};
pub use device::device;
pub use error::{AdapterError, Result};
pub use estimate::{BaseDType, Method};
pub use layers::{AdaptedEmbedding, AdaptedLinear, Adapter};
pub use model::{AdapterModel, Adapters, LayerSummary};
pub use peft::{
    load_adapter, merge_checkpoint, save_adapter, LoadOptions, MergeOptions, SaveOptions,
};

/// Items the `#[adapter]` macro's generated code refers to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::config::{AdapterConfig, Init};
    pub use crate::error::{AdapterError, Result};
    pub use crate::estimate;
    pub use crate::estimate::{BaseDType, Method};
    pub use crate::layers::{AdaptedEmbedding, AdaptedLinear};
    pub use crate::model::{
        check_count, join_path, AdapterModel, Declared, FieldInfo, FrozenModule, LayerMut,
        LayerRef, Visitor, VisitorMut,
    };
}
