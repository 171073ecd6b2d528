//! bitsandbytes-compatible NF4 quantization of frozen 2-D weights (QLoRA's 4-bit NormalFloat, with double quantization).
//!
//! An [`Nf4Weight`] holds what `bitsandbytes.functional.quantize_4bit(w, blocksize=64,
//! compress_statistics=True, quant_type="nf4")` returns, in the same bytes:
//!
//! * the weight `[rows, cols]` is flattened and cut into blocks of [`NF4_BLOCK`] = 64 elements
//!   (the last block may be short); each block has an f32 `absmax` (its largest |w|);
//! * each element is replaced by the index (0‥15) of the [`NF4_CODE`] value nearest to
//!   `w / absmax`, two indices per byte, the even-index element in the **high** nibble (for an
//!   odd element count the last byte's low nibble is 7, the code of 0.0, as bnb pads);
//! * double quantization: `offset = mean(absmax)`; `absmax − offset` is cut into blocks of
//!   [`NF4_SCALE_BLOCK`] = 256, each with an f32 `absmax2` (its largest magnitude) and one byte
//!   per absmax: an index into bitsandbytes' signed dynamic 8-bit map ([`dynamic_map`]);
//! * dequantization: `absmax = map[q] · absmax2 + offset`, then `w = NF4_CODE[code] · absmax`,
//!   all in f32 (each product and sum rounded on its own, as bnb does).
//!
//! Storage is [`estimate::quant_weight_bytes`]`(Nf4, rows, cols)` =
//! `⌈n/2⌉ + ⌈n/64⌉ + 4·⌈⌈n/64⌉/256⌉ + 4` bytes for `n = rows·cols`.
//!
//! # Bit-exactness with bitsandbytes (0.50, CPU)
//!
//! [`Nf4Weight::quantize`] reproduces bnb's CPU `quantize_4bit` byte for byte (the golden
//! fixtures of `tests/nf4.rs` check it), which takes reproducing three details of bnb / torch:
//!
//! * **NF4 codes** (bnb's pure-torch `quantize_4bit`): a full block is scaled by
//!   `w · (1/max(absmax, 1e-38))`, the short last block by `w / max(absmax, 1e-38)` (and that
//!   block *stores* the clamped absmax, `1e-38` for an all-zero tail), both clamped to [−1, 1];
//!   the code is `bucketize` on the f32 midpoints of [`NF4_CODE`] (a value exactly on a
//!   midpoint takes the lower code). These midpoints are bit-identical to the thresholds of
//!   bnb's CUDA kernel (`dQuantizeNF4`), so GPU-quantized codes agree too (the CUDA kernel
//!   scales a short last block by the reciprocal as well, which can move a rare tie there).
//! * **The offset** is torch's CPU `absmax.mean()`: an f32 sum in torch's serial cascade order
//!   (8 lanes, 4 interleaved accumulators, 4 levels of 16), divided by the count. Torch sums
//!   more than 32,768 values on several threads, in an order that depends on the thread count,
//!   so for weights above 2,097,152 elements bnb's own offset varies by an ulp or so from
//!   machine to machine; we always use the serial order.
//! * **The 8-bit absmax codes** come from bnb's CPU kernel (`quantize_cpu_impl`), which is not
//!   an exact nearest-value search: it maps `x = (absmax − offset) · (1/absmax2)` to one of
//!   65,536 grid points (`trunc(fma((x+1)·0.5, 65535, 0.5))`) and looks up the map value
//!   nearest to that grid point. About 0.15 % of random values get another code than the exact
//!   nearest map value (near 0, where the map is denser than the grid, several codes away), and
//!   the error bound grows by at most one grid step, 2/65535, times absmax2.
//!   bnb's CUDA kernel uses a binary search instead, so GPU-quantized `qabsmax` bytes can differ
//!   from ours in those places; [`Nf4Weight::from_parts`] loads either exactly.
//!
//! Dequantization equals bnb's reference (the pure-torch `_dequantize_4bit_compute`, and the
//! CUDA kernel) bit for bit. bnb 0.50's AVX-512 CPU kernel is wrong when `cols` is a multiple of
//! 16 but not of 64 (it indexes the absmax by row); we follow the reference, not that bug.
//!
//! # Devices and speed
//!
//! Quantization runs on the CPU (the weight is copied there and the parts moved back): it runs
//! once, at load. [`Nf4Weight::dequantize`] runs on every forward and backward: on the CPU it
//! reads the byte storage in place and fills the output in parallel (rayon); elsewhere (CUDA)
//! it uses candle tensor ops only ([`Nf4Weight::dequantize_with_tensor_ops`]), which give the
//! same bits.

