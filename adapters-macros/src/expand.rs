//! Code generation: the struct with adapted field types, its constants, its `AdapterModel` impl
//! and its budget checks. On any error the item comes back (helper attributes removed, `#[adapt]`
//! types adapted) next to the `compile_error!`s, with placeholder constants and impls, so one
//! mistake does not cascade into unrelated errors where the struct is used.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned as _;
use syn::{Fields, Ident, Item, Type};

use crate::ast::{Field, Input, Layer, Shape};
use crate::attr::{Init, Method, Role};
use crate::ctxt::Ctxt;
use crate::{budget, consts, valid};

/// Expands `#[adapter(args)] input`.
pub fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match syn::parse2::<Item>(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            let e = e.to_compile_error();
            return quote!(#input #e);
        }
    };
    let cx = Ctxt::new();
    let attr = crate::attr::container(args, &cx);
    let p = private(attr.krate.as_ref().map(|k| &k.value));
    let parsed = Input::from_syn(&item, attr, &cx);
    if let Some(input) = &parsed {
        valid::validate(input, &cx);
    }
    match parsed {
        Some(input) if !cx.has_errors() => generate(&input),
        parsed => {
            let errors = cx.into_compile_errors();
            let fallback = fallback(&item, parsed.as_ref(), &p);
            quote!(#fallback #errors)
        }
    }
}

