//! Semantic checks on the parsed model: required keys, value ranges, key combinations, supported
//! field types and generics, and budgets that need every size at compile time.

use proc_macro2::Span;
use syn::GenericParam;

use crate::ast::{Field, Input, Layer, Shape};
use crate::attr::{Role, Spanned};
use crate::ctxt::Ctxt;
use crate::pretty::pretty;

/// Records every problem of `input` in `cx`.
pub fn validate(input: &Input, cx: &Ctxt) {
    container(input, cx);
    generics(input, cx);
    for f in &input.fields {
        field(f, cx);
    }
    budgets(input, cx);
}

/// The adapter configuration (method, rank, alpha) is needed by `#[adapt]` fields only: a
/// struct that only nests others (or only counts frozen layers) may omit it, and `rank` / `alpha`
/// may be omitted when every `#[adapt]` field overrides them.
fn container(input: &Input, cx: &Ctxt) {
    let a = &input.attr;
    let name = &input.item.ident;
    let said = |k: &str| a.mentioned.iter().any(|m| m == k);
    let adapted: Vec<_> = input
        .fields
        .iter()
        .filter_map(|f| f.role.as_ref().filter(|r| r.role == Role::Adapt))
        .collect();
    let mut missing = Vec::new();
    if !adapted.is_empty()
        && a.method.is_none()
        && !said("lora")
        && !said("dora")
        && !said("method")
    {
        missing.push("a method (`lora` or `dora`)");
    }
    if adapted
        .iter()
        .any(|r| r.args.rank.is_none() && !r.args.mentioned.iter().any(|m| m == "rank"))
        && a.rank.is_none()
        && !said("rank")
    {
        missing.push("`rank`");
    }
    if adapted
        .iter()
        .any(|r| r.args.alpha.is_none() && !r.args.mentioned.iter().any(|m| m == "alpha"))
        && a.alpha.is_none()
        && !said("alpha")
    {
        missing.push("`alpha`");
    }
    if !missing.is_empty() && !a.malformed {
        let list = match missing.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        };
        cx.error(
            Span::call_site(),
            format!("`#[adapter]` on `{name}` is missing {list}, e.g. `#[adapter(lora, rank = 8, alpha = 16.0)]`"),
        );
    }
    rank(&a.rank, cx);
    alpha(&a.alpha, cx);
    quant(input, cx);
    if let Some(d) = &a.dropout {
        if !(0.0..1.0).contains(&d.value) {
            cx.error_spanned(
                &d.tokens,
                format!(
                    "`dropout` must be in [0, 1), got `{}`",
                    pretty(&d.value_tokens)
                ),
            );
        }
    }
}

/// `quant` stores this struct's own `#[adapt]` `Linear` weights quantized (nested structs keep
/// their own storage, like their dtype): on a struct without one it would do nothing.
fn quant(input: &Input, cx: &Ctxt) {
    let Some(q) = &input.attr.quant else { return };
    let adapts_linear = input.fields.iter().any(|f| {
        f.role
            .as_ref()
            .is_some_and(|r| r.role == Role::Adapt && r.layer == Some(Layer::Linear))
    });
    if !adapts_linear {
        cx.error_spanned(
            &q.tokens,
            format!(
                "`{}` has no effect on `{}`: it quantizes the frozen weights of the struct's own `#[adapt]` `Linear` fields, and `{}` has none (embeddings and `#[frozen]` layers stay in the dtype; a `#[nested]` struct takes its own `quant`)",
                pretty(&q.tokens),
                input.item.ident,
                input.item.ident
            ),
        );
    }
}

fn rank(rank: &Option<Spanned<usize>>, cx: &Ctxt) {
    if let Some(r) = rank {
        if r.value == 0 {
            cx.error_spanned(
                &r.tokens,
                "`rank = 0` is not a rank: an adapter needs `rank >= 1`",
            );
        }
    }
}

fn alpha(alpha: &Option<Spanned<f64>>, cx: &Ctxt) {
    if let Some(a) = alpha {
        if !(a.value.is_finite() && a.value > 0.0) {
            cx.error_spanned(
                &a.tokens,
                format!(
                    "`alpha` must be finite and > 0, got `{}`",
                    pretty(&a.value_tokens)
                ),
            );
        }
    }
}

fn generics(input: &Input, cx: &Ctxt) {
    for p in &input.item.generics.params {
        if let GenericParam::Type(t) = p {
            cx.error(
                t.ident.span(),
                format!(
                    "`#[adapter]` does not support type parameters (`{}`): the sizes must be known per struct; const generics such as `const H: usize` are supported",
                    t.ident
                ),
            );
        }
    }
}

