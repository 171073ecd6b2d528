//! A struct without `#[adapt]` fields needs no adapter configuration: `#[adapter]` alone, or with
//! only `dtype` and budgets. `rank` / `alpha` may also be left out when every `#[adapt]` field
//! sets its own.
#![deny(warnings)]

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear};

#[adapter(dora)]
pub struct Block {
    #[adapt(in = 16, out = 16, rank = 4, alpha = 8.0)]
    pub q: Linear,
    #[adapt(in = 16, out = 32, rank = 2, alpha = 4.0)]
    pub up: Linear,
}

#[adapter]
pub struct Layers {
    #[nested(count = 2)]
    pub blocks: Vec<Block>,
}

#[adapter(dtype = "f32", max_vram = "1 GiB", max_trainable_params = 10_000)]
pub struct Model {
    #[frozen(params = 100 * 16)]
    pub embed: Embedding,
    #[nested]
    pub layers: Layers,
    #[frozen(in = 16, out = 100)]
    pub head: Linear,
}

fn main() {
    // q: 4·32 + 16 = 144; up: 2·48 + 32 = 128.
    assert_eq!(Block::TRAINABLE_PARAMS, 272);
    assert_eq!(Layers::TRAINABLE_PARAMS, 2 * 272);
    assert_eq!(Model::TRAINABLE_PARAMS, 2 * 272);
    assert_eq!(Model::FROZEN_PARAMS, 2 * (16 * 16 + 16 * 32) + 2 * 1_600);
}
