//! `merge_checkpoint`: folds a PEFT adapter into a base checkpoint, file to file, one tensor at a
//! time. The math is the runtime's: each adapted weight becomes an [`AdaptedLinear`] /
//! [`AdaptedEmbedding`] and its `merged_weight_tensor` is written.

use crate::error::{AdapterError, KeyIssue, Result};
use crate::hf::model_files::{BaseModel, INDEX_FILE};
use crate::io::atomic::{parent_of, Staging};
use crate::io::finite::check_finite;
use crate::io::progress::{progress_bar, Unit};
use crate::io::safetensors_file::to_tensor;
use crate::io::safetensors_write::{tensor_bytes, write_file, Entry, Failure, Source};
use crate::layers::{AdaptedEmbedding, AdaptedLinear};
use crate::peft::adapter_file::{AdapterCheckpoint, ModuleAdapter};
use crate::peft::keys::{self, Kind};
use candle_core::Tensor;
use indicatif::ProgressBar;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How [`merge_checkpoint`] writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeOptions {
    /// Replace `out` when it exists (never when it is the base itself).
    pub overwrite: bool,
    /// Show a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// Write merged weights even when the adapter or a merged weight holds NaN / ±Inf values
    /// (by default the merge fails with [`AdapterError::NonFiniteWeights`] naming the tensor).
    pub allow_non_finite: bool,
}

/// How to allow non-finite weights, appended to [`AdapterError::NonFiniteWeights`].
pub(crate) const ALLOW_HINT: &str =
    " (pass --allow-non-finite, MergeOptions::allow_non_finite, to write them anyway)";

/// What [`merge_checkpoint`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// The output file or folder.
    pub output: PathBuf,
    /// The merged weights' names, sorted.
    pub merged: Vec<String>,
    /// How many tensors were passed through unchanged.
    pub passed_through: usize,
    /// How many weights files were written.
    pub files: usize,
    /// Other files of the base folder copied over (config.json, tokenizer files, …).
    pub copied: Vec<String>,
    /// Entries of the base folder not copied (other weight formats, subfolders).
    pub skipped: Vec<String>,
}

/// File extensions of weights in other formats, which would hold unmerged weights.
const OTHER_WEIGHTS: [&str; 9] = [
    "bin",
    "pt",
    "pth",
    "ckpt",
    "h5",
    "msgpack",
    "gguf",
    "onnx",
    "safetensors",
];

/// Merges the PEFT adapter in `adapter` into the base checkpoint `base` (a `.safetensors` file, or
/// an HF model folder with one file or shards) and writes `out` in the same layout. LoRA weights
/// become `W0 + s·B·A`, DoRA weights `(m/n) ⊙ (W0 + s·B·A)` row-wise (embeddings: per dimension),
/// computed in f32 (f64 for f64 bases) and stored in the base dtype; every other tensor is copied
/// unchanged. Nothing is written unless every adapted weight exists in the base with a matching
/// shape; the output appears atomically. Unless `options.allow_non_finite`, an adapter tensor or
/// a merged weight holding NaN / ±Inf fails the merge with [`AdapterError::NonFiniteWeights`]
/// naming it, and nothing is written.
pub fn merge_checkpoint(
    base: &Path,
    adapter: &Path,
    out: &Path,
    options: &MergeOptions,
) -> Result<MergeReport> {
    if crate::gguf::is_gguf_path(base) {
        return crate::peft::merge_gguf::merge_gguf(base, adapter, out, options, None);
    }
    let ckpt = AdapterCheckpoint::read(adapter)?;
    if !options.allow_non_finite {
        ckpt.check_finite(ALLOW_HINT)?;
    }
    let model = BaseModel::open(base)?;
    check_output(&model, adapter, out, options.overwrite)?;
    let targets = plan(&ckpt, &model)?;
    let total: u64 = model
        .tensors
        .values()
        .map(|t| byte_len(t.dtype, &t.shape) as u64)
        .sum();
    let pb = progress_bar(options.progress, Unit::Bytes, total, 0);
    let mut report = MergeReport {
        output: out.to_path_buf(),
        merged: targets.keys().cloned().collect(),
        passed_through: model.tensors.len() - targets.len(),
        files: model.shards.len(),
        ..Default::default()
    };
    report.merged.sort();
    if model.folder {
        let staging = Staging::new(out)?;
        for (i, (name, _)) in model.shards.iter().enumerate() {
            pb.set_message(name.clone());
            let path = staging.path().join(name);
            write_shard(&model, i, &targets, &path, &pb, options.allow_non_finite)?;
        }
        copy_others(&model, staging.path(), &mut report)?;
        // `--force` replaces what the merge writes; other files already in `out` stay.
        staging.commit(true)?;
    } else {
        write_shard(&model, 0, &targets, out, &pb, options.allow_non_finite)?;
    }
    pb.finish_and_clear();
    Ok(report)
}

