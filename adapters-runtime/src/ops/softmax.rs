//! Differentiable last-dimension softmax: candle's fused forward with a fused CPU backward.

use super::float::{contiguous, dispatch_float, sum_lanes, widen, Elem};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Softmax over the last dimension; `y = softmax(x)`, `dx = y ⊙ (g − Σ g⊙y)`.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxLastDim;

fn softmax_rows<T: Elem>(src: &[T], layout: &Layout) -> Result<(CpuStorage, Shape)> {
    let src = contiguous(src, layout, "softmax input")?;
    let n = layout.dims()[layout.dims().len() - 1];
    let mut dst = vec![T::zero(); src.len()];
    // The same arithmetic as candle-nn 0.11's kernel, so the results are bit-identical.
    src.par_chunks(n)
        .zip(dst.par_chunks_mut(n))
        .for_each(|(src, dst)| {
            let mut max = T::neg_infinity();
            unsafe { T::vec_reduce_max(src.as_ptr(), &mut max, n) };
            for (s, d) in src.iter().zip(dst.iter_mut()) {
                *d = (*s - max).exp();
            }
            let mut sum_exp = T::zero();
            unsafe { T::vec_reduce_sum(dst.as_ptr(), &mut sum_exp, n) };
            for d in dst.iter_mut() {
                *d /= sum_exp
            }
        });
    Ok((T::to_cpu_storage_owned(dst), layout.shape().clone()))
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "adapters-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch_float!("softmax", softmax_rows, (s), (l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax_fwd(s, l)
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        softmax_bwd(y, &g.contiguous()?).map(Some)
    }
}

/// Backward of the last-dimension softmax: the fused kernel on CPU, else [`softmax_bwd_composed`].
pub fn softmax_bwd(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if y.device().is_cpu() {
        y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)
    } else {
        softmax_bwd_composed(y, g)
    }
}

/// `y ⊙ (g − Σ g⊙y)` from tensor ops (in `f32` for half types), for devices without a kernel.
pub fn softmax_bwd_composed(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (yw, gw) = (widen(y)?, widen(g)?);
    let dot = (&gw * &yw)?.sum_keepdim(D::Minus1)?;
    gw.broadcast_sub(&dot)?.mul(&yw)?.to_dtype(y.dtype())
}

/// The fused CPU backward of [`SoftmaxLastDim`], applied to `(y, g)`.
struct SoftmaxBwd;

fn softmax_bwd_rows<T: Elem>(
    y: &[T],
    g: &[T],
    ly: &Layout,
    lg: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (y, g) = (contiguous(y, ly, "y")?, contiguous(g, lg, "grad")?);
    let n = ly.dims()[ly.dims().len() - 1];
    let mut dst = vec![T::zero(); y.len()];
    dst.par_chunks_mut(n)
        .zip(y.par_chunks(n).zip(g.par_chunks(n)))
        .for_each(|(dst, (y, g))| {
            let [dot] = sum_lanes(y, g, g, |y, g, _| [y.up() * g.up()]);
            for ((d, y), g) in dst.iter_mut().zip(y).zip(g) {
                *d = T::down(y.up() * (g.up() - dot));
            }
        });
    Ok((T::to_cpu_storage_owned(dst), ly.shape().clone()))
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "adapters-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        ly: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!("softmax backward", softmax_bwd_rows, (y, g), (ly, lg))
    }
}

/// Differentiable `candle_nn::ops::softmax_last_dim` (any layout; the result is contiguous).
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    match xs.device() {
        candle_core::Device::Metal(_) => candle_nn::ops::softmax(xs, D::Minus1),
        _ => xs.contiguous()?.apply_op1(SoftmaxLastDim),
    }
}
