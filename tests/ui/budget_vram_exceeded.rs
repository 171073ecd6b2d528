//! A memory budget that the estimate exceeds: both numbers in bytes and GiB.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear};

const H: usize = 4096;

#[adapter(
    dora,
    rank = 16,
    alpha = 32.0,
    batch_tokens = 4096,
    max_vram = "10 GiB"
)]
pub struct Model {
    #[frozen(params = 32_000 * H)]
    pub embed: Embedding,
    #[adapt(in = H, out = H)]
    pub q_proj: Linear,
    #[frozen(params = 6_000_000_000)]
    pub rest: Linear,
}

fn main() {}
