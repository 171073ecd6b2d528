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
    // The constants, `AdapterStruct` and `AdapterModel`.
    assert_eq!(out.matches("automatically_derived").count(), 3, "{out}");
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
fn errors_return_the_item_and_placeholders() {
    let out = expand(
        quote!(lora, rank = 0, alpha = 1.0, max_vram = "1 GiB"),
        model(),
    )
    .to_string();
    assert_eq!(out.matches("compile_error").count(), 1, "{out}");
    assert!(out.contains("pub struct M"), "{out}");
    // Adapted as in a successful expansion, so that uses of the field still type-check.
    assert!(
        out.contains("q : :: adapters_runtime :: __private :: AdaptedLinear"),
        "{out}"
    );
    for helper in ["# [adapt", "# [frozen", "# [nested"] {
        assert!(!out.contains(helper), "{helper} left in {out}");
    }
    // Placeholder constants and impls, but no computed sizes, visits or budget checks.
    assert!(
        out.contains("pub const TRAINABLE_PARAMS : :: core :: primitive :: usize = 0 ;"),
        "{out}"
    );
    assert!(out.contains("AdapterStruct for M"), "{out}");
    assert!(out.contains("AdapterModel for M"), "{out}");
    for absent in ["estimate", "join_path", "__LIMIT"] {
        assert!(
            !out.contains(absent),
            "`{absent}` emitted despite errors: {out}"
        );
    }
}

#[test]
fn errors_on_other_items_keep_them() {
    let out = expand(
        quote!(lora, rank = 2, alpha = 1.0),
        quote!(
            enum E {
                A,
            }
        ),
    )
    .to_string();
    assert!(out.contains("enum E"), "{out}");
    assert!(out.contains("pub const VRAM_BYTES"), "{out}");
    let out = expand(
        quote!(lora, rank = 2, alpha = 1.0),
        quote!(
            fn f() {}
        ),
    )
    .to_string();
    assert!(out.contains("fn f"), "{out}");
    assert!(!out.contains("__private"), "{out}");
}

#[test]
fn adapter_configuration_is_only_needed_by_adapt_fields() {
    let nests = quote!(
        struct M {
            #[nested]
            b: B,
            #[frozen(params = 3)]
            t: HashMap<String, f32>,
        }
    );
    let out = expand(quote!(), nests.clone()).to_string();
    assert!(!out.contains("compile_error"), "{out}");
    let out = expand(quote!(dtype = "f32", max_vram = "1 GiB"), nests).to_string();
    assert!(!out.contains("compile_error"), "{out}");
    let out = expand(
        quote!(),
        quote!(
            struct M {
                #[adapt(in = 2, out = 2, rank = 1)]
                q: Linear,
            }
        ),
    )
    .to_string();
    assert!(
        out.contains("missing a method (`lora` or `dora`) and `alpha`"),
        "{out}"
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

#[test]
fn quant_names_the_runtime_format() {
    let layer = quote!(
        struct M {
            #[adapt(in = 256, out = 4)]
            q: Linear,
            #[frozen(in = 4, out = 4)]
            o: Linear,
        }
    );
    let out = expand(
        quote!(lora, rank = 2, alpha = 1.0, quant = "Q4_K"),
        layer.clone(),
    )
    .to_string();
    assert!(!out.contains("compile_error"), "{out}");
    assert!(
        out.contains(":: adapters_runtime :: __private :: estimate :: BaseStorage :: Quant (:: adapters_runtime :: __private :: estimate :: QuantFormat :: Q4K"),
        "{out}"
    );
    // One row check (the adapted layer), none for the frozen one.
    assert_eq!(out.matches("fits_row").count(), 1, "{out}");
    assert!(
        out.contains("field `q` of `M` cannot be stored as `q4k`"),
        "{out}"
    );
    // NF4 takes any shape: no check.
    let out = expand(
        quote!(lora, rank = 2, alpha = 1.0, quant = "nf4"),
        layer.clone(),
    )
    .to_string();
    assert!(out.contains("QuantFormat :: Nf4"), "{out}");
    assert!(!out.contains("fits_row"), "{out}");
    // Without `quant`, dense storage.
    let out = expand(quote!(lora, rank = 2, alpha = 1.0), layer.clone()).to_string();
    assert!(out.contains("BaseStorage :: Dense"), "{out}");
    assert!(!out.contains("QuantFormat"), "{out}");
    let out = expand(
        quote!(lora, rank = 2, alpha = 1.0, quant = "q8_0", crate = ::rt),
        layer,
    )
    .to_string();
    assert!(
        out.contains(":: rt :: __private :: estimate :: QuantFormat :: Q8_0"),
        "{out}"
    );
    assert!(!out.contains("adapters_runtime"), "{out}");
}

#[test]
fn quant_errors() {
    let layer = quote!(
        struct M {
            #[adapt(in = 256, out = 4)]
            q: Linear,
        }
    );
    for (bad, expected) in [
        (quote!(quant = "q4"), "did you mean `quant = \\\"q4k\\\"`?"),
        (
            quote!(quant = "Q6_K_L"),
            "did you mean `quant = \\\"q6k\\\"`?",
        ),
        (quote!(quant = nf4), "`quant` expects a string"),
        (quote!(quant), "`quant` needs a value"),
    ] {
        let out = expand(quote!(lora, rank = 2, alpha = 1.0, #bad), layer.clone()).to_string();
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        assert!(out.contains(expected), "{expected} in {out}");
    }
    let out = expand(
        quote!(quant = "nf4"),
        quote!(
            struct M {
                #[adapt(in = 4, out = 4)]
                e: Embedding,
                #[frozen(in = 4, out = 4)]
                o: Linear,
            }
        ),
    )
    .to_string();
    assert!(out.contains("has no effect on `M`"), "{out}");
}
