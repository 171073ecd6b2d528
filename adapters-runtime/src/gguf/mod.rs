//! GGUF files (llama.cpp / ollama): bounded reading, Llama-family names and metadata, and writing
//! (merged exports re-quantized to the file's own types).
//!
//! A GGUF file's quantized tensors become frozen [`QuantWeight`](crate::quant::QuantWeight)
//! bases; everything is read through [`GgufFile`], which checks the header's bounds
//! ([`check::check_file`]) before candle parses it.

pub mod check;
pub mod inspect;
pub mod llama;
pub mod tokenizer;
mod value;
pub mod write;

pub use inspect::{inspect_gguf, GgufInspection};
pub(crate) use value::as_int as metadata_int;

use crate::error::{AdapterError, Result};
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use value::{as_int, describe};

/// An open GGUF file: its metadata and tensor directory, tensors read on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<std::fs::File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .field("metadata", &self.content.metadata.len())
            .finish()
    }
}

/// Whether `path` names a GGUF file (by its `.gguf` extension).
pub fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl GgufFile {
    /// Opens and parses `path` after checking its header's bounds.
    pub fn open(path: &Path) -> Result<Self> {
        check::check_file(path)?;
        let f = std::fs::File::open(path).map_err(|e| AdapterError::io("opening", path, e))?;
        let mut reader = BufReader::new(f);
        let content = Content::read(&mut reader).map_err(|e| AdapterError::Gguf {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            path: path.into(),
            content,
            reader,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every metadata entry.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// The tensor directory: name → type, shape (row-major, `[out, in]` for matrices), offset.
    pub fn tensor_infos(&self) -> &HashMap<String, TensorInfo> {
        &self.content.tensor_infos
    }

    /// Tensor names, sorted.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        v.sort();
        v
    }

    /// An error about this file.
    pub fn error(&self, reason: impl Into<String>) -> AdapterError {
        AdapterError::Gguf {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Reads tensor `name` onto `device`, in its stored type.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(self.error(format!("no tensor `{name}`")));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| AdapterError::Gguf {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A metadata string (an error naming the key when present with another type).
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(format!(
                "metadata `{key}` is {}, expected a string",
                describe(v)
            ))),
        }
    }

    /// A metadata unsigned integer of any width (an error naming the key when negative, not an
    /// integer, or too large).
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        // A u64 above i64::MAX is out of range for any size here too.
        as_int(v)
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                self.error(format!(
                    "metadata `{key}` is {}, expected a non-negative integer",
                    describe(v)
                ))
            })
    }

    /// A metadata float (f32 or f64).
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(self.error(format!("metadata `{key}` is {v:?}, expected a float"))),
        }
    }
}
