//! The generated associated constants (`TRAINABLE_PARAMS`, ...). Every number comes from a
//! `const fn` of `adapters_runtime::estimate`; nothing here re-implements a formula.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned as _;
use syn::Ident;

use crate::ast::{Input, Layer, Shape};
use crate::attr::{DType, Method, Quant, Role};
use crate::expand::respan;
use crate::valid::unknown_reason;

/// Per-field terms of the sums behind the constants, plus the `let` bindings they read (each
/// user expression is evaluated once, so a mistyped dim is reported once).
#[derive(Default)]
struct Terms {
    /// `let __fN_in: usize = (expr);` for every user expression.
    lets: Vec<TokenStream>,
    /// Per nested field: the binding of its sizes and the read of `<T as AdapterStruct>::SIZES`.
    nested: Vec<(Ident, TokenStream)>,
    /// Trainable adapter parameters (nested included).
    trainable: Vec<TokenStream>,
    /// Frozen parameters of this struct's own fields.
    own_frozen: Vec<TokenStream>,
    /// Bytes of this struct's own frozen weights, field by field (adapted `Linear` weights in
    /// the `quant` format, if any).
    own_base: Vec<TokenStream>,
    /// Frozen parameters of nested structs.
    nested_frozen: Vec<TokenStream>,
    /// Base-weight bytes of nested structs (each in its own storage).
    nested_base: Vec<TokenStream>,
    /// Activation bytes per token (nested included).
    act: Vec<TokenStream>,
    /// Per adapted `Linear` field stored in a GGML format: whether its rows are whole blocks
    /// (`QuantFormat::fits_row(format, in)`), and the error naming the field when they are not.
    row_checks: Vec<(TokenStream, String)>,
}

