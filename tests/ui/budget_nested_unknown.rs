//! A budget over a nested struct whose sizes are unknown: the error names the inner field.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Block {
    #[adapt]
    pub q_proj: Linear,
}

#[adapter(lora, rank = 8, alpha = 16.0, max_trainable_params = 1_000_000)]
pub struct Model {
    #[nested(count = 2)]
    pub layers: Vec<Block>,
}

fn main() {}
