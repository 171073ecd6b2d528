//! Parameter, byte and training-memory formulas, as checked `const fn`s: every product and sum
//! is checked, and an overflow gives `None` (a compile-time error in the macro's constants, a
//! typed error at run time), never a wrapped number.
//!
//! They are the single source of truth: the `#[adapter]` macro's generated constants call them,
//! the layers' runtime counts call them, and so does `adapters estimate`.
//!
//! The training-memory estimate ([`vram_bytes`]) is
//!
//! ```text
//! base weights       frozen_params   × sizeof(base dtype)
//!                    (quantized storage, BaseStorage::Quant: each adapted linear weight in
//!                    quant_weight_bytes instead; biases, embeddings, norms, frozen layers
//!                    stay in the base dtype)
//! adapter weights    trainable       × 4        (adapters are kept in f32)
//! gradients          trainable       × 4
//! AdamW state        trainable       × 8        (first and second moment, f32)
//! activations        batch_tokens    × Σ per-token bytes of each layer (see activation_bytes_*)
//! ```

/// LoRA or DoRA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Low-rank adaptation: `W0 + s·B·A`.
    Lora,
    /// Weight-decomposed low-rank adaptation: `m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖`.
    Dora,
}

impl Method {
    /// `"lora"` or `"dora"`.
    pub const fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Dora => "dora",
        }
    }
}

/// The dtype of frozen base weights (and activations), as the estimates see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaseDType {
    /// 32-bit float.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
}

impl BaseDType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            BaseDType::F32 => 4,
            BaseDType::BF16 | BaseDType::F16 => 2,
        }
    }

    /// The matching candle dtype.
    pub const fn to_candle(self) -> candle_core::DType {
        match self {
            BaseDType::F32 => candle_core::DType::F32,
            BaseDType::BF16 => candle_core::DType::BF16,
            BaseDType::F16 => candle_core::DType::F16,
        }
    }

    /// Parses `f32`, `bf16` or `f16` (as the macro and the CLI spell them).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(BaseDType::F32),
            "bf16" | "bfloat16" => Some(BaseDType::BF16),
            "f16" | "float16" => Some(BaseDType::F16),
            _ => None,
        }
    }
}

/// A quantized storage format for a frozen `[rows, cols]` base weight (QLoRA / QDoRA bases).
///
/// * [`QuantFormat::Nf4`]: bitsandbytes' NF4 as in QLoRA — 4-bit codes (two per byte), one
///   absmax per [`NF4_BLOCK`] elements, double-quantized: the absmaxes minus their mean, as 8-bit
///   codes of bitsandbytes' dynamic map, one f32 scale per [`NF4_SCALE_BLOCK`] absmaxes, plus
///   the f32 mean. Blocks run over the flattened weight (the last may be short).
/// * The GGML formats of GGUF files: blocks of [`QuantFormat::block_elems`] elements along each
///   row, [`QuantFormat::block_bytes`] bytes each (scales and super-block headers included); a
///   row's length must be a multiple of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// bitsandbytes NF4 with double quantization.
    Nf4,
    /// GGML Q4_0: 32 weights, an f16 scale and 16 bytes of 4-bit codes (18 bytes).
    Q4_0,
    /// GGML Q4_1: 32 weights, f16 scale and minimum and 16 bytes of codes (20 bytes).
    Q4_1,
    /// GGML Q5_0: 32 weights in 22 bytes.
    Q5_0,
    /// GGML Q5_1: 32 weights in 24 bytes.
    Q5_1,
    /// GGML Q8_0: 32 weights, an f16 scale and 32 signed bytes (34 bytes).
    Q8_0,
    /// GGML Q2_K: 256 weights in 84 bytes.
    Q2K,
    /// GGML Q3_K: 256 weights in 110 bytes.
    Q3K,
    /// GGML Q4_K: 256 weights in 144 bytes (f16 super-scale and minimum, 6-bit sub-block scales).
    Q4K,
    /// GGML Q5_K: 256 weights in 176 bytes.
    Q5K,
    /// GGML Q6_K: 256 weights in 210 bytes.
    Q6K,
    /// GGML Q8_K: 256 weights in 292 bytes.
    Q8K,
}

