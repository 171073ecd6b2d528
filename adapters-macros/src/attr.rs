//! Typed attribute arguments: `#[adapter(...)]` on the struct and `#[adapt]`, `#[frozen]`,
//! `#[nested]` on fields. Syntax errors (unknown or duplicate keys, a value of the wrong kind)
//! are recorded here; semantic checks (ranges, combinations) live in `valid.rs`.

use proc_macro2::{Span, TokenStream};
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Path, UnOp};

use crate::args::{parse_args, Arg, Value};
use crate::ctxt::Ctxt;
use crate::suggest::hint;

/// A parsed value with the tokens it came from (for spans).
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// The key.
    pub key: Ident,
    /// `key = value` as written.
    pub tokens: TokenStream,
    /// The value as written (or the key for a flag).
    pub value_tokens: TokenStream,
    /// The span of the value's last token.
    pub end: Span,
}

impl<T> Spanned<T> {
    fn new(arg: &Arg, value: T) -> Self {
        Spanned {
            value,
            key: arg.key.clone(),
            tokens: arg.tokens(),
            value_tokens: arg.value_tokens(),
            end: arg.end_span(),
        }
    }
}

/// LoRA or DoRA.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `lora`.
    Lora,
    /// `dora`.
    Dora,
}

/// `init = "kaiming" | "gaussian"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// `"kaiming"` (PEFT's default).
    Kaiming,
    /// `"gaussian"`.
    Gaussian,
}

/// `dtype = "f32" | "bf16" | "f16"`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// `"f32"`.
    F32,
    /// `"bf16"` (the default).
    BF16,
    /// `"f16"`.
    F16,
}

/// `quant = "..."`: a quantized storage format of the adapted linear layers' frozen weights, one
/// of `adapters_runtime::estimate::QuantFormat` (the macro cannot call the runtime, so this table
/// mirrors `QuantFormat::name` and `QuantFormat::block_elems`; the byte formulas stay in the
/// runtime).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Quant {
    /// The name as `QuantFormat::name` spells it (`nf4`, `q4_0`, `q4k`).
    pub name: &'static str,
    /// The `QuantFormat` variant.
    pub variant: &'static str,
    /// Elements per block along a row for the GGML formats (`None` for NF4, which takes any
    /// shape): for messages only.
    pub row_block: Option<usize>,
}

/// Every format `quant = "..."` accepts, in `QuantFormat::ALL` order.
pub const QUANT_FORMATS: [Quant; 12] = [
    Quant::new("nf4", "Nf4", None),
    Quant::new("q4_0", "Q4_0", Some(32)),
    Quant::new("q4_1", "Q4_1", Some(32)),
    Quant::new("q5_0", "Q5_0", Some(32)),
    Quant::new("q5_1", "Q5_1", Some(32)),
    Quant::new("q8_0", "Q8_0", Some(32)),
    Quant::new("q2k", "Q2K", Some(256)),
    Quant::new("q3k", "Q3K", Some(256)),
    Quant::new("q4k", "Q4K", Some(256)),
    Quant::new("q5k", "Q5K", Some(256)),
    Quant::new("q6k", "Q6K", Some(256)),
    Quant::new("q8k", "Q8K", Some(256)),
];

impl Quant {
    const fn new(name: &'static str, variant: &'static str, row_block: Option<usize>) -> Self {
        Quant {
            name,
            variant,
            row_block,
        }
    }

    /// Looks a name up as `QuantFormat::parse` does: case-insensitively, also in llama.cpp's
    /// spelling of the k-quants (`Q4_K` for `q4k`).
    pub fn parse(s: &str) -> Option<Quant> {
        let lower = s.to_ascii_lowercase();
        let key = match lower.strip_suffix("_k") {
            Some(head) if head.len() == 2 && head.starts_with('q') => format!("{head}k"),
            _ => lower,
        };
        QUANT_FORMATS.into_iter().find(|q| q.name == key)
    }
}

