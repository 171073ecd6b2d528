//! Writing a GGUF file atomically (a locked temporary file beside the target, renamed over it
//! only after every byte is written and synced), through candle's GGUF writer.

use crate::error::{AdapterError, Result};
use crate::io::atomic::{publish, temp_beside};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::QTensor;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Metadata keys never copied to a written file: candle's writer always aligns to 32 bytes.
const DROPPED_KEYS: [&str; 1] = ["general.alignment"];

/// Writes `metadata` and `tensors` (in this order) as a GGUF v2 file at `path`, replacing it
/// atomically; on error the previous file (if any) is untouched and no temporary is left.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let tmp = temp_beside(path)?;
    let meta: Vec<(&str, &Value)> = metadata
        .iter()
        .filter(|(k, _)| !DROPPED_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    {
        let mut w = BufWriter::new(tmp.as_file());
        candle_core::quantized::gguf_file::write(&mut w, &meta, &ts).map_err(|e| match e {
            candle_core::Error::Io(io) => AdapterError::io("writing", tmp.path(), io),
            other => AdapterError::Gguf {
                path: path.into(),
                reason: format!("writing: {other}"),
            },
        })?;
        w.flush()
            .map_err(|e| AdapterError::io("writing", tmp.path(), e))?;
    }
    publish(tmp, path)
}