/// Elements per NF4 block (one absmax each).
pub const NF4_BLOCK: usize = 64;
/// NF4 absmaxes per second-level block (one f32 scale each) in double quantization.
pub const NF4_SCALE_BLOCK: usize = 256;

impl QuantFormat {
    /// Every format, in the order [`QuantFormat::name`] lists them in messages.
    pub const ALL: [QuantFormat; 12] = [
        QuantFormat::Nf4,
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q5_0,
        QuantFormat::Q5_1,
        QuantFormat::Q8_0,
        QuantFormat::Q2K,
        QuantFormat::Q3K,
        QuantFormat::Q4K,
        QuantFormat::Q5K,
        QuantFormat::Q6K,
        QuantFormat::Q8K,
    ];

    /// The name as the macro and the CLI spell it: `nf4`, `q4_0`, …, `q4k`, `q6k`.
    pub const fn name(self) -> &'static str {
        match self {
            QuantFormat::Nf4 => "nf4",
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q4_1 => "q4_1",
            QuantFormat::Q5_0 => "q5_0",
            QuantFormat::Q5_1 => "q5_1",
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q2K => "q2k",
            QuantFormat::Q3K => "q3k",
            QuantFormat::Q4K => "q4k",
            QuantFormat::Q5K => "q5k",
            QuantFormat::Q6K => "q6k",
            QuantFormat::Q8K => "q8k",
        }
    }

    /// Parses a name, case-insensitively, also in llama.cpp's spelling (`Q4_K`, `q6_k`).
    pub fn parse(s: &str) -> Option<Self> {
        let lower = s.to_ascii_lowercase();
        let key = match lower.as_str() {
            "q2_k" => "q2k",
            "q3_k" => "q3k",
            "q4_k" => "q4k",
            "q5_k" => "q5k",
            "q6_k" => "q6k",
            "q8_k" => "q8k",
            other => other,
        };
        Self::ALL.into_iter().find(|f| f.name() == key)
    }

    /// The names of all formats, comma-separated (for messages).
    pub fn names() -> String {
        Self::ALL.map(|f| f.name()).join(", ")
    }

    /// Elements per block: 64 for NF4 (over the flattened weight), 32 or 256 along a GGML row.
    pub const fn block_elems(self) -> usize {
        match self {
            QuantFormat::Nf4 => NF4_BLOCK,
            QuantFormat::Q4_0
            | QuantFormat::Q4_1
            | QuantFormat::Q5_0
            | QuantFormat::Q5_1
            | QuantFormat::Q8_0 => 32,
            _ => 256,
        }
    }

    /// Whether a row of `cols` elements is stored in whole blocks: always for NF4 (its blocks run
    /// over the flattened weight), `cols % block_elems == 0` for the GGML formats.
    pub const fn fits_row(self, cols: usize) -> bool {
        match self {
            QuantFormat::Nf4 => true,
            _ => cols.is_multiple_of(self.block_elems()),
        }
    }

    /// Bytes per GGML block (codes, scales and headers); for NF4 the 4-bit codes of a block (32;
    /// its scales are counted by [`quant_weight_bytes`]).
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Nf4 => NF4_BLOCK / 2,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q5_0 => 22,
            QuantFormat::Q5_1 => 24,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q2K => 84,
            QuantFormat::Q3K => 110,
            QuantFormat::Q4K => 144,
            QuantFormat::Q5K => 176,
            QuantFormat::Q6K => 210,
            QuantFormat::Q8K => 292,
        }
    }
}

