//! `#[adapt]`, `#[frozen]` and `#[nested]` without sizes compile (runtime counts only), as long as
//! no compile-time constant is used.
#![deny(warnings)]

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear};

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Block {
    #[adapt]
    pub q_proj: Linear,
    #[adapt(rank = 4, alpha = 4.0)]
    pub embed: Embedding,
    #[frozen]
    pub head: Linear,
}

#[adapter(dora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[nested]
    pub layers: Vec<Block>,
}

/// Sizes known here but not in the nested struct: still compiles while the constants are unused.
#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Outer {
    #[nested(count = 2)]
    pub blocks: Vec<Block>,
    #[adapt(in = 8, out = 8)]
    pub head: Linear,
}

fn main() {}
