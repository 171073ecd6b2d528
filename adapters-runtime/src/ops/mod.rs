//! Custom tensor operations with hand-written backward passes.

mod dropout;
mod frozen_matmul;
mod row_scale;

pub use dropout::dropout_mask;
pub use frozen_matmul::{frozen_matmul, FrozenMatmul};
pub use row_scale::{row_scale, RowScale};
