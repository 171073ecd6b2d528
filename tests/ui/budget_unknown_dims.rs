//! A budget needs every size at compile time; the error names the field.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0, max_trainable_params = 1_000)]
pub struct Model {
    #[adapt]
    pub q_proj: Linear,
    #[nested]
    pub blocks: Vec<Model>,
}

fn main() {}
