//! `inspect_gguf`: what a GGUF file holds — architecture, the Llama configuration it maps to,
//! tokenizer, and every tensor with its type, shape and size.

use crate::error::Result;
use crate::estimate::human_bytes;
use crate::gguf::llama::{hf_name, llama_config};
use crate::gguf::GgufFile;
use crate::io::table::{thousands, Table};
use candle_core::quantized::gguf_file::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// One tensor of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorRow {
    /// Its GGUF name.
    pub name: String,
    /// The HF name it maps to, when part of the Llama layout.
    pub hf_name: Option<String>,
    /// The GGML type (`Q4K`, `F32`, …).
    pub dtype: String,
    /// Row-major shape (`[out, in]` for matrices).
    pub shape: Vec<usize>,
    /// Elements.
    pub elements: usize,
    /// Bytes stored.
    pub bytes: usize,
}

/// A GGUF file's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufInspection {
    /// The file.
    pub path: PathBuf,
    /// `general.architecture`.
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `tokenizer.ggml.model` and the vocabulary size, when present.
    pub tokenizer: Option<(String, usize)>,
    /// The Llama configuration, or why the file is not a supported Llama.
    pub config: std::result::Result<String, String>,
    /// Metadata entries.
    pub metadata_entries: usize,
    /// The tensors, sorted by name.
    pub rows: Vec<GgufTensorRow>,
    /// Elements and bytes per GGML type, sorted by type.
    pub by_type: Vec<(String, usize, usize)>,
}

/// Reads the GGUF file at `path` (its header bounds checked) and summarises it.
pub fn inspect_gguf(path: &Path) -> Result<GgufInspection> {
    let file = GgufFile::open(path)?;
    let mut rows = Vec::new();
    let mut by_type: Vec<(String, usize, usize)> = Vec::new();
    for name in file.tensor_names() {
        let info = &file.tensor_infos()[&name];
        let dt = info.ggml_dtype;
        let elements = info.shape.elem_count();
        let bytes = elements / dt.block_size() * dt.type_size();
        let dtype = format!("{dt:?}");
        match by_type.iter_mut().find(|(t, _, _)| *t == dtype) {
            Some(e) => {
                e.1 += elements;
                e.2 += bytes;
            }
            None => by_type.push((dtype.clone(), elements, bytes)),
        }
        rows.push(GgufTensorRow {
            hf_name: hf_name(&name),
            name,
            dtype,
            shape: info.shape.dims().to_vec(),
            elements,
            bytes,
        });
    }
    by_type.sort();
    let tokenizer = match (
        file.get_str("tokenizer.ggml.model").ok().flatten(),
        file.get("tokenizer.ggml.tokens"),
    ) {
        (Some(m), Some(Value::Array(tokens))) => Some((m.to_string(), tokens.len())),
        _ => None,
    };
    let config = llama_config(&file)
        .map(|c| {
            format!(
                "hidden {}, intermediate {}, {} layers, {} heads ({} kv, head dim {}), vocab {}, {} head",
                c.hidden_size,
                c.intermediate_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.kv_heads(),
                c.head_dim(),
                c.vocab_size,
                if c.tie_word_embeddings { "tied" } else { "untied" }
            )
        })
        .map_err(|e| e.to_string());
    Ok(GgufInspection {
        path: path.to_path_buf(),
        architecture: file.get_str("general.architecture")?.map(String::from),
        name: file
            .get_str("general.name")
            .ok()
            .flatten()
            .map(String::from),
        tokenizer,
        config,
        metadata_entries: file.metadata().len(),
        rows,
        by_type,
    })
}

fn shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

impl fmt::Display for GgufInspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "GGUF {}: architecture {}, name {}, {} metadata entries, {} tensors",
            self.path.display(),
            self.architecture.as_deref().unwrap_or("(none)"),
            self.name.as_deref().unwrap_or("(none)"),
            self.metadata_entries,
            self.rows.len()
        )?;
        match &self.config {
            Ok(c) => writeln!(f, "llama: {c}")?,
            Err(e) => writeln!(f, "not loadable as a Llama: {e}")?,
        }
        match &self.tokenizer {
            Some((m, n)) => writeln!(f, "tokenizer: {m}, {n} tokens\n")?,
            None => writeln!(f, "tokenizer: none in the metadata\n")?,
        }
        let mut t = Table::new(
            &["tensor", "HF name", "type", "shape", "elements", "bytes"],
            &[false, false, false, false, true, true],
        );
        for r in &self.rows {
            t.row(vec![
                r.name.clone(),
                r.hf_name.clone().unwrap_or_else(|| "-".into()),
                r.dtype.clone(),
                shape(&r.shape),
                thousands(r.elements),
                human_bytes(r.bytes),
            ]);
        }
        t.rule();
        for (dtype, elements, bytes) in &self.by_type {
            t.row(vec![
                format!("total {dtype}"),
                String::new(),
                dtype.clone(),
                String::new(),
                thousands(*elements),
                human_bytes(*bytes),
            ]);
        }
        let (e, b) = self
            .by_type
            .iter()
            .fold((0, 0), |(e, b), (_, x, y)| (e + x, b + y));
        t.row(vec![
            format!("total ({} tensors)", self.rows.len()),
            String::new(),
            String::new(),
            String::new(),
            thousands(e),
            human_bytes(b),
        ]);
        write!(f, "{t}")
    }
}
