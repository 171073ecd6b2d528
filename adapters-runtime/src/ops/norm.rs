//! Differentiable RMS and layer normalisation over the last dimension, with candle's fused forward.

use super::float::{contiguous, dispatch_float, widen, Elem};
use super::norm_bwd::{norm_dw, norm_dx};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use num_traits::{Float, Zero};
use rayon::prelude::*;

/// `x / sqrt(mean(x²) + eps) * alpha` over the last dimension, applied to `(x, alpha)`.
#[derive(Debug, Clone, Copy)]
pub struct RmsNormOp {
    /// Added to the mean square.
    pub eps: f32,
}

/// `(x − mean) / sqrt(var + eps) * alpha + beta` over the last dimension, on `(x, alpha, beta)`.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormOp {
    /// Added to the variance.
    pub eps: f32,
}

/// Runs `row(src, dst)` on each row of `n` elements, in parallel unless there are few rows.
fn rows<T: Elem>(src: &[T], n: usize, row: impl Fn(&[T], &mut [T]) + Sync) -> Vec<T> {
    let mut dst = vec![T::zero(); src.len()];
    if src.len() <= 32 * n {
        src.chunks(n)
            .zip(dst.chunks_mut(n))
            .for_each(|(s, d)| row(s, d));
    } else {
        src.par_chunks(n)
            .zip(dst.par_chunks_mut(n))
            .for_each(|(s, d)| row(s, d));
    }
    dst
}

// The same arithmetic as candle-nn 0.11's CPU kernel (f64 added), so results are bit-identical.
fn rms_fwd<T: Elem>(
    x: &[T],
    w: &[T],
    lx: &Layout,
    lw: &Layout,
    eps: f32,
) -> Result<(CpuStorage, Shape)> {
    let (x, w) = (
        contiguous(x, lx, "rms-norm input")?,
        contiguous(w, lw, "alpha")?,
    );
    let n = w.len();
    let dst = rows(x, n, |src, dst| {
        let sum2 = src.iter().map(|&v| v.up() * v.up()).sum::<T::Acc>();
        let m = T::down((sum2 / T::acc_usize(n) + T::acc_f32(eps)).sqrt());
        for ((d, s), a) in dst.iter_mut().zip(src).zip(w) {
            *d = *s / m * *a
        }
    });
    Ok((T::to_cpu_storage_owned(dst), lx.shape().clone()))
}

#[allow(clippy::too_many_arguments)]
fn ln_fwd<T: Elem>(
    x: &[T],
    w: &[T],
    b: &[T],
    lx: &Layout,
    lw: &Layout,
    lb: &Layout,
    eps: f32,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous(x, lx, "layer-norm input")?;
    let (w, b) = (contiguous(w, lw, "alpha")?, contiguous(b, lb, "beta")?);
    let n = w.len();
    let dst = rows(x, n, |src, dst| {
        let (mut sum, mut sum2) = (T::Acc::zero(), T::Acc::zero());
        for v in src {
            let v = v.up();
            sum += v;
            sum2 += v * v;
        }
        let mean = sum / T::acc_usize(n);
        let var = sum2 / T::acc_usize(n) - mean * mean;
        let inv_std = (var + T::acc_f32(eps)).sqrt().recip();
        for ((d, s), (a, b)) in dst.iter_mut().zip(src).zip(w.iter().zip(b)) {
            *d = T::down((s.up() - mean) * inv_std * a.up() + b.up());
        }
    });
    Ok((T::to_cpu_storage_owned(dst), lx.shape().clone()))
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "adapters-rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!("rms-norm", rms_fwd, (x, w), (lx, lw, self.eps))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rms_norm_fwd(x, lx, w, lw, self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.track_op().then(|| norm_dx(x, w, &g, false, self.eps));
        let dw = w
            .track_op()
            .then(|| norm_dw(x, &g, false, self.eps, w.dtype()));
        Ok((dx.transpose()?, dw.transpose()?))
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "adapters-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!("layer-norm", ln_fwd, (x, w, b), (lx, lw, lb, self.eps))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::layer_norm_fwd(x, lx, w, lw, b, lb, self.eps)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.track_op().then(|| norm_dx(x, w, &g, true, self.eps));
        let dw = w
            .track_op()
            .then(|| norm_dw(x, &g, true, self.eps, w.dtype()));
        let db = b.track_op().then(|| {
            let n = g.dim(D::Minus1)?;
            widen(&g)?.reshape(((), n))?.sum(0)?.to_dtype(b.dtype())
        });
        Ok((dx.transpose()?, dw.transpose()?, db.transpose()?))
    }
}

fn check_hidden(what: &str, xs: &Tensor, params: &[&Tensor]) -> Result<()> {
    let n = xs.dim(D::Minus1)?;
    for p in params {
        if p.dims1()? != n {
            bail!("shape mismatch in {what} {:?} {:?}", xs.shape(), p.shape())
        }
    }
    Ok(())
}

/// Differentiable `candle_nn::ops::rms_norm`: gradients flow to `xs` and `alpha`.
pub fn rms_norm(xs: &Tensor, alpha: &Tensor, eps: f32) -> Result<Tensor> {
    check_hidden("rms-norm", xs, &[alpha])?;
    if xs.device().is_metal() {
        return candle_nn::ops::rms_norm_slow(xs, alpha, eps);
    }
    xs.contiguous()?
        .apply_op2(&alpha.contiguous()?, RmsNormOp { eps })
}

/// Differentiable `candle_nn::ops::layer_norm`: gradients flow to `xs`, `alpha` and `beta`.
pub fn layer_norm(xs: &Tensor, alpha: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    check_hidden("layer-norm", xs, &[alpha, beta])?;
    if xs.device().is_metal() {
        return candle_nn::ops::layer_norm_slow(xs, alpha, beta, eps);
    }
    let (alpha, beta) = (alpha.contiguous()?, beta.contiguous()?);
    xs.contiguous()?
        .apply_op3(&alpha, &beta, LayerNormOp { eps })
}
