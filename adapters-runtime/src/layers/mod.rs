//! Adapted layers: linear and embedding, and the DoRA norm they share.

mod adapter;
pub mod dora_norm;
mod embedding;
pub mod init;
mod linear;

pub use adapter::Adapter;
pub use embedding::AdaptedEmbedding;
pub use linear::AdaptedLinear;
