//! Custom tensor operations with hand-written backward passes.

mod activation;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_rope;
mod dropout;
mod float;
mod frozen_matmul;
mod gemm;
mod linear_cross_entropy;
mod lora_matmul;
mod norm;
mod norm_bwd;
mod quant_matmul;
mod rope;
mod row_scale;
mod softmax;

pub use activation::{silu, SiluOp};
pub use dropout::dropout_mask;
pub use frozen_matmul::{frozen_matmul, FrozenMatmul};
pub use linear_cross_entropy::{
    linear_cross_entropy, linear_cross_entropy_chunked, CHUNK_ELEMS as CROSS_ENTROPY_CHUNK_ELEMS,
};
pub use lora_matmul::{
    dora_matmul, dora_matmul_quant, lora_matmul, lora_matmul_quant, DoraRows, LoraMatmul,
};
pub use norm::{layer_norm, rms_norm, LayerNormOp, RmsNormOp};
pub use norm_bwd::{norm_dw, norm_dx, norm_dx_composed, NormBwd};
pub use quant_matmul::{quant_matmul, QuantMatmul};
pub use rope::{rope_any, RopeKind, RopeOp};
pub use row_scale::{row_scale, RowScale};
pub use softmax::{softmax_bwd, softmax_bwd_composed, softmax_last_dim, SoftmaxLastDim};
