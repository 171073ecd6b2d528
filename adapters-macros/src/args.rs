//! The shared syntax of every attribute of the DSL: a comma-separated list of `key` flags and
//! `key = value` pairs. Parsing recovers at the next top-level comma after a malformed entry, so
//! every entry gets checked and reported.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Expr, Ident, Path, Token};

use crate::ctxt::Ctxt;

/// One `key` or `key = value` entry.
pub struct Arg {
    /// The key (keywords such as `in` and `crate` are accepted).
    pub key: Ident,
    /// The `=` token, when a value is present.
    pub eq: Option<Token![=]>,
    /// The value after `=`.
    pub value: Option<Value>,
}

/// The value of an entry: an expression, or a path for `crate = path`.
pub enum Value {
    /// Any Rust expression (literals, const expressions).
    Expr(Expr),
    /// A path (only for `crate`).
    Path(Path),
}

impl ToTokens for Value {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        match self {
            Value::Expr(e) => e.to_tokens(tokens),
            Value::Path(p) => p.to_tokens(tokens),
        }
    }
}

impl Arg {
    /// The key as a string, without any `r#`.
    pub fn name(&self) -> String {
        self.key.unraw().to_string()
    }

    /// `key = value` as written, for errors spanning the whole entry.
    pub fn tokens(&self) -> TokenStream {
        let (key, eq, value) = (&self.key, &self.eq, &self.value);
        quote!(#key #eq #value)
    }

    /// The value's tokens, or the key when there is no value (for errors about the value).
    pub fn value_tokens(&self) -> TokenStream {
        match &self.value {
            Some(v) => v.to_token_stream(),
            None => self.key.to_token_stream(),
        }
    }

    /// The span of the value's last token (or of the key), to end a multi-token span there.
    pub fn end_span(&self) -> Span {
        last_span(self.value_tokens()).unwrap_or_else(|| self.key.span())
    }
}

/// The span of the last token of `tokens` (the closing delimiter for a group).
fn last_span(tokens: TokenStream) -> Option<Span> {
    tokens.into_iter().last().map(|tt| match tt {
        TokenTree::Group(g) => g.span_close(),
        other => other.span(),
    })
}

/// Parses `tokens` as the argument list of `attr` (e.g. `#[adapter(...)]`), recording syntax
/// errors in `cx` and returning every entry that parsed.
pub fn parse_args(tokens: TokenStream, attr: &str, cx: &Ctxt) -> Vec<Arg> {
    let mut args = Vec::new();
    let parser = |input: ParseStream| {
        while !input.is_empty() {
            match parse_one(input, attr) {
                Ok(arg) => args.push(arg),
                Err(e) => {
                    cx.syn_error(e);
                    skip_to_comma(input);
                }
            }
            if input.is_empty() {
                break;
            }
            if input.peek(Token![,]) {
                input.parse::<Token![,]>()?;
            } else {
                // A missing comma: report it and read on, so `rank = 8 alpha = 16.0` still
                // yields both entries.
                cx.error(
                    input.span(),
                    format!("expected `,` between the entries of `{attr}`"),
                );
            }
        }
        Ok(())
    };
    if let Err(e) = parser.parse2(tokens) {
        cx.syn_error(e);
    }
    args
}

/// Parses one `key` or `key = value`.
fn parse_one(input: ParseStream, attr: &str) -> syn::Result<Arg> {
    if !(input.peek(Ident::peek_any)) {
        return Err(input.error(format!("expected a key in `{attr}`, such as `rank = 16`")));
    }
    let key = input.call(Ident::parse_any)?;
    if !input.peek(Token![=]) {
        if input.peek(syn::token::Paren)
            || input.peek(syn::token::Bracket)
            || input.peek(syn::token::Brace)
        {
            return Err(input.error(format!(
                "unexpected list after `{}`: write `key` or `key = value` entries separated by commas",
                key.unraw()
            )));
        }
        return Ok(Arg {
            key,
            eq: None,
            value: None,
        });
    }
    let eq: Token![=] = input.parse()?;
    if input.is_empty() || input.peek(Token![,]) {
        return Err(syn::Error::new(
            eq.span,
            format!("`{} =` needs a value after `=`", key.unraw()),
        ));
    }
    let value = if key == "crate" {
        Value::Path(input.call(Path::parse_mod_style).map_err(|e| {
            syn::Error::new(
                e.span(),
                "`crate` needs a path to the runtime, e.g. `crate = ::adapters_runtime`",
            )
        })?)
    } else {
        Value::Expr(input.parse()?)
    };
    Ok(Arg {
        key,
        eq: Some(eq),
        value: Some(value),
    })
}

/// Skips tokens up to (not including) the next top-level comma.
fn skip_to_comma(input: ParseStream) {
    let _ = input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tt, next)) = rest.token_tree() {
            if let TokenTree::Punct(p) = &tt {
                if p.as_char() == ',' {
                    break;
                }
            }
            rest = next;
        }
        Ok(((), rest))
    });
}
