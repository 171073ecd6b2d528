//! "The macro never panics, whatever tokens it is given": valid inputs are mutated token by
//! token (deleted, replaced, truncated, nested) and every variant is expanded.

use proc_macro2::{Delimiter, Group, TokenStream, TokenTree};
use quote::quote;

use crate::expand::expand;

/// Valid `(args, item)` pairs covering every key and field attribute.
fn corpus() -> Vec<(TokenStream, TokenStream)> {
    vec![
        (
            quote!(
                dora,
                rank = 16,
                alpha = 32.0,
                max_vram = "24 GiB",
                max_trainable_params = 1_000,
                batch_tokens = 4
            ),
            quote!(
                pub struct M<'a, const H: usize> {
                    #[adapt(in = H, out = H, rank = 8, alpha = 1.0, bias = true)]
                    q: Linear,
                    #[adapt]
                    e: Embedding,
                    #[frozen(in = 4, out = 4, bias)]
                    o: Linear,
                    #[frozen(params = 32 * H)]
                    t: Tensor,
                    #[nested(count = 2)]
                    v: Vec<B>,
                    #[nested]
                    a: [B; 3],
                    #[nested]
                    s: B,
                    x: &'a u8,
                }
            ),
        ),
        (
            quote!(
                lora,
                rank = 4,
                alpha = 8,
                dropout = 0.1,
                rslora = true,
                init = "gaussian",
                dtype = "f32",
                crate = ::rt
            ),
            quote!(
                struct N {
                    #[adapt(in = 1, out = 2)]
                    r#in: Linear,
                }
            ),
        ),
        (
            quote!(),
            quote!(
                enum E {
                    A {
                        #[adapt]
                        x: Linear,
                    },
                }
            ),
        ),
        (
            quote!(lora),
            quote!(
                struct T(#[adapt] Linear);
            ),
        ),
    ]
}

/// Mutations of `ts`: every prefix, every single-token deletion and replacement, and the same
/// recursively inside each group (plus the group made invisible).
fn variants(ts: &TokenStream) -> Vec<TokenStream> {
    let tokens: Vec<TokenTree> = ts.clone().into_iter().collect();
    let fillers: Vec<TokenTree> = quote!(= , # :: 0 -1 1e999 "x" in crate rank adapt ; [] () {})
        .into_iter()
        .collect();
    let mut out = Vec::new();
    for i in 0..=tokens.len() {
        out.push(tokens[..i].iter().cloned().collect());
        if i < tokens.len() {
            let mut del = tokens.clone();
            del.remove(i);
            out.push(del.into_iter().collect());
            for f in &fillers {
                let mut rep = tokens.clone();
                rep[i] = f.clone();
                out.push(rep.into_iter().collect());
            }
            if let TokenTree::Group(g) = &tokens[i] {
                for inner in variants(&g.stream()) {
                    let mut rep = tokens.clone();
                    rep[i] = TokenTree::Group(Group::new(g.delimiter(), inner));
                    out.push(rep.into_iter().collect());
                }
                let mut rep = tokens.clone();
                rep[i] = TokenTree::Group(Group::new(Delimiter::None, g.stream()));
                out.push(rep.into_iter().collect());
            }
        }
    }
    out
}

#[test]
fn never_panics() {
    let mut runs = 0;
    for (args, item) in corpus() {
        for a in variants(&args) {
            let r = std::panic::catch_unwind(|| expand(a.clone(), item.clone()));
            assert!(r.is_ok(), "panicked on args `{a}`");
            runs += 1;
        }
        for i in variants(&item) {
            let r = std::panic::catch_unwind(|| expand(args.clone(), i.clone()));
            assert!(r.is_ok(), "panicked on item `{i}`");
            runs += 1;
        }
    }
    assert!(runs > 1_000, "only {runs} variants");
}
