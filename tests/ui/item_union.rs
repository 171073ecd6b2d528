//! Unions are rejected.
use adapters_runtime::adapter;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub union Model {
    pub a: u32,
    pub b: f32,
}

fn main() {}
