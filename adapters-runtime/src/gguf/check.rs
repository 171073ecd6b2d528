//! A bounded walk over a GGUF header before candle parses it: every length, count and tensor
//! extent read from the file must fit in the file, so a hostile file is a typed error, never an
//! allocation of what its header claims.

use crate::error::{AdapterError, Result};
use std::io::{BufReader, Read};
use std::path::Path;

/// GGUF's magic, `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Deepest nesting of metadata arrays accepted.
const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions of a tensor (GGML's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// The default data alignment.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most items of one metadata array (real vocabularies and merge lists hold ~10⁵–10⁶).
const MAX_ARRAY_ITEMS: u64 = 1 << 24;

/// The summary of a header that passed the checks.
#[derive(Clone, Debug)]
pub struct HeaderSummary {
    /// GGUF version (2 or 3).
    pub version: u32,
    /// Tensors described.
    pub tensors: u64,
    /// Metadata entries.
    pub metadata: u64,
}

struct Walker<R> {
    r: R,
    /// Bytes read so far.
    pos: u64,
    /// The file's size.
    len: u64,
    path: std::path::PathBuf,
}

impl<R: Read> Walker<R> {
    fn err(&self, reason: impl Into<String>) -> AdapterError {
        AdapterError::Gguf {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| {
            self.err(format!(
                "truncated: reading {what} at byte {}: {e} (the file has {} bytes)",
                self.pos, self.len
            ))
        })?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    /// Skips `n` bytes that must lie within the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "{what} claims {n} bytes at byte {}, but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| self.err(format!("reading {what}: {e}")))?;
        if copied != n {
            return Err(self.err(format!("truncated inside {what}")));
        }
        self.pos += n;
        Ok(())
    }

    /// A string: a u64 length within the file, then the bytes (read only when `keep`).
    fn string(&mut self, what: &str, keep: bool) -> Result<Option<String>> {
        let n = self.u64(what)?;
        if !keep {
            self.skip(n, what)?;
            return Ok(None);
        }
        if n > self.remaining() || n > 1 << 16 {
            return Err(self.err(format!(
                "{what} claims {n} bytes at byte {} (at most {} remain, names are at most 65536)",
                self.pos,
                self.remaining()
            )));
        }
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| self.err(format!("reading {what}: {e}")))?;
        self.pos += n;
        String::from_utf8(b)
            .map(Some)
            .map_err(|_| self.err(format!("{what} is not UTF-8")))
    }

    /// Size in bytes of a fixed-size value type; `None` for strings and arrays.
    fn fixed_size(ty: u32) -> Option<u64> {
        match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }

    /// The value of `general.alignment` as candle reads it: an 8/16/32-bit integer (a negative
    /// one, or another type, leaves the default).
    fn alignment(&mut self, ty: u32, key: &str) -> Result<Option<u64>> {
        let v = match ty {
            0 => Some(u64::from(self.bytes::<1>(key)?[0])),
            1 => u64::try_from(i8::from_le_bytes(self.bytes::<1>(key)?)).ok(),
            2 => Some(u64::from(u16::from_le_bytes(self.bytes::<2>(key)?))),
            3 => u64::try_from(i16::from_le_bytes(self.bytes::<2>(key)?)).ok(),
            4 => Some(u64::from(self.u32(key)?)),
            5 => u64::try_from(i32::from_le_bytes(self.bytes::<4>(key)?)).ok(),
            _ => {
                self.value(ty, key, 0)?;
                None
            }
        };
        Ok(Some(v.unwrap_or(DEFAULT_ALIGNMENT)))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<()> {
        if let Some(n) = Self::fixed_size(ty) {
            return self.skip(n, key);
        }
        match ty {
            8 => {
                self.string(key, false)?;
            }
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let item = self.u32(key)?;
                let n = self.u64(key)?;
                // Every item takes at least one byte (8 for a string's length, 12 for an array).
                let min = match (Self::fixed_size(item), item) {
                    (Some(s), _) => s,
                    (None, 8) => 8,
                    (None, 9) => 12,
                    (None, other) => {
                        return Err(self.err(format!(
                            "`{key}`: unknown array item type {other} (expected 0–12)"
                        )))
                    }
                };
                if n.checked_mul(min).is_none_or(|b| b > self.remaining()) {
                    return Err(self.err(format!(
                        "`{key}`: an array of {n} items cannot fit in the {} bytes left",
                        self.remaining()
                    )));
                }
                // Parsed, each item takes ~32 bytes however small on disk: bound the count.
                if n > MAX_ARRAY_ITEMS {
                    return Err(self.err(format!(
                        "`{key}`: an array of {n} items, expected at most {MAX_ARRAY_ITEMS}"
                    )));
                }
                match Self::fixed_size(item) {
                    Some(s) => self.skip(n * s, key)?,
                    None => {
                        for _ in 0..n {
                            self.value(item, key, depth + 1)?;
                        }
                    }
                }
            }
            other => {
                return Err(self.err(format!(
                    "`{key}`: unknown value type {other} (expected 0–12)"
                )))
            }
        }
        Ok(())
    }
}

