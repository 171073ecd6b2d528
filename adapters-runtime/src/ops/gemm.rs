//! Row-major matrix products on CPU slices through the `gemm` crate, split by output columns
//! across threads (one home for the products of the fused ops).

/// Products of at least this many multiply-adds are split across threads.
const SPLIT_MIN_MACS: usize = 1 << 22;

/// `dst [m, n] (=|+=) beta · lhs [m, k] · rhs`, row-major `dst` and `lhs`; `rhs` element
/// `(kk, j)` at `rhs[kk·rhs_rs + j·rhs_cs]`.
///
/// Large products are split by output columns into one single-threaded gemm per thread: for the
/// token counts of a training step (a few hundred rows) gemm's own threading scaled 1.2–1.6× on
/// two cores where the column split scales ~1.9× (BENCHMARKS.md); each thread packs only its
/// columns of `rhs` (the weight), and the threads write disjoint columns.
///
/// # Safety
/// `dst` must be valid for `m·n` writes (and reads when `accumulate`), `lhs` for `m·k` reads and
/// `rhs` for every index the strides reach.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into<T: 'static + Copy + Send + Sync>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    accumulate: bool,
    lhs: *const T,
    rhs: *const T,
    (rhs_cs, rhs_rs): (usize, usize),
    (one, beta): (T, T),
) {
    let threads = candle_core::utils::get_num_threads();
    let macs = m.saturating_mul(n).saturating_mul(k);
    // Column chunks, multiples of 16 (a cache line of f32).
    let chunk = n.div_ceil(threads.max(1)).next_multiple_of(16);
    if threads < 2 || macs < SPLIT_MIN_MACS || chunk >= n {
        // SAFETY: the caller's guarantees; gemm reads `dst` only when `read_dst`.
        unsafe {
            gemm_cols(
                (m, n, k),
                n,
                dst,
                accumulate,
                lhs,
                rhs,
                (rhs_cs, rhs_rs),
                (one, beta),
            )
        };
        return;
    }
    // Raw pointers as addresses so the closures are `Send`; every thread writes its own columns.
    let (d, l, r) = (dst as usize, lhs as usize, rhs as usize);
    rayon::scope(|s| {
        let mut j0 = 0;
        while j0 < n {
            let w = chunk.min(n - j0);
            s.spawn(move |_| {
                let dst = (d as *mut T).wrapping_add(j0);
                let rhs = (r as *const T).wrapping_add(j0 * rhs_cs);
                // SAFETY: columns j0..j0 + w of `dst` (row stride n) and of `rhs` lie within
                // the caller's buffers; no other thread touches these columns.
                unsafe {
                    gemm_cols(
                        (m, w, k),
                        n,
                        dst,
                        accumulate,
                        l as *const T,
                        rhs,
                        (rhs_cs, rhs_rs),
                        (one, beta),
                    )
                };
            });
            j0 += w;
        }
    });
}

/// One single-threaded gemm over `n` columns of a row-major `dst` whose rows are `dst_rs` apart.
///
/// # Safety
/// As [`gemm_into`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_cols<T: 'static + Copy>(
    (m, n, k): (usize, usize, usize),
    dst_rs: usize,
    dst: *mut T,
    accumulate: bool,
    lhs: *const T,
    rhs: *const T,
    (rhs_cs, rhs_rs): (usize, usize),
    (one, beta): (T, T),
) {
    // SAFETY: the caller's guarantees; gemm reads `dst` only when `read_dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            1,
            k as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            one,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}
