//! Budget checks (`max_trainable_params`, `max_vram`): a `const _` item per budget whose
//! evaluation panics with both numbers, the panic spanned at the user's `key = value`.
//!
//! The message is assembled at compile time by a small `const fn` writer into a fixed byte
//! buffer (digits grouped by spaces, GiB with two decimals), then `panic!("{}", s)` with the
//! resulting `&str` — which `const` evaluation reports verbatim.

use proc_macro2::{Delimiter, Group, Literal, Span, TokenStream};
use quote::{quote, ToTokens};
use syn::GenericParam;

use crate::ast::Input;
use crate::attr::{Limit, Spanned};
use crate::expand::respan;

/// One `const _: () = { ... };` per budget of the struct.
pub fn budgets(input: &Input, p: &TokenStream) -> TokenStream {
    let a = &input.attr;
    let mut out = TokenStream::new();
    if let Some(b) = &a.max_trainable_params {
        out.extend(check(input, p, b, 0, false));
    }
    if let Some(b) = &a.max_vram {
        out.extend(check(input, p, b, 5, true));
    }
    out
}

fn check(
    input: &Input,
    p: &TokenStream,
    budget: &Spanned<Limit>,
    index: usize,
    bytes: bool,
) -> TokenStream {
    let name = &input.item.ident;
    let lifetimes = input.item.generics.params.iter().filter_map(|p| match p {
        GenericParam::Lifetime(_) => Some(quote!('static)),
        _ => None,
    });
    let lifetimes: Vec<_> = lifetimes.collect();
    let ty = if lifetimes.is_empty() {
        quote!(#name)
    } else {
        quote!(#name<#(#lifetimes),*>)
    };
    let limit = match &budget.value {
        Limit::Expr(e) => e.to_token_stream(),
        Limit::Bytes(b) => Literal::u64_unsuffixed(*b).into_token_stream(),
    };
    let key = budget.key.to_string();
    let head = format!("adapter budget exceeded for `{name}`: ");
    let message = if bytes {
        let mid = format!(") > {key} = ");
        quote! {
            __Msg::new().s(#head).s("estimated training memory ").n(__value).s(" bytes (")
                .gib(__value).s(#mid).n(__LIMIT).s(" bytes (").gib(__LIMIT).s(")")
        }
    } else {
        let mid = format!(" trainable parameters > {key} = ");
        quote!(__Msg::new().s(#head).n(__value).s(#mid).n(__LIMIT))
    };
    let unknown = format!("cannot check `{key}` for `{name}`: ");
    let panic = spanned_panic(budget.key.span(), budget.end);
    let writer = writer();
    // Reads `AdapterStruct::SIZES` rather than the public constant, so that sizes unknown in a nested
    // struct are also reported here, at the budget.
    quote! {
        const _: () = {
            use ::core::primitive::{str, u8, u128, usize};
            #writer
            const __LIMIT: usize = #limit;
            let __m = match <#ty as #p::AdapterStruct>::SIZES {
                ::core::result::Result::Ok(__sizes) => {
                    let __value: usize = __sizes[#index];
                    if __value > __LIMIT {
                        ::core::option::Option::Some(#message)
                    } else {
                        ::core::option::Option::None
                    }
                }
                ::core::result::Result::Err(__why) => {
                    ::core::option::Option::Some(__Msg::new().s(#unknown).s(__why))
                }
            };
            if let ::core::option::Option::Some(__m) = __m {
                match ::core::str::from_utf8(__m.bytes()) {
                    ::core::result::Result::Ok(__s) => #panic,
                    ::core::result::Result::Err(_) => ::core::panic!("adapter budget exceeded"),
                }
            }
        };
    }
}

/// `::core::panic!("{}", __s)` whose span runs from `start` to `end` (the user's `key = value`),
/// so rustc underlines the whole argument.
fn spanned_panic(start: Span, end: Span) -> TokenStream {
    let head = respan(quote!(::core::panic!), start);
    let mut args = Group::new(Delimiter::Parenthesis, respan(quote!("{}", __s), start));
    args.set_span(end);
    quote!(#head #args)
}

/// The `const fn` message writer, emitted inside each budget's `const _` block.
fn writer() -> TokenStream {
    quote! {
        #[allow(non_camel_case_types, dead_code)]
        struct __Msg {
            buf: [u8; 512],
            len: usize,
        }
        #[allow(dead_code)]
        impl __Msg {
            const fn new() -> Self {
                __Msg { buf: [0; 512], len: 0 }
            }
            const fn byte(mut self, b: u8) -> Self {
                if self.len < 512 {
                    self.buf[self.len] = b;
                    self.len += 1;
                }
                self
            }
            const fn s(mut self, s: &str) -> Self {
                let b = s.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    self = self.byte(b[i]);
                    i += 1;
                }
                self
            }
            const fn n(mut self, v: usize) -> Self {
                let mut digits = [0u8; 40];
                let mut k = 0;
                let mut x = v;
                loop {
                    digits[k] = b'0' + (x % 10) as u8;
                    k += 1;
                    x /= 10;
                    if x == 0 {
                        break;
                    }
                }
                while k > 0 {
                    k -= 1;
                    self = self.byte(digits[k]);
                    if k > 0 && k % 3 == 0 {
                        self = self.byte(b' ');
                    }
                }
                self
            }
            const fn gib(self, v: usize) -> Self {
                let hundredths = ((v as u128) * 100 + (1u128 << 29)) >> 30;
                let frac = (hundredths % 100) as u8;
                self.n((hundredths / 100) as usize)
                    .byte(b'.')
                    .byte(b'0' + frac / 10)
                    .byte(b'0' + frac % 10)
                    .s(" GiB")
            }
            const fn bytes(&self) -> &[u8] {
                self.buf.split_at(self.len).0
            }
        }
    }
}
