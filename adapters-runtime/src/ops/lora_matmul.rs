//! `x·W0ᵀ + s·(x·Aᵀ)·Bᵀ` — a frozen base product plus a LoRA product — as one graph node, with a
//! backward that forms gradients for `x`, `A` and `B` only.
//!
//! Composed from candle ops, a LoRA layer is six graph nodes (base matmul, two adapter matmuls,
//! the scaling, the sum, a reshape), each with an output buffer kept for the backward pass, and
//! candle's backward zero-fills and adds a gradient buffer for every one of them. Here the forward
//! is two GEMMs into one output buffer (on CPU the adapter product accumulates into it: `beta = s`,
//! `read_dst`), the low-rank intermediate `x·Aᵀ` (`[tokens, r]`) is recomputed in the backward
//! rather than kept, and `dx = g·W0 + s·(g·B)·A` is again one buffer on CPU. Other devices and
//! dtypes run the same arithmetic through candle's backend ops.
//!
//! The frozen base may be quantized ([`lora_matmul_quant`], [`dora_matmul_quant`]): it is then
//! dequantized for the forward and again for the backward, one layer at a time, never kept.

use super::gemm::gemm_into;
use crate::quant::QuantWeight;
use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, MetalStorage, Shape, Storage,
    Tensor,
};
use rayon::prelude::*;
use std::sync::Arc;

/// The frozen base of a fused product: a dense tensor, or a quantized weight dequantized (to the
/// activation dtype) on each use.
#[derive(Clone, Debug)]
enum Base {
    Dense(Tensor),
    Quant(Arc<QuantWeight>, DType),
}

impl Base {
    /// The dense `[n, k]` weight for one use.
    fn get(&self) -> candle_core::Result<Tensor> {
        match self {
            Base::Dense(t) => Ok(t.clone()),
            Base::Quant(q, dt) => q.dequantize(*dt),
        }
    }

    fn rows(&self) -> candle_core::Result<usize> {
        match self {
            Base::Dense(t) => Ok(t.dims2()?.0),
            Base::Quant(q, _) => Ok(q.dims().0),
        }
    }
}

/// The forward op over `(x [m, k], A [r, k], B [n, r])` with the frozen `W0 [n, k]` and the
/// scaling `s` held; for DoRA the third input is `[B | m]` (`[n, r + 1]`, the magnitude as its
/// last column) and the call's detached norm and scale are held.
#[derive(Clone, Debug)]
pub struct LoraMatmul {
    weight: Base,
    scaling: f64,
    dora: Option<DoraRows>,
}

/// DoRA's per-output factors for one call, without gradient: the weight norm `n [out]` and the
/// scale `m / n` (1 where `n` is not positive).
#[derive(Clone, Debug)]
pub struct DoraRows {
    /// `‖W0 + s·B·A‖` per output row, detached.
    pub norm: Tensor,
    /// `m / n` per output row (1 where `n = 0`), detached.
    pub scale: Tensor,
}

/// `dx = g·W0 + gb·A` over `(g [m, n], gb [m, r])`, no backward (used by [`LoraMatmul`]'s).
#[derive(Clone, Debug)]
struct LoraDx {
    weight: Tensor,
    a: Tensor,
}

/// The dimensions `(m, k, r, n)` of a forward call, checked; `extra` columns of the third input
/// follow `B`'s (1 for DoRA's magnitude).
fn dims(
    xl: &Layout,
    al: &Layout,
    bl: &Layout,
    wl: &Layout,
    extra: usize,
) -> candle_core::Result<[usize; 4]> {
    let (m, k, r, n) = match (xl.dims(), al.dims(), bl.dims(), wl.dims()) {
        ([m, k], [r, k2], [n, r2], [n2, k3])
            if k == k2 && k == k3 && *r + extra == *r2 && n == n2 =>
        {
            (*m, *k, *r, *n)
        }
        (x, a, b, w) => candle_core::bail!(
            "lora_matmul: expected x [m, k], A [r, k], B [n, r], W0 [n, k]; got x {x:?}, A {a:?}, B {b:?}, W0 {w:?}"
        ),
    };
    Ok([m, k, r, n])
}

