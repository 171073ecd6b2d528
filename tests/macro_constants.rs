//! The `#[adapter]` constants of a Llama-7B-shaped model, checked against hand-computed numbers,
//! plus const-context use, const generics, arrays and the issue's example.

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::{Embedding, Linear, RmsNorm};

const H: usize = 4096;
const MLP: usize = 11008;
const VOCAB: usize = 32_000;
const LAYERS: usize = 32;

/// Llama attention: DoRA r = 16 on q, k, v, o.
#[adapter(dora, rank = 16, alpha = 32.0)]
pub struct LlamaAttention {
    #[adapt(in = H, out = H)]
    q_proj: Linear,
    #[adapt(in = H, out = H)]
    k_proj: Linear,
    #[adapt(in = H, out = H)]
    v_proj: Linear,
    #[adapt(in = H, out = H)]
    o_proj: Linear,
}

/// Llama MLP: DoRA r = 16 on gate, up, down.
#[adapter(dora, rank = 16, alpha = 32.0)]
pub struct LlamaMlp {
    #[adapt(in = H, out = MLP)]
    gate_proj: Linear,
    #[adapt(in = H, out = MLP)]
    up_proj: Linear,
    #[adapt(in = MLP, out = H)]
    down_proj: Linear,
}

/// One decoder layer; the norms carry no attribute and are left alone.
#[adapter(dora, rank = 16, alpha = 32.0)]
pub struct LlamaBlock {
    #[nested]
    self_attn: LlamaAttention,
    #[nested]
    mlp: LlamaMlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

/// The whole model: frozen embedding and head, 32 adapted layers.
#[adapter(
    dora,
    rank = 16,
    alpha = 32.0,
    batch_tokens = 2048,
    max_trainable_params = 42_000_000,
    max_vram = "48 GiB"
)]
pub struct Llama {
    #[frozen(in = VOCAB, out = H)]
    embed_tokens: Embedding,
    #[nested(count = LAYERS)]
    layers: Vec<LlamaBlock>,
    pub norm: RmsNorm,
    #[frozen(in = H, out = VOCAB)]
    lm_head: Linear,
}

// The constants are usable in const contexts.
const _: () = assert!(Llama::TRAINABLE_PARAMS < 1 << 30);
const TRAINABLE: usize = Llama::TRAINABLE_PARAMS;
static SIZES: [usize; 2] = [LlamaBlock::TRAINABLE_PARAMS, LlamaBlock::FROZEN_PARAMS];

#[test]
fn llama_7b_dora_r16_trainable() {
    // q, k, v, o: 16·(4096 + 4096) + 4096 magnitudes = 131 072 + 4 096 = 135 168 each.
    assert_eq!(LlamaAttention::TRAINABLE_PARAMS, 540_672); // 4 · 135 168
                                                           // gate, up: 16·(4096 + 11008) + 11008 = 241 664 + 11 008 = 252 672 each;
                                                           // down: 16·(11008 + 4096) + 4096 = 245 760.
    assert_eq!(LlamaMlp::TRAINABLE_PARAMS, 751_104); // 2 · 252 672 + 245 760
    assert_eq!(LlamaBlock::TRAINABLE_PARAMS, 1_291_776); // 540 672 + 751 104
                                                         // 32 layers: 41 336 832 = PEFT's LoRA figure 39 976 960 + 32 · 42 496 magnitudes.
    assert_eq!(Llama::TRAINABLE_PARAMS, 41_336_832);
    assert_eq!(TRAINABLE, 41_336_832);
    assert_eq!(SIZES, [1_291_776, 202_375_168]);
}

