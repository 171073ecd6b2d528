//! Cross entropy through a frozen output projection, in row chunks: `Σ wᵢ·nllᵢ` of
//! `softmax(hᵢ·Wᵀ)` without ever holding the `[tokens, vocab]` logits, their softmax or their
//! gradient for all tokens at once.
//!
//! For each chunk of rows (at most [`CHUNK_ELEMS`] logits) the forward forms the chunk's logits,
//! reduces them to `nll` in f32 (f64 for f64 inputs) and, when `h` needs a gradient, turns them in
//! the same pass into `wᵢ·(softmax − onehot)` and multiplies by `W` into `∂/∂h` for those rows — as
//! Liger-Kernel's fused linear cross entropy does. The loss is the final op, so computing the
//! gradient early costs nothing, and what is kept for the backward is `[tokens, hidden]` instead
//! of several `[tokens, vocab]` buffers: 61 MiB of f32 logits per copy for 312 tokens of a 49 152
//! vocabulary, 805 MiB at 4 096 tokens. `W` gets no gradient (it is frozen).

use super::gemm::gemm_into;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

/// Logits per chunk (16 MiB of f32).
pub const CHUNK_ELEMS: usize = 4 << 20;

/// The graph node: its forward returns the precomputed loss; its backward `∂/∂h · g`.
#[derive(Debug)]
struct LossNode {
    loss: Tensor,
    grad_h: Option<Tensor>,
}

impl CustomOp1 for LossNode {
    fn name(&self) -> &'static str {
        "adapters-linear-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (s, l) = self.loss.storage_and_layout();
        match &*s {
            Storage::Cpu(s) => Ok((s.try_clone(l)?, Shape::from(()))),
            _ => candle_core::bail!("linear_cross_entropy: loss on another device"),
        }
    }

    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (s, l) = self.loss.storage_and_layout();
        match &*s {
            Storage::Cuda(s) => Ok((s.try_clone(l)?, Shape::from(()))),
            _ => candle_core::bail!("linear_cross_entropy: loss on another device"),
        }
    }

    fn metal_fwd(
        &self,
        _: &candle_core::MetalStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, Shape)> {
        let (s, l) = self.loss.storage_and_layout();
        match &*s {
            Storage::Metal(s) => Ok((s.try_clone(l)?, Shape::from(()))),
            _ => candle_core::bail!("linear_cross_entropy: loss on another device"),
        }
    }

    fn bwd(&self, _h: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match &self.grad_h {
            Some(d) => Ok(Some(d.broadcast_mul(&g.to_dtype(d.dtype())?)?)),
            None => Ok(None),
        }
    }
}

/// One chunk on CPU: `(Σ wᵢ·nllᵢ, wᵢ·(softmax − onehot))` from f32/f64 logits, rows in parallel.
fn cpu_chunk<T>(
    logits: &[T],
    v: usize,
    targets: &[u32],
    weights: &[f32],
    grad: bool,
) -> (f64, Vec<T>)
where
    T: num_traits::Float + Send + Sync + Into<f64>,
{
    let mut out = if grad {
        vec![T::zero(); logits.len()]
    } else {
        Vec::new()
    };
    let row_loss = |row: &[T], t: usize, wt: f32, g: Option<&mut [T]>| -> f64 {
        let max = row.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
        let mut sum = T::zero();
        match g {
            // One exp per logit: store exp(x − max), then scale it in place.
            Some(g) => {
                for (gi, &x) in g.iter_mut().zip(row) {
                    *gi = (x - max).exp();
                    sum = sum + *gi;
                }
                let w = T::from(wt).unwrap_or_else(T::zero);
                let inv = w / sum;
                for gi in g.iter_mut() {
                    *gi = *gi * inv;
                }
                g[t] = g[t] - w;
            }
            None => {
                for &x in row {
                    sum = sum + (x - max).exp();
                }
            }
        }
        let nll: f64 = (sum.ln() + max - row[t]).into();
        f64::from(wt) * nll
    };
    let total = if grad {
        logits
            .par_chunks(v)
            .zip(out.par_chunks_mut(v))
            .enumerate()
            .map(|(i, (row, g))| row_loss(row, targets[i] as usize, weights[i], Some(g)))
            .sum()
    } else {
        logits
            .par_chunks(v)
            .enumerate()
            .map(|(i, row)| row_loss(row, targets[i] as usize, weights[i], None))
            .sum()
    };
    (total, out)
}