/// A contiguous slice of `s` under layout `l`, or `None` (then the generic path runs).
fn slice<'a, T>(s: &'a [T], l: &Layout) -> Option<&'a [T]> {
    l.contiguous_offsets().map(|(a, b)| &s[a..b])
}

/// The CPU forward for a float type gemm handles: `y = x·W0ᵀ`, then `y += s·(x·Aᵀ)·Bᵀ` in place
/// (`B`'s rows `b_rs` apart), then for DoRA `y ⊙= scale` per output, in place.
#[allow(clippy::too_many_arguments)]
fn cpu_fwd_fast<T: candle_core::WithDType>(
    x: &[T],
    a: &[T],
    b: &[T],
    b_rs: usize,
    w: &[T],
    [m, k, r, n]: [usize; 4],
    scaling: f64,
    scale: Option<&[T]>,
) -> Vec<T> {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let mut y: Vec<T> = Vec::with_capacity(m * n);
    // SAFETY: `y` has capacity m·n, written in full by the (non-accumulating) product before
    // `set_len`; `x` and `w` hold m·k and n·k elements (checked by `dims` and the contiguous
    // layouts), which the strides below stay within.
    unsafe {
        // Wᵀ [k, n]: element (kk, j) = W[j·k + kk].
        gemm_into(
            (m, n, k),
            y.as_mut_ptr(),
            false,
            x.as_ptr(),
            w.as_ptr(),
            (k, 1),
            (zero, one),
        );
        y.set_len(m * n);
    }
    cpu_add_lora(&mut y, x, a, b, b_rs, [m, k, r, n], scaling, scale);
    y
}

/// `y += s·(x·Aᵀ)·Bᵀ` in place (`B`'s rows `b_rs` apart), then for DoRA `y ⊙= scale` per output.
#[allow(clippy::too_many_arguments)]
fn cpu_add_lora<T: candle_core::WithDType>(
    y: &mut [T],
    x: &[T],
    a: &[T],
    b: &[T],
    b_rs: usize,
    [m, k, r, n]: [usize; 4],
    scaling: f64,
    scale: Option<&[T]>,
) {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let mut xa = vec![zero; m * r];
    // SAFETY: `y` holds m·n elements; the slices hold m·k, r·k and n·r elements (checked by the
    // callers against the layouts), which the strides below stay within.
    unsafe {
        // Aᵀ [k, r]: element (kk, j) = A[j·k + kk].
        gemm_into(
            (m, r, k),
            xa.as_mut_ptr(),
            false,
            x.as_ptr(),
            a.as_ptr(),
            (k, 1),
            (zero, one),
        );
        // Bᵀ [r, n]: element (rr, j) = B[j·b_rs + rr]; accumulate s·xa·Bᵀ into y.
        gemm_into(
            (m, n, r),
            y.as_mut_ptr(),
            true,
            xa.as_ptr(),
            b.as_ptr(),
            (b_rs, 1),
            (one, T::from_f64(scaling)),
        );
    }
    if let Some(scale) = scale {
        y.par_chunks_mut(n).for_each(|row| {
            for (v, &c) in row.iter_mut().zip(scale) {
                *v *= c;
            }
        });
    }
}

/// The CPU `dx` for a float type gemm handles: `dx = g·W0`, then `dx += gb·A` in place.
fn cpu_dx_fast<T: candle_core::WithDType>(
    g: &[T],
    gb: &[T],
    w: &[T],
    a: &[T],
    [m, k, r, n]: [usize; 4],
) -> Vec<T> {
    let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
    let mut dx: Vec<T> = Vec::with_capacity(m * k);
    // SAFETY: as in `cpu_fwd_fast`: `dx` is written in full before `set_len`; W0 [n, k] and
    // A [r, k] are row-major right-hand sides (element (row, col) at row·k + col).
    unsafe {
        gemm_into(
            (m, k, n),
            dx.as_mut_ptr(),
            false,
            g.as_ptr(),
            w.as_ptr(),
            (1, k),
            (zero, one),
        );
        dx.set_len(m * k);
        gemm_into(
            (m, k, r),
            dx.as_mut_ptr(),
            true,
            gb.as_ptr(),
            a.as_ptr(),
            (1, k),
            (one, one),
        );
    }
    dx
}

