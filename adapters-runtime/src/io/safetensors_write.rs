//! The one safetensors writer: tensor by tensor, from pass-through views of a mapped input, owned
//! bytes, or bytes computed only when the writer reaches the tensor (so a merge holds one tensor at
//! a time). The file is written beside the target under a hidden name and renamed over it only
//! once every tensor was written: a failure never touches an existing file.

use crate::error::{AdapterError, Result};
use crate::io::atomic::{publish, temp_beside};
use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;
use safetensors::tensor::{Dtype, TensorView, View};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

/// Computes a tensor's bytes when the writer needs them.
pub type MakeBytes<'a> = Box<dyn Fn() -> Result<Vec<u8>> + 'a>;

/// Where a written tensor's bytes come from.
pub enum Source<'a> {
    /// A view of a mapped input file, written unchanged.
    View(TensorView<'a>),
    /// Bytes already in memory.
    Owned(Vec<u8>),
    /// Bytes computed on demand; a failure is recorded in the file's [`Failure`] slot.
    Lazy(MakeBytes<'a>),
}

/// The first error raised while computing lazy tensors (the writer's `View` cannot return one).
pub type Failure = RefCell<Option<AdapterError>>;

/// One tensor to write.
pub struct Entry<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    len: usize,
    source: Source<'a>,
    failure: &'a Failure,
    progress: Option<&'a ProgressBar>,
}

impl<'a> Entry<'a> {
    /// A tensor of `dtype` and `shape` from `source`; `failure` collects a lazy source's error;
    /// `progress` advances by the tensor's bytes once written.
    pub fn new(
        dtype: Dtype,
        shape: Vec<usize>,
        source: Source<'a>,
        failure: &'a Failure,
        progress: Option<&'a ProgressBar>,
    ) -> Self {
        let elems: usize = shape.iter().product();
        let len = elems * dtype.bitsize() / 8;
        Entry {
            dtype,
            shape,
            len,
            source,
            failure,
            progress,
        }
    }

    /// A pass-through view.
    pub fn view(
        view: TensorView<'a>,
        failure: &'a Failure,
        progress: Option<&'a ProgressBar>,
    ) -> Self {
        Self::new(
            view.dtype(),
            view.shape().to_vec(),
            Source::View(view),
            failure,
            progress,
        )
    }

    fn fail(&self, e: AdapterError) -> Cow<'_, [u8]> {
        let mut slot = self.failure.borrow_mut();
        if slot.is_none() {
            *slot = Some(e);
        }
        Cow::Owned(vec![0; self.len])
    }
}

impl View for Entry<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let bytes = if self.failure.borrow().is_some() {
            // A tensor already failed: the file will be discarded, skip the work.
            Cow::Owned(vec![0; self.len])
        } else {
            match &self.source {
                Source::View(v) => Cow::Borrowed(v.data()),
                Source::Owned(b) => Cow::Borrowed(b.as_slice()),
                Source::Lazy(make) => match make() {
                    Ok(b) if b.len() == self.len => Cow::Owned(b),
                    Ok(b) => self.fail(AdapterError::InvalidState {
                        layer: format!("{:?} tensor of shape {:?}", self.dtype, self.shape),
                        op: "write",
                        reason: format!("computed {} bytes, expected {}", b.len(), self.len),
                    }),
                    Err(e) => self.fail(e),
                },
            }
        };
        if let Some(p) = self.progress {
            p.inc(self.len as u64);
        }
        bytes
    }

    fn data_len(&self) -> usize {
        self.len
    }
}

