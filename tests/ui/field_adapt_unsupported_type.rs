//! `#[adapt]` only on Linear / Embedding.
use adapters_runtime::adapter;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub conv: adapters_runtime::candle_nn::Conv1d,
}

fn main() {}
