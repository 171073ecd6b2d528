//! Enums are rejected, and helper attributes on variants do not cascade.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub enum Model {
    A {
        #[adapt(in = 64, out = 64)]
        q_proj: Linear,
    },
}

fn main() {}