impl LoraMatmul {
    /// The CPU forward over a GGML base with its kernels on (inference,
    /// [`QuantWeight::set_ggml_kernels`]): `x·W0ᵀ` by GGML's quantized kernels, then the adapter
    /// terms as [`cpu_fwd_fast`] adds them. `None` when that path does not apply (f32 and
    /// contiguous inputs only).
    fn cpu_fwd_ggml(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        (a, al): (&CpuStorage, &Layout),
        (b, bl): (&CpuStorage, &Layout),
    ) -> Option<candle_core::Result<(CpuStorage, Shape)>> {
        let Base::Quant(q, _) = &self.weight else {
            return None;
        };
        let (CpuStorage::F32(x), CpuStorage::F32(a), CpuStorage::F32(b)) = (x, a, b) else {
            return None;
        };
        let (n, k) = q.dims();
        let ([m, k1], [r, k2], [n1, r1]) = (xl.dims(), al.dims(), bl.dims()) else {
            return None;
        };
        let (m, r) = (*m, *r);
        if (*k1, *k2, *n1, *r1) != (k, k, n, r + self.extra()) || bl.stride()[1] != 1 {
            return None;
        }
        let (xs, avs) = (slice(x, xl)?, slice(a, al)?);
        let run = || -> candle_core::Result<(CpuStorage, Shape)> {
            let Some(y) = q.ggml_forward_cpu(xs, m) else {
                candle_core::bail!("lora_matmul: GGML kernels unavailable")
            };
            let mut y = y?;
            let scale = match &self.dora {
                Some(rows) => Some(rows.scale.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                None => None,
            };
            let bs = &b[bl.start_offset()..];
            let d = [m, k, r, n];
            cpu_add_lora(
                &mut y,
                xs,
                avs,
                bs,
                bl.stride()[0],
                d,
                self.scaling,
                scale.as_deref(),
            );
            Ok((CpuStorage::F32(y), Shape::from((m, n))))
        };
        q.ggml_kernels().then(run)
    }

    /// The generic forward: candle's backend matmul, affine, add (and DoRA's row scale).
    #[allow(clippy::too_many_arguments)]
    fn fwd_generic<S: BackendStorage>(
        &self,
        (x, xl): (&S, &Layout),
        (a, al): (&S, &Layout),
        (b, bl): (&S, &Layout),
        (w, wl): (&S, &Layout),
        scale: Option<(&S, &Layout)>,
    ) -> candle_core::Result<(S, Shape)> {
        let [m, k, r, n] = dims(xl, al, bl, wl, self.extra())?;
        let y = x.matmul(w, (1, m, n, k), xl, &wl.transpose(0, 1)?)?;
        let xa = x.matmul(a, (1, m, r, k), xl, &al.transpose(0, 1)?)?;
        // B: the first r columns of the third input.
        let b_only = Layout::new(Shape::from((n, r)), bl.stride().to_vec(), bl.start_offset());
        let lora = xa.matmul(
            b,
            (1, m, n, r),
            &Layout::contiguous((m, r)),
            &b_only.transpose(0, 1)?,
        )?;
        let c = Layout::contiguous((m, n));
        let lora = lora.affine(&c, self.scaling, 0.0)?;
        let y = y.binary_impl::<Add>(&lora, &c, &c)?;
        let y = match scale {
            None => y,
            Some((sc, sl)) => y.binary_impl::<Mul>(sc, &c, &sl.broadcast_as((m, n))?)?,
        };
        Ok((y, Shape::from((m, n))))
    }

    /// Columns of the third input after `B`'s (DoRA's magnitude).
    fn extra(&self) -> usize {
        usize::from(self.dora.is_some())
    }

    /// The held tensors' storages for a device: `(W0, scale)`.
    fn device_fwd<S: BackendStorage>(
        &self,
        x: (&S, &Layout),
        a: (&S, &Layout),
        b: (&S, &Layout),
        pick: impl Fn(&Storage) -> Option<&S>,
    ) -> candle_core::Result<(S, Shape)> {
        let weight = self.weight.get()?;
        let (w, wl) = weight.storage_and_layout();
        let w = pick(&w).ok_or_else(|| {
            candle_core::Error::Msg("lora_matmul: the base weight is on another device".into())
        })?;
        match &self.dora {
            None => self.fwd_generic(x, a, b, (w, wl), None),
            Some(d) => {
                let (sc, sl) = d.scale.storage_and_layout();
                let sc = pick(&sc).ok_or_else(|| {
                    candle_core::Error::Msg(
                        "lora_matmul: the DoRA scale is on another device".into(),
                    )
                })?;
                self.fwd_generic(x, a, b, (w, wl), Some((sc, sl)))
            }
        }
    }
}

impl CustomOp3 for LoraMatmul {
    fn name(&self) -> &'static str {
        "adapters-lora-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if let Some(out) = self.cpu_fwd_ggml((x, xl), (a, al), (b, bl)) {
            return out;
        }
        let weight = self.weight.get()?;
        let (w, wl) = weight.storage_and_layout();
        let Storage::Cpu(w) = &*w else {
            candle_core::bail!("lora_matmul: input on cpu, base weight on another device")
        };
        let d = dims(xl, al, bl, wl, self.extra())?;
        let shape = Shape::from((d[0], d[3]));
        let b_rs = bl.stride()[0];
        let scale = match &self.dora {
            Some(rows) => Some(rows.scale.to_dtype(weight.dtype())?),
            None => None,
        };
        macro_rules! fast {
            ($v:ident, $t:ty, $x:expr, $a:expr, $b:expr, $w:expr) => {{
                let sc: Option<Vec<$t>> = match &scale {
                    Some(t) => Some(t.to_vec1::<$t>()?),
                    None => None,
                };
                if let (Some(x), Some(a), Some(w)) = (slice($x, xl), slice($a, al), slice($w, wl)) {
                    if bl.stride()[1] == 1 {
                        let b = &$b[bl.start_offset()..];
                        let y = cpu_fwd_fast(x, a, b, b_rs, w, d, self.scaling, sc.as_deref());
                        return Ok((CpuStorage::$v(y), shape));
                    }
                }
            }};
        }
        match (x, a, b, w) {
            (CpuStorage::F32(x), CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(w)) => {
                fast!(F32, f32, x, a, b, w)
            }
            (CpuStorage::F64(x), CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(w)) => {
                fast!(F64, f64, x, a, b, w)
            }
            _ => {}
        }
        self.device_fwd((x, xl), (a, al), (b, bl), |s| match s {
            Storage::Cpu(s) => Some(s),
            _ => None,
        })
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        self.device_fwd((x, xl), (a, al), (b, bl), |s| match s {
            Storage::Cuda(s) => Some(s),
            _ => None,
        })
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        xl: &Layout,
        a: &MetalStorage,
        al: &Layout,
        b: &MetalStorage,
        bl: &Layout,
    ) -> candle_core::Result<(MetalStorage, Shape)> {
        self.device_fwd((x, xl), (a, al), (b, bl), |s| match s {
            Storage::Metal(s) => Some(s),
            _ => None,
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b3: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let need_dx = x.track_op();
        let (x, a, b3) = (x.detach(), a.detach(), b3.detach());
        // Dequantized once for this backward (a quantized base), dropped at its end.
        let weight = self.weight.get()?;
        let r = a.dim(0)?;
        let b = b3.narrow(1, 0, r)?;
        let s = self.scaling;
        let g = g.contiguous()?;
        // DoRA: the gradient reaching the pre-scale product is g ⊙ scale.
        let gz = match &self.dora {
            Some(d) => g.broadcast_mul(&d.scale.to_dtype(g.dtype())?.unsqueeze(0)?)?,
            None => g.clone(),
        };
        // s·gz·B [m, r]: the gradient reaching x·Aᵀ.
        let gb = (gz.matmul(&b)? * s)?;
        let dx = if !need_dx {
            None
        } else if gz.device().is_cpu() {
            Some(gz.apply_op2_no_bwd(
                &gb,
                &LoraDx {
                    weight: weight.clone(),
                    a: a.clone(),
                },
            )?)
        } else {
            Some((gz.matmul(&weight)? + gb.matmul(&a)?)?)
        };
        // dA = (s·gz·B)ᵀ·x [r, k]; dB = gzᵀ·(s·x·Aᵀ) [n, r] (x·Aᵀ recomputed: m·k·r flops).
        let da = gb.t()?.matmul(&x)?;
        let xa = (x.matmul(&a.t()?)? * s)?;
        let db = gz.t()?.matmul(&xa)?;
        let db3 = match &self.dora {
            None => db,
            Some(d) => {
                let m = b3.narrow(1, r, 1)?.squeeze(1)?;
                let dm = magnitude_grad(&g, y, &m, d, || {
                    // z = x·W0ᵀ + s·(x·Aᵀ)·Bᵀ, recomputed only for a zero magnitude.
                    x.matmul(&weight.t()?)? + xa.matmul(&b.t()?)?
                })?;
                Tensor::cat(&[db, dm.unsqueeze(1)?], 1)?
            }
        };
        Ok((dx, Some(da), Some(db3)))
    }
}

/// `∂L/∂m` for DoRA's `y = (m / n) ⊙ z` (`n` detached): `Σ_rows g ⊙ z / n` where `n > 0`, 0
/// where the scale is fixed at 1. `z / n = y / m`, so `z` is recomputed (`z()`) only when some
/// `m` is exactly 0 where `n > 0`.
fn magnitude_grad(
    g: &Tensor,
    y: &Tensor,
    m: &Tensor,
    d: &DoraRows,
    z: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let rows = g.dim(0)?;
    let ones = Tensor::ones((1, rows), g.dtype(), g.device())?;
    // Column sums as a GEMV: candle's strided reduction over rows is far slower.
    let colsum = |t: &Tensor| ones.matmul(&(g * t)?)?.squeeze(0);
    let n = d.norm.to_dtype(g.dtype())?;
    let positive = n.gt(0.0)?;
    let zero = n.zeros_like()?;
    let m = m.to_dtype(g.dtype())?;
    let m_zero = positive.where_cond(&m.eq(0.0)?.to_dtype(g.dtype())?, &zero)?;
    let any_zero_m = m_zero.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? > 0.0;
    if any_zero_m {
        let safe = positive.where_cond(&n, &n.ones_like()?)?;
        return positive.where_cond(&colsum(&z()?)?.div(&safe)?, &zero);
    }
    let ones_m = m.ones_like()?;
    let safe_m = positive.where_cond(&m, &ones_m)?;
    positive.where_cond(&colsum(y)?.div(&safe_m)?, &zero)
}

impl CustomOp2 for LoraDx {
    fn name(&self) -> &'static str {
        "adapters-lora-dx"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        gb: &CpuStorage,
        gbl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (w, wl) = self.weight.storage_and_layout();
        let (a, al) = self.a.storage_and_layout();
        let (Storage::Cpu(w), Storage::Cpu(a)) = (&*w, &*a) else {
            candle_core::bail!("lora_matmul backward: tensors on different devices")
        };
        let (m, n, r) = match (gl.dims(), gbl.dims()) {
            ([m, n], [m2, r]) if m == m2 => (*m, *n, *r),
            (g, gb) => candle_core::bail!("lora_matmul backward: shapes {g:?} and {gb:?}"),
        };
        let k = wl.dims()[1];
        if wl.dims() != [n, k] || al.dims() != [r, k] {
            candle_core::bail!(
                "lora_matmul backward: W0 {:?}, A {:?}",
                wl.dims(),
                al.dims()
            )
        }
        let d = [m, k, r, n];
        macro_rules! fast {
            ($v:ident, $g:expr, $gb:expr, $w:expr, $a:expr) => {
                match (slice($g, gl), slice($gb, gbl), slice($w, wl), slice($a, al)) {
                    (Some(g), Some(gb), Some(w), Some(a)) => Ok((
                        CpuStorage::$v(cpu_dx_fast(g, gb, w, a, d)),
                        Shape::from((m, k)),
                    )),
                    _ => candle_core::bail!("lora_matmul backward: non-contiguous operands"),
                }
            };
        }
        match (g, gb, w, a) {
            (CpuStorage::F32(g), CpuStorage::F32(gb), CpuStorage::F32(w), CpuStorage::F32(a)) => {
                fast!(F32, g, gb, w, a)
            }
            (CpuStorage::F64(g), CpuStorage::F64(gb), CpuStorage::F64(w), CpuStorage::F64(a)) => {
                fast!(F64, g, gb, w, a)
            }
            _ => {
                // Other dtypes: candle's backend matmuls and add.
                let dx = g.matmul(w, (1, m, k, n), gl, wl)?;
                let dxa = gb.matmul(a, (1, m, k, r), gbl, al)?;
                let c = Layout::contiguous((m, k));
                Ok((dx.binary_impl::<Add>(&dxa, &c, &c)?, Shape::from((m, k))))
            }
        }
    }
}