use std::sync::OnceLock;

use candle_core::{DType, Device, Storage, Tensor, WithDType};
use rayon::prelude::*;

use crate::error::AdapterError;
use crate::estimate::{self, QuantFormat, NF4_BLOCK, NF4_SCALE_BLOCK};

/// bitsandbytes' 16 NF4 values (`get_4bit_type("nf4")`), ascending: index = 4-bit code.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928,
    -0.52507305,
    -0.3949175,
    -0.28444138,
    -0.18477343,
    -0.091050036,
    0.0,
    0.0795803,
    0.1609302,
    0.2461123,
    0.33791524,
    0.44070983,
    0.562617,
    0.72295684,
    1.0,
];

/// The decision thresholds: f32 midpoints of consecutive [`NF4_CODE`] values (bnb's `bounds`).
const NF4_BOUNDS: [f32; 15] = {
    let mut b = [0.0f32; 15];
    let mut i = 0;
    while i < 15 {
        b[i] = (NF4_CODE[i] + NF4_CODE[i + 1]) / 2.0;
        i += 1;
    }
    b
};

/// The smallest absmax bnb divides by (`absmax.clamp(min=1e-38)`).
const MIN_ABSMAX: f32 = 1e-38;

/// Grid points of bnb's CPU 8-bit quantizer lookup table.
const LUT_SIZE: usize = 65536;

/// NF4 blocks of output filled per parallel task by the CPU dequantizer.
const BLOCKS_PER_TASK: usize = 64;

/// bitsandbytes' `create_dynamic_map(signed=True)` (ascending; index 127 is 0.0, index 255 is
/// 1.0), copied value for value (the tests compare it with bnb's).
#[rustfmt::skip]
static DYNAMIC_MAP: [f32; 256] = [
    -0.99296874, -0.9789063, -0.96484375, -0.9507812, -0.93671876, -0.92265624,
    -0.9085938, -0.89453125, -0.8804687, -0.86640626, -0.85234374, -0.8382813,
    -0.82421875, -0.8101562, -0.79609376, -0.78203124, -0.7679688, -0.75390625,
    -0.7398437, -0.72578126, -0.7117188, -0.6976563, -0.68359375, -0.6695312,
    -0.65546876, -0.6414063, -0.6273438, -0.61328125, -0.5992187, -0.58515626,
    -0.5710938, -0.5570313, -0.54296875, -0.5289062, -0.5148437, -0.50078124,
    -0.4867187, -0.47265625, -0.45859373, -0.44453126, -0.43046874, -0.41640624,
    -0.40234375, -0.38828123, -0.37421876, -0.36015624, -0.34609374, -0.33203125,
    -0.31796873, -0.30390626, -0.28984374, -0.27578127, -0.26171875, -0.24765624,
    -0.23359375, -0.21953125, -0.20546874, -0.19140625, -0.17734376, -0.16328125,
    -0.14921875, -0.13515624, -0.12109375, -0.107031256, -0.09859375, -0.09578126,
    -0.092968754, -0.09015625, -0.08734375, -0.08453125, -0.08171876, -0.07890625,
    -0.07609375, -0.07328125, -0.070468746, -0.067656256, -0.06484375, -0.06203125,
    -0.059218753, -0.05640625, -0.05359375, -0.05078125, -0.04796875, -0.04515625,
    -0.042343747, -0.03953125, -0.036718752, -0.03390625, -0.03109375, -0.028281251,
    -0.02546875, -0.02265625, -0.019843752, -0.01703125, -0.01421875, -0.01140625,
    -0.00971875, -0.009156249, -0.00859375, -0.00803125, -0.00746875, -0.00690625,
    -0.00634375, -0.00578125, -0.0052187503, -0.0046562497, -0.00409375, -0.0035312497,
    -0.00296875, -0.00240625, -0.00184375, -0.0012812499, -0.0009437501, -0.00083125,
    -0.00071875006, -0.0006062501, -0.00049375003, -0.00038125002, -0.00026875004, -0.00015625001,
    -8.875e-5, -6.625e-5, -4.375e-5, -2.1249998e-5, -7.75e-6, -3.2500002e-6,
    -5.5000004e-7, 0.0, 5.5000004e-7, 3.2500002e-6, 7.75e-6, 2.1249998e-5,
    4.375e-5, 6.625e-5, 8.875e-5, 0.00015625001, 0.00026875004, 0.00038125002,
    0.00049375003, 0.0006062501, 0.00071875006, 0.00083125, 0.0009437501, 0.0012812499,
    0.00184375, 0.00240625, 0.00296875, 0.0035312497, 0.00409375, 0.0046562497,
    0.0052187503, 0.00578125, 0.00634375, 0.00690625, 0.00746875, 0.00803125,
    0.00859375, 0.009156249, 0.00971875, 0.01140625, 0.01421875, 0.01703125,
    0.019843752, 0.02265625, 0.02546875, 0.028281251, 0.03109375, 0.03390625,
    0.036718752, 0.03953125, 0.042343747, 0.04515625, 0.04796875, 0.05078125,
    0.05359375, 0.05640625, 0.059218753, 0.06203125, 0.06484375, 0.067656256,
    0.070468746, 0.07328125, 0.07609375, 0.07890625, 0.08171876, 0.08453125,
    0.08734375, 0.09015625, 0.092968754, 0.09578126, 0.09859375, 0.107031256,
    0.12109375, 0.13515624, 0.14921875, 0.16328125, 0.17734376, 0.19140625,
    0.20546874, 0.21953125, 0.23359375, 0.24765624, 0.26171875, 0.27578127,
    0.28984374, 0.30390626, 0.31796873, 0.33203125, 0.34609374, 0.36015624,
    0.37421876, 0.38828123, 0.40234375, 0.41640624, 0.43046874, 0.44453126,
    0.45859373, 0.47265625, 0.4867187, 0.50078124, 0.5148437, 0.5289062,
    0.54296875, 0.5570313, 0.5710938, 0.58515626, 0.5992187, 0.61328125,
    0.6273438, 0.6414063, 0.65546876, 0.6695312, 0.68359375, 0.6976563,
    0.7117188, 0.72578126, 0.7398437, 0.75390625, 0.7679688, 0.78203124,
    0.79609376, 0.8101562, 0.82421875, 0.8382813, 0.85234374, 0.86640626,
    0.8804687, 0.89453125, 0.9085938, 0.92265624, 0.93671876, 0.9507812,
    0.96484375, 0.9789063, 0.99296874, 1.0,
];

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), the code of the
/// double-quantized absmaxes.
pub fn dynamic_map() -> &'static [f32; 256] {
    &DYNAMIC_MAP
}