/// `::adapters_runtime::__private`, or `<crate = path>::__private`.
fn private(krate: Option<&syn::Path>) -> TokenStream {
    match krate {
        Some(k) => quote!(#k::__private),
        None => quote!(::adapters_runtime::__private),
    }
}

/// The runtime path of `input` (see [`private`]).
pub fn private_of(input: &Input) -> TokenStream {
    private(input.attr.krate.as_ref().map(|k| &k.value))
}

/// What an erroneous `#[adapter]` expands to besides its errors: the item (helper attributes
/// removed; `#[adapt]` fields of a recognised layer type adapted, as uses of the struct expect),
/// and for a struct, enum or union, placeholder constants and `AdapterModel` / `AdapterStruct`
/// impls, so that code using them reports nothing more.
fn fallback(item: &Item, parsed: Option<&Input>, p: &TokenStream) -> TokenStream {
    let (tokens, originals) = match parsed {
        Some(input) => (rewrite(input, p), original_types(input)),
        None => {
            let mut item = item.clone();
            strip_helpers(&mut item);
            (item.into_token_stream(), TokenStream::new())
        }
    };
    let (name, generics) = match parsed {
        Some(input) => (&input.item.ident, &input.item.generics),
        None => match item_name(item) {
            Some(x) => x,
            None => return tokens,
        },
    };
    let consts = consts::placeholders(name, generics, p);
    let model = empty_model(name, generics, p);
    quote! {
        #tokens
        #originals
        #consts
        #model
    }
}

fn generate(input: &Input) -> TokenStream {
    let p = private_of(input);
    let item = rewrite(input, &p);
    let consts = consts::constants(input, &p);
    let model = adapter_model(input, &p);
    let budgets = budget::budgets(input, &p);
    let originals = original_types(input);
    quote! {
        #item
        #consts
        #model
        #budgets
        #originals
    }
}

/// Names the `#[adapt]` fields' original types (`Linear`, `Embedding`) once, so the user's
/// imports of them still count as used after the fields were rewritten.
fn original_types(input: &Input) -> TokenStream {
    let types: Vec<&Type> = input
        .fields
        .iter()
        .filter(|f| f.role.as_ref().is_some_and(|r| r.role == Role::Adapt))
        .map(|f| f.ty)
        .collect();
    if types.is_empty() {
        return TokenStream::new();
    }
    quote! {
        const _: () = {
            #(let _: ::core::marker::PhantomData<#types> = ::core::marker::PhantomData;)*
        };
    }
}

/// Removes `#[adapt]`, `#[frozen]` and `#[nested]` from every field of the item.
fn strip_helpers(item: &mut Item) {
    let strip = |fields: &mut Fields| {
        for f in fields.iter_mut() {
            f.attrs.retain(|a| Role::of(a).is_none());
        }
    };
    match item {
        Item::Struct(s) => strip(&mut s.fields),
        Item::Enum(e) => e.variants.iter_mut().for_each(|v| strip(&mut v.fields)),
        Item::Union(u) => u
            .fields
            .named
            .iter_mut()
            .for_each(|f| f.attrs.retain(|a| Role::of(a).is_none())),
        _ => {}
    }
}

/// The name and generics of a struct, enum or union.
fn item_name(item: &Item) -> Option<(&Ident, &syn::Generics)> {
    match item {
        Item::Struct(s) => Some((&s.ident, &s.generics)),
        Item::Enum(e) => Some((&e.ident, &e.generics)),
        Item::Union(u) => Some((&u.ident, &u.generics)),
        _ => None,
    }
}

/// An `AdapterModel` impl that visits nothing, for the fallback of an erroneous `#[adapter]`.
fn empty_model(name: &Ident, generics: &syn::Generics, p: &TokenStream) -> TokenStream {
    let (impl_g, ty_g, where_c) = generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_g #p::AdapterModel for #name #ty_g #where_c {
            fn visit_layers(
                &self,
                _: &::core::primitive::str,
                _: &mut #p::Visitor<'_>,
            ) -> #p::Result<()> {
                ::core::result::Result::Ok(())
            }

            fn visit_layers_mut(
                &mut self,
                _: &::core::primitive::str,
                _: &mut #p::VisitorMut<'_>,
            ) -> #p::Result<()> {
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// The struct with helper attributes removed and `#[adapt]` field types (`Linear`, `Embedding`)
/// replaced by the runtime's adapted layers.
fn rewrite(input: &Input, p: &TokenStream) -> TokenStream {
    let mut item = Item::Struct(input.item.clone());
    strip_helpers(&mut item);
    if let Item::Struct(s) = &mut item {
        for (f, model) in s.fields.iter_mut().zip(&input.fields) {
            let Some(role) = model.role.as_ref().filter(|r| r.role == Role::Adapt) else {
                continue;
            };
            let span = f.ty.span();
            let wrapper = match role.layer {
                Some(Layer::Embedding) => quote_spanned!(span=> #p::AdaptedEmbedding),
                Some(Layer::Linear) => quote_spanned!(span=> #p::AdaptedLinear),
                // An error was reported: the type stays as written.
                Some(Layer::Other) | None => continue,
            };
            f.ty = Type::Verbatim(wrapper);
        }
    }
    item.into_token_stream()
}

/// The runtime's `AdapterConfig` for an adapted field (field overrides win over the container).
fn config(input: &Input, f: &Field, p: &TokenStream) -> TokenStream {
    let a = &input.attr;
    let args = f.role.as_ref().map(|r| &r.args);
    let rank = args
        .and_then(|x| x.rank.as_ref())
        .or(a.rank.as_ref())
        .map_or(1, |r| r.value);
    let alpha = args
        .and_then(|x| x.alpha.as_ref())
        .or(a.alpha.as_ref())
        .map_or(1.0, |r| r.value);
    let ctor = match a.method.as_ref().map(|m| m.value) {
        Some(Method::Dora) => quote!(dora),
        _ => quote!(lora),
    };
    let rank = proc_macro2::Literal::usize_suffixed(rank);
    let alpha = f64_lit(alpha);
    let mut c = quote!(#p::AdapterConfig::#ctor(#rank, #alpha));
    if let Some(d) = &a.dropout {
        let d = f64_lit(d.value);
        c = quote!(#p::AdapterConfig::with_dropout(#c, #d));
    }
    if let Some(r) = &a.rslora {
        let r = r.value;
        c = quote!(#p::AdapterConfig::with_rslora(#c, #r));
    }
    if let Some(i) = &a.init {
        let i = match i.value {
            Init::Kaiming => quote!(Kaiming),
            Init::Gaussian => quote!(Gaussian),
        };
        c = quote!(#p::AdapterConfig::with_init(#c, #p::Init::#i));
    }
    c
}

/// An `f64` literal (validation guarantees finiteness; NaN is a fallback that never panics).
pub fn f64_lit(v: f64) -> TokenStream {
    if v.is_finite() {
        proc_macro2::Literal::f64_suffixed(v).into_token_stream()
    } else {
        quote!(::core::f64::NAN)
    }
}

/// `impl AdapterModel`: visits fields in declaration order.
fn adapter_model(input: &Input, p: &TokenStream) -> TokenStream {
    let name = &input.item.ident;
    let (impl_g, ty_g, where_c) = input.item.generics.split_for_impl();
    let prefix = Ident::new("__prefix", Span::mixed_site());
    let f = Ident::new("__f", Span::mixed_site());
    let visit: Vec<_> = input
        .fields
        .iter()
        .filter_map(|field| visit_field(input, field, p, false))
        .collect();
    let visit_mut: Vec<_> = input
        .fields
        .iter()
        .filter_map(|field| visit_field(input, field, p, true))
        .collect();
    quote! {
        #[automatically_derived]
        impl #impl_g #p::AdapterModel for #name #ty_g #where_c {
            fn visit_layers(
                &self,
                #prefix: &::core::primitive::str,
                #f: &mut #p::Visitor<'_>,
            ) -> #p::Result<()> {
                #(#visit)*
                ::core::result::Result::Ok(())
            }

            fn visit_layers_mut(
                &mut self,
                #prefix: &::core::primitive::str,
                #f: &mut #p::VisitorMut<'_>,
            ) -> #p::Result<()> {
                #(#visit_mut)*
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// The visit of one field (`None` for fields without a helper attribute).
fn visit_field(
    input: &Input,
    field: &Field,
    p: &TokenStream,
    mutable: bool,
) -> Option<TokenStream> {
    let role = field.role.as_ref()?;
    let ident = field.ident;
    let name = ident.unraw_string();
    let prefix = Ident::new("__prefix", Span::mixed_site());
    let f = Ident::new("__f", Span::mixed_site());
    let path = Ident::new("__path", Span::mixed_site());
    let span = field.ty.span();
    let (r, layer_enum) = if mutable {
        (quote!(&mut), quote!(LayerMut))
    } else {
        (quote!(&), quote!(LayerRef))
    };
    let head = quote!(let #path = #p::join_path(#prefix, #name););
    let args = &role.args;
    let declared = match (&args.din, &args.dout, &args.params) {
        (Some(i), Some(o), _) => {
            let (i, o) = (&i.value, &o.value);
            quote!(#p::Declared::Dims { din: (#i), dout: (#o) })
        }
        (_, _, Some(n)) => {
            let n = &n.value;
            quote!(#p::Declared::Params(#n))
        }
        _ => quote!(#p::Declared::Unknown),
    };
    let bias = args.bias.as_ref().is_some_and(|b| b.value);
    let info = quote!(&#p::FieldInfo { path: &#path, declared: #declared, bias: #bias });
    Some(match role.role {
        Role::Adapt => {
            let config = config(input, field, p);
            let variant = match role.layer {
                Some(Layer::Embedding) => quote!(Embedding),
                _ => quote!(Linear),
            };
            quote! {{
                #head
                #f(#info, #p::#layer_enum::#variant { layer: #r self.#ident, config: #config })?;
            }}
        }
        Role::Frozen if args.params.is_some() => {
            // Any type: `LayerRef::Frozen` when it implements `FrozenModule` (its count is then
            // checked against `N`), else `LayerRef::Counted` (autoref-based dispatch).
            let n = Ident::new(&format!("__f_{name}_params"), Span::mixed_site());
            let params = args.params.as_ref().map(|x| &x.value);
            let method = if mutable {
                quote!(layer_mut)
            } else {
                quote!(layer_ref)
            };
            quote! {{
                use #p::{CountedKind as _, FrozenKind as _};
                #head
                let #n: ::core::primitive::usize = (#params);
                #f(#info, (&#p::CountedField(&self.#ident, #n)).#method())?;
            }}
        }
        Role::Frozen => {
            let module = quote_spanned!(span=> &self.#ident);
            quote! {{
                #head
                #f(#info, #p::#layer_enum::Frozen { module: #module })?;
            }}
        }
        Role::Nested => {
            // Named through `AdapterStruct` at the element type, like the read of its sizes in
            // `consts.rs`: a type that is not annotated is then one error, there.
            let (nested, elem) = (
                if mutable {
                    quote!(visit_nested_mut)
                } else {
                    quote!(visit_nested)
                },
                match role.shape.as_ref()? {
                    Shape::Single(t) | Shape::Vec(t) | Shape::Array(t, _) => *t,
                },
            );
            let es = elem.span();
            let ps = respan(p.clone(), es);
            let call = |target: TokenStream, path: &Ident| quote_spanned!(es=> <#elem as #ps::AdapterStruct>::#nested(#target, &#path, &mut *#f));
            match role.shape.as_ref()? {
                Shape::Single(_) => {
                    let call = call(respan(quote!(#r self.#ident), es), &path);
                    quote! {{
                        #head
                        #call?;
                    }}
                }
                Shape::Vec(_) | Shape::Array(..) => {
                    let check = args.count.as_ref().map(|c| {
                        let c = &c.value;
                        quote!(#p::check_count(&#path, (#c), <[_]>::len(&self.#ident))?;)
                    });
                    let (i, item, item_path) = (
                        Ident::new("__i", Span::mixed_site()),
                        Ident::new("__item", Span::mixed_site()),
                        Ident::new("__item_path", Span::mixed_site()),
                    );
                    let call = call(item.to_token_stream(), &item_path);
                    quote! {{
                        #head
                        #check
                        for (#i, #item) in ::core::iter::Iterator::enumerate(
                            ::core::iter::IntoIterator::into_iter(#r self.#ident),
                        ) {
                            let #item_path = #p::join_path(
                                &#path,
                                &::std::string::ToString::to_string(&#i),
                            );
                            #call?;
                        }
                    }}
                }
            }
        }
    })
}

/// `ident.to_string()` without a leading `r#`.
trait UnrawString {
    fn unraw_string(&self) -> String;
}

impl UnrawString for Ident {
    fn unraw_string(&self) -> String {
        syn::ext::IdentExt::unraw(self).to_string()
    }
}

/// Sets the span of every token (recursively).
pub fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut g2 = Group::new(g.delimiter(), respan(g.stream(), span));
                g2.set_span(span);
                tt = TokenTree::Group(g2);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}
