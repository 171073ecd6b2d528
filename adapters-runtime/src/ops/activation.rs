//! SiLU with candle's forward kernel and a fused CPU backward.

use super::float::{contiguous, dispatch_float, widen, Elem};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;

/// `silu(x) = x·σ(x)`; `dx = g·σ(x)·(1 + x·(1 − σ(x)))`.
#[derive(Debug, Clone, Copy)]
pub struct SiluOp;

impl CustomOp1 for SiluOp {
    fn name(&self) -> &'static str {
        "adapters-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((s.unary_impl::<candle_core::op::Silu>(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((s.unary_impl::<candle_core::op::Silu>(l)?, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (x, g) = (x.contiguous()?, g.contiguous()?);
        if x.device().is_cpu() {
            return x.apply_op2_no_bwd(&g, &SiluBwd).map(Some);
        }
        let (xw, gw) = (widen(&x)?, widen(&g)?);
        let s = candle_nn::ops::sigmoid(&xw)?;
        let ds = (&xw * s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?;
        Ok(Some((gw * s)?.mul(&ds)?.to_dtype(x.dtype())?))
    }
}

/// The fused CPU backward of [`SiluOp`], applied to `(x, g)`.
struct SiluBwd;

fn silu_bwd_cpu<T: Elem>(
    x: &[T],
    g: &[T],
    lx: &Layout,
    lg: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (x, g) = (contiguous(x, lx, "silu input")?, contiguous(g, lg, "grad")?);
    let mut dst = vec![T::zero(); x.len()];
    let one = T::acc_f32(1.0);
    dst.par_chunks_mut(4096)
        .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
        .for_each(|(d, (x, g))| {
            for ((d, x), g) in d.iter_mut().zip(x).zip(g) {
                let x = x.up();
                let s = one / (one + (-x).exp());
                *d = T::down(g.up() * s * (one + x * (one - s)));
            }
        });
    Ok((T::to_cpu_storage_owned(dst), lx.shape().clone()))
}

impl CustomOp2 for SiluBwd {
    fn name(&self) -> &'static str {
        "adapters-silu-bwd"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!("silu backward", silu_bwd_cpu, (x, g), (lx, lg))
    }
}

/// Differentiable SiLU with a fused backward (candle's forward kernel, any layout).
pub fn silu(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_metal() {
        return xs.silu();
    }
    xs.apply_op1(SiluOp)
}