/// A budget's limit.
pub enum Limit {
    /// A `usize` constant expression, as written.
    Expr(Expr),
    /// A size string such as `"24 GiB"`, in bytes.
    Bytes(u64),
}

/// The arguments of `#[adapter(...)]`.
#[derive(Default)]
pub struct ContainerAttr {
    /// `lora` or `dora`.
    pub method: Option<Spanned<Method>>,
    /// `rank = N`.
    pub rank: Option<Spanned<usize>>,
    /// `alpha = X`.
    pub alpha: Option<Spanned<f64>>,
    /// `dropout = P`.
    pub dropout: Option<Spanned<f64>>,
    /// `rslora` / `rslora = bool`.
    pub rslora: Option<Spanned<bool>>,
    /// `init = "..."`.
    pub init: Option<Spanned<Init>>,
    /// `dtype = "..."`.
    pub dtype: Option<Spanned<DType>>,
    /// `quant = "..."`.
    pub quant: Option<Spanned<Quant>>,
    /// `max_trainable_params = N`.
    pub max_trainable_params: Option<Spanned<Limit>>,
    /// `max_vram = "24 GiB" | N`.
    pub max_vram: Option<Spanned<Limit>>,
    /// `batch_tokens = N`.
    pub batch_tokens: Option<Spanned<Expr>>,
    /// `crate = path`.
    pub krate: Option<Spanned<Path>>,
    /// Keys that were written (even with a bad value) or suggested for an unknown key: a
    /// "missing key" error for them would only repeat an error already reported.
    pub mentioned: Vec<String>,
    /// Whether the argument list had a syntax error (some entries may be lost).
    pub malformed: bool,
}

/// The keys `#[adapter(...)]` accepts.
pub const CONTAINER_KEYS: &[&str] = &[
    "lora",
    "dora",
    "rank",
    "alpha",
    "dropout",
    "rslora",
    "init",
    "dtype",
    "quant",
    "max_trainable_params",
    "max_vram",
    "batch_tokens",
    "crate",
];

/// Parses the arguments of `#[adapter(...)]`.
pub fn container(tokens: TokenStream, cx: &Ctxt) -> ContainerAttr {
    let mut out = ContainerAttr::default();
    let before = cx.count();
    let args = parse_args(tokens, "#[adapter(...)]", cx);
    out.malformed = cx.count() > before;
    for arg in dedup(args, cx) {
        let a = &arg;
        out.mentioned.push(arg.name());
        if let Some(near) = crate::suggest::closest(&arg.name(), CONTAINER_KEYS) {
            out.mentioned.push(near.to_string());
        }
        match arg.name().as_str() {
            m @ ("lora" | "dora") => {
                let method = if m == "lora" { Method::Lora } else { Method::Dora };
                if flag(cx, a) {
                    if let Some(prev) = &out.method {
                        cx.error(
                            a.key.span(),
                            format!("conflicting methods: `{}` was already given; choose one of `lora` or `dora`", prev.key),
                        );
                    } else {
                        out.method = Some(Spanned::new(a, method));
                    }
                }
            }
            "rank" => out.rank = usize_lit(cx, a, "rank = 16"),
            "alpha" => out.alpha = f64_lit(cx, a, "alpha = 32.0"),
            "dropout" => out.dropout = f64_lit(cx, a, "dropout = 0.05"),
            "rslora" => out.rslora = flag_or_bool(cx, a),
            "init" => {
                out.init = choice(cx, a, &[("kaiming", Init::Kaiming), ("gaussian", Init::Gaussian)])
            }
            "dtype" => {
                out.dtype = choice(
                    cx,
                    a,
                    &[
                        ("bf16", DType::BF16),
                        ("f32", DType::F32),
                        ("f16", DType::F16),
                        ("bfloat16", DType::BF16),
                        ("float32", DType::F32),
                        ("float16", DType::F16),
                    ],
                )
            }
            "quant" => out.quant = quant(cx, a),
            "max_trainable_params" => {
                out.max_trainable_params = const_expr(cx, a, "max_trainable_params = 60_000_000")
                    .map(|s| Spanned::new(a, Limit::Expr(s.value)))
            }
            "max_vram" => out.max_vram = size(cx, a),
            "batch_tokens" => out.batch_tokens = const_expr(cx, a, "batch_tokens = 4096"),
            "crate" => match &a.value {
                Some(Value::Path(p)) => out.krate = Some(Spanned::new(a, p.clone())),
                _ => cx.error_spanned(
                    a.tokens(),
                    "`crate` needs a path to the runtime, e.g. `crate = ::adapters_runtime`",
                ),
            },
            "method" => cx.error_spanned(
                a.tokens(),
                "write the method as a bare word: `#[adapter(lora, ...)]` or `#[adapter(dora, ...)]`",
            ),
            other => unknown(cx, a, other, CONTAINER_KEYS, "#[adapter(...)]"),
        }
    }
    out
}

