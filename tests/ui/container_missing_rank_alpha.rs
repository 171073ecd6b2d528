//! Method given, rank and alpha missing.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
