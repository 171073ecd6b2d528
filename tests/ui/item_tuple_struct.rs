//! Tuple structs have no field names to use as layer paths.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model(#[adapt(in = 64, out = 64)] pub Linear);

fn main() {}
