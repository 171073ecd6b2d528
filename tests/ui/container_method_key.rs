//! `method = ...` is PEFT-style; the DSL wants a bare word.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(method = "dora", rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {}