#[test]
fn llama_7b_frozen_and_bytes() {
    // Per layer: 4 · 4096² = 67 108 864 (attention) + 3 · 4096 · 11008 = 135 266 304 (MLP).
    assert_eq!(LlamaBlock::FROZEN_PARAMS, 202_375_168);
    // 32 · 202 375 168 = 6 476 005 376, + embed 32 000 · 4096 = 131 072 000, + lm_head 131 072 000;
    // Llama-7B's 6 738 415 616 minus its 65 RMSNorm vectors (65 · 4096 = 266 240).
    assert_eq!(Llama::FROZEN_PARAMS, 6_738_149_376);
    assert_eq!(Llama::BASE_BYTES, 13_476_298_752); // bf16: 2 · 6 738 149 376
    assert_eq!(Llama::ADAPTER_BYTES, 165_347_328); // f32: 4 · 41 336 832
}

#[test]
fn llama_7b_activations_and_vram() {
    // DoRA adapted linear in bf16, per token: input 2·in + f32 cast 4·in + x·Aᵀ 4·r + B·(x·Aᵀ) 4·out
    // + output 2·out + DoRA pre-scale 2·out = 6·in + 64 + 8·out bytes.
    // q/k/v/o: 6·4096 + 64 + 8·4096 = 57 408; gate/up: 24 576 + 64 + 88 064 = 112 704;
    // down: 66 048 + 64 + 32 768 = 98 880. Per layer: 4·57 408 + 2·112 704 + 98 880 = 553 920.
    assert_eq!(LlamaBlock::ACTIVATION_BYTES_PER_TOKEN, 553_920);
    // 32 · 553 920 = 17 725 440, + lm_head's bf16 input 2 · 4096 = 8 192 (embeddings keep none).
    assert_eq!(Llama::ACTIVATION_BYTES_PER_TOKEN, 17_733_632);
    // base 13 476 298 752 + 16 B per trainable (weight 4, grad 4, AdamW 8) · 41 336 832 = 661 389 312
    // + 2048 tokens · 17 733 632 = 36 318 478 336 → 50 456 166 400 bytes (≈ 46.99 GiB).
    assert_eq!(Llama::VRAM_BYTES, 50_456_166_400);
    // A struct without batch_tokens counts no activations. One layer: base 2 · 202 375 168
    // = 404 750 336 + 16 · 1 291 776 = 20 668 416.
    assert_eq!(LlamaBlock::VRAM_BYTES, 425_418_752);
}

/// The issue's example: a LoRA outer struct whose nested DoRA layers keep their own method.
mod issue_example {
    use super::H;
    use adapters_runtime::adapter;
    use adapters_runtime::candle_nn::{Embedding, Linear};

    #[adapter(dora, rank = 16, alpha = 32.0)]
    pub struct Attention {
        #[adapt(in = H, out = H)]
        q_proj: Linear,
        #[adapt(in = H, out = 1024, rank = 8)]
        k_proj: Linear,
        #[frozen(in = H, out = H)]
        o_proj: Linear,
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
        embed: Embedding,
        #[nested(count = 32)]
        layers: Vec<Attention>,
        #[frozen(in = H, out = 32_000)]
        lm_head: Linear,
    }

    #[test]
    fn constants() {
        // q: 16·8192 + 4096 = 135 168; k (rank 8): 8·(4096 + 1024) + 1024 = 41 984.
        assert_eq!(Attention::TRAINABLE_PARAMS, 177_152);
        assert_eq!(Model::TRAINABLE_PARAMS, 5_668_864); // 32 · 177 152
                                                        // Attention: 4096² + 4096·1024 + 4096² = 37 748 736; · 32 = 1 207 959 552;
                                                        // + 131 072 000 (embed) + 131 072 000 (lm_head).
        assert_eq!(Model::FROZEN_PARAMS, 1_470_103_552);
        // 2 · 1 470 103 552 + 16 · 5 668 864.
        assert_eq!(Model::VRAM_BYTES, 3_030_908_928);
    }
}

/// Const generics as dims: the constants live on `impl<const D: usize> Block<D>`.
mod const_generic {
    use adapters_runtime::adapter;
    use adapters_runtime::candle_nn::Linear;

