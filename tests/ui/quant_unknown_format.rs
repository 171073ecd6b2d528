//! An unknown `quant` format: one error at the string, a suggestion and the formats.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0, quant = "Q4_K_M")]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

#[adapter(lora, rank = 8, alpha = 16.0, quant = "int4")]
pub struct Other {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
