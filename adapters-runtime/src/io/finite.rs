//! The one finiteness check for weights about to be written or used: counts NaN / ±Inf values.

use crate::error::{AdapterError, Result};
use candle_core::{DType, Tensor};

/// How many values of `t` are NaN or infinite (0 for integer tensors). Runs on the tensor's
/// device; the only host transfer is the count.
pub fn non_finite_count(t: &Tensor) -> candle_core::Result<usize> {
    if !t.dtype().is_float() {
        return Ok(0);
    }
    // 0·x is 0 for finite x and NaN for NaN and ±Inf.
    let zeroed = t.affine(0.0, 0.0)?;
    let bad = zeroed
        .ne(0.0)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?;
    Ok(bad as usize)
}

/// Fails with [`AdapterError::NonFiniteWeights`] when `t` holds a NaN or infinite value; `what`
/// is the operation (`saving adapter to …`), `tensor` the tensor's name, `hint` how the caller
/// can allow it (empty, or e.g. ` (pass --allow-non-finite to write them anyway)`).
pub fn check_finite(t: &Tensor, what: &str, tensor: &str, hint: &str) -> Result<()> {
    let count = non_finite_count(t)?;
    if count > 0 {
        return Err(AdapterError::NonFiniteWeights {
            what: what.into(),
            tensor: tensor.into(),
            count,
            total: t.elem_count(),
            hint: hint.into(),
        });
    }
    Ok(())
}
