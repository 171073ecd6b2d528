//! `count` on a field that is not a collection.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[nested(count = 2)]
    pub block: Block,
}

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Block {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
