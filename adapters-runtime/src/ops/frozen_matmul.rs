//! `x · W0ᵀ` for a frozen `W0` whose backward computes only the input gradient.
//!
//! candle's matmul backward computes the gradient of both operands, so a plain
//! `x.matmul(&w.t())` materialises an `out × in` gradient for every frozen layer as soon as `x`
//! carries a gradient (e.g. any layer above an adapter). This op holds `W0` outside the graph:
//! its only graph input is `x`, and its backward returns `grad · W0`.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Shape, Storage, Tensor,
};

/// The op: `x [m, k] ↦ x · Wᵀ [m, n]` with `W [n, k]` frozen.
#[derive(Clone, Debug)]
pub struct FrozenMatmul {
    weight: Tensor,
}

impl FrozenMatmul {
    /// Wraps a frozen `[out, in]` weight.
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }

    fn dims(&self, layout: &Layout) -> candle_core::Result<(usize, usize, usize)> {
        let (n, k) = self.weight.dims2()?;
        let (m, k2) = match layout.dims() {
            [m, k2] => (*m, *k2),
            dims => candle_core::bail!("frozen_matmul: input must be 2-D, got {dims:?}"),
        };
        if k != k2 {
            candle_core::bail!("frozen_matmul: input has {k2} features, weight expects {k}")
        }
        Ok((m, n, k))
    }

    fn fwd<S: BackendStorage>(
        &self,
        x: &S,
        x_layout: &Layout,
        w: &S,
        w_layout: &Layout,
    ) -> candle_core::Result<(S, Shape)> {
        let (m, n, k) = self.dims(x_layout)?;
        let wt_layout = w_layout.transpose(0, 1)?;
        let y = x.matmul(w, (1, m, n, k), x_layout, &wt_layout)?;
        Ok((y, Shape::from((m, n))))
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (w, wl) = self.weight.storage_and_layout();
        match &*w {
            Storage::Cpu(w) => self.fwd(x, l, w, wl),
            _ => candle_core::bail!("frozen_matmul: input on cpu, weight on another device"),
        }
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let (w, wl) = self.weight.storage_and_layout();
        match &*w {
            Storage::Cuda(w) => self.fwd(x, l, w, wl),
            _ => candle_core::bail!("frozen_matmul: input on cuda, weight on another device"),
        }
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        l: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        let (w, wl) = self.weight.storage_and_layout();
        match &*w {
            Storage::Metal(w) => self.fwd(x, l, w, wl),
            _ => candle_core::bail!("frozen_matmul: input on metal, weight on another device"),
        }
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d(x·Wᵀ)/dx = grad · W; no gradient for W is formed.
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `x · Wᵀ` over the last axis of `x` (any rank ≥ 1), with no gradient for the frozen `W [out, in]`.
pub fn frozen_matmul(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("frozen_matmul: input must have at least one axis")
    };
    let (n, _) = weight.dims2()?;
    let m: usize = lead.iter().product();
    let x2 = x.reshape((m, k))?.contiguous()?;
    let weight = if weight.is_contiguous() {
        weight.clone()
    } else {
        weight.contiguous()?
    };
    let y = x2.apply_op1(FrozenMatmul::new(weight))?;
    let mut out = lead.to_vec();
    out.push(n);
    y.reshape(out)
}