/// The checked sum of `Option<usize>` terms (`estimate::sum`).
fn sum(e: &TokenStream, terms: &[TokenStream]) -> TokenStream {
    quote!(#e::sum(&[#(#terms),*]))
}

/// The public constants, in the order of `AdapterStruct::SIZES`.
const NAMES: [&str; 6] = [
    "TRAINABLE_PARAMS",
    "FROZEN_PARAMS",
    "ADAPTER_BYTES",
    "BASE_BYTES",
    "ACTIVATION_BYTES_PER_TOKEN",
    "VRAM_BYTES",
];

/// A local of the generated code, invisible to the user's expressions (mixed-site hygiene).
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The inherent impl holding the constants, and the `AdapterStruct` impl holding their values.
///
/// All six numbers are computed once, into `AdapterStruct::SIZES:
/// Result<[usize; 6], &'static str>`: `Err` (with a message naming the field) when some size is
/// unknown at compile time (here or in a nested struct) or overflows `usize`. Outer structs read
/// their nested types' `SIZES`, and the public constants unwrap it, panicking with the message.
/// rustc evaluates every constant a body *references*, even in unused code, but not
/// unreferenced constants: so `SIZES` itself never fails, and an unknown size only becomes an
/// error where a public constant is actually used.
pub fn constants(input: &Input, p: &TokenStream) -> TokenStream {
    let name = &input.item.ident;
    let (impl_g, ty_g, where_c) = input.item.generics.split_for_impl();
    let usize = quote!(::core::primitive::usize);
    let unknown = input
        .fields
        .iter()
        .find_map(|f| unknown_reason(f).map(|why| (f, why)));
    let docs = Docs::new(input, unknown.as_ref().map(|(_, why)| why.as_str()));
    let (sizes, panic_span) = match &unknown {
        Some((f, why)) => {
            let msg = format!(
                "the sizes of `{name}` are not known at compile time: {why}; its constants are available once every `#[adapt]`/`#[frozen]` field has `in`/`out` (or `params`) and every `#[nested]` `Vec` has `count`"
            );
            let span = f
                .role
                .as_ref()
                .map_or_else(|| f.ident.span(), |r| r.attr.path().span());
            (quote!(::core::result::Result::Err(#msg)), span)
        }
        None => (known_sizes(input, p), Span::call_site()),
    };
    let (s, e) = (local("__s"), local("__e"));
    let publics = docs
        .all()
        .into_iter()
        .zip(NAMES)
        .enumerate()
        .map(|(i, (doc, c))| {
            let c = Ident::new(c, Span::call_site());
            let fail = quote_spanned!(panic_span=> ::core::panic!("{}", #e));
            quote! {
                #doc
                pub const #c: #usize = match <Self as #p::AdapterStruct>::SIZES {
                    ::core::result::Result::Ok(#s) => #s[#i],
                    ::core::result::Result::Err(#e) => #fail,
                };
            }
        });
    quote! {
        #[automatically_derived]
        impl #impl_g #name #ty_g #where_c {
            #(#publics)*
        }

        #[automatically_derived]
        #[diagnostic::do_not_recommend]
        impl #impl_g #p::AdapterStruct for #name #ty_g #where_c {
            const SIZES: ::core::result::Result<
                [#usize; 6],
                &'static ::core::primitive::str,
            > = #sizes;
        }
    }
}

/// Placeholder constants and `AdapterStruct` impl for a struct whose `#[adapter]` has an error:
/// every constant is 0, so that its uses (and the structs nesting it) compile and the attribute
/// error stays the only one.
pub fn placeholders(name: &Ident, generics: &syn::Generics, p: &TokenStream) -> TokenStream {
    let (impl_g, ty_g, where_c) = generics.split_for_impl();
    let usize = quote!(::core::primitive::usize);
    let publics = NAMES.iter().map(|c| {
        let c = Ident::new(c, Span::call_site());
        let doc = format!(
            "Placeholder (0): `#[adapter]` on `{name}` has an error, so its sizes are not computed; `{c}` gets its value once the error is fixed."
        );
        quote! {
            #[doc = #doc]
            pub const #c: #usize = 0;
        }
    });
    quote! {
        #[automatically_derived]
        impl #impl_g #name #ty_g #where_c {
            #(#publics)*
        }

        #[automatically_derived]
        #[diagnostic::do_not_recommend]
        impl #impl_g #p::AdapterStruct for #name #ty_g #where_c {
            const SIZES: ::core::result::Result<
                [#usize; 6],
                &'static ::core::primitive::str,
            > = ::core::result::Result::Ok([0; 6]);
        }
    }
}

/// The `SIZES` expression when this struct's own sizes are all known: `Ok` with the
/// six numbers, or the first nested type's `Err`.
fn known_sizes(input: &Input, p: &TokenStream) -> TokenStream {
    let usize = quote!(::core::primitive::usize);
    let t = terms(input, p);
    let e = quote!(#p::estimate);
    let lets = &t.lets;
    let trainable = sum(&e, &t.trainable);
    let own_frozen = sum(&e, &t.own_frozen);
    let own_base = sum(&e, &t.own_base);
    let nested_frozen = sum(&e, &t.nested_frozen);
    let nested_base = sum(&e, &t.nested_base);
    let act = sum(&e, &t.act);
    let batch_tokens = input
        .attr
        .batch_tokens
        .as_ref()
        .map_or_else(|| quote!(0), |b| b.value.to_token_stream());
    let (bt, sz) = (local("__batch_tokens"), local("__sizes"));
    let overflow = format!(
        "the sizes of `{}` overflow `usize`: a dimension, rank or count is too large",
        input.item.ident
    );
    let mut sizes = quote! {
        match #e::struct_sizes_stored(
            #trainable,
            #own_frozen,
            #own_base,
            #nested_frozen,
            #nested_base,
            #act,
            #bt,
        ) {
            ::core::option::Option::Some(#sz) => ::core::result::Result::Ok(#sz),
            ::core::option::Option::None => ::core::result::Result::Err(#overflow),
        }
    };
    // A quantized row that is not whole blocks has no size: the first such field is the error.
    for (fits, msg) in t.row_checks.iter().rev() {
        sizes = quote! {
            if #fits { #sizes } else { ::core::result::Result::Err(#msg) }
        };
    }
    let ok = quote! {{
        #(#lets)*
        let #bt: #usize = (#batch_tokens);
        #sizes
    }};
    if t.nested.is_empty() {
        return ok;
    }
    let reads = t.nested.iter().map(|(_, read)| read);
    let ids = t.nested.iter().map(|(id, _)| id);
    let err = local("__e");
    let n = t.nested.len();
    let err_arms = (0..n).map(|i| {
        let slots = (0..n).map(|j| {
            if i == j {
                quote!(::core::result::Result::Err(#err))
            } else {
                quote!(_)
            }
        });
        quote!((#(#slots,)*))
    });
    quote! {
        match (#(#reads,)*) {
            (#(::core::result::Result::Ok(#ids),)*) => #ok,
            #(#err_arms)|* => ::core::result::Result::Err(#err),
        }
    }
}

fn method(input: &Input, p: &TokenStream) -> TokenStream {
    match input.attr.method.as_ref().map(|m| m.value) {
        Some(Method::Dora) => quote!(#p::estimate::Method::Dora),
        _ => quote!(#p::estimate::Method::Lora),
    }
}

/// The `estimate::BaseStorage` of this struct's adapted `Linear` weights.
fn storage(input: &Input, p: &TokenStream) -> TokenStream {
    let dt = dtype(input, p);
    match input.attr.quant.as_ref() {
        Some(q) => {
            let v = quant_variant(&q.value, p);
            quote!(#p::estimate::BaseStorage::Quant(#v, #dt))
        }
        None => quote!(#p::estimate::BaseStorage::Dense(#dt)),
    }
}

/// `estimate::QuantFormat::<Variant>`.
fn quant_variant(q: &Quant, p: &TokenStream) -> TokenStream {
    let v = Ident::new(q.variant, Span::call_site());
    quote!(#p::estimate::QuantFormat::#v)
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
    let storage = storage(input, p);
    let usize = quote!(::core::primitive::usize);
    let some = quote!(::core::option::Option::Some);
    let mut t = Terms::default();
    for (n, f) in input.fields.iter().enumerate() {
        let Some(role) = &f.role else { continue };
        let a = &role.args;
        let mut bind = |what: &str, expr: &syn::Expr| {
            let id = local(&format!("__f{n}_{what}"));
            t.lets.push(quote!(let #id: #usize = (#expr);));
            id
        };
        let dims = match (&a.din, &a.dout) {
            (Some(i), Some(o)) => Some((bind("in", &i.value), bind("out", &o.value))),
            _ => None,
        };
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
                    t.own_base
                        .push(quote!(#e::dense_base_bytes(#e::embedding_params(#i, #o), #dt)));
                    t.act
                        .push(quote!(#e::activation_bytes_adapted_embedding(#m, #o, #r, #dt)));
                } else {
                    t.own_frozen.push(quote!(#e::linear_params(#i, #o, #bias)));
                    t.own_base
                        .push(quote!(#e::adapted_linear_base_bytes(#storage, #i, #o, #bias)));
                    t.act
                        .push(quote!(#e::activation_bytes_adapted_linear(#m, #i, #o, #r, #dt)));
                    if let Some(check) = row_check(input, f.ident, &a.din, &i, p) {
                        t.row_checks.push(check);
                    }
                }
            }
            Role::Frozen => {
                if let Some(params) = &a.params {
                    let id = bind("params", &params.value);
                    t.own_frozen.push(quote!(#some(#id)));
                    t.own_base
                        .push(quote!(#e::dense_base_bytes(#some(#id), #dt)));
                } else if let Some((i, o)) = dims {
                    if role.layer == Some(Layer::Embedding) {
                        t.own_frozen.push(quote!(#e::embedding_params(#i, #o)));
                        t.own_base
                            .push(quote!(#e::dense_base_bytes(#e::embedding_params(#i, #o), #dt)));
                    } else {
                        t.own_frozen.push(quote!(#e::linear_params(#i, #o, #bias)));
                        t.own_base.push(
                            quote!(#e::dense_base_bytes(#e::linear_params(#i, #o, #bias), #dt)),
                        );
                        t.act
                            .push(quote!(#e::activation_bytes_frozen_linear(#i, #dt)));
                    }
                }
            }
            Role::Nested => {
                let (elem, count) = match &role.shape {
                    Some(Shape::Single(ty)) => (*ty, quote!(1)),
                    Some(Shape::Array(ty, len)) => (*ty, quote!((#len))),
                    Some(Shape::Vec(ty)) => match &a.count {
                        Some(c) => {
                            let id = bind("count", &c.value);
                            (*ty, quote!(#id))
                        }
                        None => continue,
                    },
                    None => continue,
                };
                // Spanned (and named) like the nested visit in `expand.rs`, so that a type that
                // is not annotated gives one error, not one here and one there.
                let span = elem.span();
                let ps = respan(p.clone(), span);
                let sizes = local(&format!("__f{n}_sizes"));
                let read = quote_spanned!(span=> <#elem as #ps::AdapterStruct>::SIZES);
                t.nested.push((sizes.clone(), read));
                for (terms, i) in [
                    (&mut t.trainable, 0usize),
                    (&mut t.nested_frozen, 1),
                    (&mut t.nested_base, 3),
                    (&mut t.act, 4),
                ] {
                    terms.push(quote!(#e::mul(#some(#count), #some(#sizes[#i]))));
                }
            }
        }
    }
    t
}

/// For an adapted `Linear` field under a GGML `quant`: the condition that its rows (`in`
/// elements) are whole blocks, and the error naming the field when they are not.
fn row_check(
    input: &Input,
    field: &Ident,
    din: &Option<crate::attr::Spanned<syn::Expr>>,
    din_id: &Ident,
    p: &TokenStream,
) -> Option<(TokenStream, String)> {
    let q = input.attr.quant.as_ref()?;
    let block = q.value.row_block?;
    let din = din.as_ref()?;
    let format = quant_variant(&q.value, p);
    let fits = quote!(#p::estimate::QuantFormat::fits_row(#format, #din_id));
    let msg = format!(
        "field `{field}` of `{name}` cannot be stored as `{q}`: GGML's `{q}` stores each row of the weight `[out, in]` in whole blocks of {block} elements, so `in` must be a multiple of {block}, but `{din}` is not; pick a format whose block divides `in` (`nf4` takes any shape)",
        name = input.item.ident,
        q = q.value.name,
        din = crate::pretty::pretty(&din.tokens),
    );
    Some((fits, msg))
}

/// The rustdoc of each constant.
struct Docs {
    unknown: Option<String>,
    name: String,
    dtype: &'static str,
    quant: Option<&'static str>,
    batch_tokens: String,
}

impl Docs {
    fn new(input: &Input, unknown: Option<&str>) -> Self {
        Docs {
            unknown: unknown.map(|why| {
                format!(
                    "\n\n**Not available at compile time**: {why}; using it is a compile error."
                )
            }),
            name: input.item.ident.to_string(),
            dtype: match input.attr.dtype.as_ref().map_or(DType::BF16, |d| d.value) {
                DType::F32 => "f32",
                DType::BF16 => "bf16",
                DType::F16 => "f16",
            },
            quant: input.attr.quant.as_ref().map(|q| q.value.name),
            batch_tokens: input.attr.batch_tokens.as_ref().map_or_else(
                || "not set, so activations count as 0".into(),
                |b| {
                    format!(
                        "`batch_tokens = {}`",
                        crate::pretty::pretty(&b.value_tokens)
                    )
                },
            ),
        }
    }

    fn all(&self) -> [TokenStream; 6] {
        let n = &self.name;
        let (base, base_row) = match self.quant {
            Some(q) => (
                format!("the adapted `Linear` weights in {q} (`estimate::adapted_linear_base_bytes`), their biases, embeddings and `#[frozen]` fields in {}", self.dtype),
                format!("own adapted Linear weights in {q}, the rest × sizeof({})", self.dtype),
            ),
            None => (
                format!("in {}", self.dtype),
                format!("FROZEN_PARAMS × sizeof({})", self.dtype),
            ),
        };
        [
            format!("Trainable adapter parameters of `{n}`, nested structs included: per adapted layer `r·(in + out)`, plus `out` magnitudes for DoRA (`estimate::adapter_params`)."),
            format!("Frozen base parameters of `{n}`: the adapted layers' `W0` (and bias) plus every `#[frozen]` field, nested structs included."),
            format!("Bytes of `{n}`'s adapter weights (kept in f32): `estimate::adapter_bytes(TRAINABLE_PARAMS)`."),
            format!("Bytes of `{n}`'s frozen base weights, {base} (nested structs in their own storage)."),
            format!("Activation bytes `{n}` keeps per token for the backward pass (`estimate::activation_bytes_*`), nested structs included; an outer struct scales it by its own `batch_tokens`."),
            format!(
                "Estimated training memory of `{n}` in bytes:\n\n```text\nbase weights      BASE_BYTES: {base_row}   (nested structs: their own storage)\nadapter weights   TRAINABLE_PARAMS × 4\ngradients         TRAINABLE_PARAMS × 4\nAdamW state       TRAINABLE_PARAMS × 8\nactivations       batch_tokens × ACTIVATION_BYTES_PER_TOKEN\n```\n\n`batch_tokens`: {}. Computed as `estimate::vram_bytes_from_base(BASE_BYTES, TRAINABLE_PARAMS, activations)`.",
                self.batch_tokens
            ),
        ]
        .map(|d| {
            let d = format!("{d}{}", self.unknown.as_deref().unwrap_or_default());
            quote!(#[doc = #d])
        })
    }
}
