//! Backward passes of the RMS / layer norms: a fused CPU kernel for `dx`, tensor-op formulas else.

use super::float::{contiguous, dispatch_float, sum_lanes, widen, Elem};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use num_traits::{Float, Zero};
use rayon::prelude::*;

/// `dx` of a norm over the last dimension, applied to `(x, w, g)`: with `r = 1/sqrt(var + eps)`,
/// `x̂ = (x − μ)·r` (`μ = 0` for RMS norm) and `gw = g⊙w`,
/// `dx = r·(gw − mean(gw) − x̂·mean(gw⊙x̂))` (no `mean(gw)` term for RMS norm).
#[derive(Debug, Clone, Copy)]
pub struct NormBwd {
    /// The forward's epsilon.
    pub eps: f32,
    /// Layer norm (`true`) or RMS norm (`false`).
    pub remove_mean: bool,
}

#[allow(clippy::too_many_arguments)]
fn norm_bwd_rows<T: Elem>(
    x: &[T],
    w: &[T],
    g: &[T],
    lx: &Layout,
    lw: &Layout,
    lg: &Layout,
    eps: f32,
    remove_mean: bool,
) -> Result<(CpuStorage, Shape)> {
    let (x, w) = (
        contiguous(x, lx, "norm input")?,
        contiguous(w, lw, "weight")?,
    );
    let g = contiguous(g, lg, "grad")?;
    let n = w.len();
    let nf = T::acc_usize(n);
    let zero = T::Acc::zero();
    let mut dst = vec![T::zero(); x.len()];
    dst.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(g.par_chunks(n)))
        .for_each(|(dst, (x, g))| {
            let [sum, sum2] = sum_lanes(x, x, x, |v, _, _| {
                let v = v.up();
                [v, v * v]
            });
            // The forward's statistics (E[x²] − μ² for the layer norm, as candle computes them).
            let mean = if remove_mean { sum / nf } else { zero };
            let var = sum2 / nf - mean * mean;
            let r = (var + T::acc_f32(eps)).sqrt().recip();
            let [a, c] = sum_lanes(x, g, w, |x, g, w| {
                let gw = g.up() * w.up();
                [gw, gw * (x.up() - mean) * r]
            });
            let a = if remove_mean { a / nf } else { zero };
            let c = c / nf;
            for (((d, x), g), w) in dst.iter_mut().zip(x).zip(g).zip(w) {
                let xhat = (x.up() - mean) * r;
                *d = T::down(r * (g.up() * w.up() - a - xhat * c));
            }
        });
    Ok((T::to_cpu_storage_owned(dst), lx.shape().clone()))
}

impl CustomOp3 for NormBwd {
    fn name(&self) -> &'static str {
        "adapters-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (eps, remove_mean) = (self.eps, self.remove_mean);
        dispatch_float!(
            "norm backward",
            norm_bwd_rows,
            (x, w, g),
            (lx, lw, lg, eps, remove_mean)
        )
    }
}

/// `dx` of a norm: the fused [`NormBwd`] kernel on CPU, [`norm_dx_composed`] on other devices.
pub fn norm_dx(x: &Tensor, w: &Tensor, g: &Tensor, remove_mean: bool, eps: f32) -> Result<Tensor> {
    if x.device().is_cpu() {
        let (x, w, g) = (x.contiguous()?, w.contiguous()?, g.contiguous()?);
        x.apply_op3_no_bwd(&w, &g, &NormBwd { eps, remove_mean })
    } else {
        norm_dx_composed(x, w, g, remove_mean, eps)
    }
}

/// `(x̂, r)` of a norm's forward, from tensor ops in [`super::float::compute_dtype`].
fn normalized(x: &Tensor, remove_mean: bool, eps: f32) -> Result<(Tensor, Tensor)> {
    let x = widen(x)?;
    let x = if remove_mean {
        x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
    } else {
        x
    };
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps as f64)?
        .sqrt()?
        .recip()?;
    Ok((x.broadcast_mul(&r)?, r))
}

/// `dx` of a norm from a short formula of tensor ops (in `f32` for half types), for any device.
pub fn norm_dx_composed(
    x: &Tensor,
    w: &Tensor,
    g: &Tensor,
    remove_mean: bool,
    eps: f32,
) -> Result<Tensor> {
    let (xhat, r) = normalized(x, remove_mean, eps)?;
    let gw = widen(g)?.broadcast_mul(&widen(w)?)?;
    let c = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
    let mut inner = (gw.clone() - xhat.broadcast_mul(&c)?)?;
    if remove_mean {
        inner = inner.broadcast_sub(&gw.mean_keepdim(D::Minus1)?)?;
    }
    inner.broadcast_mul(&r)?.to_dtype(x.dtype())
}

/// `dw = Σ_rows g⊙x̂` of a norm's weight, in `dtype`.
pub fn norm_dw(
    x: &Tensor,
    g: &Tensor,
    remove_mean: bool,
    eps: f32,
    dtype: DType,
) -> Result<Tensor> {
    let (xhat, _) = normalized(x, remove_mean, eps)?;
    let n = xhat.dim(D::Minus1)?;
    (widen(g)? * xhat)?
        .reshape(((), n))?
        .sum(0)?
        .to_dtype(dtype)
}