/// The whole loss on CPU slices (f32 / f64, contiguous): per chunk one product for the logits,
/// one pass for loss and `∂/∂logits`, one product into the chunk's rows of `∂/∂h`.
#[allow(clippy::too_many_arguments)]
fn cpu_fast<T>(
    h: &[T],
    w: &[T],
    (n, hid, v): (usize, usize, usize),
    targets: &[u32],
    weights: &[f32],
    rows: usize,
    grad: bool,
) -> (f64, Option<Vec<T>>)
where
    T: num_traits::Float + candle_core::WithDType + Send + Sync + Into<f64>,
{
    let (zero, one) = (
        <T as num_traits::Zero>::zero(),
        <T as num_traits::One>::one(),
    );
    let mut dh: Vec<T> = if grad {
        vec![zero; n * hid]
    } else {
        Vec::new()
    };
    let mut total = 0f64;
    let mut logits: Vec<T> = Vec::with_capacity(rows * v);
    let mut start = 0;
    while start < n {
        let c = rows.min(n - start);
        logits.clear();
        // SAFETY: `logits` has capacity ≥ c·v, written in full before `set_len`; `h` holds the
        // chunk's c·hid values from `start·hid`; Wᵀ element (kk, j) = w[j·hid + kk] < v·hid.
        unsafe {
            gemm_into(
                (c, v, hid),
                logits.as_mut_ptr(),
                false,
                h[start * hid..].as_ptr(),
                w.as_ptr(),
                (hid, 1),
                (zero, one),
            );
            logits.set_len(c * v);
        }
        let (t, wts) = (&targets[start..start + c], &weights[start..start + c]);
        let (loss, g) = cpu_chunk(&logits, v, t, wts, grad);
        total += loss;
        if grad {
            // SAFETY: rows start..start + c of `dh` (c·hid values); W [v, hid] row-major.
            unsafe {
                gemm_into(
                    (c, hid, v),
                    dh[start * hid..].as_mut_ptr(),
                    false,
                    g.as_ptr(),
                    w.as_ptr(),
                    (1, hid),
                    (zero, one),
                );
            }
        }
        start += c;
    }
    (total, grad.then_some(dh))
}

/// One chunk with candle ops (other devices): `(Σ wᵢ·nllᵢ [], wᵢ·(softmax − onehot) [c, V])`.
fn composed_chunk(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    grad: bool,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let e = shifted.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    let idx = targets.unsqueeze(1)?;
    let picked = shifted.gather(&idx, D::Minus1)?;
    let nll = (sum.log()? - picked)?.squeeze(1)?;
    let loss = (nll * weights)?.sum_all()?;
    if !grad {
        return Ok((loss, None));
    }
    let w = weights.unsqueeze(1)?;
    let p = e.broadcast_div(&sum)?.broadcast_mul(&w)?;
    let onehot = Tensor::zeros(p.shape(), p.dtype(), p.device())?.scatter_add(
        &idx,
        &w.contiguous()?,
        D::Minus1,
    )?;
    Ok((loss, Some((p - onehot)?)))
}

/// `Σᵢ weightsᵢ · (logsumexp(hᵢ·Wᵀ) − (hᵢ·Wᵀ)[targetsᵢ])` as an f32 scalar (f64 for f64 `h`)
/// that carries `h`'s gradient, for `h [N, H]`, a frozen `w [V, H]` of `h`'s dtype, `targets [N]`
/// ids and `weights [N]` (a loss mask, or mask / count). See the module documentation.
pub fn linear_cross_entropy(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    linear_cross_entropy_chunked(h, w, targets, weights, CHUNK_ELEMS)
}

