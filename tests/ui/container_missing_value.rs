//! A key that needs a value given as a flag.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
