//! The generated items pass strict lints: documented, no `unsafe`, no warnings.
#![deny(
    missing_docs,
    unsafe_code,
    warnings,
    unused,
    nonstandard_style,
    rust_2018_idioms
)]
#![deny(unreachable_pub, missing_debug_implementations)]
#![forbid(unsafe_code)]

use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

/// A documented model.
#[adapter(
    dora,
    rank = 4,
    alpha = 8.0,
    max_trainable_params = 1_000,
    max_vram = "1 MiB"
)]
#[allow(missing_debug_implementations)]
pub struct Documented {
    /// The query projection.
    #[adapt(in = 8, out = 8)]
    pub q: Linear,
    /// A frozen head.
    #[frozen(in = 8, out = 2)]
    pub head: Linear,
    /// Nested blocks.
    #[nested(count = 2)]
    pub blocks: Vec<Inner>,
}

/// A nested block.
#[adapter(lora, rank = 2, alpha = 2.0)]
#[allow(missing_debug_implementations)]
pub struct Inner {
    /// An adapted layer.
    #[adapt(in = 4, out = 4)]
    pub f: Linear,
}

fn main() {
    assert_eq!(Documented::TRAINABLE_PARAMS, 4 * 16 + 8 + 2 * 2 * 8);
}
