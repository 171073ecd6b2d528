//! Fused-op benchmark: forward and forward+backward of `adapters_runtime::nn`'s differentiable
//! drop-ins against the unfused compositions of candle ops they replace (and, forward only,
//! against candle-nn's fused no-backward ops), at the 135M Llama's shapes.
//!
//! ```text
//! cargo run --release --example bench_ops -- [--json FILE] [--runs 30] [--device cpu|cuda] [--dtype f32|bf16]
//! ```
//! Shapes: hidden 576 over 4 × 128 tokens (norms), 9 heads × 64 over 4 × 128 (rope), attention
//! scores [4, 9, 128, 128] (softmax), MLP 1536 over 512 tokens (silu). Backward is `y.backward()`
//! (upstream gradient of ones) into the input, a `Var`. Each figure is the median of `--runs`
//! rounds after warm-up; every variant is timed once per round, and the speed-up is the median
//! of the per-round ratios unfused / fused.

use adapters_runtime::candle_core::{self as candle_core, DType, Device, Tensor, Var, D};
use adapters_runtime::candle_nn;
use adapters_runtime::nn::{ops, rotary_emb};
use bench::{median, time_ms, BenchArgs, Res};
use clap::Parser;
use serde::Serialize;

#[path = "support/bench.rs"]
mod bench;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Times the differentiable fused ops against unfused candle compositions")]
struct Args {
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Serialize)]
struct Record {
    op: &'static str,
    variant: &'static str,
    shape: Vec<usize>,
    dtype: String,
    fwd_ms: f64,
    fwd_bwd_ms: Option<f64>,
}

type Op = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor>>;
/// `(op, input shape, [(variant, function, timed with backward)])`.
type Case = (&'static str, Vec<usize>, Vec<(&'static str, Op, bool)>);

fn op(f: impl Fn(&Tensor) -> candle_core::Result<Tensor> + 'static) -> Op {
    Box::new(f)
}

fn rand(dims: &[usize], dt: DType, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::rand(-1f32, 1f32, dims, device)?.to_dtype(dt)
}

/// `(op, input shape, [(variant, function, has backward)])`: fused drop-in, unfused, candle fused.
fn cases(dt: DType, dev: &Device) -> Res<Vec<Case>> {
    let (h, mlp, heads, hd, b, t) = (576, 1536, 9, 64, 4, 128);
    let (w, bias) = (rand(&[h], dt, dev)?, rand(&[h], dt, dev)?);
    let (cos, sin) = (rand(&[t, hd / 2], dt, dev)?, rand(&[t, hd / 2], dt, dev)?);
    let p = || (w.clone(), bias.clone());
    let ((w1, _), (w2, _), (w3, _)) = (p(), p(), p());
    let ((w4, b4), (w5, b5), (w6, b6)) = (p(), p(), p());
    let cs = || (cos.clone(), sin.clone());
    let rope = |f: fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>| -> Op {
        let (c, s) = cs();
        op(move |x| f(x, &c, &s))
    };
    let thd_slow = |x: &Tensor, c: &Tensor, s: &Tensor| {
        candle_nn::rotary_emb::rope_slow(&x.transpose(1, 2)?, c, s)?.transpose(1, 2)
    };
    Ok(vec![
        (
            "rms_norm",
            vec![b, t, h],
            vec![
                ("fused", op(move |x| ops::rms_norm(x, &w1, 1e-5)), true),
                (
                    "unfused",
                    op(move |x| candle_nn::ops::rms_norm_slow(x, &w2, 1e-5)),
                    true,
                ),
                (
                    "candle",
                    op(move |x| candle_nn::ops::rms_norm(x, &w3, 1e-5)),
                    false,
                ),
            ],
        ),
        (
            "layer_norm",
            vec![b, t, h],
            vec![
                (
                    "fused",
                    op(move |x| ops::layer_norm(x, &w4, &b4, 1e-5)),
                    true,
                ),
                (
                    "unfused",
                    op(move |x| candle_nn::ops::layer_norm_slow(x, &w5, &b5, 1e-5)),
                    true,
                ),
                (
                    "candle",
                    op(move |x| candle_nn::ops::layer_norm(x, &w6, &b6, 1e-5)),
                    false,
                ),
            ],
        ),
        (
            "softmax",
            vec![b, heads, t, t],
            vec![
                ("fused", op(ops::softmax_last_dim), true),
                (
                    "unfused",
                    op(|x| candle_nn::ops::softmax(x, D::Minus1)),
                    true,
                ),
                ("candle", op(candle_nn::ops::softmax_last_dim), false),
            ],
        ),
        (
            "rope",
            vec![b, heads, t, hd],
            vec![
                ("fused", rope(rotary_emb::rope), true),
                ("unfused", rope(candle_nn::rotary_emb::rope_slow), true),
                ("candle", rope(candle_nn::rotary_emb::rope), false),
            ],
        ),
        (
            "rope_i",
            vec![b, heads, t, hd],
            vec![
                ("fused", rope(rotary_emb::rope_i), true),
                ("unfused", rope(candle_nn::rotary_emb::rope_i_slow), true),
                ("candle", rope(candle_nn::rotary_emb::rope_i), false),
            ],
        ),
        (
            "rope_thd",
            vec![b, t, heads, hd],
            vec![
                ("fused", rope(rotary_emb::rope_thd), true),
                ("unfused", rope(thd_slow), true),
                ("candle", rope(candle_nn::rotary_emb::rope_thd), false),
            ],
        ),
        (
            "silu",
            vec![b * t, mlp],
            vec![
                ("fused", op(ops::silu), true),
                ("unfused", op(|x| x.silu()), true),
            ],
        ),
    ])
}

