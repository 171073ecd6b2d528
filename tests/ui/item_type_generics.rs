//! Type parameters are rejected (const generics are fine).
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model<T, const D: usize> {
    #[adapt(in = D, out = D)]
    pub q_proj: Linear,
    pub extra: T,
}

fn main() {}