/// `⌈a / b⌉` (b > 0).
const fn div_ceil(a: usize, b: usize) -> usize {
    a / b + !a.is_multiple_of(b) as usize
}

/// Bytes of a `[rows, cols]` weight stored in `format`, everything the format stores included:
///
/// * NF4, `n = rows·cols`: `⌈n/2⌉` code bytes + `⌈n/64⌉` 8-bit absmax codes +
///   `4·⌈⌈n/64⌉/256⌉` f32 second-level scales + 4 (the f32 mean). bitsandbytes' 256-entry code
///   table is shared, not per weight, and not counted.
/// * GGML: `rows · (cols / block_elems) · block_bytes`; `None` when `cols` is not a multiple of
///   the block (GGML cannot store such a row) or on overflow.
pub const fn quant_weight_bytes(format: QuantFormat, rows: usize, cols: usize) -> Option<usize> {
    let Some(n) = rows.checked_mul(cols) else {
        return None;
    };
    match format {
        QuantFormat::Nf4 => {
            let blocks = div_ceil(n, NF4_BLOCK);
            let scales = div_ceil(blocks, NF4_SCALE_BLOCK);
            sum(&[
                Some(div_ceil(n, 2)),
                Some(blocks),
                mul(Some(scales), Some(4)),
                Some(4),
            ])
        }
        _ => {
            if !format.fits_row(cols) {
                return None;
            }
            mul(
                mul(Some(rows), Some(cols / format.block_elems())),
                Some(format.block_bytes()),
            )
        }
    }
}

/// How a struct's (or a model's) frozen base weights are stored, as the estimates count them.
///
/// With [`BaseStorage::Quant`] (QLoRA / QDoRA), the weight `[out, in]` of every *adapted* linear
/// layer is stored in the quantized format ([`quant_weight_bytes`]); its bias, the embeddings
/// (adapted or not), the norms, and every frozen layer that is not adapted stay in the dtype.
/// Adapters, gradients, AdamW state and activations do not depend on the storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaseStorage {
    /// Every frozen weight in the dtype.
    Dense(BaseDType),
    /// Adapted linear weights in the format, everything else frozen in the dtype.
    Quant(QuantFormat, BaseDType),
}

impl BaseStorage {
    /// `Dense(dtype)` without a format, `Quant(format, dtype)` with one.
    pub const fn new(dtype: BaseDType, quant: Option<QuantFormat>) -> Self {
        match quant {
            Some(q) => BaseStorage::Quant(q, dtype),
            None => BaseStorage::Dense(dtype),
        }
    }

    /// The dtype of everything not quantized (biases, embeddings, norms, frozen layers), and of
    /// the activations.
    pub const fn dtype(self) -> BaseDType {
        match self {
            BaseStorage::Dense(d) | BaseStorage::Quant(_, d) => d,
        }
    }

    /// The format of the adapted linear weights, if they are quantized.
    pub const fn quant(self) -> Option<QuantFormat> {
        match self {
            BaseStorage::Dense(_) => None,
            BaseStorage::Quant(q, _) => Some(q),
        }
    }
}

/// Bytes of `params` frozen parameters stored in `dtype` (`None` in, or an overflow: `None`).
pub const fn dense_base_bytes(params: Option<usize>, dtype: BaseDType) -> Option<usize> {
    mul(params, Some(dtype.size_in_bytes()))
}

/// Bytes of the frozen base of an *adapted* linear layer `[dout, din]` (weight, and bias with
/// `bias`) stored as `storage` says: dense, `linear_params × sizeof(dtype)`; quantized, the weight
/// in the format ([`quant_weight_bytes`]: `None` when a GGML block does not divide `din`, see
/// [`QuantFormat::fits_row`]) plus the bias in the dtype. `None` on overflow.
pub const fn adapted_linear_base_bytes(
    storage: BaseStorage,
    din: usize,
    dout: usize,
    bias: bool,
) -> Option<usize> {
    match storage {
        BaseStorage::Dense(dt) => dense_base_bytes(linear_params(din, dout, bias), dt),
        BaseStorage::Quant(q, dt) => add(
            quant_weight_bytes(q, dout, din),
            dense_base_bytes(Some(if bias { dout } else { 0 }), dt),
        ),
    }
}

