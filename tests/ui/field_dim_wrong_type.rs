//! Dims are `usize`: a mistyped constant is reported at the user's expression.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

const H: u32 = 64;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = H, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