    #[adapter(lora, rank = 4, alpha = 8.0, dtype = "f32")]
    pub struct Block<const D: usize, const F: usize = 64> {
        #[adapt(in = D, out = F, bias = true)]
        up: Linear,
        #[frozen(in = F, out = D)]
        down: Linear,
    }

    #[adapter(lora, rank = 4, alpha = 8.0, max_trainable_params = 1000)]
    pub struct Net {
        #[nested]
        layers: [Block<16, 32>; 3],
    }

    #[test]
    fn constants() {
        // up: 4·(16 + 32) = 192 trainable, 16·32 + 32 bias = 544 frozen; down: 32·16 = 512.
        assert_eq!(Block::<16, 32>::TRAINABLE_PARAMS, 192);
        assert_eq!(Block::<16, 32>::FROZEN_PARAMS, 1_056);
        assert_eq!(Block::<16>::TRAINABLE_PARAMS, 4 * (16 + 64));
        assert_eq!(Block::<16, 32>::BASE_BYTES, 4_224); // f32: 4 · 1 056
        assert_eq!(Net::TRAINABLE_PARAMS, 576); // 3 · 192
        assert_eq!(Net::BASE_BYTES, 12_672); // nested blocks keep their f32: 3 · 4 224
        assert_eq!(Net::VRAM_BYTES, 12_672 + 16 * 576);
    }
}

/// Embedding adapters: `in` = vocab, `out` = dim (PEFT's A is [r, vocab], B is [dim, r]).
mod embedding {
    use adapters_runtime::adapter;
    use adapters_runtime::candle_nn::Embedding;

    #[adapter(lora, rank = 8, alpha = 16.0, dtype = "f16", batch_tokens = 10)]
    pub struct Embed {
        #[adapt(in = 1000, out = 64)]
        tokens: Embedding,
    }

    #[test]
    fn constants() {
        assert_eq!(Embed::TRAINABLE_PARAMS, 8 * (1000 + 64));
        assert_eq!(Embed::FROZEN_PARAMS, 64_000);
        // r·4 + dim·4 + dim·2 = 32 + 256 + 128 = 416 bytes per token.
        assert_eq!(Embed::ACTIVATION_BYTES_PER_TOKEN, 416);
        assert_eq!(Embed::VRAM_BYTES, 2 * 64_000 + 16 * 8_512 + 10 * 416);
    }
}

/// QLoRA: Llama-7B's adapted projections stored in NF4 (`quant = "nf4"`), embeddings and the head
/// in bf16; adapters, their training state and the activations as without `quant`.
mod qlora {
    use super::{H, LAYERS, MLP, VOCAB};
    use adapters_runtime::adapter;
    use adapters_runtime::candle_nn::{Embedding, Linear};

    #[adapter(dora, rank = 16, alpha = 32.0, quant = "nf4")]
    pub struct Attention {
        #[adapt(in = H, out = H)]
        q_proj: Linear,
        #[adapt(in = H, out = H)]
        k_proj: Linear,
        #[adapt(in = H, out = H)]
        v_proj: Linear,
        #[adapt(in = H, out = H)]
        o_proj: Linear,
    }

    #[adapter(dora, rank = 16, alpha = 32.0, quant = "nf4")]
    pub struct Mlp {
        #[adapt(in = H, out = MLP)]
        gate_proj: Linear,
        #[adapt(in = H, out = MLP)]
        up_proj: Linear,
        #[adapt(in = MLP, out = H)]
        down_proj: Linear,
    }

    #[adapter]
    pub struct Block {
        #[nested]
        self_attn: Attention,
        #[nested]
        mlp: Mlp,
    }

    // The dense model (50 456 166 400 bytes, above) would exceed this budget.
    #[adapter(batch_tokens = 2048, max_vram = "40 GiB")]
    pub struct Llama {
        #[frozen(in = VOCAB, out = H)]
        embed_tokens: Embedding,
        #[nested(count = LAYERS)]
        layers: Vec<Block>,
        #[frozen(in = H, out = VOCAB)]
        lm_head: Linear,
    }