/// Bytes per adapter parameter (adapters are stored and trained in f32).
pub const ADAPTER_PARAM_BYTES: usize = 4;
/// Bytes per gradient element of an adapter parameter.
pub const GRAD_BYTES: usize = 4;
/// Bytes of AdamW state per adapter parameter (two f32 moments).
pub const ADAMW_STATE_BYTES: usize = 8;

/// `a + b`, or `None` on overflow (a `const` `Option` chain: `?` is not `const`).
pub const fn add(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => a.checked_add(b),
        _ => None,
    }
}

/// `a × b`, or `None` on overflow.
pub const fn mul(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => a.checked_mul(b),
        _ => None,
    }
}

/// The sum of `terms`, or `None` when one is `None` or the sum overflows.
pub const fn sum(terms: &[Option<usize>]) -> Option<usize> {
    let mut total = Some(0);
    let mut i = 0;
    while i < terms.len() {
        total = add(total, terms[i]);
        i += 1;
    }
    total
}

/// Trainable parameters of an adapter on a `[dout, din]` weight: `r·(din+dout)` for LoRA, plus the
/// `dout` magnitudes for DoRA. For an embedding pass `din = vocab`, `dout = dim`. `None` on
/// overflow.
pub const fn adapter_params(method: Method, din: usize, dout: usize, rank: usize) -> Option<usize> {
    let lora = mul(Some(rank), din.checked_add(dout));
    match method {
        Method::Lora => lora,
        Method::Dora => add(lora, Some(dout)),
    }
}

/// Frozen parameters of a linear layer: `din·dout`, plus `dout` with a bias.
pub const fn linear_params(din: usize, dout: usize, bias: bool) -> Option<usize> {
    add(din.checked_mul(dout), Some(if bias { dout } else { 0 }))
}

/// Frozen parameters of an embedding table `[vocab, dim]`.
pub const fn embedding_params(vocab: usize, dim: usize) -> Option<usize> {
    vocab.checked_mul(dim)
}

/// Bytes of adapter weights for `trainable` parameters.
pub const fn adapter_bytes(trainable: usize) -> Option<usize> {
    trainable.checked_mul(ADAPTER_PARAM_BYTES)
}

/// Bytes of frozen base weights for `frozen` parameters stored as `dtype`.
pub const fn base_bytes(frozen: usize, dtype: BaseDType) -> Option<usize> {
    frozen.checked_mul(dtype.size_in_bytes())
}

/// Bytes of training state per trainable parameter: weight + gradient + AdamW moments.
pub const fn training_bytes_per_param() -> usize {
    ADAPTER_PARAM_BYTES + GRAD_BYTES + ADAMW_STATE_BYTES
}

/// Bytes of training state (weights, gradients, AdamW moments) for `trainable` parameters.
pub const fn training_state_bytes(trainable: usize) -> Option<usize> {
    trainable.checked_mul(training_bytes_per_param())
}

