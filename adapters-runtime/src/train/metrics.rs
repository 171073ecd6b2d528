//! Training metrics as JSONL: one record per line, appended with a single write each.

use crate::error::{AdapterError, Result};
use crate::io::atomic::write_file_atomic;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One metrics line. Absent values are omitted from the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Optimizer steps completed.
    pub step: u64,
    /// Mean training loss of the step's micro-batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Learning rate used by the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Input tokens processed per second during the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_sec: Option<f64>,
    /// Evaluation loss (steps where evaluation ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Evaluation token accuracy (steps where evaluation ran, when measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_acc: Option<f64>,
}

/// Appends [`MetricRecord`]s to a JSONL file.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsWriter {
    /// Opens `path` for appending (creating it and its folder). With `keep_up_to = Some(step)`,
    /// records after `step` are first removed (atomically), so a resumed run does not log twice;
    /// with `None` the file is truncated.
    pub fn open(path: impl AsRef<Path>, keep_up_to: Option<u64>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| AdapterError::io("creating metrics folder", dir, e))?;
        }
        let kept = match keep_up_to {
            Some(step) if path.exists() => read_metrics(&path)?
                .into_iter()
                .filter(|r| r.step <= step)
                .collect(),
            _ => Vec::new(),
        };
        let mut text = String::new();
        for r in &kept {
            text.push_str(&line(r, &path)?);
        }
        write_file_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| AdapterError::io("opening metrics", &path, e))?;
        Ok(Self { path, file })
    }

    /// Appends one record (one `write` call, flushed).
    pub fn write(&mut self, record: &MetricRecord) -> Result<()> {
        let text = line(record, &self.path)?;
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| AdapterError::io("writing metrics", &self.path, e))
    }

    /// The metrics file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn line(record: &MetricRecord, path: &Path) -> Result<String> {
    let mut s = serde_json::to_string(record).map_err(|source| AdapterError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    s.push('\n');
    Ok(s)
}

/// Reads a metrics JSONL file; a bad line is an error naming its line number.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<MetricRecord>> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).map_err(|e| AdapterError::io("reading metrics", path, e))?;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let r = serde_json::from_str(l).map_err(|e| AdapterError::DataLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason: format!("not a metrics record: {e}"),
        })?;
        out.push(r);
    }
    Ok(out)
}

/// The result of an evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean loss over the evaluated targets.
    pub loss: f64,
    /// Token accuracy, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Targets evaluated.
    #[serde(default)]
    pub tokens: usize,
}