/// bnb's CPU quantizer table: for each of [`LUT_SIZE`] grid points `v = 2i/65535 − 1` of
/// [−1, 1], the index of the first map value whose upper midpoint is not below `v` (built with
/// bnb's f32 operations: `build_quantize_lut` of `csrc/cpu_ops.cpp`).
fn dynamic_lut() -> &'static [u8] {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| {
        let map = &DYNAMIC_MAP;
        let mid: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut lut = vec![0u8; LUT_SIZE];
        let mut code = 0usize;
        for (i, slot) in lut.iter_mut().enumerate() {
            let v = (2.0 * i as f32) / (LUT_SIZE - 1) as f32 - 1.0;
            while code < mid.len() && mid[code] < v {
                code += 1;
            }
            *slot = code as u8;
        }
        lut
    })
}

/// The grid point of bnb's CPU quantizer for a normalized value (`norm_to_lut_index`, compiled
/// with an FMA: `trunc(fma((x + 1)·0.5, 65535, 0.5))`).
fn lut_index(x: f32) -> usize {
    let t = (x.clamp(-1.0, 1.0) + 1.0) * 0.5;
    // In [0.5, 65535.5]: the truncating cast is bnb's `(uint16_t)` of `cvttss2si`.
    t.mul_add((LUT_SIZE - 1) as f32, 0.5) as u16 as usize
}

/// The NF4 code of a scaled value in [−1, 1]: how many thresholds lie strictly below it
/// (torch `bucketize(x, bounds)`, `right=False`).
#[inline]
fn nf4_index(s: f32) -> u8 {
    NF4_BOUNDS.iter().map(|&b| u8::from(s > b)).sum()
}

/// torch's serial CPU `sum` of a contiguous f32 vector (`cascade_sum` of
/// `aten/src/ATen/native/cpu/SumKernel.cpp`, 8-lane vectors): the summation order of bnb's
/// `absmax.mean()`.
fn torch_sum(x: &[f32]) -> f32 {
    const LANES: usize = 8;
    let n = x.len();
    if n < LANES {
        return row_sum::<1>(|i| [x[i]], n)[0];
    }
    let vecs = n / LANES;
    let lanes = row_sum::<LANES>(
        |i| {
            let mut v = [0.0f32; LANES];
            v.copy_from_slice(&x[i * LANES..(i + 1) * LANES]);
            v
        },
        vecs,
    );
    let mut acc = 0.0f32;
    for &v in &x[vecs * LANES..] {
        acc += v;
    }
    for v in lanes {
        acc += v;
    }
    acc
}

