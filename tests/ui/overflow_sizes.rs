//! Sizes that overflow `usize` are a compile-time error naming the struct.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = usize::MAX, out = 2)]
    pub q_proj: Linear,
}

const _: usize = Model::TRAINABLE_PARAMS;

fn main() {}