/// Which helper attribute a field carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `#[adapt]`.
    Adapt,
    /// `#[frozen]`.
    Frozen,
    /// `#[nested]`.
    Nested,
}

impl Role {
    /// Recognises our helper attributes by name.
    pub fn of(attr: &syn::Attribute) -> Option<Role> {
        let path = attr.path();
        if path.is_ident("adapt") {
            Some(Role::Adapt)
        } else if path.is_ident("frozen") {
            Some(Role::Frozen)
        } else if path.is_ident("nested") {
            Some(Role::Nested)
        } else {
            None
        }
    }

    /// `adapt`, `frozen` or `nested`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Adapt => "adapt",
            Role::Frozen => "frozen",
            Role::Nested => "nested",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            Role::Adapt => &["in", "out", "rank", "alpha", "bias"],
            Role::Frozen => &["in", "out", "bias", "params"],
            Role::Nested => &["count"],
        }
    }
}

/// The arguments of a field attribute (only the keys valid for its role are ever set).
#[derive(Default)]
pub struct FieldArgs {
    /// `in = expr` (input features; vocabulary size for embeddings).
    pub din: Option<Spanned<Expr>>,
    /// `out = expr` (output features; embedding dim for embeddings).
    pub dout: Option<Spanned<Expr>>,
    /// `rank = N` override.
    pub rank: Option<Spanned<usize>>,
    /// `alpha = X` override.
    pub alpha: Option<Spanned<f64>>,
    /// `bias = bool`.
    pub bias: Option<Spanned<bool>>,
    /// `params = expr` (`#[frozen]` only).
    pub params: Option<Spanned<Expr>>,
    /// `count = expr` (`#[nested]` only).
    pub count: Option<Spanned<Expr>>,
    /// Keys written (even with a bad value) or suggested for an unknown key.
    pub mentioned: Vec<String>,
}

/// Parses the arguments of a field attribute of the given role.
pub fn field(attr: &syn::Attribute, role: Role, cx: &Ctxt) -> FieldArgs {
    let mut out = FieldArgs::default();
    let name = format!("#[{}(...)]", role.name());
    let tokens = match &attr.meta {
        syn::Meta::Path(_) => return out,
        syn::Meta::List(list) => list.tokens.clone(),
        syn::Meta::NameValue(nv) => {
            cx.error_spanned(
                nv,
                format!(
                    "expected `#[{0}]` or `{name}`, not `#[{0} = ...]`",
                    role.name()
                ),
            );
            return out;
        }
    };
    for arg in dedup(parse_args(tokens, &name, cx), cx) {
        let a = &arg;
        let key = arg.name();
        out.mentioned.push(key.clone());
        if let Some(near) = crate::suggest::closest(&key, role.keys()) {
            out.mentioned.push(near.to_string());
        }
        if !role.keys().contains(&key.as_str()) {
            let owner = [Role::Adapt, Role::Frozen, Role::Nested]
                .into_iter()
                .find(|r| r.keys().contains(&key.as_str()));
            match owner {
                Some(r) => cx.error(
                    a.key.span(),
                    format!(
                        "`{key}` belongs to `#[{}(...)]`; `{name}` takes {}",
                        r.name(),
                        crate::suggest::list(role.keys())
                    ),
                ),
                None => unknown(cx, a, &key, role.keys(), &name),
            }
            continue;
        }
        match key.as_str() {
            "in" => out.din = const_expr(cx, a, "in = 4096"),
            "out" => out.dout = const_expr(cx, a, "out = 4096"),
            "rank" => out.rank = usize_lit(cx, a, "rank = 16"),
            "alpha" => out.alpha = f64_lit(cx, a, "alpha = 32.0"),
            "bias" => out.bias = flag_or_bool(cx, a),
            "params" => out.params = const_expr(cx, a, "params = 32_000 * 4096"),
            _ => out.count = const_expr(cx, a, "count = 32"),
        }
    }
    out
}