/// `(block elements, block bytes)` of a GGML type id (GGUF's numbering) candle reads, the sizes
/// from candle; `None` for the types it does not read.
fn ggml_block(ty: u32) -> Option<(u64, u64)> {
    use candle_core::quantized::GgmlDType as T;
    let dt = match ty {
        0 => T::F32,
        1 => T::F16,
        2 => T::Q4_0,
        3 => T::Q4_1,
        6 => T::Q5_0,
        7 => T::Q5_1,
        8 => T::Q8_0,
        9 => T::Q8_1,
        10 => T::Q2K,
        11 => T::Q3K,
        12 => T::Q4K,
        13 => T::Q5K,
        14 => T::Q6K,
        15 => T::Q8K,
        30 => T::BF16,
        _ => return None,
    };
    Some((dt.block_size() as u64, dt.type_size() as u64))
}

/// Checks the header of the GGUF file at `path`: magic, version 2 or 3, every string, array and
/// count within the file, 1 to 4 non-zero dimensions per tensor with a checked element count, a type
/// candle reads, whole blocks along the first dimension, and every tensor's bytes inside the
/// data section.
pub fn check_file(path: &Path) -> Result<HeaderSummary> {
    let f = std::fs::File::open(path).map_err(|e| AdapterError::io("opening", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| AdapterError::io("reading the size of", path, e))?
        .len();
    let mut w = Walker {
        r: BufReader::new(f),
        pos: 0,
        len,
        path: path.to_path_buf(),
    };
    let magic = w.u32("the magic number")?;
    if magic != MAGIC {
        return Err(w.err(format!(
            "not a GGUF file: the magic number is {magic:#010x}, expected {MAGIC:#010x} (\"GGUF\")"
        )));
    }
    let version = w.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(w.err(format!("version {version} is not supported (2 or 3)")));
    }
    let tensors = w.u64("the tensor count")?;
    let metadata = w.u64("the metadata count")?;
    // A metadata entry takes at least 8 + 4 + 1 bytes, a tensor entry 8 + 4 + 8 + 4 + 8.
    for (n, min, what) in [(metadata, 13, "metadata entries"), (tensors, 32, "tensors")] {
        if n.checked_mul(min).is_none_or(|b| b > w.remaining()) {
            return Err(w.err(format!(
                "{n} {what} cannot fit in the file's {} bytes",
                w.len
            )));
        }
    }
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..metadata {
        let key = w.string("a metadata key", true)?.unwrap_or_default();
        // candle drops trailing NULs from keys, and the last of repeated keys wins.
        let key = key.trim_end_matches('\0');
        let ty = w.u32(key)?;
        if key == "general.alignment" {
            alignment = w.alignment(ty, key)?.unwrap_or(DEFAULT_ALIGNMENT);
        } else {
            w.value(ty, key, 0)?;
        }
    }
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(w.err(format!(
            "`general.alignment` is {alignment}, expected a power of two"
        )));
    }
    let mut extents = Vec::new();
    for _ in 0..tensors {
        let name = w.string("a tensor name", true)?.unwrap_or_default();
        let n_dims = w.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(w.err(format!(
                "tensor `{name}` has {n_dims} dimensions, expected 1 to {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::new();
        for _ in 0..n_dims {
            dims.push(w.u64(&name)?);
        }
        if dims.contains(&0) {
            // candle reads an empty tensor through a dangling, misaligned pointer.
            return Err(w.err(format!(
                "tensor `{name}` has dimensions {dims:?}: an empty tensor"
            )));
        }
        let ty = w.u32(&name)?;
        let offset = w.u64(&name)?;
        let (block, block_bytes) = ggml_block(ty).ok_or_else(|| {
            w.err(format!(
                "tensor `{name}` has GGML type {ty}, which is not supported"
            ))
        })?;
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&e| e <= crate::hf::llama_config::MAX_TENSOR_ELEMENTS as u64)
            .ok_or_else(|| {
                w.err(format!(
                    "tensor `{name}`: dimensions {dims:?} are too large"
                ))
            })?;
        if dims[0] % block != 0 {
            return Err(w.err(format!(
                "tensor `{name}`: rows of {} elements are not whole {block}-element blocks of type {ty}",
                dims[0]
            )));
        }
        let bytes = elems / block * block_bytes;
        extents.push((name, offset, bytes));
    }
    let data_start = w.pos.div_ceil(alignment) * alignment;
    let data_len = len.saturating_sub(data_start);
    for (name, offset, bytes) in extents {
        if offset.checked_add(bytes).is_none_or(|end| end > data_len) {
            return Err(w.err(format!(
                "tensor `{name}` spans bytes {offset}..{} of the data section, which has {data_len}",
                offset.saturating_add(bytes)
            )));
        }
    }
    Ok(HeaderSummary {
        version,
        tensors,
        metadata,
    })
}
