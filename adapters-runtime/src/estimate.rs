//! Parameter, byte and training-memory formulas, as `const fn`s.
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

/// Trainable parameters of an adapter on a `[dout, din]` weight: `r·(din+dout)` for LoRA, plus the
/// `dout` magnitudes for DoRA. For an embedding pass `din = vocab`, `dout = dim`.
pub const fn adapter_params(method: Method, din: usize, dout: usize, rank: usize) -> usize {
    let lora = rank * (din + dout);
    match method {
        Method::Lora => lora,
        Method::Dora => lora + dout,
    }
}

/// Frozen parameters of a linear layer: `din·dout`, plus `dout` with a bias.
pub const fn linear_params(din: usize, dout: usize, bias: bool) -> usize {
    din * dout + if bias { dout } else { 0 }
}

/// Frozen parameters of an embedding table `[vocab, dim]`.
pub const fn embedding_params(vocab: usize, dim: usize) -> usize {
    vocab * dim
}

/// Bytes of adapter weights for `trainable` parameters.
pub const fn adapter_bytes(trainable: usize) -> usize {
    trainable * ADAPTER_PARAM_BYTES
}

/// Bytes of frozen base weights for `frozen` parameters stored as `dtype`.
pub const fn base_bytes(frozen: usize, dtype: BaseDType) -> usize {
    frozen * dtype.size_in_bytes()
}

/// Bytes of training state per trainable parameter: weight + gradient + AdamW moments.
pub const fn training_bytes_per_param() -> usize {
    ADAPTER_PARAM_BYTES + GRAD_BYTES + ADAMW_STATE_BYTES
}

/// Activation bytes an adapted linear layer keeps for the backward pass, per token: its input,
/// the input cast to f32 (when activations are not f32), `x·Aᵀ` and `x·Aᵀ·Bᵀ` in f32, the output, and
/// for DoRA the pre-scale sum that the magnitude's gradient needs.
pub const fn activation_bytes_adapted_linear(
    method: Method,
    din: usize,
    dout: usize,
    rank: usize,
    act: BaseDType,
) -> usize {
    let a = act.size_in_bytes();
    let cast = if a == ADAPTER_PARAM_BYTES {
        0
    } else {
        din * ADAPTER_PARAM_BYTES
    };
    let lora = din * a + cast + rank * ADAPTER_PARAM_BYTES + dout * ADAPTER_PARAM_BYTES + dout * a;
    match method {
        Method::Lora => lora,
        Method::Dora => lora + dout * a,
    }
}

/// Activation bytes a frozen linear layer keeps per token (its input, for the input gradient).
pub const fn activation_bytes_frozen_linear(din: usize, act: BaseDType) -> usize {
    din * act.size_in_bytes()
}

/// Activation bytes an adapted embedding keeps per token (`Aᵀ[ids]` and the f32 adapter output,
/// plus the base rows for DoRA).
pub const fn activation_bytes_adapted_embedding(
    method: Method,
    dim: usize,
    rank: usize,
    act: BaseDType,
) -> usize {
    let lora = rank * ADAPTER_PARAM_BYTES + dim * ADAPTER_PARAM_BYTES + dim * act.size_in_bytes();
    match method {
        Method::Lora => lora,
        Method::Dora => lora + dim * act.size_in_bytes(),
    }
}

/// Estimated training memory in bytes (see the module docs for the formula).
pub const fn vram_bytes(
    frozen: usize,
    dtype: BaseDType,
    trainable: usize,
    activation_bytes: usize,
) -> usize {
    base_bytes(frozen, dtype) + trainable * training_bytes_per_param() + activation_bytes
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
        assert_eq!(adapter_params(Method::Lora, 4096, 4096, 16), 131_072);
        assert_eq!(adapter_params(Method::Dora, 4096, 4096, 16), 135_168);
        assert_eq!(linear_params(3, 5, true), 20);
        assert_eq!(base_bytes(10, BaseDType::BF16), 20);
        assert_eq!(vram_bytes(10, BaseDType::F32, 2, 7), 40 + 32 + 7);
        assert_eq!(human_bytes(24 << 30), "24.00 GiB");
        assert_eq!(human_bytes(512), "512 B");
    }
}
