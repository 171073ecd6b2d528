//! Masked causal-LM cross entropy, reduced in f32 and built only from ops that record gradients
//! in candle 0.11 (the fused `softmax_last_dim` / `log_softmax` kernels record none), and token
//! accuracy; and the same loss from hidden states through a frozen output projection, in chunks
//! that never hold the full logits ([`causal_lm_loss_sum`]).

use crate::error::{AdapterError, Result};
use crate::models::llama::Llama;
use crate::ops::linear_cross_entropy;
use crate::train::batch::Batch;
use candle_core::{DType, Tensor, D};

/// `x` is `[B, T, ·]` (`what` names it) and `targets`, `mask` are `[B, T]`.
fn check_as(what_x: &str, x: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 3 {
        return Err(AdapterError::ShapeMismatch {
            layer: "loss".into(),
            what: what_x.into(),
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

fn check(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<()> {
    check_as("logits [B, T, V]", logits, targets, mask)
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

/// `(Σ mask·nll, Σ mask)` like [`masked_cross_entropy_sum`], from final hidden states
/// `[B, T, H]` and a frozen output projection `head [V, H]` instead of logits: the logits are
/// formed, reduced and differentiated a chunk of rows at a time
/// ([`crate::ops::linear_cross_entropy`]), so a step never holds `[B·T, V]` buffers for all
/// tokens. Gradients reach `hidden` only.
pub fn causal_lm_loss_sum(
    hidden: &Tensor,
    head: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, Tensor)> {
    check_as("hidden states [B, T, H]", hidden, targets, mask)?;
    let dims = hidden.dims();
    let n = dims[0] * dims[1];
    let h = hidden.reshape((n, dims[2]))?;
    let mask = mask.to_dtype(DType::F32)?.flatten_all()?;
    let sum = linear_cross_entropy(&h, head, &targets.flatten_all()?, &mask)?;
    Ok((sum.to_dtype(DType::F32)?, mask.sum_all()?))
}

/// Mean cross entropy over masked positions from hidden states and a frozen head (see
/// [`causal_lm_loss_sum`]); an f32 scalar carrying gradients, 0 for a batch without targets.
pub fn causal_lm_loss(
    hidden: &Tensor,
    head: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let (sum, count) = causal_lm_loss_sum(hidden, head, targets, mask)?;
    Ok(sum.broadcast_div(&count.clamp(1f32, f32::MAX)?)?)
}

/// The training loss of a [`Llama`] on a batch: [`causal_lm_loss`] through its frozen head, or
/// [`masked_cross_entropy`] of its logits when the head trains or the logits are soft-capped
/// (Gemma 2).
pub fn llama_loss(model: &Llama, batch: &Batch) -> Result<Tensor> {
    // Soft-capped logits (Gemma 2) need the logits themselves.
    let head = model
        .head_weight()
        .filter(|_| model.logit_softcap().is_none());
    match head {
        Some(head) => causal_lm_loss(
            &model.forward_hidden(&batch.input_ids)?,
            head,
            &batch.targets,
            &batch.loss_mask,
        ),
        None => masked_cross_entropy(
            &model.forward(&batch.input_ids)?,
            &batch.targets,
            &batch.loss_mask,
        ),
    }
}
