//! Budgets cannot be checked on a generic struct.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0, max_vram = "1 GiB")]
pub struct Model<const D: usize> {
    #[adapt(in = D, out = D)]
    pub q_proj: Linear,
}

fn main() {}
