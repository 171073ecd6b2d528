//! Adapted layers: one core ([`Adapted`]) over a linear weight or an embedding table, the adapter
//! state it carries, the DoRA norm and PEFT's initialisation.

mod adapted;
mod adapted_layer;
mod adapter;
pub mod dora_norm;
mod embedding;
pub mod init;
pub mod kind;
mod linear;

pub use adapted::Adapted;
pub use adapted_layer::AdaptedLayer;
pub use adapter::Adapter;
pub use embedding::AdaptedEmbedding;
pub use kind::{EmbeddingBase, LayerKind, LinearBase};
pub use linear::AdaptedLinear;
