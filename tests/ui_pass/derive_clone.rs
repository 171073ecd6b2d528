//! `#[derive(Clone)]` next to `#[adapter]`, above or below it: the adapted layers are `Clone`
//! (a clone shares the adapter's `Var`s, as a `candle_nn::Linear` clone shares its tensors).
#![deny(warnings)]

use adapters_runtime::candle_nn::{Embedding, Linear};
use adapters_runtime::{adapter, Adapters};

#[adapter(dora, rank = 4, alpha = 8.0)]
#[derive(Clone, Debug)]
pub struct Block {
    #[adapt(in = 16, out = 16)]
    pub q: Linear,
    #[frozen(in = 16, out = 16)]
    pub o: Linear,
}

#[derive(Clone)]
#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 100, out = 16)]
    pub embed: Embedding,
    #[nested(count = 2)]
    pub layers: Vec<Block>,
    #[nested]
    pub pair: [Block; 2],
}

fn duplicate<M: Clone + Adapters>(model: &M) -> M {
    model.clone()
}

fn main() {
    let _ = duplicate::<Model>;
    let _ = duplicate::<Block>;
    assert_eq!(Model::TRAINABLE_PARAMS, 8 * 116 + 4 * (4 * 32 + 16));
}
