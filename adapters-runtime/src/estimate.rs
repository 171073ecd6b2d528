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

/// Estimated training memory in bytes (see the module docs for the formula); `None` on overflow.
pub const fn vram_bytes(
    frozen: usize,
    dtype: BaseDType,
    trainable: usize,
    activation_bytes: usize,
) -> Option<usize> {
    sum(&[
        base_bytes(frozen, dtype),
        training_state_bytes(trainable),
        Some(activation_bytes),
    ])
}

/// The six numbers behind `#[adapter]`'s constants, from a struct's own sums and its nested
/// structs' base bytes: `[TRAINABLE_PARAMS, FROZEN_PARAMS, ADAPTER_BYTES, BASE_BYTES,
/// ACTIVATION_BYTES_PER_TOKEN, VRAM_BYTES]`, or `None` when a number overflows `usize`.
pub const fn struct_sizes(
    trainable: Option<usize>,
    own_frozen: Option<usize>,
    nested_frozen: Option<usize>,
    nested_base: Option<usize>,
    activation_per_token: Option<usize>,
    batch_tokens: usize,
    dtype: BaseDType,
) -> Option<[usize; 6]> {
    let (Some(tr), Some(fr), Some(nf), Some(nb), Some(act)) = (
        trainable,
        own_frozen,
        nested_frozen,
        nested_base,
        activation_per_token,
    ) else {
        return None;
    };
    let (Some(frozen), Some(adapter), Some(base), Some(activations)) = (
        fr.checked_add(nf),
        adapter_bytes(tr),
        add(base_bytes(fr, dtype), Some(nb)),
        batch_tokens.checked_mul(act),
    ) else {
        return None;
    };
    let Some(vram) = add(vram_bytes(fr, dtype, tr, activations), Some(nb)) else {
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
}
