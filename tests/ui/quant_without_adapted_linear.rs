//! `quant` on a struct without `#[adapt]` `Linear` fields would do nothing.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear};

#[adapter(lora, rank = 8, alpha = 16.0, quant = "nf4")]
pub struct Layer {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

#[adapter(quant = "nf4")]
pub struct Model {
    #[nested(count = 2)]
    pub layers: Vec<Layer>,
    #[frozen(in = 64, out = 1000)]
    pub lm_head: Linear,
    #[frozen(in = 1000, out = 64)]
    pub embed: Embedding,
}

fn main() {}
