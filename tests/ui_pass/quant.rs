//! `quant = "..."`: the adapted `Linear` weights count quantized in `BASE_BYTES`, `VRAM_BYTES`
//! and the budgets; biases, embeddings and `#[frozen]` layers stay in the dtype.
#![deny(warnings)]

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear};

const H: usize = 4096;

#[adapter(dora, rank = 16, alpha = 32.0, quant = "nf4")]
pub struct Attention {
    #[adapt(in = H, out = H)]
    pub q_proj: Linear,
    #[adapt(in = H, out = 1024, bias = true)]
    pub k_proj: Linear,
    #[frozen(in = H, out = H)]
    pub o_proj: Linear,
}

// NF4 [4096, 4096]: 8 388 608 code bytes + 262 144 absmax codes + 4 · 1 024 scales + 4.
// NF4 [1024, 4096]: 2 097 152 + 65 536 + 4 · 256 + 4 = 2 163 716, + bf16 bias 2 · 1024.
// The frozen o_proj stays bf16: 2 · 4096².
const _: () = assert!(Attention::BASE_BYTES == 8_654_852 + (2_163_716 + 2_048) + 33_554_432);
const _: () = assert!(Attention::BASE_BYTES == 44_375_048);
// + 16 B per trainable: q 16·8192 + 4096, k 16·5120 + 1024 = 218 112.
const _: () = assert!(Attention::VRAM_BYTES == 44_375_048 + 16 * 218_112);

// llama.cpp's spelling; 11 008 = 43 · 256, so both directions are whole Q4_K blocks.
#[adapter(lora, rank = 8, alpha = 16.0, quant = "Q4_K", dtype = "f16")]
pub struct Mlp {
    #[adapt(in = H, out = 11008)]
    pub gate_proj: Linear,
    #[adapt(in = 11008, out = H)]
    pub down_proj: Linear,
    #[adapt(in = 32_000, out = H)]
    pub embed: Embedding,
}

// Q4_K: 11 008 rows × 16 blocks × 144 = 25 362 432; 4 096 rows × 43 blocks × 144 = 25 362 432;
// the embedding in f16: 2 · 32 000 · 4 096 = 262 144 000.
const _: () = assert!(Mlp::BASE_BYTES == 25_362_432 + 25_362_432 + 262_144_000);
const _: () = assert!(Mlp::FROZEN_PARAMS == 2 * 4096 * 11008 + 32_000 * 4096);

// A budget that only holds quantized: bf16 would be 32 MiB of weights alone; Q4_0 is
// 4096 · 128 · 18 = 9 437 184 bytes, + 16 · 8 · 8192 = 1 048 576 of adapter state.
#[adapter(lora, rank = 8, alpha = 16.0, quant = "q4_0", max_vram = "12 MiB")]
pub struct Small {
    #[adapt(in = H, out = H)]
    pub q_proj: Linear,
}

const _: () = assert!(Small::VRAM_BYTES == 9_437_184 + 1_048_576);

// Nested structs keep their own storage.
#[adapter]
pub struct Model {
    #[nested(count = 2)]
    pub layers: Vec<Attention>,
    #[frozen(in = 32_000, out = H)]
    pub embed: Embedding,
}

const _: () = assert!(Model::BASE_BYTES == 2 * 44_375_048 + 262_144_000);

fn main() {}
