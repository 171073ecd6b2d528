//! `inspect_adapter`: what a PEFT adapter folder holds, per module and in total.

use crate::error::Result;
use crate::estimate::{human_bytes, Method};
use crate::io::table::{thousands, Table};
use crate::peft::adapter_file::AdapterCheckpoint;
use crate::peft::keys::Kind;
use std::fmt;
use std::path::{Path, PathBuf};

/// One adapted module.
#[derive(Clone, Debug, PartialEq)]
pub struct InspectRow {
    /// Module path in the base model.
    pub module: String,
    /// Linear layer or embedding.
    pub kind: Kind,
    /// LoRA or DoRA.
    pub method: Method,
    /// Rank.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// The applied scaling (α/r or α/√r).
    pub scaling: f64,
    /// Shape of A.
    pub a_shape: Vec<usize>,
    /// Shape of B.
    pub b_shape: Vec<usize>,
    /// Shape of the DoRA magnitude.
    pub magnitude_shape: Option<Vec<usize>>,
    /// Parameters.
    pub params: usize,
    /// Bytes in the file.
    pub bytes: usize,
}

/// An adapter folder's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspection {
    /// The folder.
    pub dir: PathBuf,
    /// `use_rslora`.
    pub rslora: bool,
    /// The dtypes of the stored tensors.
    pub dtypes: Vec<String>,
    /// The modules, sorted by path.
    pub rows: Vec<InspectRow>,
    /// Total parameters.
    pub total_params: usize,
    /// Total tensor bytes.
    pub total_bytes: usize,
}

/// Reads and checks the adapter folder `dir` and summarises it.
pub fn inspect_adapter(dir: impl AsRef<Path>) -> Result<Inspection> {
    let ckpt = AdapterCheckpoint::read(dir.as_ref())?;
    let mut dtypes: Vec<String> = Vec::new();
    let rows: Vec<InspectRow> = ckpt
        .modules
        .iter()
        .map(|m| {
            for t in [Some(&m.a), Some(&m.b), m.magnitude.as_ref()]
                .into_iter()
                .flatten()
            {
                let d = format!("{:?}", t.dtype()).to_lowercase();
                if !dtypes.contains(&d) {
                    dtypes.push(d);
                }
            }
            InspectRow {
                module: m.module.clone(),
                kind: m.kind,
                method: m.config.method,
                rank: m.config.rank,
                alpha: m.config.alpha,
                scaling: m.config.scaling(),
                a_shape: m.a.dims().to_vec(),
                b_shape: m.b.dims().to_vec(),
                magnitude_shape: m.magnitude.as_ref().map(|t| t.dims().to_vec()),
                params: m.params(),
                bytes: m.file_bytes,
            }
        })
        .collect();
    Ok(Inspection {
        dir: ckpt.dir.clone(),
        rslora: ckpt.config.use_rslora,
        dtypes,
        total_params: rows.iter().map(|r| r.params).sum(),
        total_bytes: rows.iter().map(|r| r.bytes).sum(),
        rows,
    })
}

fn shape(s: &[usize]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "adapter {}: {} module(s), rsLoRA {}, dtype {}\n",
            self.dir.display(),
            self.rows.len(),
            if self.rslora { "on" } else { "off" },
            self.dtypes.join("/"),
        )?;
        let right = [
            false, false, true, true, true, false, false, false, true, true,
        ];
        let mut t = Table::new(
            &[
                "module",
                "type",
                "r",
                "alpha",
                "scaling",
                "A",
                "B",
                "magnitude",
                "params",
                "bytes",
            ],
            &right,
        );
        for r in &self.rows {
            let kind = match (r.method, r.kind) {
                (Method::Lora, Kind::Linear) => "LoRA",
                (Method::Dora, Kind::Linear) => "DoRA",
                (Method::Lora, Kind::Embedding) => "LoRA emb",
                (Method::Dora, Kind::Embedding) => "DoRA emb",
            };
            t.row(vec![
                r.module.clone(),
                kind.into(),
                r.rank.to_string(),
                num(r.alpha),
                num(r.scaling),
                shape(&r.a_shape),
                shape(&r.b_shape),
                r.magnitude_shape
                    .as_deref()
                    .map_or_else(|| "-".into(), shape),
                thousands(r.params),
                human_bytes(r.bytes),
            ]);
        }
        t.rule();
        t.row(vec![
            format!("total ({} modules)", self.rows.len()),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            thousands(self.total_params),
            human_bytes(self.total_bytes),
        ]);
        write!(f, "{t}")
    }
}