/// torch's `row_sum`: 4 interleaved accumulators over `size` items, the tail into the first.
fn row_sum<const W: usize>(load: impl Fn(usize) -> [f32; W], size: usize) -> [f32; W] {
    const ILP: usize = 4;
    let size_ilp = size / ILP;
    let mut p = multi_row_sum::<W, ILP>(|i, k| load(i * ILP + k), size_ilp);
    for i in size_ilp * ILP..size {
        add_into(&mut p[0], &load(i));
    }
    for k in 1..ILP {
        let pk = p[k];
        add_into(&mut p[0], &pk);
    }
    p[0]
}

/// torch's `multi_row_sum`: a 4-level cascade (each level takes 2^`level_power` of the one below).
fn multi_row_sum<const W: usize, const ILP: usize>(
    load: impl Fn(usize, usize) -> [f32; W],
    size: usize,
) -> [[f32; W]; ILP] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 2 {
        1
    } else {
        (usize::BITS - (size - 1).leading_zeros()) as usize
    };
    let level_power = 4usize.max(ceil_log2 / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0.0f32; W]; ILP]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, a) in acc[0].iter_mut().enumerate() {
                add_into(a, &load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (u, l) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add_into(u, l);
                *l = [0.0; W];
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        for (k, a) in acc[0].iter_mut().enumerate() {
            add_into(a, &load(i, k));
        }
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, u) in first[0].iter_mut().zip(level) {
            add_into(a, u);
        }
    }
    acc[0]
}

#[inline]
fn add_into<const W: usize>(a: &mut [f32; W], b: &[f32; W]) {
    for (a, b) in a.iter_mut().zip(b) {
        *a += b;
    }
}

/// First level: packed NF4 codes `[⌈n/2⌉]` and the f32 absmax per 64-block.
fn quantize_codes(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let blocks = x.len().div_ceil(NF4_BLOCK);
    let mut codes = vec![0u8; x.len().div_ceil(2)];
    let mut absmax = vec![0.0f32; blocks];
    let pad = nf4_index(0.0);
    codes
        .par_chunks_mut(NF4_BLOCK / 2)
        .zip(absmax.par_iter_mut())
        .zip(x.par_chunks(NF4_BLOCK))
        .for_each(|((bytes, am), xb)| {
            let m = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let full = xb.len() == NF4_BLOCK;
            // bnb: full blocks multiply by the reciprocal, the short last block divides.
            let clamped = m.max(MIN_ABSMAX);
            let inv = 1.0 / clamped;
            *am = if full { m } else { clamped };
            let code = |v: f32| {
                let s = if full { v * inv } else { v / clamped };
                nf4_index(s.clamp(-1.0, 1.0))
            };
            for (j, byte) in bytes.iter_mut().enumerate() {
                let hi = code(xb[2 * j]);
                let lo = xb.get(2 * j + 1).map_or(pad, |&v| code(v));
                *byte = (hi << 4) | lo;
            }
        });
    (codes, absmax)
}

/// Second level: `(qabsmax [blocks], absmax2 [⌈blocks/256⌉], offset)`.
fn double_quantize(absmax: &[f32]) -> (Vec<u8>, Vec<f32>, f32) {
    let offset = torch_sum(absmax) / absmax.len() as f32;
    let lut = dynamic_lut();
    let mut q = vec![0u8; absmax.len()];
    let mut absmax2 = vec![0.0f32; absmax.len().div_ceil(NF4_SCALE_BLOCK)];
    q.par_chunks_mut(NF4_SCALE_BLOCK)
        .zip(absmax2.par_iter_mut())
        .zip(absmax.par_chunks(NF4_SCALE_BLOCK))
        .for_each(|((q, a2), ab)| {
            let m = ab.iter().fold(0.0f32, |m, &a| m.max((a - offset).abs()));
            *a2 = m;
            if m == 0.0 {
                q.fill(0);
                return;
            }
            let inv = 1.0 / m;
            for (q, &a) in q.iter_mut().zip(ab) {
                *q = lut[lut_index((a - offset) * inv)];
            }
        });
    (q, absmax2, offset)
}

/// The absmax per 64-block: `map[q] · absmax2 + offset` (two roundings, as bnb).
fn absmax_host(qabsmax: &[u8], absmax2: &[f32], offset: f32) -> Vec<f32> {
    qabsmax
        .iter()
        .enumerate()
        .map(|(i, &q)| DYNAMIC_MAP[usize::from(q)] * absmax2[i / NF4_SCALE_BLOCK] + offset)
        .collect()
}