/// Activation bytes an adapted linear layer keeps for the backward pass, per token. With
/// activations in the adapter dtype (f32) the layer is one fused node (`ops::lora_matmul`,
/// `ops::dora_matmul`): its input and output, for LoRA and DoRA alike (DoRA's magnitude gradient
/// comes from the output). Otherwise (bf16 / f16 activations, f32 adapters) the composed path also
/// keeps the input cast to f32, `x·Aᵀ` and `x·Aᵀ·Bᵀ` in f32, and for DoRA the pre-scale sum.
pub const fn activation_bytes_adapted_linear(
    method: Method,
    din: usize,
    dout: usize,
    rank: usize,
    act: BaseDType,
) -> Option<usize> {
    let a = Some(act.size_in_bytes());
    let f32b = Some(ADAPTER_PARAM_BYTES);
    if act.size_in_bytes() == ADAPTER_PARAM_BYTES {
        return sum(&[mul(Some(din), a), mul(Some(dout), a)]);
    }
    let lora = sum(&[
        mul(Some(din), a),
        mul(Some(din), f32b),
        mul(Some(rank), f32b),
        mul(Some(dout), f32b),
        mul(Some(dout), a),
    ]);
    match method {
        Method::Lora => lora,
        Method::Dora => add(lora, mul(Some(dout), a)),
    }
}

/// Activation bytes a Llama decoder layer keeps per token besides its projections' inputs and
/// outputs (the forward of `models::llama`): the head-split copies of q, k and v, the rotated and
/// scaled q, the rotated k, the attention output and its merged-heads copy
/// (`5·heads·head_dim + 3·kv_heads·head_dim`; grouped-query attention repeats no heads), the SwiGLU activation and product (`2·inter`), two
/// residual sums (`2·hidden`), all in the activation dtype; and the attention scores, their
/// masked copy and the softmax (`3·heads·seq`, f32).
pub const fn activation_bytes_llama_layer(
    hidden: usize,
    inter: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    seq: usize,
    act: BaseDType,
) -> Option<usize> {
    let a = Some(act.size_in_bytes());
    let q = mul(Some(heads), Some(head_dim));
    let kv = mul(Some(kv_heads), Some(head_dim));
    sum(&[
        mul(add(mul(q, Some(5)), mul(kv, Some(3))), a),
        mul(mul(Some(inter), Some(2)), a),
        mul(mul(Some(hidden), Some(2)), a),
        mul(mul(Some(heads), Some(seq)), Some(3 * ADAPTER_PARAM_BYTES)),
    ])
}

/// Activation bytes per token after the last layer: the final norm's output (activation dtype)
/// and the loss's gradient for it (f32), the logits being formed in bounded chunks.
pub const fn activation_bytes_lm_output(hidden: usize, act: BaseDType) -> Option<usize> {
    mul(
        Some(hidden),
        Some(act.size_in_bytes() + ADAPTER_PARAM_BYTES),
    )
}

/// Activation bytes a frozen linear layer keeps per token (its input, for the input gradient).
pub const fn activation_bytes_frozen_linear(din: usize, act: BaseDType) -> Option<usize> {
    din.checked_mul(act.size_in_bytes())
}

/// Activation bytes an adapted embedding keeps per token (`Aᵀ[ids]` and the f32 adapter output,
/// plus the base rows for DoRA).
pub const fn activation_bytes_adapted_embedding(
    method: Method,
    dim: usize,
    rank: usize,
    act: BaseDType,
) -> Option<usize> {
    let a = Some(act.size_in_bytes());
    let f32b = Some(ADAPTER_PARAM_BYTES);
    let lora = sum(&[
        mul(Some(rank), f32b),
        mul(Some(dim), f32b),
        mul(Some(dim), a),
    ]);
    match method {
        Method::Lora => lora,
        Method::Dora => add(lora, mul(Some(dim), a)),
    }
}

/// Estimated training memory in bytes with every frozen parameter in `dtype` (see the module
/// docs for the formula); `None` on overflow.
pub const fn vram_bytes(
    frozen: usize,
    dtype: BaseDType,
    trainable: usize,
    activation_bytes: usize,
) -> Option<usize> {
    match base_bytes(frozen, dtype) {
        Some(base) => vram_bytes_from_base(base, trainable, activation_bytes),
        None => None,
    }
}

