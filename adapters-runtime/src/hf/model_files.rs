//! The layout of a base checkpoint: one `.safetensors` file, or an HF model folder with
//! `model.safetensors` or shards listed in `model.safetensors.index.json`.

use crate::error::{AdapterError, KeyIssue, Result};
use crate::io::safetensors_file::MappedFile;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The single weights file of an HF model folder.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index of a sharded HF model folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// `model.safetensors.index.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardIndex {
    /// `{"total_size": …}` and whatever else the writer put there.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Tensor name → shard file name.
    pub weight_map: BTreeMap<String, String>,
}

/// Where a tensor lives.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Its safetensors dtype.
    pub dtype: safetensors::Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// A base checkpoint, its files mapped.
#[derive(Debug)]
pub struct BaseModel {
    /// The path given (file or folder).
    pub root: PathBuf,
    /// Whether `root` is a folder.
    pub folder: bool,
    /// The shard index, when sharded.
    pub index: Option<ShardIndex>,
    /// The weights files, with their names relative to the folder (the file name for a single file).
    pub shards: Vec<(String, MappedFile)>,
    /// Every tensor.
    pub tensors: BTreeMap<String, TensorInfo>,
}

fn not_found(path: &Path, what: &str) -> AdapterError {
    AdapterError::io(
        what,
        path,
        std::io::Error::new(std::io::ErrorKind::NotFound, "not found"),
    )
}

impl BaseModel {
    /// Opens `root` (a `.safetensors` file or an HF model folder) and reads every header.
    pub fn open(root: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(root).map_err(|e| AdapterError::io("reading base model", root, e))?;
        let (folder, index, names) = if meta.is_dir() {
            let index_path = root.join(INDEX_FILE);
            if index_path.is_file() {
                let index = read_index(&index_path)?;
                let mut names: Vec<String> = index.weight_map.values().cloned().collect();
                names.sort();
                names.dedup();
                (true, Some(index), names)
            } else if root.join(SINGLE_FILE).is_file() {
                (true, None, vec![SINGLE_FILE.to_string()])
            } else {
                let e = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it holds neither model.safetensors nor model.safetensors.index.json",
                );
                return Err(AdapterError::io("reading base model folder", root, e));
            }
        } else {
            let name = root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (false, None, vec![name])
        };
        let mut shards = Vec::new();
        for name in names {
            let path = if folder {
                root.join(&name)
            } else {
                root.to_path_buf()
            };
            if folder && !path.is_file() {
                return Err(not_found(
                    &path,
                    "shard listed in model.safetensors.index.json",
                ));
            }
            shards.push((name, MappedFile::open(&path)?));
        }
        let mut model = BaseModel {
            root: root.to_path_buf(),
            folder,
            index,
            shards,
            tensors: BTreeMap::new(),
        };
        model.collect_tensors()?;
        Ok(model)
    }

    fn collect_tensors(&mut self) -> Result<()> {
        let mut issues = Vec::new();
        for (name, file) in &self.shards {
            for (key, view) in file.tensors()?.iter() {
                if let Some(index) = &self.index {
                    if index.weight_map.get(key) != Some(name) {
                        let listed = index
                            .weight_map
                            .get(key)
                            .map_or("not listed".into(), |s| format!("listed in `{s}`"));
                        issues.push(KeyIssue::new(
                            key,
                            format!("listed in `{name}` by the index"),
                            listed,
                        ));
                    }
                }
                let info = TensorInfo {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                };
                if self.tensors.insert(key.to_string(), info).is_some() {
                    issues.push(KeyIssue::new(key, "in one shard", "in several shards"));
                }
            }
        }
        if let Some(index) = &self.index {
            for (key, shard) in &index.weight_map {
                if !self.tensors.contains_key(key) {
                    issues.push(KeyIssue::new(
                        key,
                        format!("in shard `{shard}` (as the index says)"),
                        "missing",
                    ));
                }
            }
        }
        if issues.is_empty() {
            return Ok(());
        }
        Err(AdapterError::Keys {
            context: format!("base model `{}`", self.root.display()),
            issues,
        })
    }
}

/// Reads and checks a shard index (shard names must be plain file names).
fn read_index(path: &Path) -> Result<ShardIndex> {
    let text = crate::io::bounded::read_to_string_bounded(
        path,
        crate::io::bounded::MAX_CONFIG_BYTES,
        "reading",
    )?;
    let index: ShardIndex = serde_json::from_str(&text).map_err(|source| AdapterError::Json {
        path: path.into(),
        source,
    })?;
    for shard in index.weight_map.values() {
        let plain = Path::new(shard)
            .file_name()
            .is_some_and(|n| n == shard.as_str());
        if !plain || !shard.ends_with(".safetensors") {
            return Err(AdapterError::Config {
                path: path.into(),
                field: "weight_map".into(),
                expected: "shard file names (`*.safetensors`) in the same folder".into(),
                actual: format!("{shard:?}"),
            });
        }
    }
    Ok(index)
}
