//! The DoRA weight norm `n = ‖W0 + s·B·A‖` per output row, without forming the `out × in` matrix.
//!
//! ```text
//! ‖W0 + sBA‖²_row = ‖W0‖²_row + 2s·rowsum((W0·Aᵀ) ⊙ B) + s²·rowsum((B·(A·Aᵀ)) ⊙ B)
//! ```
//! `‖W0‖²_row` is cached (W0 is frozen); `W0·Aᵀ` is `[out, r]`; `A·Aᵀ` is `[r, r]`. Everything is
//! accumulated in the adapter dtype (f32, or f64 for f64 bases), casting W0 in row chunks so no
//! full-size f32 copy of a bf16/f16 weight exists either. The squared norm is clamped at 0 before
//! the square root (cancellation can make it slightly negative when W0 + sBA ≈ 0).
//!
//! For an embedding table `E [vocab, dim]` (A `[r, vocab]`, B `[dim, r]`) the same formula applies
//! to `W = Eᵀ`: the norm runs over the vocab axis, one value per embedding dimension.
//!
//! [`dora_scale`] turns the norm into DoRA's scale `m / n`, with the zero-norm rule.

use candle_core::{DType, Tensor, D};

/// Elements of a base weight cast to the adapter dtype at once (32 MiB of f32).
const CHUNK_ELEMS: usize = 8 << 20;

fn chunk_rows(rows: usize, cols: usize) -> usize {
    (CHUNK_ELEMS / cols.max(1)).clamp(1, rows.max(1))
}

/// Runs `f` over row chunks of `w [rows, cols]`, each cast to `dtype`.
fn for_row_chunks(
    w: &Tensor,
    dtype: DType,
    mut f: impl FnMut(usize, Tensor) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let (rows, cols) = w.dims2()?;
    if w.dtype() == dtype {
        return f(0, w.clone());
    }
    let step = chunk_rows(rows, cols);
    let mut start = 0;
    while start < rows {
        let len = step.min(rows - start);
        f(start, w.narrow(0, start, len)?.to_dtype(dtype)?)?;
        start += len;
    }
    Ok(())
}

/// `‖W[i,:]‖²` for each row of `w [out, in]`, in `dtype`: `[out]`.
pub fn row_sq_norms(w: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let mut parts = Vec::new();
    for_row_chunks(w, dtype, |_, c| {
        parts.push(c.sqr()?.sum(D::Minus1)?);
        Ok(())
    })?;
    cat_rows(parts)
}

/// Concatenates row chunks (no copy for a single chunk).
fn cat_rows(mut parts: Vec<Tensor>) -> candle_core::Result<Tensor> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    Tensor::cat(&parts, 0)
}

/// `‖E[:,j]‖²` for each column of an embedding table `e [vocab, dim]`, in `dtype`: `[dim]`.
pub fn col_sq_norms(e: &Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for_row_chunks(e, dtype, |_, c| {
        let s = c.sqr()?.sum(0)?;
        acc = Some(match acc.take() {
            Some(a) => (a + s)?,
            None => s,
        });
        Ok(())
    })?;
    acc.ok_or_else(|| candle_core::Error::Msg("empty embedding table".into()))
}

/// `W·Aᵀ` for a linear weight `w [out, in]` and `a [r, in]` (adapter dtype): `[out, r]`.
pub fn weight_times_at(w: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
    let at = a.t()?;
    let mut parts = Vec::new();
    for_row_chunks(w, a.dtype(), |_, c| {
        parts.push(c.matmul(&at)?);
        Ok(())
    })?;
    cat_rows(parts)
}

/// `(A·E)ᵀ` for an embedding table `e [vocab, dim]` and `a [r, vocab]`: `[dim, r]`, i.e. `W·Aᵀ`
/// with `W = Eᵀ`.
pub fn embedding_times_at(e: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for_row_chunks(e, a.dtype(), |start, c| {
        let part = a.narrow(1, start, c.dim(0)?)?.matmul(&c)?;
        acc = Some(match acc.take() {
            Some(x) => (x + part)?,
            None => part,
        });
        Ok(())
    })?;
    acc.ok_or_else(|| candle_core::Error::Msg("empty embedding table".into()))?
        .t()
}

/// The factored norm from its parts: `base_sq [out]`, `w_at = W·Aᵀ [out, r]`, `a [r, in]`,
/// `b [out, r]` and the scaling `s`. All inputs in one float dtype; result `[out]`, no gradient.
pub fn factored_norm(
    base_sq: &Tensor,
    w_at: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s: f64,
) -> candle_core::Result<Tensor> {
    let (a, b) = (a.detach(), b.detach());
    let cross = (w_at * &b)?.sum(D::Minus1)?;
    let aat = a.matmul(&a.t()?)?;
    let sq = (b.matmul(&aat)? * &b)?.sum(D::Minus1)?;
    let n2 = ((base_sq + (cross * (2.0 * s))?)? + (sq * (s * s))?)?;
    n2.relu()?.sqrt()?.detach().contiguous()
}

/// DoRA's per-output scale from the magnitude `m [out]` and the detached norm `n [out]`:
///
/// ```text
/// scale = m / n   where n > 0   (PEFT's `magnitude / weight_norm`, bit for bit)
/// scale = 1       where n = 0   (and where n is NaN)
/// ```
///
/// `n = 0` means the whole row of `V = W0 + s·B·A` is zero (e.g. the all-zero rows real
/// checkpoints have, right after attach), so the DoRA row `(m/n)·V` is `0/0`: PEFT 0.21 returns
/// NaN there and the NaN spreads through the layer, its gradients and every merged weight. Any
/// finite scale gives that row its only sensible output, `0` (the base's), because `V` is zero;
/// `1` is the value of `m/n` everywhere else at attach (`m = ‖W0‖ = n`), so DoRA starts exactly
/// as LoRA on every row, zero rows included, and `B·A` gets the LoRA gradient there, which moves
/// the row off zero; from then on `n > 0` and the PEFT formula applies. The magnitude gets a
/// zero (finite) gradient on such a row: its output does not depend on it.
///
/// The result carries `m`'s gradient; only `[out]`-sized operations are added.
pub fn dora_scale(m: &Tensor, n: &Tensor) -> candle_core::Result<Tensor> {
    let positive = n.gt(0.0)?;
    let ones = n.ones_like()?;
    let safe = positive.where_cond(n, &ones)?;
    positive.where_cond(&(m / safe)?, &ones)
}