/// Estimated training memory in bytes from the frozen weights' bytes however they are stored
/// (dense or quantized, see [`BaseStorage`]): `base + training_state_bytes(trainable) +
/// activation_bytes`; `None` on overflow.
pub const fn vram_bytes_from_base(
    base: usize,
    trainable: usize,
    activation_bytes: usize,
) -> Option<usize> {
    sum(&[
        Some(base),
        training_state_bytes(trainable),
        Some(activation_bytes),
    ])
}

/// The six numbers behind `#[adapter]`'s constants when every one of the struct's own frozen
/// parameters is stored in `dtype`: [`struct_sizes_stored`] with `own_base =
/// base_bytes(own_frozen, dtype)`.
pub const fn struct_sizes(
    trainable: Option<usize>,
    own_frozen: Option<usize>,
    nested_frozen: Option<usize>,
    nested_base: Option<usize>,
    activation_per_token: Option<usize>,
    batch_tokens: usize,
    dtype: BaseDType,
) -> Option<[usize; 6]> {
    let own_base = match own_frozen {
        Some(frozen) => base_bytes(frozen, dtype),
        None => None,
    };
    struct_sizes_stored(
        trainable,
        own_frozen,
        own_base,
        nested_frozen,
        nested_base,
        activation_per_token,
        batch_tokens,
    )
}

/// The six numbers behind `#[adapter]`'s constants, from a struct's own sums (its own base bytes
/// summed field by field, [`adapted_linear_base_bytes`] and [`dense_base_bytes`], so quantized
/// storage is exact) and its nested structs' sums: `[TRAINABLE_PARAMS, FROZEN_PARAMS,
/// ADAPTER_BYTES, BASE_BYTES, ACTIVATION_BYTES_PER_TOKEN, VRAM_BYTES]`, where `VRAM_BYTES =
/// vram_bytes_from_base(BASE_BYTES, TRAINABLE_PARAMS, batch_tokens × ACTIVATION_BYTES_PER_TOKEN)`;
/// `None` when a term is `None` or a number overflows `usize`.
pub const fn struct_sizes_stored(
    trainable: Option<usize>,
    own_frozen: Option<usize>,
    own_base: Option<usize>,
    nested_frozen: Option<usize>,
    nested_base: Option<usize>,
    activation_per_token: Option<usize>,
    batch_tokens: usize,
) -> Option<[usize; 6]> {
    let (Some(tr), Some(fr), Some(ob), Some(nf), Some(nb), Some(act)) = (
        trainable,
        own_frozen,
        own_base,
        nested_frozen,
        nested_base,
        activation_per_token,
    ) else {
        return None;
    };
    let (Some(frozen), Some(adapter), Some(base), Some(activations)) = (
        fr.checked_add(nf),
        adapter_bytes(tr),
        ob.checked_add(nb),
        batch_tokens.checked_mul(act),
    ) else {
        return None;
    };
    let Some(vram) = vram_bytes_from_base(base, tr, activations) else {
        return None;
    };
    Some([tr, frozen, adapter, base, act, vram])
}