fn run() -> Res<()> {
    let args = Args::parse();
    let device = args.bench.device()?;
    let dt = args.bench.dtype()?;
    let mut records = Vec::new();
    println!(
        "{:<10} {:<18} {:<8} {:>9} {:>12} {:>16}",
        "op", "shape", "variant", "fwd ms", "fwd+bwd ms", "speed-up fwd+bwd"
    );
    let cases = cases(dt, &device)?;
    let xs: Vec<Var> = cases
        .iter()
        .map(|(_, shape, _)| Var::from_tensor(&rand(shape, dt, &device)?))
        .collect::<candle_core::Result<_>>()?;
    // [case][variant] → timings. Each round times every variant of every case once, so a burst
    // of load from other processes hits all of them alike.
    let mut fwd: Vec<Vec<Vec<f64>>> = cases.iter().map(|c| vec![Vec::new(); c.2.len()]).collect();
    let mut fwd_bwd = fwd.clone();
    for round in 0..args.bench.rounds() {
        for (c, (_, _, variants)) in cases.iter().enumerate() {
            let x = xs[c].as_tensor();
            for (i, (_, f, bwd)) in variants.iter().enumerate() {
                let t = time_ms(&device, &mut || f(x).map(drop))?;
                let tb = if *bwd {
                    Some(time_ms(&device, &mut || f(x)?.backward().map(drop))?)
                } else {
                    None
                };
                if args.bench.timed(round) {
                    fwd[c][i].push(t);
                    fwd_bwd[c][i].extend(tb);
                }
            }
        }
    }
    for (c, (op, shape, variants)) in cases.iter().enumerate() {
        let (op, fwd, fwd_bwd) = (*op, &mut fwd[c], &mut fwd_bwd[c]);
        // Variant 0 is the fused drop-in, 1 the unfused composition.
        let mut ratios: Vec<f64> = fwd_bwd[1]
            .iter()
            .zip(&fwd_bwd[0])
            .map(|(u, f)| u / f)
            .collect();
        let speedup = median(&mut ratios);
        let dims = format!("{shape:?}");
        for (i, (variant, _, _)) in variants.iter().enumerate() {
            let fwd_ms = median(&mut fwd[i]);
            let fwd_bwd_ms = (!fwd_bwd[i].is_empty()).then(|| median(&mut fwd_bwd[i]));
            let fb = fwd_bwd_ms.map_or("-".to_string(), |v| format!("{v:.3}"));
            let sp = if i == 0 {
                format!("{speedup:.2}x")
            } else {
                String::new()
            };
            println!("{op:<10} {dims:<18} {variant:<8} {fwd_ms:>9.3} {fb:>12} {sp:>16}");
            records.push(Record {
                op,
                variant,
                shape: shape.clone(),
                dtype: args.bench.dtype.clone(),
                fwd_ms,
                fwd_bwd_ms,
            });
        }
    }
    args.bench.write_json(&records)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    bench::exit(run())
}