    #[test]
    fn llama_7b_nf4_constants() {
        // NF4 [4096, 4096], n = 16 777 216: n/2 = 8 388 608 code bytes, n/64 = 262 144 absmax
        // codes, ⌈262 144 / 256⌉ = 1 024 f32 scales = 4 096 bytes, one f32 mean: 8 654 852;
        // four of them.
        assert_eq!(Attention::BASE_BYTES, 34_619_408);
        // NF4 [11008, 4096] and [4096, 11008], n = 45 088 768: 22 544 384 + 704 512
        // + 4 · 2 752 + 4 = 23 259 908 each.
        assert_eq!(Mlp::BASE_BYTES, 3 * 23_259_908);
        assert_eq!(Mlp::BASE_BYTES, 69_779_724);
        assert_eq!(Block::BASE_BYTES, 104_399_132);
        // 32 · 104 399 132 = 3 340 772 224, + bf16 embedding and head 2 · 2 · 131 072 000.
        assert_eq!(Llama::BASE_BYTES, 3_865_060_224);
        // What is stored differs; what is counted does not.
        assert_eq!(Llama::FROZEN_PARAMS, 6_738_149_376);
        assert_eq!(Llama::TRAINABLE_PARAMS, 41_336_832);
        assert_eq!(Llama::ACTIVATION_BYTES_PER_TOKEN, 17_733_632);
        // 3 865 060 224 + 16 · 41 336 832 = 661 389 312 + 2048 · 17 733 632 = 36 318 478 336.
        assert_eq!(Llama::VRAM_BYTES, 40_844_927_872);
        assert_eq!(Block::VRAM_BYTES, 104_399_132 + 16 * 1_291_776);
    }
}

/// Every name `QuantFormat::name` gives is a `quant` the macro accepts, for that format.
mod quant_names {
    use adapters_runtime::adapter;
    use adapters_runtime::candle_nn::Linear;
    use adapters_runtime::estimate::{quant_weight_bytes, QuantFormat};

    macro_rules! per_format {
        ($($ty:ident $name:literal $variant:ident,)*) => {
            $(
                #[adapter(lora, rank = 1, alpha = 1.0, dtype = "f32", quant = $name)]
                pub struct $ty {
                    #[adapt(in = 512, out = 3, bias = true)]
                    w: Linear,
                }
            )*

            #[test]
            fn every_format() {
                let mut names = Vec::new();
                $(
                    assert_eq!(QuantFormat::$variant.name(), $name);
                    assert_eq!(
                        $ty::BASE_BYTES,
                        quant_weight_bytes(QuantFormat::$variant, 3, 512).unwrap() + 4 * 3,
                        "{}", $name
                    );
                    names.push($name);
                )*
                assert_eq!(names, QuantFormat::ALL.map(QuantFormat::name));
                // Hand-computed: NF4 on 1 536 weights = 768 + 24 + 4 + 4 = 800; Q4_0 3 · 16 · 18
                // = 864; Q4_K 3 · 2 · 144 = 864; Q8_K 3 · 2 · 292 = 1 752; + f32 bias 12.
                assert_eq!(Nf4::BASE_BYTES, 812);
                assert_eq!(Q4_0::BASE_BYTES, 876);
                assert_eq!(Q4k::BASE_BYTES, 876);
                assert_eq!(Q8k::BASE_BYTES, 1_764);
            }
        };
    }

    per_format! {
        Nf4 "nf4" Nf4,
        Q4_0 "q4_0" Q4_0,
        Q4_1 "q4_1" Q4_1,
        Q5_0 "q5_0" Q5_0,
        Q5_1 "q5_1" Q5_1,
        Q8_0 "q8_0" Q8_0,
        Q2k "q2k" Q2K,
        Q3k "q3k" Q3K,
        Q4k "q4k" Q4K,
        Q5k "q5k" Q5K,
        Q6k "q6k" Q6K,
        Q8k "q8k" Q8K,
    }
}
