//! Models written with candle and annotated with `#[adapter]`.

pub mod llama;