fn field(f: &Field, cx: &Ctxt) {
    let Some(role) = &f.role else { return };
    let args = &role.args;
    let name = f.ident;
    let ty = pretty(f.ty);
    match role.role {
        Role::Adapt => {
            match role.layer {
                Some(Layer::Linear | Layer::Embedding) => {}
                _ => cx.error_spanned(
                    f.ty,
                    format!("`#[adapt]` supports fields of type `Linear` or `Embedding`, but `{name}` is a `{ty}`; use `#[frozen]` to count it without adapting it, or `#[nested]` for an annotated struct"),
                ),
            }
            pair(f, cx);
            rank(&args.rank, cx);
            alpha(&args.alpha, cx);
            no_bias_on_embedding(f, cx);
        }
        Role::Frozen => {
            // `params = N` counts a field of any type; `in`/`out` and a bare `#[frozen]` need a
            // layer type (implementing `FrozenModule`).
            if role.layer.is_none() && args.params.is_none() {
                cx.error_spanned(
                    f.ty,
                    format!("`#[frozen]` needs a layer type (a path such as `Linear`), but `{name}` is a `{ty}`"),
                );
            }
            if let Some(p) = &args.params {
                if let Some(extra) = args.din.as_ref().or(args.dout.as_ref()) {
                    cx.error_spanned(
                        &extra.tokens,
                        format!("`#[frozen]` takes either `params = N` or `in`/`out`, not both (`{}` is already given)", pretty(&p.tokens)),
                    );
                }
                if let Some(b) = &args.bias {
                    cx.error_spanned(&b.tokens, "`bias` goes with `in`/`out`; `params = N` already counts every parameter");
                }
            }
            pair(f, cx);
            no_bias_on_embedding(f, cx);
        }
        Role::Nested => match (&role.shape, &args.count) {
            (None, _) => cx.error_spanned(
                f.ty,
                format!("`#[nested]` supports `T`, `Vec<T>` or `[T; N]` where `T` is an `#[adapter]` struct, but `{name}` is a `{ty}`"),
            ),
            (Some(Shape::Single(_)), Some(c)) => cx.error_spanned(
                &c.tokens,
                format!("`count` applies to a `Vec` field, but `{name}` is a single `{ty}`; remove `{}`", pretty(&c.tokens)),
            ),
            (Some(Shape::Array(_, len)), Some(c)) => cx.error_spanned(
                &c.tokens,
                format!("`count` is not needed on an array: `{name}` already holds `{}` elements", pretty(len)),
            ),
            _ => {}
        },
    }
}

/// `in` and `out` come together.
fn pair(f: &Field, cx: &Ctxt) {
    let Some(role) = &f.role else { return };
    let attr = role.role.name();
    let said = |k: &str| role.args.mentioned.iter().any(|m| m == k);
    match (&role.args.din, &role.args.dout) {
        (Some(_), None) if said("out") => {}
        (None, Some(_)) if said("in") => {}
        (Some(d), None) => cx.error_spanned(
            &d.tokens,
            format!(
                "`#[{attr}]` on `{}` has `in` but no `out`; give both or neither",
                f.ident
            ),
        ),
        (None, Some(d)) => cx.error_spanned(
            &d.tokens,
            format!(
                "`#[{attr}]` on `{}` has `out` but no `in`; give both or neither",
                f.ident
            ),
        ),
        _ => {}
    }
}

fn no_bias_on_embedding(f: &Field, cx: &Ctxt) {
    let Some(role) = &f.role else { return };
    if let (Some(Layer::Embedding), Some(b)) = (role.layer, &role.args.bias) {
        cx.error_spanned(
            &b.tokens,
            format!(
                "`{}` is an embedding, which has no bias; remove `{}`",
                f.ident,
                pretty(&b.tokens)
            ),
        );
    }
}

/// Why a field's sizes are unknown at compile time, if they are.
pub fn unknown_reason(f: &Field) -> Option<String> {
    let role = f.role.as_ref()?;
    let args = &role.args;
    match role.role {
        Role::Adapt if args.din.is_none() || args.dout.is_none() => Some(format!(
            "field `{}` is `#[adapt]` without `in = .., out = ..`",
            f.ident
        )),
        Role::Frozen if args.params.is_none() && (args.din.is_none() || args.dout.is_none()) => {
            Some(format!(
                "field `{}` is `#[frozen]` without `in = .., out = ..` or `params = N`",
                f.ident
            ))
        }
        Role::Nested if matches!(role.shape, Some(Shape::Vec(_))) && args.count.is_none() => {
            Some(format!(
                "field `{}` is a `#[nested]` `Vec` without `count = N`",
                f.ident
            ))
        }
        _ => None,
    }
}

fn budgets(input: &Input, cx: &Ctxt) {
    let a = &input.attr;
    let unknown: Vec<String> = input.fields.iter().filter_map(unknown_reason).collect();
    let has_const_generics = input
        .item
        .generics
        .params
        .iter()
        .any(|p| matches!(p, GenericParam::Const(_)));
    for budget in [&a.max_trainable_params, &a.max_vram].into_iter().flatten() {
        if let Some(first) = unknown.first() {
            let more = match unknown.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            cx.error_spanned(
                &budget.key,
                format!(
                    "`{}` needs every size of `{}` at compile time, but {first}{more}",
                    budget.key, input.item.ident
                ),
            );
        } else if has_const_generics {
            cx.error_spanned(
                &budget.key,
                format!(
                    "`{}` cannot be checked on the generic struct `{}`; put the budget on a struct that fixes its const parameters",
                    budget.key, input.item.ident
                ),
            );
        }
    }
}