/// Drops (and reports) repeated keys, keeping the first occurrence.
fn dedup(args: Vec<Arg>, cx: &Ctxt) -> Vec<Arg> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for arg in args {
        let name = arg.name();
        if seen.contains(&name) {
            cx.error_spanned(arg.tokens(), format!("duplicate key `{name}`"));
        } else {
            seen.push(name);
            out.push(arg);
        }
    }
    out
}

fn unknown(cx: &Ctxt, a: &Arg, key: &str, keys: &[&str], attr: &str) {
    cx.error(
        a.key.span(),
        format!("unknown key `{key}` in `{attr}`{}", hint(key, keys)),
    );
}

/// The unwrapped value expression, or an error when the key was given as a bare flag.
fn value<'a>(cx: &Ctxt, a: &'a Arg, example: &str) -> Option<&'a Expr> {
    match &a.value {
        Some(Value::Expr(e)) => Some(strip(e)),
        _ => {
            cx.error(
                a.key.span(),
                format!("`{}` needs a value, e.g. `{example}`", a.name()),
            );
            None
        }
    }
}

/// Removes parentheses and invisible groups around an expression.
fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        Expr::Group(g) => strip(&g.expr),
        e => e,
    }
}

/// A bare flag (`lora`); an error when a value was given.
fn flag(cx: &Ctxt, a: &Arg) -> bool {
    if a.value.is_some() {
        cx.error_spanned(
            a.tokens(),
            format!("`{0}` takes no value; write just `{0}`", a.name()),
        );
        return false;
    }
    true
}

/// `key` (true) or `key = true | false`.
fn flag_or_bool(cx: &Ctxt, a: &Arg) -> Option<Spanned<bool>> {
    let Some(e) = &a.value else {
        return Some(Spanned::new(a, true));
    };
    let Value::Expr(e) = e else { return None };
    match strip(e) {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Some(Spanned::new(a, b.value)),
        other => {
            cx.error_spanned(
                other,
                format!("`{0}` expects `true` or `false` (or just `{0}`)", a.name()),
            );
            None
        }
    }
}

fn usize_lit(cx: &Ctxt, a: &Arg, example: &str) -> Option<Spanned<usize>> {
    let e = value(cx, a, example)?;
    match e {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => match i.base10_parse::<usize>() {
            Ok(v) => Some(Spanned::new(a, v)),
            Err(_) => {
                cx.error_spanned(i, format!("`{}` is too large", a.name()));
                None
            }
        },
        other => {
            cx.error_spanned(
                other,
                format!(
                    "`{}` expects an integer literal, e.g. `{example}`",
                    a.name()
                ),
            );
            None
        }
    }
}

