//! Helpers shared by the fuzz targets: a per-process scratch folder and input splitting.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Separates the parts of a multi-file input (config JSON never holds a NUL byte; a safetensors
/// header is JSON too, and its data would have to hold this exact sequence).
pub const SEP: &[u8] = b"\n\0@@FUZZ-SPLIT@@\0\n";

/// A scratch folder for this process, created once (a static: it is left behind at exit).
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::Builder::new().prefix("adapters-fuzz-").tempdir().unwrap())
        .path()
}

/// A fresh, empty subfolder `name` of the scratch folder.
pub fn fresh(name: &str) -> PathBuf {
    let p = scratch().join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Splits `data` into at most `n` parts at the first `n - 1` occurrences of [`SEP`]; missing
/// parts are empty.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => {
                parts.push(rest);
                rest = &[];
            }
        }
    }
    parts.push(rest);
    parts
}
