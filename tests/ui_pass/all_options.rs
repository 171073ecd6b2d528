//! Every container option at once.
#![deny(warnings)]

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

const TOKENS: usize = 512;

#[adapter(
    dora,
    rank = 8,
    alpha = 16,
    dropout = 0.05,
    rslora,
    init = "gaussian",
    dtype = "f16",
    batch_tokens = TOKENS,
    max_trainable_params = 1 << 20,
    max_vram = 64 << 20,
    crate = ::adapters_runtime,
)]
pub struct Model {
    #[adapt(in = 64, out = 64, bias = true, rank = 4, alpha = 8.0)]
    pub q_proj: Linear,
    #[adapt(in = 64, out = 64)]
    pub v_proj: Linear,
}

#[adapter(
    lora,
    rank = 8,
    alpha = 16.0,
    rslora = false,
    dtype = "f32",
    max_vram = "1.5 MiB"
)]
pub struct Small {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

fn main() {
    assert_eq!(Model::TRAINABLE_PARAMS, (4 * 128 + 64) + (8 * 128 + 64));
    assert!(Model::VRAM_BYTES > TOKENS * Model::ACTIVATION_BYTES_PER_TOKEN);
    assert_eq!(Small::BASE_BYTES, 4 * 64 * 64);
}