fn f64_lit(cx: &Ctxt, a: &Arg, example: &str) -> Option<Spanned<f64>> {
    let e = value(cx, a, example)?;
    let number = |e: &Expr| match e {
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>().ok(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<f64>().ok(),
        _ => None,
    };
    let v = match e {
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => number(strip(expr)).map(|v| -v),
        e => number(e),
    };
    match v {
        Some(v) => Some(Spanned::new(a, v)),
        None => {
            cx.error_spanned(
                e,
                format!("`{}` expects a number literal, e.g. `{example}`", a.name()),
            );
            None
        }
    }
}

fn str_lit<'a>(cx: &Ctxt, a: &'a Arg, example: &str) -> Option<&'a LitStr> {
    match value(cx, a, example)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        other => {
            cx.error_spanned(
                other,
                format!("`{}` expects a string, e.g. `{example}`", a.name()),
            );
            None
        }
    }
}

/// `key = "one of the names"`.
fn choice<T: Copy>(cx: &Ctxt, a: &Arg, options: &[(&str, T)]) -> Option<Spanned<T>> {
    let shown: Vec<&str> = options.iter().take(3).map(|(n, _)| *n).collect();
    let first = shown.first().copied().unwrap_or_default();
    let s = str_lit(cx, a, &format!("{} = \"{first}\"", a.name()))?;
    let v = s.value();
    match options.iter().find(|(n, _)| *n == v) {
        Some((_, t)) => Some(Spanned::new(a, *t)),
        None => {
            cx.error_spanned(
                s,
                format!("unknown {} `\"{v}\"`{}", a.name(), hint(&v, &shown)),
            );
            None
        }
    }
}

/// `quant = "nf4"`: one error at the string for an unknown name, with a suggestion and the list.
fn quant(cx: &Ctxt, a: &Arg) -> Option<Spanned<Quant>> {
    let s = str_lit(cx, a, "quant = \"nf4\"")?;
    let v = s.value();
    if let Some(q) = Quant::parse(&v) {
        return Some(Spanned::new(a, q));
    }
    let names: Vec<&str> = QUANT_FORMATS.iter().map(|q| q.name).collect();
    // `Q4_K_M` and the like name llama.cpp file types (mixes of formats): suggest the base one.
    let lower = v.to_ascii_lowercase();
    let base = lower
        .rsplit_once('_')
        .and_then(|(head, _)| Quant::parse(head))
        .map(|q| q.name);
    let formats = format!(
        "formats are {} (llama.cpp's spellings such as `Q4_K` also work)",
        crate::suggest::list(&names)
    );
    let tail = match base.or_else(|| crate::suggest::closest(&v, &names)) {
        Some(c) => format!("did you mean `quant = \"{c}\"`? The {formats}"),
        None => format!("the {formats}"),
    };
    cx.error_spanned(
        s,
        format!("unknown quant format in `quant = \"{v}\"`; {tail}"),
    );
    None
}

/// A `usize` constant expression (anything but a literal of another kind).
fn const_expr(cx: &Ctxt, a: &Arg, example: &str) -> Option<Spanned<Expr>> {
    let e = value(cx, a, example)?;
    if let Expr::Lit(ExprLit { lit, .. }) = e {
        if !matches!(lit, Lit::Int(_)) {
            cx.error_spanned(
                lit,
                format!(
                    "`{}` expects a `usize` constant expression, e.g. `{example}`",
                    a.name()
                ),
            );
            return None;
        }
    }
    Some(Spanned::new(a, e.clone()))
}

/// `max_vram = "24 GiB"` or a `usize` constant expression in bytes.
fn size(cx: &Ctxt, a: &Arg) -> Option<Spanned<Limit>> {
    let e = value(cx, a, "max_vram = \"24 GiB\"")?;
    if let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = e
    {
        return match crate::size::parse(&s.value()) {
            Ok(bytes) => Some(Spanned::new(a, Limit::Bytes(bytes))),
            Err(why) => {
                cx.error_spanned(
                    s,
                    format!(
                        "cannot read `{}` as a size: {why} (write e.g. `max_vram = \"24 GiB\"`, `\"512 MiB\"`, or a number of bytes)",
                        s.value()
                    ),
                );
                None
            }
        };
    }
    const_expr(cx, a, "max_vram = \"24 GiB\"").map(|s| Spanned::new(a, Limit::Expr(s.value)))
}
