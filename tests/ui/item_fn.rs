//! Only structs.
use adapters_runtime::adapter;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub fn model() {}

fn main() {}