/// Writes `entries` to `path` atomically: a hidden, locked temporary file beside it
/// (`.<name>.XXXXXX.partial`, see [`crate::io::atomic`]), synced, then renamed over `path` only
/// when every tensor was written (a lazy tensor's failure leaves `path` as it was, and no
/// temporary file behind).
pub fn write_file(
    path: &Path,
    entries: Vec<(String, Entry<'_>)>,
    metadata: Option<HashMap<String, String>>,
    failure: &Failure,
) -> Result<()> {
    let tmp = temp_beside(path)?;
    serialize_into(tmp.as_file(), entries, metadata).map_err(|e| match e {
        WriteError::Io(e) => AdapterError::io("writing", tmp.path(), e),
        WriteError::Format(source) => AdapterError::SafeTensors {
            path: path.into(),
            source,
        },
    })?;
    if let Some(e) = failure.borrow_mut().take() {
        return Err(e);
    }
    publish(tmp, path)
}

/// Why [`serialize_into`] failed.
enum WriteError {
    Io(std::io::Error),
    Format(safetensors::SafeTensorError),
}

/// The safetensors format into `file`, as `safetensors::serialize_to_file` lays it out (tensors
/// by descending dtype size, then name; header padded to 8 bytes with spaces), but into a file
/// we hold — `serialize_to_file` writes its own untracked `.tmpXXXXXX` and renames it.
fn serialize_into(
    file: &std::fs::File,
    mut entries: Vec<(String, Entry<'_>)>,
    metadata: Option<HashMap<String, String>>,
) -> std::result::Result<(), WriteError> {
    use safetensors::tensor::{Metadata, TensorInfo};
    use std::io::Write;
    entries.sort_by(|(ln, l), (rn, r)| r.dtype.cmp(&l.dtype).then(ln.cmp(rn)));
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(entries.len());
    for (name, e) in &entries {
        let end = offset.checked_add(e.len).ok_or(WriteError::Format(
            safetensors::SafeTensorError::ValidationOverflow,
        ))?;
        let info = TensorInfo {
            dtype: e.dtype,
            shape: e.shape.clone(),
            data_offsets: (offset, end),
        };
        infos.push((name.clone(), info));
        offset = end;
    }
    let header = Metadata::new(metadata, infos).map_err(WriteError::Format)?;
    let mut header = serde_json::to_string(&header)
        .map_err(|e| {
            WriteError::Format(safetensors::SafeTensorError::InvalidHeaderDeserialization(
                e,
            ))
        })?
        .into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = WriteError::Io;
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (_, e) in &entries {
        out.write_all(&e.data()).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Writes in-memory tensors (any device) to `path` with [`write_file`].
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let failure = Failure::default();
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dtype, bytes) = tensor_bytes(t)?;
        let entry = Entry::new(
            dtype,
            t.dims().to_vec(),
            Source::Owned(bytes),
            &failure,
            None,
        );
        entries.push((name.clone(), entry));
    }
    write_file(path, entries, metadata, &failure)
}

/// `{"format": "pt"}`: the metadata PyTorch-side readers (transformers, PEFT) expect.
pub fn pt_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// The little-endian bytes of a tensor (copied to the CPU), and its safetensors dtype.
pub fn tensor_bytes(t: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let flat = t.to_device(&Device::Cpu)?.flatten_all()?;
    fn le<T: candle_core::WithDType, const N: usize>(
        t: &Tensor,
        f: fn(T) -> [u8; N],
    ) -> Result<Vec<u8>> {
        Ok(t.to_vec1::<T>()?.into_iter().flat_map(f).collect())
    }
    let bytes = match t.dtype() {
        DType::F64 => le(&flat, f64::to_le_bytes)?,
        DType::F32 => le(&flat, f32::to_le_bytes)?,
        DType::BF16 => le(&flat, half::bf16::to_le_bytes)?,
        DType::F16 => le(&flat, half::f16::to_le_bytes)?,
        DType::U8 => le(&flat, u8::to_le_bytes)?,
        DType::U32 => le(&flat, u32::to_le_bytes)?,
        DType::I64 => le(&flat, i64::to_le_bytes)?,
        other => {
            return Err(AdapterError::DTypeMismatch {
                layer: "<write>".into(),
                what: "tensor".into(),
                expected: "f64, f32, bf16, f16, u8, u32 or i64".into(),
                actual: other,
            })
        }
    };
    Ok((t.dtype().into(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_existing_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.safetensors");
        std::fs::write(&path, "previous").unwrap();
        let failure = Failure::default();
        let ok = Entry::new(
            Dtype::F32,
            vec![2],
            Source::Owned(vec![0; 8]),
            &failure,
            None,
        );
        let bad = Entry::new(
            Dtype::F32,
            vec![2],
            Source::Lazy(Box::new(|| {
                Err(AdapterError::InvalidState {
                    layer: "t".into(),
                    op: "merge",
                    reason: "boom".into(),
                })
            })),
            &failure,
            None,
        );
        let err = write_file(
            &path,
            vec![("a".into(), ok), ("b".into(), bad)],
            None,
            &failure,
        );
        assert!(err.unwrap_err().to_string().contains("boom"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "previous");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }
}