/// Exact binary units for messages: `25769803776` → `"24.00 GiB"`.
pub fn human_bytes(bytes: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas() {
        assert_eq!(adapter_params(Method::Lora, 4096, 4096, 16), Some(131_072));
        assert_eq!(adapter_params(Method::Dora, 4096, 4096, 16), Some(135_168));
        assert_eq!(linear_params(3, 5, true), Some(20));
        assert_eq!(base_bytes(10, BaseDType::BF16), Some(20));
        assert_eq!(vram_bytes(10, BaseDType::F32, 2, 7), Some(40 + 32 + 7));
        assert_eq!(human_bytes(24 << 30), "24.00 GiB");
        assert_eq!(human_bytes(512), "512 B");
    }

    #[test]
    fn overflow_is_none_never_wrapped() {
        assert_eq!(adapter_params(Method::Lora, usize::MAX, 1, 1), None);
        assert_eq!(
            adapter_params(Method::Dora, 1 << 40, 1 << 40, 1 << 30),
            None
        );
        assert_eq!(linear_params(1 << 33, 1 << 33, false), None);
        assert_eq!(embedding_params(usize::MAX, 2), None);
        assert_eq!(vram_bytes(usize::MAX / 2, BaseDType::F32, 0, 0), None);
        assert_eq!(sum(&[Some(usize::MAX), Some(1)]), None);
        assert_eq!(
            struct_sizes(
                Some(1),
                Some(2),
                Some(0),
                Some(0),
                Some(usize::MAX),
                2,
                BaseDType::F32
            ),
            None
        );
        assert_eq!(
            struct_sizes(
                Some(10),
                Some(20),
                Some(5),
                Some(8),
                Some(3),
                4,
                BaseDType::BF16
            ),
            Some([10, 25, 40, 48, 3, 40 + 160 + 12 + 8])
        );
    }

    #[test]
    fn quantized_weight_bytes_per_format() {
        use QuantFormat::*;
        // [4096, 4096]: n = 16 777 216 weights.
        // NF4: n/2 = 8 388 608 code bytes, n/64 = 262 144 absmax codes, ⌈262 144 / 256⌉ = 1 024
        // f32 scales (4 096 bytes), one f32 mean.
        assert_eq!(
            quant_weight_bytes(Nf4, 4096, 4096),
            Some(8_388_608 + 262_144 + 4 * 1024 + 4)
        );
        assert_eq!(quant_weight_bytes(Nf4, 4096, 4096), Some(8_654_852));
        // GGML, 32-element blocks: 4096 rows × 128 blocks × block bytes.
        assert_eq!(quant_weight_bytes(Q4_0, 4096, 4096), Some(9_437_184)); // × 18
        assert_eq!(quant_weight_bytes(Q4_1, 4096, 4096), Some(10_485_760)); // × 20
        assert_eq!(quant_weight_bytes(Q5_0, 4096, 4096), Some(11_534_336)); // × 22
        assert_eq!(quant_weight_bytes(Q5_1, 4096, 4096), Some(12_582_912)); // × 24
        assert_eq!(quant_weight_bytes(Q8_0, 4096, 4096), Some(17_825_792)); // × 34
                                                                            // GGML k-quants, 256-element super-blocks: 4096 rows × 16 blocks × block bytes.
        assert_eq!(quant_weight_bytes(Q2K, 4096, 4096), Some(5_505_024)); // × 84
        assert_eq!(quant_weight_bytes(Q3K, 4096, 4096), Some(7_208_960)); // × 110
        assert_eq!(quant_weight_bytes(Q4K, 4096, 4096), Some(9_437_184)); // × 144
        assert_eq!(quant_weight_bytes(Q5K, 4096, 4096), Some(11_534_336)); // × 176
        assert_eq!(quant_weight_bytes(Q6K, 4096, 4096), Some(13_762_560)); // × 210
        assert_eq!(quant_weight_bytes(Q8K, 4096, 4096), Some(19_136_512)); // × 292
                                                                           // NF4 blocks run over the flattened weight; the last may be short: n = 300 → 150 code
                                                                           // bytes, ⌈300/64⌉ = 5 absmaxes, one scale (4), the mean (4); an odd n rounds up.
        assert_eq!(quant_weight_bytes(Nf4, 3, 100), Some(150 + 5 + 4 + 4));
        assert_eq!(quant_weight_bytes(Nf4, 1, 3), Some(2 + 1 + 4 + 4));
        // GGML rows are whole blocks.
        assert_eq!(quant_weight_bytes(Q4_0, 2, 64), Some(2 * 2 * 18));
        assert_eq!(quant_weight_bytes(Q4_0, 1, 48), None);
        assert_eq!(quant_weight_bytes(Q4K, 4096, 100), None);
        assert!(Nf4.fits_row(100) && Q8_0.fits_row(96) && !Q6K.fits_row(96));
    }

    #[test]
    fn quantized_overflow_is_none() {
        // rows × cols overflows.
        for f in QuantFormat::ALL {
            assert_eq!(quant_weight_bytes(f, usize::MAX, 256), None, "{f:?}");
        }
        // The elements fit, the bytes do not (34 bytes per 32 elements).
        let cols = usize::MAX / 32 * 32;
        assert_eq!(quant_weight_bytes(QuantFormat::Q8_0, 1, cols), None);
        assert_eq!(
            adapted_linear_base_bytes(
                BaseStorage::Quant(QuantFormat::Nf4, BaseDType::F32),
                1 << 40,
                1 << 40,
                false
            ),
            None
        );
        assert_eq!(
            adapted_linear_base_bytes(
                BaseStorage::Quant(QuantFormat::Nf4, BaseDType::F32),
                1,
                usize::MAX / 2,
                true
            ),
            None,
            "the bias overflows"
        );
    }

    #[test]
    fn storage_of_adapted_linear_layers() {
        let (bf16, nf4) = (BaseDType::BF16, QuantFormat::Nf4);
        assert_eq!(BaseStorage::new(bf16, None), BaseStorage::Dense(bf16));
        assert_eq!(BaseStorage::new(bf16, Some(nf4)).quant(), Some(nf4));
        assert_eq!(
            BaseStorage::Quant(nf4, BaseDType::F16).dtype(),
            BaseDType::F16
        );
        // Dense: (4096² + 4096 bias) × 2.
        assert_eq!(
            adapted_linear_base_bytes(BaseStorage::Dense(bf16), 4096, 4096, true),
            Some(2 * (16_777_216 + 4096))
        );
        // NF4 weight + bf16 bias.
        assert_eq!(
            adapted_linear_base_bytes(BaseStorage::Quant(nf4, bf16), 4096, 4096, true),
            Some(8_654_852 + 2 * 4096)
        );
        // The weight is [out, in]: blocks run along `in`. Q4_K on [11008, 4096]: 11 008 rows
        // × 16 blocks × 144; on [4096, 11008]: 11008 = 43 · 256, 4096 rows × 43 × 144.
        let q4k = BaseStorage::Quant(QuantFormat::Q4K, bf16);
        assert_eq!(
            adapted_linear_base_bytes(q4k, 4096, 11008, false),
            Some(25_362_432)
        );
        assert_eq!(
            adapted_linear_base_bytes(q4k, 11008, 4096, false),
            Some(25_362_432)
        );
        assert_eq!(adapted_linear_base_bytes(q4k, 100, 4096, false), None);
        assert_eq!(dense_base_bytes(Some(10), BaseDType::F32), Some(40));
        assert_eq!(dense_base_bytes(None, BaseDType::F32), None);
        assert_eq!(vram_bytes_from_base(100, 2, 7), Some(100 + 32 + 7));
        // struct_sizes is struct_sizes_stored with dense own bytes.
        assert_eq!(
            struct_sizes_stored(Some(10), Some(20), Some(40), Some(5), Some(8), Some(3), 4),
            struct_sizes(
                Some(10),
                Some(20),
                Some(5),
                Some(8),
                Some(3),
                4,
                BaseDType::BF16
            )
        );
        // Quantized own bytes: BASE_BYTES = own + nested, VRAM = BASE + 16 × trainable + act.
        assert_eq!(
            struct_sizes_stored(Some(10), Some(20), Some(13), Some(5), Some(8), Some(3), 4),
            Some([10, 25, 40, 21, 3, 21 + 160 + 12])
        );
        assert_eq!(
            struct_sizes_stored(Some(1), Some(2), None, Some(0), Some(0), Some(0), 0),
            None
        );
        assert_eq!(
            struct_sizes_stored(
                Some(1),
                Some(2),
                Some(usize::MAX),
                Some(0),
                Some(1),
                Some(0),
                0
            ),
            None
        );
    }
}
