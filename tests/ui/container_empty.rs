//! `#[adapter]` alone: one error listing what is missing.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
