//! Unit structs have nothing to adapt.
use adapters_runtime::adapter;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model;

fn main() {}
