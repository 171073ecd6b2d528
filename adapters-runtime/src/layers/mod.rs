//! Adapted layers: linear and embedding, and the DoRA norm they share.

mod adapted;
mod adapter;
pub mod dora_norm;
mod embedding;
pub mod init;
mod linear;

pub use adapted::AdaptedLayer;
pub use adapter::Adapter;
pub use embedding::AdaptedEmbedding;
pub use linear::AdaptedLinear;
