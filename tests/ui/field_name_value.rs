//! `#[adapt = ...]` is not a form.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt = 3]
    pub q_proj: Linear,
}

fn main() {}
