//! `#[nested]` on a tuple.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[nested]
    pub pair: (Linear, Linear),
}

fn main() {}
