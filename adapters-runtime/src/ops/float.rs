//! Float element types of the fused ops' CPU kernels, with the type each accumulates in.

use candle_core::cpu::kernels::VecOps;
use candle_core::{bail, DType, Layout, Result, Tensor, WithDType};
use half::{bf16, f16};
use num_traits::{Float, Zero};

/// A float element type: `f32` and `f64` accumulate in themselves, `bf16` and `f16` in `f32`.
pub(crate) trait Elem: WithDType + Float + VecOps + Send + Sync {
    /// The type rows are reduced and backward passes computed in.
    type Acc: Float + std::iter::Sum + std::ops::AddAssign + Send + Sync;
    /// Widens to the accumulation type.
    fn up(self) -> Self::Acc;
    /// Rounds back from the accumulation type.
    fn down(a: Self::Acc) -> Self;
    /// An `f32` constant (an epsilon) in the accumulation type.
    fn acc_f32(v: f32) -> Self::Acc;
    /// A count in the accumulation type.
    fn acc_usize(n: usize) -> Self::Acc;
}

macro_rules! elem {
    ($t:ty, $acc:ty, $up:expr, $down:expr) => {
        impl Elem for $t {
            type Acc = $acc;
            #[inline(always)]
            fn up(self) -> $acc {
                $up(self)
            }
            #[inline(always)]
            fn down(a: $acc) -> Self {
                $down(a)
            }
            #[inline(always)]
            fn acc_f32(v: f32) -> $acc {
                v as $acc
            }
            #[inline(always)]
            fn acc_usize(n: usize) -> $acc {
                n as $acc
            }
        }
    };
}

elem!(f32, f32, |v| v, |a| a);
elem!(f64, f64, |v| v, |a| a);
elem!(bf16, f32, bf16::to_f32, bf16::from_f32);
elem!(f16, f32, f16::to_f32, f16::from_f32);

/// `Σ_i f(a_i, b_i, c_i)` over equal-length slices, in eight independent partial sums (which
/// vectorise; the rounding order differs from a sequential sum), for `K` quantities at once.
#[inline(always)]
pub(crate) fn sum_lanes<T: Elem, const K: usize>(
    a: &[T],
    b: &[T],
    c: &[T],
    f: impl Fn(T, T, T) -> [T::Acc; K],
) -> [T::Acc; K] {
    let mut lanes = [[T::Acc::zero(); K]; 8];
    let chunks = a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .zip(c.chunks_exact(8));
    for ((a, b), c) in chunks {
        let (a, b, c): (&[T; 8], &[T; 8], &[T; 8]) = (
            a.try_into().expect("chunk of 8"),
            b.try_into().expect("chunk of 8"),
            c.try_into().expect("chunk of 8"),
        );
        for l in 0..8 {
            let v = f(a[l], b[l], c[l]);
            for k in 0..K {
                lanes[l][k] += v[k];
            }
        }
    }
    let full = a.len() / 8 * 8;
    let mut out = [T::Acc::zero(); K];
    for i in full..a.len() {
        let v = f(a[i], b[i], c[i]);
        for k in 0..K {
            out[k] += v[k];
        }
    }
    for lane in lanes {
        for k in 0..K {
            out[k] += lane[k];
        }
    }
    out
}

/// The contiguous part of `data` that `layout` addresses, or an error naming `what`.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} has to be contiguous"),
    }
}

/// The dtype backward passes of half-precision tensors are computed in (`f32`), else `dtype`.
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

/// `t` converted to [`compute_dtype`] of its dtype.
pub(crate) fn widen(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(compute_dtype(t.dtype()))
}

/// Calls `$f::<T>($args…)` with `T` the element type of the CPU storages, which must all match.
macro_rules! dispatch_float {
    ($what:expr, $f:ident, ($($s:ident),+), ($($arg:expr),*)) => {{
        use candle_core::CpuStorage as C;
        match ($($s,)+) {
            ($(C::F32($s),)+) => $f::<f32>($($s,)+ $($arg),*),
            ($(C::F64($s),)+) => $f::<f64>($($s,)+ $($arg),*),
            ($(C::BF16($s),)+) => $f::<half::bf16>($($s,)+ $($arg),*),
            ($(C::F16($s),)+) => $f::<half::f16>($($s,)+ $($arg),*),
            _ => candle_core::bail!("{}: unsupported or mismatched dtypes", $what),
        }
    }};
}
pub(crate) use dispatch_float;