/// `x·W0ᵀ + s·(x·Aᵀ)·Bᵀ` over the last axis of `x` (any rank ≥ 1) for a frozen `W0 [out, in]`
/// and trainable `A [r, in]`, `B [out, r]` of `x`'s dtype: gradients reach `x`, `A` and `B`,
/// never `W0`. See the module documentation.
pub fn lora_matmul(
    x: &Tensor,
    weight: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
) -> candle_core::Result<Tensor> {
    apply(x, dense(weight)?, a, b.contiguous()?, scaling, None)
}

/// [`lora_matmul`] over a quantized frozen base `W0 [out, in]`, dequantized to `x`'s dtype for
/// the forward and again for the backward (QLoRA), never kept.
pub fn lora_matmul_quant(
    x: &Tensor,
    weight: &Arc<QuantWeight>,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
) -> candle_core::Result<Tensor> {
    let base = Base::Quant(weight.clone(), x.dtype());
    apply(x, base, a, b.contiguous()?, scaling, None)
}

/// [`dora_matmul`] over a quantized frozen base (QDoRA), as [`lora_matmul_quant`].
pub fn dora_matmul_quant(
    x: &Tensor,
    weight: &Arc<QuantWeight>,
    a: &Tensor,
    b: &Tensor,
    magnitude: &Tensor,
    scaling: f64,
    rows: DoraRows,
) -> candle_core::Result<Tensor> {
    let bm = Tensor::cat(&[b, &magnitude.unsqueeze(1)?], 1)?;
    let base = Base::Quant(weight.clone(), x.dtype());
    apply(x, base, a, bm, scaling, Some(rows))
}

