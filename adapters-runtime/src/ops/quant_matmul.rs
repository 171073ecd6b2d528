//! `x · deq(W)ᵀ` for a frozen quantized `W` ([`QuantWeight`]), with an input gradient only.
//!
//! candle's `QMatMul` records no gradient at all, so nothing below a quantized layer would train.
//! This op's only graph input is `x`. Forward and backward each dequantize `W` transiently (one
//! layer at a time, on its device: candle's CUDA kernels for GGML types on a GPU) and run a plain
//! GEMM, so the result is exactly the dequantized-f32 model's, and the backward returns
//! `grad · deq(W)` — never a weight gradient. The transient buffer is one layer's `[out, in]`.
//! For inference a GGML weight's forward can run GGML's quantized kernels instead
//! ([`QuantWeight::set_ggml_kernels`]).

use crate::ops::FrozenMatmul;
use crate::quant::QuantWeight;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Shape, Tensor};
use std::sync::Arc;

/// The op: `x [m, k] ↦ x · deq(W)ᵀ [m, n]` with `W [n, k]` frozen and quantized.
#[derive(Clone, Debug)]
pub struct QuantMatmul {
    weight: Arc<QuantWeight>,
}

impl QuantMatmul {
    /// Wraps a quantized `[out, in]` weight.
    pub fn new(weight: Arc<QuantWeight>) -> Self {
        Self { weight }
    }

    /// The dense op over the weight dequantized to `dtype`.
    fn dense(&self, dtype: candle_core::DType) -> candle_core::Result<FrozenMatmul> {
        Ok(FrozenMatmul::new(self.weight.dequantize(dtype)?))
    }
}

impl CustomOp1 for QuantMatmul {
    fn name(&self) -> &'static str {
        "quant-matmul"
    }

    fn cpu_fwd(&self, x: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        // Inference through GGML's kernels (`QuantWeight::set_ggml_kernels`), f32 input.
        if let (CpuStorage::F32(xs), [m, _], Some((a, b))) = (x, l.dims(), l.contiguous_offsets()) {
            if let Some(y) = self.weight.ggml_forward_cpu(&xs[a..b], *m) {
                let n = self.weight.dims().0;
                return Ok((CpuStorage::F32(y?), Shape::from((*m, n))));
            }
        }
        self.dense(x.dtype())?.cpu_fwd(x, l)
    }

    fn cuda_fwd(&self, x: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        self.dense(x.dtype())?.cuda_fwd(x, l)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        l: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        self.dense(x.dtype())?.metal_fwd(x, l)
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d(x·Wᵀ)/dx = grad · W, with W dequantized for this product only.
        let w = self.weight.dequantize(grad.dtype())?;
        Ok(Some(grad.matmul(&w)?))
    }
}

/// `x · deq(W)ᵀ` over the last axis of `x` (any rank ≥ 1), with no gradient for the frozen,
/// quantized `W [out, in]`.
pub fn quant_matmul(x: &Tensor, weight: &Arc<QuantWeight>) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("quant_matmul: input must have at least one axis")
    };
    let (n, wk) = weight.dims();
    if k != wk {
        candle_core::bail!("quant_matmul: input has {k} features, weight expects {wk}")
    }
    let m: usize = lead.iter().product();
    let x2 = x.reshape((m, k))?.contiguous()?;
    let y = x2.apply_op1(QuantMatmul::new(weight.clone()))?;
    let mut out = lead.to_vec();
    out.push(n);
    y.reshape(out)
}