fn byte_len(dtype: Dtype, shape: &[usize]) -> usize {
    shape.iter().product::<usize>() * dtype.bitsize() / 8
}

/// `path` made absolute with symlinks resolved, also when it (but not its parent) does not exist.
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    Some(parent_of(path).canonicalize().ok()?.join(name))
}

/// Refuses an output that is, contains or is inside an input (the base, its shards, the adapter),
/// an existing output unless asked to replace it (a dangling symlink counts as existing), and a
/// file where the base is a folder or the other way round.
fn check_output(model: &BaseModel, adapter: &Path, out: &Path, overwrite: bool) -> Result<()> {
    let mut inputs: Vec<(&str, PathBuf)> = vec![("the base model", model.root.clone())];
    inputs.extend(
        model
            .shards
            .iter()
            .map(|(_, f)| ("a base shard", f.path().to_path_buf())),
    );
    inputs.push(("the adapter", adapter.to_path_buf()));
    check_output_paths(&inputs, model.folder, out, overwrite)
}

/// [`check_output`] for any inputs: `out` must not be, contain or be inside one of them, must not
/// exist unless `overwrite`, and must be a folder exactly when `folder`.
pub(crate) fn check_output_paths(
    inputs: &[(&str, PathBuf)],
    folder: bool,
    out: &Path,
    overwrite: bool,
) -> Result<()> {
    let refuse = |reason: String| {
        Err(AdapterError::Output {
            path: out.into(),
            reason,
        })
    };
    let parent = parent_of(out);
    if !parent.is_dir() {
        return refuse("its parent folder does not exist".into());
    }
    let Some(out_abs) = resolved(out) else {
        return refuse("cannot be resolved to a path".into());
    };
    for (what, input) in inputs {
        let Some(input) = resolved(input) else {
            continue;
        };
        if out_abs == input {
            return refuse(format!("is {what} itself"));
        }
        if input.starts_with(&out_abs) {
            return refuse(format!(
                "contains {what} (`{}`): replacing it would delete an input",
                input.display()
            ));
        }
        if out_abs.starts_with(&input) {
            return refuse(format!("is inside {what} (`{}`)", input.display()));
        }
    }
    let Ok(link) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    if !overwrite {
        return refuse("exists; pass --force (MergeOptions::overwrite) to replace it".into());
    }
    let is_dir = !link.file_type().is_symlink() && link.is_dir();
    if is_dir != folder {
        return refuse(
            if folder {
                "exists and is not a folder, but a model folder is to be written"
            } else {
                "is a folder, but a single file is to be written"
            }
            .into(),
        );
    }
    Ok(())
}

/// Maps every adapted base weight to its adapter, checking presence, dtype and shape.
fn plan<'c>(
    ckpt: &'c AdapterCheckpoint,
    model: &BaseModel,
) -> Result<HashMap<String, &'c ModuleAdapter>> {
    let mut issues = Vec::new();
    let mut targets = HashMap::new();
    for ad in &ckpt.modules {
        let key = keys::base_weight(&ad.module);
        let Some(info) = model.tensors.get(&key) else {
            let hint = if ad.module.ends_with("lm_head") {
                " (the base has no lm_head.weight: its output layer is tied to the embeddings)"
            } else {
                ""
            };
            issues.push(KeyIssue::new(
                &key,
                format!("a base weight for adapter module `{}`", ad.module),
                format!("missing{hint}"),
            ));
            continue;
        };
        let want = ad.base_shape();
        if info.shape != want {
            let what = match ad.kind {
                Kind::Linear => "[out, in] from lora_B / lora_A",
                Kind::Embedding => "[vocab, dim] from lora_embedding_A / lora_embedding_B",
            };
            issues.push(KeyIssue::new(
                &key,
                format!("shape {want:?} ({what})"),
                format!("shape {:?}", info.shape),
            ));
            continue;
        }
        if !matches!(
            info.dtype,
            Dtype::F64 | Dtype::F32 | Dtype::BF16 | Dtype::F16
        ) {
            issues.push(KeyIssue::new(
                &key,
                "a float weight (f64, f32, bf16, f16)",
                format!("{:?}", info.dtype),
            ));
            continue;
        }
        targets.insert(key, ad);
    }
    if !issues.is_empty() {
        return Err(AdapterError::Keys {
            context: format!(
                "merging adapter `{}` into `{}`",
                ckpt.dir.display(),
                model.root.display()
            ),
            issues,
        });
    }
    Ok(targets)
}

