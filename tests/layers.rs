//! Behaviour of the adapted layers: fresh adapters are identities, merge / unmerge / disable,
//! dropout semantics, training with AdamW (base frozen, A/B/m move), and typed errors. On
//! `ADAPTERS_TEST_DEVICE` (default `cpu`).

mod common;

use adapters_runtime::candle_core::{DType, Module, Tensor};
use adapters_runtime::candle_nn::{AdamW, Optimizer, ParamsAdamW};
use adapters_runtime::layers::init::layer_seed;
use adapters_runtime::ops::dropout_mask;
use adapters_runtime::seed::mix_seed;
use adapters_runtime::{AdaptedEmbedding, AdaptedLinear, AdapterConfig, AdapterError, Init};
use common::{assert_close, rand_tensor, test_device};

fn linear(seed: u64, din: usize, dout: usize, bias: bool, dt: DType) -> AdaptedLinear {
    let w = rand_tensor(seed, &[dout, din], 0.5, dt);
    let b = bias.then(|| rand_tensor(seed + 1, &[dout], 0.5, dt));
    AdaptedLinear::new(w, b).with_path("layer")
}

fn bytes(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn fresh_adapter_leaves_output_unchanged() {
    for cfg in [
        AdapterConfig::lora(4, 8.0),
        AdapterConfig::dora(4, 8.0),
        AdapterConfig::dora(3, 5.0).with_init(Init::Gaussian),
    ] {
        let x = rand_tensor(7, &[2, 5, 12], 1.0, DType::F32);
        let mut l = linear(1, 12, 10, true, DType::F32);
        let before = l.forward(&x).unwrap();
        l.attach(cfg, 42).unwrap();
        assert_close(
            "linear identity at attach",
            &l.forward(&x).unwrap(),
            &before,
            1e-6,
        );

        let ids = Tensor::new(&[[0u32, 3, 9], [2, 2, 1]], &test_device()).unwrap();
        let mut e =
            AdaptedEmbedding::new(rand_tensor(3, &[10, 6], 1.0, DType::F32)).with_path("emb");
        let before = e.forward(&ids).unwrap();
        e.attach(cfg, 42).unwrap();
        assert_close(
            "embedding identity at attach",
            &e.forward(&ids).unwrap(),
            &before,
            1e-6,
        );
    }
}

#[test]
fn initialisation_follows_peft_and_is_seeded() {
    let mut l = linear(1, 64, 8, false, DType::F32);
    l.attach(AdapterConfig::lora(4, 8.0), 9).unwrap();
    let a = bytes(l.adapter().unwrap().lora_a().as_tensor());
    let bound = 1.0 / 64f32.sqrt();
    assert!(
        a.iter().all(|v| v.abs() <= bound),
        "kaiming-uniform(a=√5) bound 1/√in"
    );
    assert!(
        a.iter().any(|v| v.abs() > bound * 0.5),
        "A is not degenerate"
    );
    assert!(
        bytes(l.adapter().unwrap().lora_b().as_tensor())
            .iter()
            .all(|v| *v == 0.0),
        "B = 0"
    );

    let mut same = linear(1, 64, 8, false, DType::F32);
    same.attach(AdapterConfig::lora(4, 8.0), 9).unwrap();
    assert_eq!(
        a,
        bytes(same.adapter().unwrap().lora_a().as_tensor()),
        "same seed and path, same A"
    );
    let mut other = linear(1, 64, 8, false, DType::F32);
    other.attach(AdapterConfig::lora(4, 8.0), 10).unwrap();
    assert_ne!(
        a,
        bytes(other.adapter().unwrap().lora_a().as_tensor()),
        "another seed, another A"
    );

    // Gaussian: A ~ N(0, 1/r); with r = 4 and 4·4096 draws the sample std is 0.25 ± 1 %.
    let mut g = linear(1, 4096, 8, false, DType::F32);
    g.attach(AdapterConfig::lora(4, 8.0).with_init(Init::Gaussian), 1)
        .unwrap();
    let a = bytes(g.adapter().unwrap().lora_a().as_tensor());
    let std = (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt();
    assert!((std - 0.25).abs() < 0.01, "gaussian std {std}");

    // Embeddings as PEFT: A = 0, B ~ N(0, 1).
    let mut e = AdaptedEmbedding::new(rand_tensor(3, &[100, 64], 1.0, DType::F32));
    e.attach(AdapterConfig::lora(8, 8.0), 1).unwrap();
    assert!(bytes(e.adapter().unwrap().lora_a().as_tensor())
        .iter()
        .all(|v| *v == 0.0));
    let b = bytes(e.adapter().unwrap().lora_b().as_tensor());
    let std = (b.iter().map(|v| v * v).sum::<f32>() / b.len() as f32).sqrt();
    assert!((std - 1.0).abs() < 0.1, "embedding B std {std}");
}

/// A layer with a random (non-zero) adapter attached.
fn random_adapted(
    cfg: AdapterConfig,
    din: usize,
    dout: usize,
    bias: bool,
    dt: DType,
) -> AdaptedLinear {
    let mut l = linear(11, din, dout, bias, dt);
    let a = rand_tensor(12, &[cfg.rank, din], 0.3, DType::F32);
    let b = rand_tensor(13, &[dout, cfg.rank], 0.3, DType::F32);
    let m = rand_tensor(14, &[dout], 0.5, DType::F32)
        .affine(1.0, 2.0)
        .unwrap();
    l.attach_weights(
        cfg,
        &a,
        &b,
        Some(&m).filter(|_| cfg.method == adapters_runtime::Method::Dora),
    )
    .unwrap();
    l
}

#[test]
fn merge_unmerge_disable() {
    for cfg in [
        AdapterConfig::lora(4, 8.0),
        AdapterConfig::dora(4, 8.0),
        AdapterConfig::dora(8, 16.0).with_rslora(true),
    ] {
        let x = rand_tensor(5, &[3, 4, 16], 1.0, DType::F64);
        let mut l = random_adapted(cfg, 16, 24, true, DType::F64);
        let w0 = l.weight().clone();
        let base = AdaptedLinear::new(w0.clone(), l.bias().cloned())
            .forward(&x)
            .unwrap();
        let y = l.forward(&x).unwrap();
        assert!(
            common::rel_err(&y, &base) > 1e-3,
            "the adapter changes the output"
        );

        l.merge().unwrap();
        assert_close(
            "merged forward = unmerged forward",
            &l.forward(&x).unwrap(),
            &y,
            1e-12,
        );
        assert!(
            matches!(l.merge(), Err(AdapterError::InvalidState { .. })),
            "double merge refused"
        );
        l.unmerge().unwrap();
        assert_close("unmerge restores W0", l.weight(), &w0, 1e-12);
        assert_close("unmerged forward", &l.forward(&x).unwrap(), &y, 1e-12);

        l.set_enabled(false).unwrap();
        assert_close("disabled = base", &l.forward(&x).unwrap(), &base, 1e-12);
        l.set_enabled(true).unwrap();
        l.merge().unwrap();
        l.set_enabled(false).unwrap();
        assert!(!l.adapter().unwrap().is_merged(), "disabling unmerges");
        assert_close(
            "disabled after merge = base",
            &l.forward(&x).unwrap(),
            &base,
            1e-12,
        );
    }
}

#[test]
fn merge_in_bf16_is_close() {
    let x = rand_tensor(5, &[8, 32], 1.0, DType::BF16);
    let mut l = random_adapted(AdapterConfig::dora(4, 8.0), 32, 16, false, DType::BF16);
    let y = l.forward(&x).unwrap();
    l.merge().unwrap();
    // bf16 has an 8-bit mantissa: outputs agree to a few ulps.
    assert_close("bf16 merged forward", &l.forward(&x).unwrap(), &y, 2e-2);
}

#[test]
fn dropout_follows_peft_semantics() {
    let p = 0.3;
    for cfg in [
        AdapterConfig::lora(4, 8.0).with_dropout(p),
        AdapterConfig::dora(4, 8.0).with_dropout(p),
    ] {
        let x = rand_tensor(5, &[6, 16], 1.0, DType::F64);
        let mut l = random_adapted(cfg, 16, 12, true, DType::F64);
        let reference = random_adapted(
            AdapterConfig {
                dropout: 0.0,
                ..cfg
            },
            16,
            12,
            true,
            DType::F64,
        );
        // Eval: no dropout at all.
        assert_close(
            "eval ignores dropout",
            &l.forward(&x).unwrap(),
            &reference.forward(&x).unwrap(),
            0.0,
        );

        l.set_training(true);
        let y1 = l.forward(&x).unwrap();
        let y2 = l.forward(&x).unwrap();
        assert!(common::rel_err(&y1, &y2) > 1e-6, "a new mask each call");

        // Reproduce the first call by hand with the same mask (seed = mix(layer seed, step 0)).
        let mask = dropout_mask(
            x.shape(),
            p,
            mix_seed(layer_seed(0, "layer"), 0),
            DType::F64,
            &test_device(),
        )
        .unwrap();
        let xd = (&x * &mask).unwrap();
        let base = AdaptedLinear::new(l.weight().clone(), l.bias().cloned());
        let y_base = base.forward(&x).unwrap();
        // PEFT, both methods: base(x) + [adapted(drop(x)) − base(drop(x))], i.e. for LoRA
        // base(x) + lora(drop(x)), for DoRA base(x) + (m/n − 1)·W0·drop(x) + (m/n)·lora(drop(x)).
        let delta = (reference.forward(&xd).unwrap() - base.forward(&xd).unwrap()).unwrap();
        let expected = (y_base + delta).unwrap();
        assert_close("dropout output", &y1, &expected, 1e-12);

        // Reproducible: restart the counter, same masks.
        l.adapter().unwrap().set_dropout_step(0);
        assert_close("same step, same mask", &l.forward(&x).unwrap(), &y1, 0.0);
    }
}

#[test]
fn training_moves_adapters_and_never_the_base() {
    for (cfg, dt) in [
        (AdapterConfig::dora(4, 8.0), DType::F32),
        (AdapterConfig::lora(4, 8.0), DType::F32),
        (AdapterConfig::dora(4, 8.0), DType::BF16),
    ] {
        let mut l = linear(1, 16, 8, true, dt);
        l.attach(cfg, 3).unwrap();
        let w0 = bytes(l.weight());
        let bias0 = bytes(l.bias().unwrap());
        let vars: Vec<_> = l.named_vars().into_iter().map(|(_, v)| v).collect();
        assert!(
            vars.iter().all(|v| v.dtype() == DType::F32),
            "adapters are f32 whatever the base dtype"
        );
        let start: Vec<Vec<f32>> = vars.iter().map(|v| bytes(v.as_tensor())).collect();
        let x = rand_tensor(2, &[32, 16], 1.0, dt);
        let target = rand_tensor(4, &[32, 8], 1.0, DType::F32);

        // Step one: B (zero at init) already gets a non-zero gradient.
        let loss = (l.forward(&x).unwrap().to_dtype(DType::F32).unwrap() - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let gb = grads
            .get(l.adapter().unwrap().lora_b().as_tensor())
            .expect("B has a gradient");
        assert!(
            gb.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0,
            "B's gradient is non-zero at step one"
        );

        let mut opt = AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr: 1e-2,
                ..Default::default()
            },
        )
        .unwrap();
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..50 {
            let y = l.forward(&x).unwrap().to_dtype(DType::F32).unwrap();
            let loss = (y - &target).unwrap().sqr().unwrap().mean_all().unwrap();
            last = loss.to_scalar::<f32>().unwrap();
            first.get_or_insert(last);
            opt.backward_step(&loss).unwrap();
        }
        assert!(
            last < first.unwrap() * 0.9,
            "{cfg:?} {dt:?}: loss {first:?} → {last}"
        );
        assert_eq!(bytes(l.weight()), w0, "base weight bytes unchanged");
        assert_eq!(bytes(l.bias().unwrap()), bias0, "bias unchanged");
        for ((name, v), s) in l.named_vars().iter().zip(&start) {
            assert_ne!(&bytes(v.as_tensor()), s, "{name} moved");
        }
    }
}

#[test]
fn base_weight_gradient_is_never_formed() {
    // Two stacked layers: the upper one sees an input that carries a gradient, so a plain
    // matmul would form an [out, in] gradient for its frozen weight.
    let (din, dh, dout) = (24, 40, 56);
    let mut l1 = linear(1, din, dh, false, DType::F32);
    let mut l2 = linear(2, dh, dout, false, DType::F32);
    l1.attach(AdapterConfig::dora(4, 8.0), 1).unwrap();
    l2.attach(AdapterConfig::lora(4, 8.0), 1).unwrap();
    let x = rand_tensor(3, &[2, 5, din], 1.0, DType::F32);
    let y = l2.forward(&l1.forward(&x).unwrap()).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    // A frozen weight's gradient, in either orientation, possibly with broadcast batch axes.
    let frozen = |dims: &[usize]| {
        [[dh, din], [din, dh], [dout, dh], [dh, dout]]
            .iter()
            .any(|s| dims.len() >= 2 && dims[dims.len() - 2..] == s[..])
    };
    let mut seen = 0;
    for id in grads.get_ids() {
        let g = grads.get_id(*id).unwrap();
        assert!(
            !frozen(g.dims()),
            "a gradient of a frozen weight's shape {:?} was formed",
            g.dims()
        );
        seen += 1;
    }
    assert!(seen >= 5, "the graph has adapter gradients ({seen})");

    // Control: the same check catches a plain matmul.
    let w = rand_tensor(4, &[dout, dh], 1.0, DType::F32);
    let h = l1.forward(&x).unwrap().reshape(((), dh)).unwrap();
    let plain = h.matmul(&w.t().unwrap()).unwrap();
    let grads = plain.sum_all().unwrap().backward().unwrap();
    assert!(
        grads
            .get_ids()
            .any(|id| frozen(grads.get_id(*id).unwrap().dims())),
        "plain matmul forms W's gradient"
    );
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut l = linear(1, 8, 4, false, DType::F32);
    let e = l.attach(AdapterConfig::lora(0, 8.0), 1).unwrap_err();
    assert!(
        matches!(e, AdapterError::InvalidRank { rank: 0, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("layer `layer`"), "{e}");
    let e = l.attach(AdapterConfig::lora(2, 0.0), 1).unwrap_err();
    assert!(matches!(e, AdapterError::InvalidAlpha { .. }), "{e}");
    let e = l.attach(AdapterConfig::lora(2, f64::NAN), 1).unwrap_err();
    assert!(matches!(e, AdapterError::InvalidAlpha { .. }), "{e}");
    for p in [1.0, -0.1] {
        let e = l
            .attach(AdapterConfig::lora(2, 4.0).with_dropout(p), 1)
            .unwrap_err();
        assert!(matches!(e, AdapterError::InvalidDropout { .. }), "{e}");
    }
    let e = l
        .attach_weights(
            AdapterConfig::lora(2, 4.0),
            &rand_tensor(1, &[2, 9], 1.0, DType::F32),
            &rand_tensor(1, &[4, 2], 1.0, DType::F32),
            None,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "layer `layer`: lora_A has shape [2, 9], expected [2, 8]"
    );
    l.attach(AdapterConfig::lora(2, 4.0), 1).unwrap();
    assert!(matches!(
        l.attach(AdapterConfig::lora(2, 4.0), 1),
        Err(AdapterError::AlreadyAttached { .. })
    ));

    let e = l
        .forward_t(&rand_tensor(1, &[3, 7], 1.0, DType::F32), false)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "layer `layer`: input has shape [3, 7], expected [3, 8]"
    );
    let e = l
        .forward_t(&rand_tensor(1, &[3, 8], 1.0, DType::F64), false)
        .unwrap_err();
    assert!(matches!(e, AdapterError::DTypeMismatch { .. }), "{e}");
    // Through candle's Module trait the typed error is kept inside candle's error.
    let e = l
        .forward(&rand_tensor(1, &[3, 7], 1.0, DType::F32))
        .unwrap_err();
    assert!(e.to_string().contains("input has shape [3, 7]"), "{e}");

    let mut bare = linear(1, 8, 4, false, DType::F32);
    assert!(matches!(
        bare.merge(),
        Err(AdapterError::NotAttached { .. })
    ));
    let mut ints = AdaptedLinear::new(
        Tensor::zeros((4, 8), DType::U32, &test_device()).unwrap(),
        None,
    );
    assert!(matches!(
        ints.attach(AdapterConfig::lora(2, 4.0), 1),
        Err(AdapterError::DTypeMismatch { .. })
    ));
    let e = AdaptedEmbedding::new(rand_tensor(1, &[10, 4], 1.0, DType::F32))
        .forward_ids(&rand_tensor(1, &[3], 1.0, DType::F32))
        .unwrap_err();
    assert!(matches!(e, AdapterError::DTypeMismatch { .. }), "{e}");
}

#[test]
fn runtime_counts_match_the_formulas() {
    use adapters_runtime::estimate::{adapter_params, Method};
    let mut l = linear(1, 48, 20, true, DType::F32);
    assert_eq!(l.trainable_params(), 0);
    assert_eq!(l.frozen_params(), 48 * 20 + 20);
    l.attach(AdapterConfig::dora(6, 8.0), 1).unwrap();
    let counted: usize = l.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(l.trainable_params(), counted);
    assert_eq!(Some(counted), adapter_params(Method::Dora, 48, 20, 6));
    assert_eq!(counted, 6 * (48 + 20) + 20);

    let mut e = AdaptedEmbedding::new(rand_tensor(1, &[30, 12], 1.0, DType::F32));
    e.attach(AdapterConfig::lora(3, 8.0), 1).unwrap();
    let counted: usize = e.named_vars().iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(e.trainable_params(), counted);
    assert_eq!(counted, 3 * (30 + 12));
    assert_eq!(e.frozen_params(), 360);
}
