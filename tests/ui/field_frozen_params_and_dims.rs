//! `params` or `in`/`out`, not both.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[frozen(params = 100, in = 64, out = 64)]
    pub head: Linear,
}

fn main() {}