/// Writes shard `i` to `path`, merging the adapted weights as the writer reaches them (a
/// non-finite merged weight fails the shard unless `allow_non_finite`).
fn write_shard(
    model: &BaseModel,
    i: usize,
    targets: &HashMap<String, &ModuleAdapter>,
    path: &Path,
    pb: &ProgressBar,
    allow_non_finite: bool,
) -> Result<()> {
    let file = &model.shards[i].1;
    let st = file.tensors()?;
    let failure = Failure::default();
    let mut entries = Vec::new();
    for (name, view) in st.iter() {
        let entry = match targets.get(name) {
            Some(ad) => {
                let (dtype, shape) = (view.dtype(), view.shape().to_vec());
                let make =
                    Box::new(move || merged_bytes(&view, ad, file.path(), name, allow_non_finite));
                Entry::new(dtype, shape, Source::Lazy(make), &failure, Some(pb))
            }
            None => Entry::view(view, &failure, Some(pb)),
        };
        entries.push((name.to_string(), entry));
    }
    write_file(path, entries, file.string_metadata()?, &failure)
}

/// The merged weight of one adapted module over its base weight `w` (in HF's layout), computed
/// by the runtime's layers.
pub(crate) fn merged_weight(w: Tensor, ad: &ModuleAdapter) -> Result<Tensor> {
    Ok(match ad.kind {
        Kind::Linear => {
            let mut l = AdaptedLinear::new(w, None).with_path(ad.module.clone());
            l.attach_weights(ad.config, &ad.a, &ad.b, ad.magnitude.as_ref())?;
            l.merged_weight_tensor()?
        }
        Kind::Embedding => {
            let mut e = AdaptedEmbedding::new(w).with_path(ad.module.clone());
            e.attach_weights(ad.config, &ad.a, &ad.b, ad.magnitude.as_ref())?;
            e.merged_weight_tensor()?
        }
    })
}

/// One merged weight's bytes, in the base dtype; checked finite unless `allow_non_finite`.
fn merged_bytes(
    view: &TensorView<'_>,
    ad: &ModuleAdapter,
    file: &Path,
    key: &str,
    allow_non_finite: bool,
) -> Result<Vec<u8>> {
    let merged = merged_weight(to_tensor(view, file, key)?, ad)?;
    if !allow_non_finite {
        let what = format!(
            "merging adapter module `{}` into `{}`",
            ad.module,
            file.display()
        );
        check_finite(&merged, &what, key, ALLOW_HINT)?;
    }
    Ok(tensor_bytes(&merged)?.1)
}

/// Copies the base folder's other files (config, tokenizer, index) into `to`.
fn copy_others(model: &BaseModel, to: &Path, report: &mut MergeReport) -> Result<()> {
    let root = &model.root;
    let entries = std::fs::read_dir(root).map_err(|e| AdapterError::io("listing", root, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AdapterError::io("listing", root, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in names {
        let src = root.join(&name);
        if model.shards.iter().any(|(s, _)| *s == name) {
            continue;
        }
        let ext = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        let is_file = std::fs::metadata(&src).is_ok_and(|m| m.is_file());
        if name != INDEX_FILE && (!is_file || OTHER_WEIGHTS.contains(&ext)) {
            report.skipped.push(name);
            continue;
        }
        std::fs::copy(&src, to.join(&name)).map_err(|e| AdapterError::io("copying", &src, e))?;
        report.copied.push(name);
    }
    Ok(())
}
