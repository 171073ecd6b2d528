//! Quantized frozen base weights (QLoRA / QDoRA): NF4 and GGML formats.

pub mod nf4;
mod weight;

pub use weight::{format_of_ggml, ggml_of_format, QuantWeight};
