//! `adapters_runtime::nn::{ops, rotary_emb}`: forwards bit-identical to candle-nn's fused ops,
//! gradients equal to central finite differences (f64) and to autograd through candle's unfused
//! compositions (f32, bf16, f16), for odd sizes, non-contiguous inputs and the three rope layouts.

mod nn_support;

use adapters_runtime::candle_core::{DType, Result, Tensor, D};
use adapters_runtime::candle_nn;
use adapters_runtime::nn::{ops, rotary_emb};
use nn_support::{abs_diff, assert_rel, finite_diff, grads, rand};

const DIMS: [usize; 3] = [7, 33, 129];
const EPS: f32 = 1e-5;
type F = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

/// `(name, ours, candle's unfused reference, inputs)` for every op at last dimension `d`.
/// `layout` 0: contiguous; 1: a transposed input; 2: a narrowed input.
fn cases(d: usize, layout: usize, dt: DType) -> Vec<(String, F, F, Vec<Tensor>)> {
    let x_shape = match layout {
        0 => vec![2, 3, d],
        1 => vec![2, d, 3],
        _ => vec![2, 3, d + 3],
    };
    let view = move |x: &Tensor| -> Result<Tensor> {
        match layout {
            0 => Ok(x.clone()),
            1 => x.transpose(1, 2),
            _ => x.narrow(2, 1, d),
        }
    };
    let x = rand(1, &x_shape, 2.0, dt);
    let w = rand(2, &[d], 1.5, dt);
    let b = rand(3, &[d], 0.5, dt);
    let mut out: Vec<(String, F, F, Vec<Tensor>)> = vec![
        (
            "softmax".into(),
            Box::new(move |t| ops::softmax_last_dim(&view(&t[0])?)),
            Box::new(move |t| candle_nn::ops::softmax(&view(&t[0])?, D::Minus1)),
            vec![x.clone()],
        ),
        (
            "rms_norm".into(),
            Box::new(move |t| ops::rms_norm(&view(&t[0])?, &t[1], EPS)),
            Box::new(move |t| candle_nn::ops::rms_norm_slow(&view(&t[0])?, &t[1], EPS)),
            vec![x.clone(), w.clone()],
        ),
        (
            "layer_norm".into(),
            Box::new(move |t| ops::layer_norm(&view(&t[0])?, &t[1], &t[2], EPS)),
            Box::new(move |t| candle_nn::ops::layer_norm_slow(&view(&t[0])?, &t[1], &t[2], EPS)),
            vec![x.clone(), w, b],
        ),
        (
            "silu".into(),
            Box::new(move |t| ops::silu(&view(&t[0])?)),
            Box::new(move |t| {
                let x = view(&t[0])?;
                &x * candle_nn::ops::sigmoid(&x)?
            }),
            vec![x],
        ),
    ];
    // Rope: head dim d + 1 (even, d/2 odd), a cos/sin table of t + 5 rows narrowed at offset 3.
    let (hd, t) = (d + 1, 5);
    let cos = rand(4, &[t + 5, hd / 2], 1.0, dt).narrow(0, 3, t).unwrap();
    let sin = rand(5, &[t + 5, hd / 2], 1.0, dt).narrow(0, 3, t).unwrap();
    for kind in ["rope", "rope_i", "rope_thd"] {
        let (c, s) = (cos.clone(), sin.clone());
        // The reference runs in the inputs' dtype (f32 for half types): cos / sin follow.
        let (c2, s2) = (cos.clone(), sin.clone());
        let cs = move |x: &Tensor| {
            Ok::<_, adapters_runtime::candle_core::Error>((
                c2.to_dtype(x.dtype())?,
                s2.to_dtype(x.dtype())?,
            ))
        };
        // [b, h, t, d] for rope / rope_i, [b, t, h, d] for rope_thd; layout 1 transposes h and t.
        let x = rand(6, &[2, 3, t, hd], 1.0, dt);
        let x = if layout == 1 {
            x.transpose(1, 2).unwrap().contiguous().unwrap()
        } else {
            x
        };
        let x = if kind == "rope_thd" {
            x.transpose(1, 2).unwrap().contiguous().unwrap()
        } else {
            x
        };
        let v = move |x: &Tensor| {
            if layout == 1 {
                x.transpose(1, 2)
            } else {
                Ok(x.clone())
            }
        };
        let (ours, reference): (F, F) = match kind {
            "rope" => (
                Box::new(move |t| rotary_emb::rope(&v(&t[0])?, &c, &s)),
                Box::new(move |t| {
                    let (c2, s2) = cs(&t[0])?;
                    candle_nn::rotary_emb::rope_slow(&v(&t[0])?, &c2, &s2)
                }),
            ),
            "rope_i" => (
                Box::new(move |t| rotary_emb::rope_i(&v(&t[0])?, &c, &s)),
                Box::new(move |t| {
                    let (c2, s2) = cs(&t[0])?;
                    candle_nn::rotary_emb::rope_i_slow(&v(&t[0])?, &c2, &s2)
                }),
            ),
            _ => (
                Box::new(move |t| rotary_emb::rope_thd(&v(&t[0])?, &c, &s)),
                Box::new(move |t| {
                    let (c2, s2) = cs(&t[0])?;
                    let x = v(&t[0])?.transpose(1, 2)?;
                    candle_nn::rotary_emb::rope_slow(&x, &c2, &s2)?.transpose(1, 2)
                }),
            ),
        };
        out.push((kind.into(), ours, reference, vec![x]));
    }
    out
}