/// `NF4_CODE[code] · absmax` for the `n` elements, converted by `conv`, written in parallel
/// into fresh (uninitialized) memory: no serial zeroing pass first.
fn dequantize_host<T: Copy + Send + Sync>(
    codes: &[u8],
    absmax: &[f32],
    n: usize,
    conv: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(NF4_BLOCK * BLOCKS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, ob) in chunk.chunks_mut(NF4_BLOCK).enumerate() {
                let b = task * BLOCKS_PER_TASK + i;
                let am = absmax[b];
                let table: [T; 16] = std::array::from_fn(|k| conv(NF4_CODE[k] * am));
                // Exactly one byte per pair of outputs (panics if `codes` is too short).
                let bytes = &codes[b * (NF4_BLOCK / 2)..][..ob.len().div_ceil(2)];
                for (pair, &byte) in ob.chunks_mut(2).zip(bytes) {
                    pair[0].write(table[usize::from(byte >> 4)]);
                    if let Some(second) = pair.get_mut(1) {
                        second.write(table[usize::from(byte & 15)]);
                    }
                }
            }
        });
    // SAFETY: the loop above initialized each of the first `n` elements: the chunks cover
    // [0, n), and in each block every pair of outputs gets its byte (the byte slice has exactly
    // one per pair, or the slicing panicked and we never get here).
    unsafe { out.set_len(n) };
    out
}

/// Runs `f` on the contiguous CPU slice of `t`, or returns `None` (not on the CPU, not
/// contiguous, or another dtype).
fn with_cpu_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    let s = cpu.as_slice::<T>().ok()?;
    Some(f(s.get(start..end)?))
}

/// An NF4-quantized frozen weight `[rows, cols]` (bitsandbytes' layout, double-quantized).
///
/// The parts live on one device: packed codes `U8 [⌈n/2⌉]`, 8-bit absmax codes
/// `U8 [⌈n/64⌉]`, second-level scales `F32 [⌈⌈n/64⌉/256⌉]`, and the f32 offset.
#[derive(Clone, Debug)]
pub struct Nf4Weight {
    rows: usize,
    cols: usize,
    codes: Tensor,
    qabsmax: Tensor,
    absmax2: Tensor,
    offset: f32,
}

