//! A misspelt container key gets a suggestion.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rnak = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
