//! Properties of the expansion that the UI suite cannot see directly.

use quote::quote;

use crate::expand::expand;

fn model() -> proc_macro2::TokenStream {
    quote!(
        pub struct M {
            #[adapt(in = 4, out = 4)]
            q: Linear,
            #[frozen(params = 3)]
            t: Tensor,
            #[nested(count = 2)]
            v: Vec<B>,
            plain: u8,
        }
    )
}

#[test]
fn crate_override_replaces_every_runtime_path() {
    let out = expand(
        quote!(
            lora,
            rank = 2,
            alpha = 1.0,
            crate = ::rt,
            max_vram = "1 GiB"
        ),
        model(),
    )
    .to_string();
    assert!(!out.contains("adapters_runtime"), "{out}");
    assert!(out.contains(":: rt :: __private :: AdaptedLinear"), "{out}");
}

#[test]
fn paths_are_absolute_and_impls_marked() {
    let args = quote!(
        dora,
        rank = 2,
        alpha = 1.0,
        max_trainable_params = 10,
        max_vram = "1 GiB"
    );
    let out = expand(args, model()).to_string();
    assert!(
        out.contains(":: adapters_runtime :: __private :: AdapterModel"),
        "{out}"
    );
    assert_eq!(out.matches("automatically_derived").count(), 2, "{out}");
    // Every mention of a std name is fully qualified.
    for (name, qualified) in [
        ("Result ::", ":: core :: result :: Result ::"),
        ("Ok (", ":: core :: result :: Result :: Ok ("),
        ("Err (", ":: core :: result :: Result :: Err ("),
        ("Option ::", ":: core :: option :: Option ::"),
        ("Some (", ":: core :: option :: Option :: Some ("),
        ("core ::", ":: core ::"),
        ("std ::", ":: std ::"),
    ] {
        assert_eq!(
            out.matches(name).count(),
            out.matches(qualified).count(),
            "`{name}` in {out}"
        );
    }
}

#[test]
fn errors_return_the_item_without_helper_attributes() {
    let out = expand(quote!(lora, rank = 0, alpha = 1.0), model()).to_string();
    assert!(out.contains("compile_error"), "{out}");
    assert!(out.contains("pub struct M"), "{out}");
    assert!(out.contains("q : Linear"), "{out}");
    for helper in ["# [adapt", "# [frozen", "# [nested"] {
        assert!(!out.contains(helper), "{helper} left in {out}");
    }
    assert!(
        !out.contains("__private"),
        "generated code emitted despite errors: {out}"
    );
}

#[test]
fn every_error_is_reported() {
    let out = expand(
        quote!(lroa, rank = 0, alpha = -1.0, dropout = 1.5, max_vram = "x"),
        quote!(
            struct M {
                #[adapt(in = 1)]
                q: Linear,
                #[adapt]
                c: Conv2d,
            }
        ),
    )
    .to_string();
    assert_eq!(out.matches("compile_error").count(), 7, "{out}");
}
