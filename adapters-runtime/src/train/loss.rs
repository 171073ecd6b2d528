//! Masked causal-LM cross entropy, reduced in f32 and built only from ops that record gradients
//! in candle 0.11 (the fused `softmax_last_dim` / `log_softmax` kernels record none), and token
//! accuracy.

use crate::error::{AdapterError, Result};
use candle_core::{DType, Tensor, D};

fn check(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<()> {
    let dims = logits.dims();
    if dims.len() != 3 {
        return Err(AdapterError::ShapeMismatch {
            layer: "loss".into(),
            what: "logits [B, T, V]".into(),
            expected: vec![0, 0, 0],
            actual: dims.to_vec(),
        });
    }
    for (what, t) in [("targets", targets), ("loss_mask", mask)] {
        if t.dims() != &dims[..2] {
            return Err(AdapterError::ShapeMismatch {
                layer: "loss".into(),
                what: what.into(),
                expected: dims[..2].to_vec(),
                actual: t.dims().to_vec(),
            });
        }
    }
    Ok(())
}

/// Per-position negative log-likelihood `[B, T]` (f32) of `targets` under `logits` `[B, T, V]`:
/// `logsumexp(x) - x[target]`, with the max subtracted (and detached) for stability.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let idx = targets
        .to_dtype(DType::U32)?
        .unsqueeze(D::Minus1)?
        .contiguous()?;
    let picked = shifted.contiguous()?.gather(&idx, D::Minus1)?;
    Ok((lse - picked)?.squeeze(D::Minus1)?)
}

/// `(Σ mask·nll, Σ mask)` as f32 scalars: the summed loss over masked targets and their count,
/// for token-weighted averages across batches.
pub fn masked_cross_entropy_sum(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    check(logits, targets, mask)?;
    let mask = mask.to_dtype(DType::F32)?;
    let nll = token_nll(logits, targets)?;
    Ok(((nll * &mask)?.sum_all()?, mask.sum_all()?))
}

/// Mean cross entropy over the positions where `mask` is 1 (`logits` `[B, T, V]` in any float
/// dtype, `targets` `[B, T]` ids, `mask` `[B, T]`); an f32 scalar that carries gradients. A batch
/// without any target gives 0.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (sum, count) = masked_cross_entropy_sum(logits, targets, mask)?;
    Ok(sum.broadcast_div(&count.clamp(1f32, f32::MAX)?)?)
}

/// `(correct, total)`: masked positions where the arg-max of `logits` is the target.
pub fn token_accuracy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<(usize, usize)> {
    check(logits, targets, mask)?;
    let pred = logits.detach().argmax(D::Minus1)?;
    let hit = pred
        .eq(&targets.to_dtype(DType::U32)?)?
        .to_dtype(DType::F32)?;
    let mask = mask.to_dtype(DType::F32)?;
    let correct = (hit * &mask)?.sum_all()?.to_scalar::<f32>()?;
    let total = mask.sum_all()?.to_scalar::<f32>()?;
    Ok((correct.round() as usize, total.round() as usize))
}
