//! The `#[adapter]` attribute of the adapters toolkit. Use it through `adapters_runtime`, which
//! re-exports it together with the runtime types the generated code names.
//!
//! Layout (after `thiserror`'s `impl` crate): `args` and `attr` parse attribute arguments,
//! `ast` models the annotated struct, `valid` checks it, and `expand` (`consts`,
//! `budget`) generates code. Errors are accumulated in a `ctxt::Ctxt`, so every mistake is
//! reported at once, each at its own token.

mod args;
mod ast;
mod attr;
mod budget;
mod consts;
mod ctxt;
mod expand;
#[cfg(test)]
mod expand_tests;
#[cfg(test)]
mod fuzz;
mod pretty;
mod size;
mod suggest;
mod valid;

use proc_macro::TokenStream;

/// Annotates a candle model struct for LoRA / DoRA fine-tuning.
///
/// ```ignore
/// use adapters_runtime::adapter;
/// use adapters_runtime::candle_nn::{Embedding, Linear};
/// const H: usize = 4096;
///
/// #[adapter(dora, rank = 16, alpha = 32.0)]
/// pub struct Attention {
///     #[adapt(in = H, out = H)] q_proj: Linear,
///     #[adapt(in = H, out = 1024, rank = 8)] k_proj: Linear,   // per-field rank / alpha
///     #[frozen(in = H, out = H)] o_proj: Linear,               // counted, not adapted
/// }
///
/// #[adapter(lora, rank = 8, alpha = 16.0, max_trainable_params = 60_000_000, max_vram = "24 GiB")]
/// pub struct Model {
///     #[frozen(params = 32_000 * H)] embed: Embedding,
///     #[nested(count = 32)] layers: Vec<Attention>,
///     #[frozen(in = H, out = 32_000)] lm_head: Linear,
/// }
/// const _: () = assert!(Model::TRAINABLE_PARAMS < 1 << 30);
/// ```
///
/// # Container arguments
/// - `lora` or `dora`, `rank = N` (≥ 1), `alpha = X` (> 0): required when the struct has an
///   `#[adapt]` field (`rank` / `alpha` not when every `#[adapt]` field sets its own); a struct
///   that only nests others or counts frozen layers may be annotated `#[adapter]` alone;
/// - `dropout = P` in `[0, 1)`, `rslora` / `rslora = bool`, `init = "kaiming" | "gaussian"`;
/// - `dtype = "bf16" | "f32" | "f16"`: the base weights' dtype in the estimates (default bf16);
/// - `quant = "nf4" | "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0" | "q2k" | … | "q8k"` (also
///   llama.cpp's `"Q4_K"`): the struct's own `#[adapt]` `Linear` weights are stored quantized in
///   the estimates (`BASE_BYTES`, `VRAM_BYTES`, `max_vram`), QLoRA-style; their biases,
///   embeddings, `#[frozen]` layers and norms stay in `dtype`, adapters and their training state
///   in f32. A GGML format needs every such `in` to be a multiple of its block (32 or 256);
/// - `max_trainable_params = N`, `max_vram = "24 GiB" | "512 MiB" | N`: budgets checked at
///   compile time; `batch_tokens = N` adds activations to the memory estimate;
/// - `crate = path`: where the runtime is (default `::adapters_runtime`).
///
/// # Field attributes
/// - `#[adapt(in = .., out = .., rank = .., alpha = .., bias = ..)]` on a `Linear` or `Embedding`
///   field (for an embedding `in` is the vocabulary and `out` the dim): the type becomes the
///   runtime's `AdaptedLinear` / `AdaptedEmbedding`. `#[adapt]` without sizes is allowed; the
///   struct then only has run-time counts.
/// - `#[frozen(in = .., out = .., bias = ..)]` or `#[frozen(params = N)]`: counted, not adapted.
///   `in`/`out` and a bare `#[frozen]` need a type implementing `FrozenModule` (candle's `Linear`
///   and `Embedding`, `Tensor`, ...); `params = N` takes a field of any type, even one from
///   another crate (checked against `N` at attach time when it is a `FrozenModule`).
/// - `#[nested]` / `#[nested(count = N)]` on `T`, `[T; N]` or `Vec<T>` of another `#[adapter]`
///   struct, which keeps its own method, rank, alpha, dtype and quant.
///
/// # Generated items
/// The inherent constants `TRAINABLE_PARAMS`, `FROZEN_PARAMS`, `ADAPTER_BYTES`, `BASE_BYTES`,
/// `ACTIVATION_BYTES_PER_TOKEN` and `VRAM_BYTES` (all `usize`, computed by the `const fn`s of
/// `adapters_runtime::estimate`), an `AdapterModel` impl that visits the layers, and one
/// `const` check per budget. After an error in the attribute, the struct keeps these items as
/// placeholders (every constant 0), so the error is the only one reported.
///
/// # Deriving
/// Other attributes stay on the struct: `#[derive(Clone, Debug)]` works above or below
/// `#[adapter]` (the adapted layers are `Clone` and `Debug`). A clone shares its adapters'
/// `Var`s, as a clone of candle's `Linear` shares its tensors: training either trains both, and
/// `Var::set` on one shows in the other. To train an independent copy, attach fresh adapters to a
/// model built anew.
#[proc_macro_attribute]
pub fn adapter(args: TokenStream, input: TokenStream) -> TokenStream {
    let (args, input) = (
        proc_macro2::TokenStream::from(args),
        proc_macro2::TokenStream::from(input),
    );
    let fallback = input.clone();
    // Defence in depth: the expansion is written not to panic, but if it ever did, the user gets
    // their item back and a readable error rather than "proc macro panicked".
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| expand::expand(args, input))) {
        Ok(tokens) => tokens.into(),
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "internal error in `#[adapter]`; please report it with the annotated struct",
            )
            .to_compile_error();
            quote::quote!(#fallback #err).into()
        }
    }
}