/// Our ops against candle-nn's fused (no-backward) ops, on contiguous inputs: bit-identical.
#[test]
fn forward_equals_candle_fused() {
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for d in DIMS {
            let x = rand(1, &[4, 3, d], 3.0, dt);
            let (w, b) = (rand(2, &[d], 1.5, dt), rand(3, &[d], 0.5, dt));
            let pairs = [
                (
                    "softmax",
                    ops::softmax_last_dim(&x),
                    candle_nn::ops::softmax_last_dim(&x),
                ),
                (
                    "rms",
                    ops::rms_norm(&x, &w, EPS),
                    candle_nn::ops::rms_norm(&x, &w, EPS),
                ),
                (
                    "ln",
                    ops::layer_norm(&x, &w, &b, EPS),
                    candle_nn::ops::layer_norm(&x, &w, &b, EPS),
                ),
                ("silu", ops::silu(&x), candle_nn::ops::silu(&x)),
            ];
            for (name, ours, theirs) in pairs {
                let e = abs_diff(&ours.unwrap(), &theirs.unwrap());
                assert_eq!(e, 0.0, "{name} {dt:?} d={d}");
            }
            let hd = d + 1;
            let x = rand(4, &[2, 3, 6, hd], 1.0, dt);
            let c = rand(5, &[9, hd / 2], 1.0, dt).narrow(0, 2, 6).unwrap();
            let s = rand(6, &[9, hd / 2], 1.0, dt).narrow(0, 2, 6).unwrap();
            let c3 = rand(7, &[2, 6, hd / 2], 1.0, dt);
            let s3 = rand(8, &[2, 6, hd / 2], 1.0, dt);
            use candle_nn::rotary_emb as cr;
            let pairs = [
                ("rope", rotary_emb::rope(&x, &c, &s), cr::rope(&x, &c, &s)),
                (
                    "rope_i",
                    rotary_emb::rope_i(&x, &c, &s),
                    cr::rope_i(&x, &c, &s),
                ),
                (
                    "rope_thd",
                    rotary_emb::rope_thd(&x, &c, &s),
                    cr::rope_thd(&x, &c, &s),
                ),
                (
                    "rope b",
                    rotary_emb::rope(&x, &c3, &s3),
                    cr::rope(&x, &c3, &s3),
                ),
                (
                    "rope_i b",
                    rotary_emb::rope_i(&x, &c3, &s3),
                    cr::rope_i(&x, &c3, &s3),
                ),
                (
                    "thd b",
                    rotary_emb::rope_thd(&x, &c3, &s3),
                    cr::rope_thd(&x, &c3, &s3),
                ),
            ];
            for (name, ours, theirs) in pairs {
                let e = abs_diff(&ours.unwrap(), &theirs.unwrap());
                assert_eq!(e, 0.0, "{name} {dt:?} d={d}");
            }
        }
    }
}

