//! The generated associated constants (`TRAINABLE_PARAMS`, ...). Every number comes from a
//! `const fn` of `adapters_runtime::estimate`; nothing here re-implements a formula.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};

use crate::ast::{Input, Layer, Shape};
use crate::attr::{DType, Method, Role};
use crate::valid::unknown_reason;

/// Per-field terms of the sums behind the constants.
#[derive(Default)]
struct Terms {
    /// Trainable adapter parameters (nested included).
    trainable: Vec<TokenStream>,
    /// Frozen parameters of this struct's own fields.
    own_frozen: Vec<TokenStream>,
    /// Frozen parameters of nested structs.
    nested_frozen: Vec<TokenStream>,
    /// Base-weight bytes of nested structs (each in its own dtype).
    nested_base: Vec<TokenStream>,
    /// Activation bytes per token (nested included).
    act: Vec<TokenStream>,
}

/// `a + b + c`, or `0`.
fn sum(terms: &[TokenStream]) -> TokenStream {
    if terms.is_empty() {
        return quote!(0);
    }
    quote!(#(#terms)+*)
}

/// The inherent impl holding the constants. When a size is unknown at compile time the
/// constants still exist (so outer structs can name them) but fail to evaluate, naming the field.
pub fn constants(input: &Input, p: &TokenStream) -> TokenStream {
    let name = &input.item.ident;
    let (impl_g, ty_g, where_c) = input.item.generics.split_for_impl();
    let usize = quote!(::core::primitive::usize);
    let docs = Docs::new(input);
    let [d_trainable, d_frozen, d_adapter, d_base, d_act, d_vram] = docs.all();
    let unknown = input
        .fields
        .iter()
        .find_map(|f| unknown_reason(f).map(|why| (f, why)));
    let body = if let Some((f, why)) = unknown {
        let span = f
            .role
            .as_ref()
            .map_or_else(|| f.ident.span(), |r| syn::spanned::Spanned::span(r.attr.path()));
        let msg = format!(
            "the sizes of `{name}` are not known at compile time: {why}; its constants are available once every `#[adapt]`/`#[frozen]` field has `in`/`out` (or `params`) and every `#[nested]` `Vec` has `count`"
        );
        let fail = quote_spanned!(span=> ::core::panic!(#msg));
        quote! {
            #d_trainable pub const TRAINABLE_PARAMS: #usize = #fail;
            #d_frozen pub const FROZEN_PARAMS: #usize = #fail;
            #d_adapter pub const ADAPTER_BYTES: #usize = #fail;
            #d_base pub const BASE_BYTES: #usize = #fail;
            #d_act pub const ACTIVATION_BYTES_PER_TOKEN: #usize = #fail;
            #d_vram pub const VRAM_BYTES: #usize = #fail;
        }
    } else {
        let t = terms(input, p);
        let e = quote!(#p::estimate);
        let dtype = dtype(input, p);
        let trainable = sum(&t.trainable);
        let own_frozen = sum(&t.own_frozen);
        let nested_frozen = &t.nested_frozen;
        let nested_base = &t.nested_base;
        let act = sum(&t.act);
        let batch_tokens = input
            .attr
            .batch_tokens
            .as_ref()
            .map_or_else(|| quote!(0), |b| b.value.to_token_stream());
        quote! {
            #d_trainable pub const TRAINABLE_PARAMS: #usize = #trainable;
            #d_frozen pub const FROZEN_PARAMS: #usize = #own_frozen #(+ #nested_frozen)*;
            #d_adapter pub const ADAPTER_BYTES: #usize = #e::adapter_bytes(Self::TRAINABLE_PARAMS);
            #d_base pub const BASE_BYTES: #usize =
                #e::base_bytes(#own_frozen, #dtype) #(+ #nested_base)*;
            #d_act pub const ACTIVATION_BYTES_PER_TOKEN: #usize = #act;
            #d_vram pub const VRAM_BYTES: #usize = #e::vram_bytes(
                #own_frozen,
                #dtype,
                Self::TRAINABLE_PARAMS,
                (#batch_tokens) * Self::ACTIVATION_BYTES_PER_TOKEN,
            ) #(+ #nested_base)*;
        }
    };
    quote! {
        #[automatically_derived]
        impl #impl_g #name #ty_g #where_c {
            #body
        }
    }
}

fn method(input: &Input, p: &TokenStream) -> TokenStream {
    match input.attr.method.as_ref().map(|m| m.value) {
        Some(Method::Dora) => quote!(#p::estimate::Method::Dora),
        _ => quote!(#p::estimate::Method::Lora),
    }
}

fn dtype(input: &Input, p: &TokenStream) -> TokenStream {
    match input.attr.dtype.as_ref().map_or(DType::BF16, |d| d.value) {
        DType::F32 => quote!(#p::estimate::BaseDType::F32),
        DType::BF16 => quote!(#p::estimate::BaseDType::BF16),
        DType::F16 => quote!(#p::estimate::BaseDType::F16),
    }
}

/// Collects the terms of every field (all sizes are known here).
fn terms(input: &Input, p: &TokenStream) -> Terms {
    let e = quote!(#p::estimate);
    let m = method(input, p);
    let dt = dtype(input, p);
    let mut t = Terms::default();
    for f in &input.fields {
        let Some(role) = &f.role else { continue };
        let a = &role.args;
        let dims = a.din.as_ref().zip(a.dout.as_ref()).map(|(i, o)| {
            let (i, o) = (&i.value, &o.value);
            (quote!((#i)), quote!((#o)))
        });
        let bias = a.bias.as_ref().is_some_and(|b| b.value);
        match role.role {
            Role::Adapt => {
                let Some((i, o)) = dims else { continue };
                let rank = a
                    .rank
                    .as_ref()
                    .or(input.attr.rank.as_ref())
                    .map_or(1, |r| r.value);
                let r = proc_macro2::Literal::usize_unsuffixed(rank);
                t.trainable.push(quote!(#e::adapter_params(#m, #i, #o, #r)));
                if role.layer == Some(Layer::Embedding) {
                    t.own_frozen.push(quote!(#e::embedding_params(#i, #o)));
                    t.act.push(quote!(#e::activation_bytes_adapted_embedding(#m, #o, #r, #dt)));
                } else {
                    t.own_frozen.push(quote!(#e::linear_params(#i, #o, #bias)));
                    t.act.push(quote!(#e::activation_bytes_adapted_linear(#m, #i, #o, #r, #dt)));
                }
            }
            Role::Frozen => {
                if let Some(n) = &a.params {
                    let n = &n.value;
                    t.own_frozen.push(quote!((#n)));
                } else if let Some((i, o)) = dims {
                    if role.layer == Some(Layer::Embedding) {
                        t.own_frozen.push(quote!(#e::embedding_params(#i, #o)));
                    } else {
                        t.own_frozen.push(quote!(#e::linear_params(#i, #o, #bias)));
                        t.act.push(quote!(#e::activation_bytes_frozen_linear(#i, #dt)));
                    }
                }
            }
            Role::Nested => {
                let (elem, count) = match &role.shape {
                    Some(Shape::Single(ty)) => (*ty, quote!(1)),
                    Some(Shape::Array(ty, len)) => (*ty, quote!((#len))),
                    Some(Shape::Vec(ty)) => match &a.count {
                        Some(c) => {
                            let c = &c.value;
                            (*ty, quote!((#c)))
                        }
                        None => continue,
                    },
                    None => continue,
                };
                let span = syn::spanned::Spanned::span(elem);
                let of = |c: &str| {
                    let c = syn::Ident::new(c, span);
                    quote_spanned!(span=> <#elem>::#c)
                };
                let (tp, fp, bb, ab) = (
                    of("TRAINABLE_PARAMS"),
                    of("FROZEN_PARAMS"),
                    of("BASE_BYTES"),
                    of("ACTIVATION_BYTES_PER_TOKEN"),
                );
                t.trainable.push(quote!(#count * #tp));
                t.nested_frozen.push(quote!(#count * #fp));
                t.nested_base.push(quote!(#count * #bb));
                t.act.push(quote!(#count * #ab));
            }
        }
    }
    t
}

/// The rustdoc of each constant.
struct Docs {
    name: String,
    dtype: &'static str,
    batch_tokens: String,
}

impl Docs {
    fn new(input: &Input) -> Self {
        Docs {
            name: input.item.ident.to_string(),
            dtype: match input.attr.dtype.as_ref().map_or(DType::BF16, |d| d.value) {
                DType::F32 => "f32",
                DType::BF16 => "bf16",
                DType::F16 => "f16",
            },
            batch_tokens: input.attr.batch_tokens.as_ref().map_or_else(
                || "not set, so activations count as 0".into(),
                |b| format!("`batch_tokens = {}`", crate::pretty::pretty(&b.value_tokens)),
            ),
        }
    }

    fn all(&self) -> [TokenStream; 6] {
        let n = &self.name;
        [
            format!("Trainable adapter parameters of `{n}`, nested structs included: per adapted layer `r·(in + out)`, plus `out` magnitudes for DoRA (`estimate::adapter_params`)."),
            format!("Frozen base parameters of `{n}`: the adapted layers' `W0` (and bias) plus every `#[frozen]` field, nested structs included."),
            format!("Bytes of `{n}`'s adapter weights (kept in f32): `estimate::adapter_bytes(TRAINABLE_PARAMS)`."),
            format!("Bytes of `{n}`'s frozen base weights, in {} (nested structs in their own dtype).", self.dtype),
            format!("Activation bytes `{n}` keeps per token for the backward pass (`estimate::activation_bytes_*`), nested structs included; an outer struct scales it by its own `batch_tokens`."),
            format!(
                "Estimated training memory of `{n}` in bytes:\n\n```text\nbase weights      FROZEN_PARAMS × sizeof({})   (nested structs: their own dtype)\nadapter weights   TRAINABLE_PARAMS × 4\ngradients         TRAINABLE_PARAMS × 4\nAdamW state       TRAINABLE_PARAMS × 8\nactivations       batch_tokens × ACTIVATION_BYTES_PER_TOKEN\n```\n\n`batch_tokens`: {}. Computed as `estimate::vram_bytes(own frozen params, dtype, TRAINABLE_PARAMS, activations)` plus the nested structs' `BASE_BYTES`.",
                self.dtype, self.batch_tokens
            ),
        ]
        .map(|d| quote!(#[doc = #d]))
    }
}
