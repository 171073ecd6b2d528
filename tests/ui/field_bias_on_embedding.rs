//! Embeddings have no bias.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Embedding;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 1000, out = 64, bias = true)]
    pub embed: Embedding,
}

fn main() {}