/// [`linear_cross_entropy`] with at most `chunk_elems` logits per chunk (for tests).
#[doc(hidden)]
pub fn linear_cross_entropy_chunked(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    chunk_elems: usize,
) -> candle_core::Result<Tensor> {
    let (n, hid) = h.dims2()?;
    let (v, hid2) = w.dims2()?;
    if hid != hid2 || targets.dims() != [n] || weights.dims() != [n] {
        candle_core::bail!(
            "linear_cross_entropy: h {:?}, W {:?}, targets {:?}, weights {:?}: expected [N, H], [V, H], [N], [N]",
            h.dims(),
            w.dims(),
            targets.dims(),
            weights.dims()
        )
    }
    if w.dtype() != h.dtype() {
        candle_core::bail!(
            "linear_cross_entropy: h is {:?}, W is {:?}",
            h.dtype(),
            w.dtype()
        )
    }
    let acc = if h.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let grad = h.track_op();
    let hd = h.detach();
    let w = w.detach().contiguous()?;
    let wt = w.t()?;
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    let weights = weights.to_dtype(DType::F32)?.contiguous()?;
    let (tv, wv) = if h.device().is_cpu() {
        (targets.to_vec1::<u32>()?, weights.to_vec1::<f32>()?)
    } else {
        (Vec::new(), Vec::new())
    };
    if let Some(&bad) = tv.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("linear_cross_entropy: target id {bad} is outside the vocabulary of {v}")
    }
    let rows = (chunk_elems / v.max(1)).clamp(1, n.max(1));
    if h.device().is_cpu() && hd.is_contiguous() {
        let (hs, hl) = hd.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let dims = (n, hid, v);
        let fast = match (&*hs, &*ws) {
            (Storage::Cpu(CpuStorage::F32(a)), Storage::Cpu(CpuStorage::F32(b))) => {
                let (a, b) = (&a[hl.start_offset()..], &b[wl.start_offset()..]);
                let (loss, dh) = cpu_fast(a, b, dims, &tv, &wv, rows, grad);
                Some((loss, dh.map(CpuStorage::F32)))
            }
            (Storage::Cpu(CpuStorage::F64(a)), Storage::Cpu(CpuStorage::F64(b))) => {
                let (a, b) = (&a[hl.start_offset()..], &b[wl.start_offset()..]);
                let (loss, dh) = cpu_fast(a, b, dims, &tv, &wv, rows, grad);
                Some((loss, dh.map(CpuStorage::F64)))
            }
            _ => None,
        };
        drop((hs, ws));
        if let Some((loss, dh)) = fast {
            let grad_h = match dh {
                Some(CpuStorage::F32(d)) => Some(Tensor::from_vec(d, (n, hid), h.device())?),
                Some(CpuStorage::F64(d)) => Some(Tensor::from_vec(d, (n, hid), h.device())?),
                _ => None,
            };
            let loss = Tensor::new(loss, h.device())?.to_dtype(acc)?;
            return h.apply_op1(LossNode { loss, grad_h });
        }
    }
    let mut total = Tensor::zeros((), acc, h.device())?;
    let mut grads = Vec::new();
    let mut start = 0;
    while start < n {
        let c = rows.min(n - start);
        let logits = hd.narrow(0, start, c)?.matmul(&wt)?.to_dtype(acc)?;
        let (loss, g) = if h.device().is_cpu() {
            let (s, l) = logits.storage_and_layout();
            let (t, wts) = (&tv[start..start + c], &wv[start..start + c]);
            let (o, len) = (l.start_offset(), c * v);
            let (loss, g) = match &*s {
                Storage::Cpu(CpuStorage::F32(x)) => {
                    let (loss, g) = cpu_chunk(&x[o..o + len], v, t, wts, grad);
                    (loss, CpuStorage::F32(g))
                }
                Storage::Cpu(CpuStorage::F64(x)) => {
                    let (loss, g) = cpu_chunk(&x[o..o + len], v, t, wts, grad);
                    (loss, CpuStorage::F64(g))
                }
                _ => candle_core::bail!("linear_cross_entropy: unexpected logits storage"),
            };
            drop(s);
            let g = match g {
                CpuStorage::F32(g) if grad => Some(Tensor::from_vec(g, (c, v), h.device())?),
                CpuStorage::F64(g) if grad => Some(Tensor::from_vec(g, (c, v), h.device())?),
                _ => None,
            };
            (Tensor::new(loss, h.device())?.to_dtype(acc)?, g)
        } else {
            composed_chunk(
                &logits,
                &targets.narrow(0, start, c)?,
                &weights.narrow(0, start, c)?.to_dtype(acc)?,
                grad,
            )?
        };
        total = (total + loss)?;
        if let Some(g) = g {
            grads.push(g.to_dtype(h.dtype())?.matmul(&w)?);
        }
        start += c;
    }
    let grad_h = match grads.len() {
        0 => None,
        1 => grads.pop(),
        _ => Some(Tensor::cat(&grads, 0)?),
    };
    h.apply_op1(LossNode {
        loss: total,
        grad_h,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The same loss from full logits with candle's own ops and autograd.
    fn reference(h: &Tensor, w: &Tensor, t: &[u32], wts: &Tensor) -> Tensor {
        let logits = h.matmul(&w.t().unwrap()).unwrap();
        let lse = logits
            .exp()
            .unwrap()
            .sum_keepdim(1)
            .unwrap()
            .log()
            .unwrap()
            .squeeze(1)
            .unwrap();
        let idx = Tensor::new(t, h.device()).unwrap().unsqueeze(1).unwrap();
        let picked = logits.gather(&idx, 1).unwrap().squeeze(1).unwrap();
        ((lse - picked).unwrap() * wts).unwrap().sum_all().unwrap()
    }

    /// Loss and ∂/∂h against full-logit autograd, with chunk sizes that split the rows
    /// unevenly (1 row, 3 rows, all rows), masked rows, f64 and f32; W gets no gradient.
    #[test]
    fn matches_full_logits_in_any_chunking() {
        let dev = Device::Cpu;
        let (n, hid, v) = (7, 6, 11);
        let t: Vec<u32> = vec![0, 10, 3, 3, 7, 1, 9];
        for (dt, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            let h = Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (n, hid), &dev)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap(),
            )
            .unwrap();
            let w = Tensor::randn(0f32, 1.0, (v, hid), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let wts = Tensor::new(&[1f32, 0.5, 0.0, 1.0, 1.0, 0.0, 2.0], &dev).unwrap();
            let want = reference(h.as_tensor(), &w, &t, &wts.to_dtype(dt).unwrap());
            let want_g = want.backward().unwrap();
            let want_g = want_g.get(h.as_tensor()).unwrap();
            let want_v = want
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let targets = Tensor::new(t.as_slice(), &dev).unwrap();
            for chunk in [v, 3 * v, 100 * v] {
                let got =
                    linear_cross_entropy_chunked(h.as_tensor(), &w, &targets, &wts, chunk).unwrap();
                let got_v = got
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                assert!(
                    ((got_v - want_v) / want_v).abs() < tol,
                    "{dt:?} chunk {chunk}: {got_v} vs {want_v}"
                );
                let g = (got * 0.5).unwrap().backward().unwrap();
                assert!(g.get(&w).is_none());
                let got_g = g.get(h.as_tensor()).unwrap().to_dtype(DType::F64).unwrap();
                let exp_g = (want_g.to_dtype(DType::F64).unwrap() * 0.5).unwrap();
                let err = (got_g - &exp_g)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_keepdim(0)
                    .unwrap()
                    .max(1)
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap()[0];
                assert!(err < tol * 10.0, "{dt:?} chunk {chunk}: grad err {err}");
            }
        }
    }

    /// Products large enough to be split across threads (40 rows × 2 000 logits × 64), f64,
    /// against full-logit autograd.
    #[test]
    fn split_products_match_full_logits() {
        let dev = Device::Cpu;
        let (n, hid, v) = (40, 64, 2000);
        let h = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, hid), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f64, 0.2, (v, hid), &dev).unwrap();
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 37) % v as u32).collect();
        let wts = Tensor::ones(n, DType::F32, &dev).unwrap();
        let want = reference(h.as_tensor(), &w, &t, &wts.to_dtype(DType::F64).unwrap());
        let got = linear_cross_entropy(
            h.as_tensor(),
            &w,
            &Tensor::new(t.as_slice(), &dev).unwrap(),
            &wts,
        )
        .unwrap();
        let (a, b) = (
            got.to_scalar::<f64>().unwrap(),
            want.to_scalar::<f64>().unwrap(),
        );
        assert!(((a - b) / b).abs() < 1e-12, "{a} vs {b}");
        let (gg, gw) = (got.backward().unwrap(), want.backward().unwrap());
        let d = (gg.get(h.as_tensor()).unwrap() - gw.get(h.as_tensor()).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(d < 1e-12, "dh max abs diff {d}");
    }

    /// The composed chunk (other devices) against the CPU kernel: loss and `∂/∂logits`.
    #[test]
    fn composed_chunk_matches_the_cpu_kernel() {
        let dev = Device::Cpu;
        let (c, v) = (5, 9);
        let logits = Tensor::randn(0f32, 3.0, (c, v), &dev).unwrap();
        let t: Vec<u32> = vec![0, 8, 4, 4, 1];
        let wv: Vec<f32> = vec![1.0, 0.0, 0.25, 1.0, 2.0];
        let (loss, g) = cpu_chunk(
            &logits.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            v,
            &t,
            &wv,
            true,
        );
        let (l2, g2) = composed_chunk(
            &logits,
            &Tensor::new(t.as_slice(), &dev).unwrap(),
            &Tensor::new(wv.as_slice(), &dev).unwrap(),
            true,
        )
        .unwrap();
        let l2 = l2.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (loss - l2).abs() < 1e-5 * loss.abs().max(1.0),
            "{loss} vs {l2}"
        );
        let g2 = g2.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in g.iter().zip(&g2) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn rejects_out_of_vocabulary_targets() {
        let dev = Device::Cpu;
        let h = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
        let t = Tensor::new(&[1u32, 4], &dev).unwrap();
        let m = Tensor::ones(2, DType::F32, &dev).unwrap();
        let err = linear_cross_entropy(&h, &w, &t, &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("target id 4") && err.contains("vocabulary of 4"),
            "{err}"
        );
    }
}