/// Every gradient (inputs, norm weights and biases) against central finite differences in f64.
#[test]
fn grads_match_finite_differences_f64() {
    let mut worst = 0f64;
    for d in [7, 33] {
        for layout in 0..3 {
            for (name, ours, _, inputs) in cases(d, layout, DType::F64) {
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let (_, gs) = grads(&ours, &refs);
                for (k, g) in gs.iter().enumerate() {
                    let fd = finite_diff(&ours, &refs, k);
                    let what = format!("{name} d={d} layout={layout} input {k} vs finite diff");
                    worst = worst.max(assert_rel(&what, g, &fd, 1e-6));
                }
            }
        }
    }
    println!("max rel err vs finite differences: {worst:.3e}");
}

/// Gradients against autograd through candle's unfused compositions, computed in `dt` (f32) or,
/// for half types, in f32 from the same (exactly representable) input values.
fn against_composition(dt: DType, fwd_tol: f64, tol: f64) {
    let mut worst = 0f64;
    for d in DIMS {
        for layout in 0..3 {
            for (name, ours, reference, inputs) in cases(d, layout, dt) {
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let (y, gs) = grads(&ours, &refs);
                assert_eq!(y.dtype(), dt, "{name}: output dtype");
                let wide: Vec<Tensor> = inputs
                    .iter()
                    .map(|t| t.to_dtype(DType::F32).unwrap())
                    .collect();
                let wide_refs: Vec<&Tensor> = wide.iter().collect();
                let (y_ref, gs_ref) = grads(&reference, &wide_refs);
                let what = format!("{name} {dt:?} d={d} layout={layout} forward");
                worst = worst.max(assert_rel(&what, &y, &y_ref, fwd_tol));
                // The softmax backward uses the forward's output, so it inherits its error.
                let tol = if name == "softmax" { fwd_tol } else { tol };
                for (k, (g, g_ref)) in gs.iter().zip(&gs_ref).enumerate() {
                    assert_eq!(g.dtype(), dt, "{name}: gradient dtype");
                    let what = format!("{name} {dt:?} d={d} layout={layout} grad {k}");
                    worst = worst.max(assert_rel(&what, g, g_ref, tol));
                }
            }
        }
    }
    println!("{dt:?}: max rel err vs unfused composition: {worst:.3e}");
}

#[test]
fn grads_match_unfused_composition_f32() {
    against_composition(DType::F32, 1e-5, 1e-5);
}

/// bf16 results are rounded to 8 significant bits (relative step 2⁻⁸ ≈ 3.9e-3): gradients within
/// 2e-2. The forward is candle's bf16 kernel, whose softmax sums the row in bf16 (observed 3.9e-2): within 5e-2,
/// as is the softmax gradient (computed from that output).
#[test]
fn grads_match_unfused_composition_bf16() {
    against_composition(DType::BF16, 5e-2, 2e-2);
}

/// f16 results are rounded to 11 significant bits: bound 3e-3 (forward 5e-3, as for bf16).
#[test]
fn grads_match_unfused_composition_f16() {
    against_composition(DType::F16, 5e-3, 3e-3);
}

/// The tensor-op backward formulas used on CUDA equal the fused CPU kernels.
#[test]
fn device_fallback_formulas_match_cpu_kernels() {
    use adapters_runtime::ops::{norm_dx, norm_dx_composed, softmax_bwd, softmax_bwd_composed};
    for (dt, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2)] {
        for d in DIMS {
            let x = rand(1, &[3, 5, d], 2.0, dt);
            let g = rand(2, &[3, 5, d], 1.0, dt);
            let w = rand(3, &[d], 1.0, dt);
            let y = ops::softmax_last_dim(&x).unwrap();
            let (a, b) = (
                softmax_bwd(&y, &g).unwrap(),
                softmax_bwd_composed(&y, &g).unwrap(),
            );
            assert_rel(&format!("softmax bwd {dt:?} d={d}"), &a, &b, tol);
            for rm in [false, true] {
                let a = norm_dx(&x, &w, &g, rm, EPS).unwrap();
                let b = norm_dx_composed(&x, &w, &g, rm, EPS).unwrap();
                assert_rel(&format!("norm dx mean={rm} {dt:?} d={d}"), &a, &b, tol);
            }
        }
    }
}
