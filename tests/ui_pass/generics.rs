//! Const generics as dims (constants on `impl<const D: usize> Block<D>`), lifetimes, defaults
//! and where clauses.
#![deny(warnings)]

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;
use std::marker::PhantomData;

#[adapter(lora, rank = 4, alpha = 8.0)]
pub struct Block<const D: usize, const F: usize = { 4 * 8 }>
where
    [(); D]:,
{
    #[adapt(in = D, out = F)]
    pub up: Linear,
    #[frozen(in = F, out = D)]
    pub down: Linear,
}

#[adapter(lora, rank = 4, alpha = 8.0, max_trainable_params = 1_000)]
pub struct Borrowing<'a> {
    #[adapt(in = 8, out = 8)]
    pub q: Linear,
    #[nested]
    pub block: Block<8, 16>,
    pub source: PhantomData<&'a str>,
}

const _: () = assert!(Block::<8>::TRAINABLE_PARAMS == 4 * (8 + 32));

fn main() {
    assert_eq!(Block::<8, 16>::FROZEN_PARAMS, 8 * 16 + 16 * 8);
    assert_eq!(Borrowing::TRAINABLE_PARAMS, 64 + 96);
}
