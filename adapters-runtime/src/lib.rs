//! # adapters-runtime
//!
//! DoRA and LoRA adapters for [candle](https://github.com/huggingface/candle) models, with
//! HuggingFace PEFT's numerics and file formats.
//!
//! * [`adapter`]: the `#[adapter(dora, rank = 16, alpha = 32.0)]` attribute on a model struct;
//!   [`Adapters`] then attaches, lists, merges, counts and saves its adapters.
//! * [`AdaptedLinear`] / [`AdaptedEmbedding`]: frozen base layers carrying a LoRA or DoRA adapter,
//!   drop-in `candle_nn::Module`s; the base weight never gets a gradient.
//! * [`nn`]: `candle_nn` constructors under the same names, returning adapted layers that remember
//!   their checkpoint paths.
//! * [`peft`]: PEFT adapter folders both ways ([`save_adapter`], [`load_adapter`]) and merged
//!   checkpoints ([`merge_checkpoint`]).
//! * [`train`]: data, loss, AdamW, schedules, checkpoints and the [`train::Trainer`] loop.
//! * [`models`]: a bundled, annotated Llama-family model loading HF checkpoints ([`hf`]).
//! * [`quant`] / [`gguf`]: quantized frozen bases (NF4, and the GGML types of GGUF files) for
//!   QLoRA / QDoRA training.
//! * [`generate`]: text generation with a key / value cache (greedy or sampled, streamed).
//! * [`chat`]: HF chat templates (Jinja), rendered as transformers' `apply_chat_template` does,
//!   with the spans of each rendering the training loss covers.
//! * [`estimate`]: the parameter / memory formulas as checked `const fn`s, shared with the
//!   macro's constants and the `adapters` command.
//!
//! Modules depend one way, each only on those before it: [`error`] → [`seed`] →
//! [`adapter_config`] / [`estimate`] / [`device`](mod@device) → [`io`] → [`quant`] → [`ops`] →
//! [`layers`] → [`adapters`] → [`nn`] → [`hf`] → [`chat`] → [`gguf`] → [`peft`] → [`models`] →
//! [`train`] → [`generate`] → the `adapters` binary.

#![warn(missing_docs)]

pub mod adapter_config;
pub mod adapters;
pub mod alloc;
pub mod chat;
pub mod device;
pub mod error;
pub mod estimate;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod io;
pub mod layers;
pub mod models;
pub mod nn;
pub mod ops;
pub mod peft;
pub mod quant;
pub mod seed;
pub mod train;

pub use adapter_config::{AdapterConfig, Init};
pub use adapters::{Adapters, FrozenModule, LayerSummary, TargetSpec, Targets};
pub use adapters_macros::adapter;
pub use candle_core;
pub use candle_nn;
pub use device::device;
pub use error::{AdapterError, Result};
pub use estimate::{BaseDType, Method};
pub use layers::{AdaptedEmbedding, AdaptedLinear, Adapter};
pub use peft::{
    load_adapter, merge_checkpoint, merge_gguf, save_adapter, LoadOptions, MergeOptions,
    SaveOptions,
};

/// Items the `#[adapter]` macro's generated code refers to. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::adapter_config::{AdapterConfig, Init};
    pub use crate::adapters::visit::{
        check_count, join_path, AdapterModel, AdapterStruct, CountedField, CountedKind, Declared,
        FieldInfo, FrozenKind, LayerMut, LayerRef, Visitor, VisitorMut,
    };
    pub use crate::adapters::FrozenModule;
    pub use crate::error::{AdapterError, Result};
    pub use crate::estimate;
    pub use crate::estimate::{BaseDType, Method};
    pub use crate::layers::{AdaptedEmbedding, AdaptedLinear};
}