impl Nf4Weight {
    /// Quantizes a 2-D float tensor `[rows, cols]` (any float dtype, read as f32) exactly as
    /// bitsandbytes' CPU `quantize_4bit(w, blocksize=64, compress_statistics=True,
    /// quant_type="nf4")`; the parts are put on `w`'s device.
    ///
    /// Errors on a tensor that is not 2-D, not float, empty, or holds NaN / ±Inf.
    pub fn quantize(w: &Tensor) -> candle_core::Result<Self> {
        let (rows, cols) = match *w.dims() {
            [rows, cols] => (rows, cols),
            _ => {
                return Err(invalid_argument(
                    "w",
                    "a 2-D tensor [rows, cols]",
                    format!("shape {:?}", w.dims()),
                ))
            }
        };
        if !w.dtype().is_float() {
            return Err(AdapterError::DTypeMismatch {
                layer: layer_name(rows, cols),
                what: "the weight to quantize".to_string(),
                expected: "a float dtype".to_string(),
                actual: w.dtype(),
            }
            .into_candle());
        }
        let n = element_count(rows, cols)?;
        let x: Vec<f32> = w
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let bad = x.par_iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(AdapterError::NonFiniteWeights {
                what: format!("NF4 quantization of {}", layer_name(rows, cols)),
                tensor: "weight".to_string(),
                count: bad,
                total: n,
                hint: String::new(),
            }
            .into_candle());
        }
        let (codes, absmax) = quantize_codes(&x);
        let (qabsmax, absmax2, offset) = double_quantize(&absmax);
        let device = w.device();
        let codes_len = codes.len();
        let blocks = qabsmax.len();
        let scales = absmax2.len();
        Ok(Self {
            rows,
            cols,
            codes: Tensor::from_vec(codes, codes_len, &Device::Cpu)?.to_device(device)?,
            qabsmax: Tensor::from_vec(qabsmax, blocks, &Device::Cpu)?.to_device(device)?,
            absmax2: Tensor::from_vec(absmax2, scales, &Device::Cpu)?.to_device(device)?,
            offset,
        })
    }

    /// Builds a weight from bitsandbytes' parts: the packed `codes` (`U8`, `⌈n/2⌉` bytes: the
    /// quantized weight, e.g. bnb's `[⌈n/2⌉, 1]`), `qabsmax` (`U8 [⌈n/64⌉]`: `quant_state.absmax`),
    /// `absmax2` (`F32 [⌈⌈n/64⌉/256⌉]`: `quant_state.state2.absmax`) and `offset`
    /// (`quant_state.offset`), for `n = rows·cols`. Any shape holding the right number of
    /// elements is accepted (and flattened); all three must be on one device.
    ///
    /// Errors (never panics) on a wrong length, dtype or device, an empty or overflowing shape,
    /// or a non-finite offset or scale.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        codes: Tensor,
        qabsmax: Tensor,
        absmax2: Tensor,
        offset: f32,
    ) -> candle_core::Result<Self> {
        let n = element_count(rows, cols)?;
        let blocks = n.div_ceil(NF4_BLOCK);
        let parts = [
            (
                "codes (packed 4-bit codes, ⌈rows·cols/2⌉ bytes)",
                &codes,
                DType::U8,
                n.div_ceil(2),
            ),
            (
                "qabsmax (8-bit absmax codes, one per 64 elements)",
                &qabsmax,
                DType::U8,
                blocks,
            ),
            (
                "absmax2 (f32 scales, one per 256 absmaxes)",
                &absmax2,
                DType::F32,
                blocks.div_ceil(NF4_SCALE_BLOCK),
            ),
        ];
        for (what, t, dtype, len) in parts {
            if t.dtype() != dtype {
                return Err(AdapterError::DTypeMismatch {
                    layer: layer_name(rows, cols),
                    what: what.to_string(),
                    expected: format!("{dtype:?}"),
                    actual: t.dtype(),
                }
                .into_candle());
            }
            if t.elem_count() != len {
                return Err(AdapterError::ShapeMismatch {
                    layer: layer_name(rows, cols),
                    what: what.to_string(),
                    expected: vec![len],
                    actual: t.dims().to_vec(),
                }
                .into_candle());
            }
            if !t.device().same_device(codes.device()) {
                return Err(invalid_argument(
                    what,
                    format!("a tensor on the codes' device {:?}", codes.device()),
                    format!("a tensor on {:?}", t.device()),
                ));
            }
        }
        if !offset.is_finite() {
            return Err(invalid_argument(
                "offset",
                "a finite f32",
                offset.to_string(),
            ));
        }
        let absmax2 = absmax2.flatten_all()?.contiguous()?;
        if let Some(bad) = absmax2.to_vec1::<f32>()?.iter().find(|v| !v.is_finite()) {
            return Err(invalid_argument(
                "absmax2",
                "finite scales",
                bad.to_string(),
            ));
        }
        Ok(Self {
            rows,
            cols,
            codes: codes.flatten_all()?.contiguous()?,
            qabsmax: qabsmax.flatten_all()?.contiguous()?,
            absmax2,
            offset,
        })
    }

    /// `(rows, cols)` = `(out, in)` of the weight.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The device the parts live on.
    pub fn device(&self) -> &Device {
        self.codes.device()
    }

    /// Bytes of the parts: [`estimate::quant_weight_bytes`]`(Nf4, rows, cols)`.
    pub fn storage_bytes(&self) -> usize {
        // Checked to be `Some` when the weight was built.
        estimate::quant_weight_bytes(QuantFormat::Nf4, self.rows, self.cols).unwrap_or(usize::MAX)
    }

    /// The weight `[rows, cols]` in `dtype` (a float dtype) on the weight's device:
    /// `NF4_CODE[code] · absmax`, computed in f32 and then converted.
    ///
    /// On the CPU this reads the byte storage in place and fills the output in parallel;
    /// elsewhere it is [`Nf4Weight::dequantize_with_tensor_ops`].
    pub fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.check_out_dtype(dtype)?;
        let n = self.rows * self.cols;
        let fast = with_cpu_slice::<u8, _>(&self.codes, |codes| {
            let absmax = self.absmax_cpu()?;
            let shape = (self.rows, self.cols);
            let cpu = &Device::Cpu;
            Some(match dtype {
                DType::F32 => {
                    Tensor::from_vec(dequantize_host(codes, &absmax, n, |v| v), shape, cpu)
                }
                DType::BF16 => Tensor::from_vec(
                    dequantize_host(codes, &absmax, n, half::bf16::from_f32),
                    shape,
                    cpu,
                ),
                DType::F16 => Tensor::from_vec(
                    dequantize_host(codes, &absmax, n, half::f16::from_f32),
                    shape,
                    cpu,
                ),
                _ => Tensor::from_vec(dequantize_host(codes, &absmax, n, f64::from), shape, cpu)
                    .and_then(|t| t.to_dtype(dtype)),
            })
        });
        match fast.flatten() {
            Some(t) => t,
            None => self.dequantize_with_tensor_ops(dtype),
        }
    }

    /// [`Nf4Weight::dequantize`] with candle tensor ops only (u8 → f32 conversions, floor to
    /// split the nibbles, `index_select` on the code tables, broadcast multiplies): the path for
    /// devices without a custom kernel (CUDA). It gives the same bits as the CPU fast path on
    /// any device (every step is one exactly rounded f32 operation).
    pub fn dequantize_with_tensor_ops(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.check_out_dtype(dtype)?;
        let dev = self.device();
        let n = self.rows * self.cols;
        let blocks = n.div_ceil(NF4_BLOCK);
        let absmax = self.absmax_with_tensor_ops()?;
        let bytes = self.codes.to_dtype(DType::F32)?;
        let hi = bytes.affine(1.0 / 16.0, 0.0)?.floor()?;
        let lo = (&bytes - hi.affine(16.0, 0.0)?)?;
        let idx = Tensor::stack(&[hi, lo], 1)?
            .flatten_all()?
            .narrow(0, 0, n)?
            .to_dtype(DType::U32)?;
        let table = Tensor::new(&NF4_CODE, dev)?;
        table
            .index_select(&idx, 0)?
            .pad_with_zeros(0, 0, blocks * NF4_BLOCK - n)?
            .reshape((blocks, NF4_BLOCK))?
            .broadcast_mul(&absmax.reshape((blocks, 1))?)?
            .flatten_all()?
            .narrow(0, 0, n)?
            .reshape((self.rows, self.cols))?
            .to_dtype(dtype)
    }

    /// The absmax of each 64-block after undoing double quantization (`map[q] · absmax2 +
    /// offset`), f32 `[⌈n/64⌉]` on the weight's device.
    pub fn absmax(&self) -> candle_core::Result<Tensor> {
        match self.absmax_cpu() {
            Some(a) => {
                let len = a.len();
                Tensor::from_vec(a, len, &Device::Cpu)
            }
            None => self.absmax_with_tensor_ops(),
        }
    }

    /// A copy with the parts on `device`.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        Ok(Self {
            rows: self.rows,
            cols: self.cols,
            codes: self.codes.to_device(device)?,
            qabsmax: self.qabsmax.to_device(device)?,
            absmax2: self.absmax2.to_device(device)?,
            offset: self.offset,
        })
    }

    /// The raw parts `(codes U8 [⌈n/2⌉], qabsmax U8 [⌈n/64⌉], absmax2 F32 [⌈⌈n/64⌉/256⌉],
    /// offset)`, as bitsandbytes stores them, for saving and tests.
    pub fn parts(&self) -> (&Tensor, &Tensor, &Tensor, f32) {
        (&self.codes, &self.qabsmax, &self.absmax2, self.offset)
    }

    /// The dequantized absmax computed on the host, when the parts are contiguous CPU tensors.
    fn absmax_cpu(&self) -> Option<Vec<f32>> {
        let absmax2 = with_cpu_slice::<f32, _>(&self.absmax2, <[f32]>::to_vec)?;
        with_cpu_slice::<u8, _>(&self.qabsmax, |q| absmax_host(q, &absmax2, self.offset))
    }

    /// The dequantized absmax with tensor ops (any device).
    fn absmax_with_tensor_ops(&self) -> candle_core::Result<Tensor> {
        let dev = self.device();
        let blocks = self.qabsmax.elem_count();
        let scales = self.absmax2.elem_count();
        let map = Tensor::new(&DYNAMIC_MAP, dev)?;
        let offset = Tensor::new(&[self.offset], dev)?;
        map.index_select(&self.qabsmax.to_dtype(DType::U32)?, 0)?
            .pad_with_zeros(0, 0, scales * NF4_SCALE_BLOCK - blocks)?
            .reshape((scales, NF4_SCALE_BLOCK))?
            .broadcast_mul(&self.absmax2.reshape((scales, 1))?)?
            .flatten_all()?
            .narrow(0, 0, blocks)?
            .broadcast_add(&offset)
    }

    fn check_out_dtype(&self, dtype: DType) -> candle_core::Result<()> {
        if dtype.is_float() {
            return Ok(());
        }
        Err(invalid_argument(
            "dtype",
            "a float dtype (F32, BF16, F16, F64)",
            format!("{dtype:?}"),
        ))
    }
}

