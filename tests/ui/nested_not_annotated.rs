//! `#[nested]` on a type that is not annotated: one error per field, naming the type (its
//! sizes and its visit are both read, but through one trait, at one token).
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[nested(count = 2)]
    pub layers: Vec<Linear>,
    #[nested]
    pub norm: adapters_runtime::candle_nn::RmsNorm,
}

const _: usize = Model::TRAINABLE_PARAMS;

fn main() {}
