//! Size-bounded file reads: a config or text file larger than its bound is refused before its
//! contents are read, with an [`AdapterError::FileTooLarge`] naming the file.

use crate::error::{AdapterError, Result};
use std::io::Read;
use std::path::Path;

/// Bound on JSON config files (`config.json`, `adapter_config.json`, `tokenizer_config.json`,
/// `model.safetensors.index.json`): 16 MiB, far above any real one.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Bound on a `tokenizer.json`: 1 GiB (real ones are at most a few tens of MiB).
pub const MAX_TOKENIZER_BYTES: u64 = 1 << 30;

/// Reads `path` whole, refusing it when it holds more than `max` bytes: the size is checked
/// before reading, and the read itself stops after `max + 1` bytes (a file that grows, or a
/// special file such as `/dev/zero`, is refused too). `what` names the file's role in errors
/// (`reading adapter config`, …).
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| AdapterError::io(what, path, e))?;
    let too_large = |actual: u64| AdapterError::FileTooLarge {
        what: what.to_string(),
        path: path.to_path_buf(),
        max,
        actual,
    };
    let len = file
        .metadata()
        .map_err(|e| AdapterError::io(what, path, e))?
        .len();
    if len > max {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| AdapterError::io(what, path, e))?;
    let read = bytes.len() as u64;
    if read > max {
        return Err(too_large(read));
    }
    Ok(bytes)
}

/// [`read_bounded`], as UTF-8 text (invalid UTF-8 is an [`AdapterError::Io`] error of kind
/// `InvalidData` naming the file).
pub fn read_to_string_bounded(path: &Path, max: u64, what: &str) -> Result<String> {
    let bytes = read_bounded(path, max, what)?;
    String::from_utf8(bytes).map_err(|e| {
        AdapterError::io(
            what,
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_files_over_the_bound() {
        let dir = std::env::temp_dir().join(format!("bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        std::fs::write(&p, "0123456789").unwrap();
        assert_eq!(
            read_to_string_bounded(&p, 10, "reading").unwrap(),
            "0123456789"
        );
        let e = read_to_string_bounded(&p, 9, "reading").unwrap_err();
        assert!(
            matches!(
                e,
                AdapterError::FileTooLarge {
                    max: 9,
                    actual: 10,
                    ..
                }
            ),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
