//! `#[frozen(params = N)]` counts a field of any type, including types of other crates that do
//! not implement `FrozenModule` (and cannot, by the orphan rule); `in`/`out` still need one.
#![deny(warnings)]

use std::collections::HashMap;

use adapters_runtime::candle_core::Tensor;
use adapters_runtime::candle_nn::{Linear, RmsNorm};
use adapters_runtime::{adapter, Adapters};

#[adapter(lora, rank = 2, alpha = 4.0)]
pub struct Block {
    #[adapt(in = 64, out = 64)]
    pub q: Linear,
    #[frozen(params = 64)]
    pub norm: RmsNorm,
    #[frozen(params = 3)]
    pub table: HashMap<String, f32>,
    #[frozen(params = 2 * 64)]
    pub pair: (Tensor, Tensor),
    #[frozen(params = 64 * 64)]
    pub o: Linear,
}

fn frozen(block: &Block) -> usize {
    block.frozen_params().unwrap()
}

fn main() {
    let _ = frozen;
    assert_eq!(Block::FROZEN_PARAMS, 64 * 64 + 64 + 3 + 128 + 64 * 64);
}
