//! Differentiable rotary embeddings (the three layouts of `candle_nn::rotary_emb`).

use super::float::{contiguous, dispatch_float, widen, Elem};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Which pairs of the head dimension rotate together, and how `x` is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// `x` is `[b, h, t, d]`; element `i` pairs with `i + d/2` (`candle_nn::rotary_emb::rope`).
    Halves,
    /// `x` is `[b, h, t, d]`; element `2i` pairs with `2i + 1` (`rope_i`).
    Interleaved,
    /// `x` is `[b, t, h, d]`; element `i` pairs with `i + d/2` (`rope_thd`).
    Thd,
}

/// Rotary embedding applied to `(x, cos, sin)`: `y1 = x1·cos − x2·sin`, `y2 = x1·sin + x2·cos`.
/// Its backward is the transposed rotation, that is the same op with `−sin`; `cos` / `sin`
/// get gradients too when they are tracked (tensor ops, see `cos_sin_grads`).
#[derive(Debug, Clone, Copy)]
pub struct RopeOp(pub RopeKind);

#[allow(clippy::too_many_arguments)]
fn rope_cpu<T: Elem>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    lx: &Layout,
    lc: &Layout,
    ls: &Layout,
    kind: RopeKind,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous(x, lx, "rope input")?;
    let (cos, sin) = (contiguous(cos, lc, "cos")?, contiguous(sin, ls, "sin")?);
    let (_b, d1, d2, d) = lx.shape().dims4()?;
    let (t, h) = if kind == RopeKind::Thd {
        (d1, d2)
    } else {
        (d2, d1)
    };
    let batched = lc.dims().len() == 3 && ls.dims().len() == 3;
    let half = d / 2;
    let mut dst = vec![T::zero(); x.len()];
    // One chunk per (batch, head) of `[b, h, t, d]`, per batch of `[b, t, h, d]`.
    let (chunk, heads) = if kind == RopeKind::Thd {
        (t * h * d, h)
    } else {
        (t * d, 1)
    };
    dst.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let b_i = if kind == RopeKind::Thd { i } else { i / h };
            let cs0 = if batched { b_i * t * half } else { 0 };
            let (cos, sin) = (&cos[cs0..cs0 + t * half], &sin[cs0..cs0 + t * half]);
            for i_t in 0..t {
                for i_h in 0..heads {
                    let row = (i_t * heads + i_h) * d;
                    for i_d in 0..half {
                        let (i1, i2) = match kind {
                            RopeKind::Interleaved => (row + 2 * i_d, row + 2 * i_d + 1),
                            _ => (row + i_d, row + i_d + half),
                        };
                        let (c, s) = (cos[i_t * half + i_d], sin[i_t * half + i_d]);
                        // The same expressions as candle-nn's kernels: bit-identical results.
                        dst[i1] = src[i1] * c - src[i2] * s;
                        dst[i2] = src[i1] * s + src[i2] * c;
                    }
                }
            }
        });
    Ok((T::to_cpu_storage_owned(dst), lx.shape().clone()))
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "adapters-rotary-emb"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        c: &CpuStorage,
        lc: &Layout,
        s: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch_float!("rope", rope_cpu, (x, c, s), (lx, lc, ls, self.0))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        c: &candle_core::CudaStorage,
        lc: &Layout,
        s: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda_rope::rope_fwd(self.0, x, lx, c, lc, s, ls)
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            let (g, neg_sin) = (g.contiguous()?, sin.neg()?);
            Some(g.apply_op3_no_bwd(cos, &neg_sin, self)?)
        } else {
            None
        };
        if !(cos.track_op() || sin.track_op()) {
            return Ok((dx, None, None));
        }
        let (dcos, dsin) = cos_sin_grads(self.0, x, g, cos)?;
        Ok((
            dx,
            cos.track_op().then_some(dcos),
            sin.track_op().then_some(dsin),
        ))
    }
}

/// Gradients of the cos / sin tables (tensor ops, in `f32` for half types): with `(x1, x2)` the
/// rotated pairs, `dcos = Σ g1·x1 + g2·x2` and `dsin = Σ g2·x1 − g1·x2`, summed over heads (and
/// over the batch for a `[t, d/2]` table). The kernels read the first `b·t·d/2` (or `t·d/2`)
/// elements of the table, so the rest of it gets zeros.
fn cos_sin_grads(kind: RopeKind, x: &Tensor, g: &Tensor, cos: &Tensor) -> Result<(Tensor, Tensor)> {
    let (x, g) = (widen(x)?, widen(g)?);
    let (x, g) = match kind {
        RopeKind::Thd => (x.transpose(1, 2)?, g.transpose(1, 2)?),
        _ => (x, g),
    };
    let (b, h, t, d) = x.dims4()?;
    let half = d / 2;
    let split = |v: &Tensor| -> Result<(Tensor, Tensor)> {
        match kind {
            RopeKind::Interleaved => {
                let v = v.reshape((b, h, t, half, 2))?;
                Ok((
                    v.narrow(4, 0, 1)?.squeeze(4)?,
                    v.narrow(4, 1, 1)?.squeeze(4)?,
                ))
            }
            _ => Ok((v.narrow(3, 0, half)?, v.narrow(3, half, half)?)),
        }
    };
    let ((x1, x2), (g1, g2)) = (split(&x)?, split(&g)?);
    let dcos = ((&g1 * &x1)? + (&g2 * &x2)?)?.sum(1)?;
    let dsin = ((&g2 * &x1)? - (&g1 * &x2)?)?.sum(1)?;
    let table = |v: Tensor| -> Result<Tensor> {
        let v = if cos.rank() == 3 { v } else { v.sum(0)? }.flatten_all()?;
        let rest = cos.elem_count() - v.elem_count();
        v.pad_with_zeros(0, 0, rest)?
            .reshape(cos.shape())?
            .to_dtype(cos.dtype())
    };
    Ok((table(dcos)?, table(dsin)?))
}

/// Checks the shapes as candle-nn does, then applies [`RopeOp`] to contiguous copies.
pub fn rope_any(kind: RopeKind, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b_sz, d1, d2, n_embd) = xs.dims4()?;
    let seq_len = if kind == RopeKind::Thd { d1 } else { d2 };
    for cs in [cos, sin] {
        let (cs_len, cs_embd) = match *cs.dims() {
            [t, d] => (t, d),
            [b, t, d] if b == b_sz => (t, d),
            _ => bail!("cos/sin has to be [t, d/2] or [b, t, d/2] in rope {b_sz} {cs:?}"),
        };
        if cs_embd * 2 != n_embd || seq_len > cs_len {
            bail!(
                "inconsistent last dim size in rope {:?} {:?} {:?}",
                xs.shape(),
                cos.shape(),
                sin.shape()
            )
        }
    }
    if xs.device().is_metal() {
        let (c, s) = (cos.narrow(0, 0, seq_len)?, sin.narrow(0, 0, seq_len)?);
        return match kind {
            RopeKind::Halves => candle_nn::rotary_emb::rope_slow(xs, &c, &s),
            RopeKind::Interleaved => candle_nn::rotary_emb::rope_i_slow(xs, &c, &s),
            RopeKind::Thd => {
                let y = candle_nn::rotary_emb::rope_slow(&xs.transpose(1, 2)?, &c, &s)?;
                y.transpose(1, 2)?.contiguous()
            }
        };
    }
    let (cos, sin) = (cos.contiguous()?, sin.contiguous()?);
    xs.contiguous()?.apply_op3(&cos, &sin, RopeOp(kind))
}
