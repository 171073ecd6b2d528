//! Custom tensor operations with hand-written backward passes.

mod dropout;
mod frozen_matmul;

pub use dropout::{dropout_mask, mix_seed};
pub use frozen_matmul::{frozen_matmul, FrozenMatmul};
