//! A GGML format whose block does not divide a quantized layer's `in`: using a constant is an
//! error naming the field and the block.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0, quant = "q4k")]
pub struct Model {
    #[adapt(in = 4096, out = 4096)]
    pub q_proj: Linear,
    #[adapt(in = 100, out = 4096)]
    pub small: Linear,
}

const _: usize = Model::BASE_BYTES;

fn main() {}