/// A dense base, contiguous.
fn dense(weight: &Tensor) -> candle_core::Result<Base> {
    Ok(Base::Dense(weight.contiguous()?))
}

/// DoRA's `(m / n) ⊙ (x·W0ᵀ + s·(x·Aᵀ)·Bᵀ)` per output, with `n` (the detached weight norm) and
/// the scale given by `rows`, as one node: gradients reach `x`, `A`, `B` and the magnitude `m
/// [out]` (`∂L/∂m = Σ_rows g ⊙ z / n` where `n > 0`), never `W0` or the norm. The product `z` is
/// not kept for the backward pass.
pub fn dora_matmul(
    x: &Tensor,
    weight: &Tensor,
    a: &Tensor,
    b: &Tensor,
    magnitude: &Tensor,
    scaling: f64,
    rows: DoraRows,
) -> candle_core::Result<Tensor> {
    let bm = Tensor::cat(&[b, &magnitude.unsqueeze(1)?], 1)?;
    apply(x, dense(weight)?, a, bm, scaling, Some(rows))
}

fn apply(
    x: &Tensor,
    weight: Base,
    a: &Tensor,
    b3: Tensor,
    scaling: f64,
    dora: Option<DoraRows>,
) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("lora_matmul: input must have at least one axis")
    };
    let dt = x.dtype();
    let wdt = match &weight {
        Base::Dense(t) => t.dtype(),
        Base::Quant(_, dt) => *dt,
    };
    if wdt != dt || a.dtype() != dt || b3.dtype() != dt {
        candle_core::bail!(
            "lora_matmul: x {dt:?}, W0 {wdt:?}, A {:?}, B {:?}: one dtype expected",
            a.dtype(),
            b3.dtype()
        )
    }
    let n = weight.rows()?;
    let m: usize = lead.iter().product();
    let x2 = x.reshape((m, k))?.contiguous()?;
    let op = LoraMatmul {
        weight,
        scaling,
        dora,
    };
    let y = x2.apply_op3(&a.contiguous()?, &b3, op)?;
    let mut out = lead.to_vec();
    out.push(n);
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// A variable of N(0, scale²) values in `dt`.
    fn rvar(scale: f32, shape: impl Into<candle_core::Shape>, dt: DType) -> Var {
        let t = Tensor::randn(0f32, scale, shape, &Device::Cpu).unwrap();
        Var::from_tensor(&t.to_dtype(dt).unwrap()).unwrap()
    }

    /// The composed expression the op replaces, built from candle ops (its own autograd).
    fn composed(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, s: f64) -> Tensor {
        let base = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let lora = x
            .broadcast_matmul(&a.t().unwrap())
            .unwrap()
            .broadcast_matmul(&b.t().unwrap())
            .unwrap();
        (base + (lora * s).unwrap()).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let scale = b
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .max(1e-30);
        let d = (a - b).unwrap().abs().unwrap().max(0).unwrap();
        d.to_scalar::<f64>().unwrap() / scale
    }

    /// Forward and the gradients of x, A and B against candle's autograd of the composed
    /// expression, on the fused CPU kernels (f32, f64), the generic path (bf16) and a
    /// non-contiguous 3-D input; W0 gets no gradient.
    #[test]
    fn matches_the_composed_expression() {
        let dev = Device::Cpu;
        for (dt, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5), (DType::BF16, 3e-2)] {
            let (bsz, t, k, r, n, s) = (3, 5, 24, 4, 17, 1.75);
            let x0 = Tensor::randn(0f32, 1.0, (bsz, k, t), &dev).unwrap();
            // [b, t, k] through a transpose: not contiguous.
            let xv = Var::from_tensor(&x0.to_dtype(dt).unwrap()).unwrap();
            let x = xv.as_tensor().transpose(1, 2).unwrap();
            let w = Tensor::randn(0f32, 0.3, (n, k), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let a = rvar(0.3, (r, k), dt);
            let b = rvar(0.3, (n, r), dt);
            let g = Tensor::randn(0f32, 1.0, (bsz, t, n), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();

            let y = lora_matmul(&x, &w, a.as_tensor(), b.as_tensor(), s).unwrap();
            let want = composed(&x, &w, a.as_tensor(), b.as_tensor(), s);
            assert_eq!(y.dims(), &[bsz, t, n]);
            assert!(
                max_rel(&y, &want) < tol,
                "{dt:?} forward {}",
                max_rel(&y, &want)
            );

            let gy = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gw = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
            for (what, v) in [
                ("x", xv.as_tensor()),
                ("A", a.as_tensor()),
                ("B", b.as_tensor()),
            ] {
                let (got, exp) = (gy.get(v).unwrap(), gw.get(v).unwrap());
                assert!(
                    max_rel(got, exp) < tol,
                    "{dt:?} d{what} {}",
                    max_rel(got, exp)
                );
            }
            assert!(gy.get(&w).is_none(), "W0 must not get a gradient");
        }
    }

    /// DoRA: forward and the gradients of x, A, B and m against candle's autograd of
    /// `where(n > 0, m / n, 1) ⊙ (x·W0ᵀ + s·x·Aᵀ·Bᵀ)` with `n = ‖W0 + s·B·A‖` detached; row 0 has
    /// a zero norm (zero W0 and B rows), row 1 a zero magnitude (the recomputed-z branch).
    #[test]
    fn dora_matches_the_composed_expression() {
        let dev = Device::Cpu;
        for (dt, tol) in [(DType::F64, 1e-11), (DType::F32, 2e-5), (DType::BF16, 5e-2)] {
            for zero_m in [false, true] {
                let (t, k, r, n, s) = (6, 16, 3, 9, 0.5);
                let x = rvar(1.0, (t, k), dt);
                let mut w = Tensor::randn(0f32, 0.3, (n, k), &dev).unwrap();
                w = w
                    .slice_assign(
                        &[0..1, 0..k],
                        &Tensor::zeros((1, k), DType::F32, &dev).unwrap(),
                    )
                    .unwrap();
                let w = w.to_dtype(dt).unwrap();
                let a = rvar(0.3, (r, k), dt);
                let mut b0 = Tensor::randn(0f32, 0.3, (n, r), &dev).unwrap();
                b0 = b0
                    .slice_assign(
                        &[0..1, 0..r],
                        &Tensor::zeros((1, r), DType::F32, &dev).unwrap(),
                    )
                    .unwrap();
                let b = Var::from_tensor(&b0.to_dtype(dt).unwrap()).unwrap();
                let mut mv: Vec<f32> = (0..n).map(|i| 0.5 + 0.1 * i as f32).collect();
                if zero_m {
                    mv[1] = 0.0;
                }
                let m0 = Tensor::new(mv.as_slice(), &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let m = Var::from_tensor(&m0).unwrap();
                let full = (w.clone()
                    + (b.as_tensor().matmul(a.as_tensor()).unwrap() * s).unwrap())
                .unwrap();
                let norm = full.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().detach();
                let positive = norm.gt(0.0).unwrap();
                let ones = norm.ones_like().unwrap();
                let safe = positive.where_cond(&norm, &ones).unwrap();
                let scale_live = positive
                    .where_cond(&(m.as_tensor() / &safe).unwrap(), &ones)
                    .unwrap();
                let rows = DoraRows {
                    norm: norm.clone(),
                    scale: scale_live.detach(),
                };
                let y = dora_matmul(
                    x.as_tensor(),
                    &w,
                    a.as_tensor(),
                    b.as_tensor(),
                    m.as_tensor(),
                    s,
                    rows,
                )
                .unwrap();
                let z = composed(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), s);
                let want = z.broadcast_mul(&scale_live.unsqueeze(0).unwrap()).unwrap();
                assert!(
                    max_rel(&y, &want) < tol,
                    "{dt:?} forward {}",
                    max_rel(&y, &want)
                );
                let g = Tensor::randn(0f32, 1.0, (t, n), &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let gy = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                let gw = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [
                    ("x", x.as_tensor()),
                    ("A", a.as_tensor()),
                    ("B", b.as_tensor()),
                    ("m", m.as_tensor()),
                ] {
                    let (got, exp) = (gy.get(v).unwrap(), gw.get(v).unwrap());
                    assert!(
                        max_rel(got, exp) < tol,
                        "{dt:?} zero_m={zero_m} d{what} {}",
                        max_rel(got, exp)
                    );
                }
                let dm0 = gy
                    .get(m.as_tensor())
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()[0];
                assert_eq!(
                    dm0, 0.0,
                    "zero-norm row: the magnitude gets a zero gradient"
                );
            }
        }
    }

    /// A product large enough to be split across threads by output columns (n not a multiple
    /// of the 16-column chunk), against candle's matmul.
    #[test]
    fn split_products_match_candle() {
        let dev = Device::Cpu;
        let (m, k, r, n, s) = (70, 300, 8, 517, 2.0);
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (m, k), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f64, 0.1, (n, k), &dev).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f64, 0.1, (r, k), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f64, 0.1, (n, r), &dev).unwrap()).unwrap();
        let y = lora_matmul(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), s).unwrap();
        let want = composed(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), s);
        assert!(max_rel(&y, &want) < 1e-12, "{}", max_rel(&y, &want));
        let g = Tensor::randn(0f64, 1.0, (m, n), &dev).unwrap();
        let gy = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let gw = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (got, exp) = (
            gy.get(x.as_tensor()).unwrap(),
            gw.get(x.as_tensor()).unwrap(),
        );
        assert!(max_rel(got, exp) < 1e-12, "dx {}", max_rel(got, exp));
    }

    #[test]
    fn rejects_mismatched_shapes_and_dtypes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((5, 8), DType::F32, &dev).unwrap();
        let a = Tensor::zeros((3, 8), DType::F32, &dev).unwrap();
        let b_bad = Tensor::zeros((5, 2), DType::F32, &dev).unwrap();
        let err = lora_matmul(&x, &w, &a, &b_bad, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("B [5, 2]") || err.contains("[5, 2]"), "{err}");
        let b = Tensor::zeros((5, 3), DType::F64, &dev).unwrap();
        let err = lora_matmul(&x, &w, &a, &b, 1.0).unwrap_err().to_string();
        assert!(err.contains("one dtype"), "{err}");
    }
}
