//! Memory-mapped safetensors files, with errors that name the file.

use crate::error::{AdapterError, Result};
use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorView};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A safetensors file mapped into memory (its tensors are read lazily, page by page).
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

impl MappedFile {
    /// Maps `path` and checks its header (a corrupt or truncated file is an error here).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| AdapterError::io("opening", path, e))?;
        // SAFETY: the map is read-only; as with every mmap-based loader, the file must not be
        // truncated by another process while it is mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| AdapterError::io("mapping", path, e))?;
        let mapped = MappedFile {
            path: path.to_path_buf(),
            mmap,
        };
        mapped.tensors()?;
        Ok(mapped)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: safetensors::SafeTensorError) -> AdapterError {
        AdapterError::SafeTensors {
            path: self.path.clone(),
            source,
        }
    }

    /// The parsed file (views into the map).
    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| self.err(e))
    }

    /// The header: tensor infos and the `__metadata__` map.
    pub fn metadata(&self) -> Result<Metadata> {
        SafeTensors::read_metadata(&self.mmap)
            .map(|(_, m)| m)
            .map_err(|e| self.err(e))
    }

    /// The `__metadata__` string map, if any.
    pub fn string_metadata(&self) -> Result<Option<HashMap<String, String>>> {
        Ok(self.metadata()?.metadata().clone())
    }
}

/// Copies a view into a CPU tensor, naming the file and key on failure (e.g. an unsupported dtype).
pub fn to_tensor(view: &TensorView<'_>, file: &Path, key: &str) -> Result<Tensor> {
    view.load(&Device::Cpu).map_err(|e| AdapterError::InLayer {
        layer: format!("{key} (in `{}`)", file.display()),
        source: e,
    })
}
