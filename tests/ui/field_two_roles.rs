//! One helper attribute per field.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    #[frozen(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
