//! The example compiles with budgets on, and its constants work in const contexts.
#![deny(warnings)]

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear};

const H: usize = 4096;

#[adapter(dora, rank = 16, alpha = 32.0)]
pub struct Attention {
    #[adapt(in = H, out = H)]
    pub q_proj: Linear,
    #[adapt(in = H, out = 1024, rank = 8)]
    pub k_proj: Linear,
    #[frozen(in = H, out = H)]
    pub o_proj: Linear,
}

#[adapter(
    lora,
    rank = 8,
    alpha = 16.0,
    max_trainable_params = 60_000_000,
    max_vram = "24 GiB"
)]
pub struct Model {
    #[frozen(params = 32_000 * H)]
    pub embed: Embedding,
    #[nested(count = 32)]
    pub layers: Vec<Attention>,
    #[frozen(in = H, out = 32_000)]
    pub lm_head: Linear,
}

const _: () = assert!(Model::TRAINABLE_PARAMS < 1 << 30);
const _: () = assert!(Model::VRAM_BYTES < 24 << 30);

fn main() {
    let sizes = [
        Model::TRAINABLE_PARAMS,
        Model::FROZEN_PARAMS,
        Model::BASE_BYTES,
    ];
    assert_eq!(sizes, [5_668_864, 1_470_103_552, 2_940_207_104]);
}