/// How errors name the weight.
fn layer_name(rows: usize, cols: usize) -> String {
    format!("NF4 weight [{rows}, {cols}]")
}

fn invalid_argument(
    name: impl Into<String>,
    expected: impl Into<String>,
    actual: impl Into<String>,
) -> candle_core::Error {
    AdapterError::InvalidArgument {
        name: name.into(),
        expected: expected.into(),
        actual: actual.into(),
    }
    .into_candle()
}

/// `rows·cols`, refusing an empty shape and one whose storage count overflows.
fn element_count(rows: usize, cols: usize) -> candle_core::Result<usize> {
    match (
        rows.checked_mul(cols),
        estimate::quant_weight_bytes(QuantFormat::Nf4, rows, cols),
    ) {
        (Some(n), Some(_)) if n > 0 => Ok(n),
        _ => Err(invalid_argument(
            "rows × cols",
            "a non-empty shape whose element count fits in usize",
            format!("{rows} × {cols}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_the_cuda_kernel_constants() {
        // bnb's `dQuantizeNF4` (csrc/kernels.cu) decision tree, ascending.
        let cuda: [f32; 15] = [
            -0.8480964,
            -0.6106329,
            -0.45999527,
            -0.33967942,
            -0.2346074,
            -0.13791174,
            -0.045525018,
            0.03979015,
            0.12025525,
            0.20352125,
            0.29201376,
            0.38931254,
            0.50166345,
            0.6427869,
            0.86147845,
        ];
        assert_eq!(NF4_BOUNDS.map(f32::to_bits), cuda.map(f32::to_bits));
        assert_eq!(nf4_index(-1.0), 0);
        assert_eq!(nf4_index(0.0), 7);
        assert_eq!(nf4_index(1.0), 15);
        // A value on a threshold takes the lower code.
        for (i, &b) in NF4_BOUNDS.iter().enumerate() {
            assert_eq!(usize::from(nf4_index(b)), i);
            assert_eq!(usize::from(nf4_index(b.next_up())), i + 1);
        }
    }

    #[test]
    fn torch_sum_order() {
        // Below 8 values: ((x0 + x4) + x1) + x2) + x3 (4 interleaved accumulators).
        let x = [1.0e8f32, 1.0, 1.0, 1.0, -1.0e8];
        assert_eq!(torch_sum(&x), 3.0);
        // Exact sums are exact whatever the order.
        let y: Vec<f32> = (0..10_000).map(|i| (i % 7) as f32).collect();
        assert_eq!(
            torch_sum(&y),
            y.iter().map(|&v| f64::from(v)).sum::<f64>() as f32
        );
        assert_eq!(torch_sum(&[]), 0.0);
    }

    #[test]
    fn lut_code_is_within_one_grid_step_of_the_nearest() {
        let lut = dynamic_lut();
        let map = dynamic_map();
        assert_eq!(lut[0], 0);
        assert_eq!(lut[LUT_SIZE - 1], 255);
        assert!(lut.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(lut[lut_index(1.0)], 255);
        assert_eq!(lut[lut_index(-1.0)], 0);
        // The code is the one nearest to a grid point within 1/65535 of x, so its distance to x
        // exceeds the nearest code's by at most one grid step (near 0, where the map is denser
        // than the grid, it can be several codes away: x = 0 gives 2.125e-5, code 131).
        for i in 0..=20000 {
            let x = -1.0 + i as f32 / 10000.0;
            let q = usize::from(lut[lut_index(x)]);
            let nearest = map
                .iter()
                .map(|&c| (c - x).abs())
                .fold(f32::INFINITY, f32::min);
            assert!(
                (map[q] - x).abs() <= nearest + 2.0 / 65535.0 + 1e-7,
                "x={x}: lut code {q} = {}, nearest distance {nearest}",
                map[q]
            );
        }
        assert_eq!(lut[lut_index(0.0)], 131);
    }

    #[test]
    fn tensor_op_path_equals_cpu_fast_path() -> candle_core::Result<()> {
        // Odd element count, short last block, several second-level blocks.
        let w = Tensor::randn(0f32, 1.0, (171, 97), &Device::Cpu)?;
        let q = Nf4Weight::quantize(&w)?;
        for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
            let fast = q.dequantize(dtype)?.to_dtype(DType::F64)?.flatten_all()?;
            let ops = q
                .dequantize_with_tensor_ops(dtype)?
                .to_dtype(DType::F64)?
                .flatten_all()?;
            let (a, b) = (fast.to_vec1::<f64>()?, ops.to_vec1::<f64>()?);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dtype:?}"
            );
        }
        let a = q.absmax()?.to_vec1::<f32>()?;
        let b = q.absmax_with_tensor_ops()?.to_vec1::<f32>()?;
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        Ok(())
    }
}
