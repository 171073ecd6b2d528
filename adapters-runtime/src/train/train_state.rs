//! Training checkpoints: a folder holding
//!
//! * `trainable.safetensors`: every trainable tensor by its full name (resume needs nothing else),
//! * `optimizer.safetensors`: the AdamW state ([`AdamW::state_tensors`]),
//! * `trainer_state.json`: [`TrainerState`] (step, data position, seed, dropout counters, losses),
//! * `adapter/`: the adapter as written by the caller's saver (e.g. PEFT format), when given.
//!
//! A checkpoint is written into a temporary sibling folder and renamed into place, so a crash
//! never leaves a half-written checkpoint under the final name.

use crate::adapters::Adapters;
use crate::error::{AdapterError, Result};
use crate::io::atomic::{parent_of, Staging};
use crate::io::finite::check_finite;
use crate::io::safetensors_write::write_tensors;
use crate::train::batch::DataPosition;
use crate::train::metrics::EvalMetrics;
use crate::train::optim::AdamW;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The trainable tensors file.
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
/// The optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state file.
pub const STATE_FILE: &str = "trainer_state.json";
/// The folder the adapter saver writes into.
pub const ADAPTER_DIR: &str = "adapter";
/// The version of the layout above.
pub const FORMAT_VERSION: u32 = 1;

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// Where the training data loader stands.
    pub data: Option<DataPosition>,
    /// The run's seed.
    pub seed: u64,
    /// Dropout masks drawn so far, per adapted layer path.
    pub dropout_steps: BTreeMap<String, u64>,
    /// Mean training loss of each step so far (`loss_history[i]` is step `i + 1`).
    pub loss_history: Vec<f64>,
    /// Evaluations so far, with the step they ran after.
    pub evals: Vec<(u64, EvalMetrics)>,
    /// Best evaluation loss so far.
    pub best_eval_loss: Option<f64>,
    /// Input tokens trained on so far.
    pub tokens_seen: u64,
    /// The training configuration, for reference.
    pub config: serde_json::Value,
}

/// `step-00000042`: the folder name of the checkpoint after `step` steps.
pub fn checkpoint_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// The files a complete checkpoint holds (it is written into a staging folder and renamed, so a
/// `step-*` folder missing one of them is not a checkpoint).
const REQUIRED: [&str; 3] = [STATE_FILE, TRAINABLE_FILE, OPTIMIZER_FILE];

/// The complete checkpoint folders under `root`, by step, oldest first.
pub fn list_checkpoints(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let entries =
        std::fs::read_dir(root).map_err(|e| AdapterError::io("listing checkpoints in", root, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AdapterError::io("listing checkpoints in", root, e))?;
        let name = entry.file_name();
        if let Some(step) = name.to_str().and_then(step_of) {
            let dir = entry.path();
            if REQUIRED.iter().all(|f| dir.join(f).is_file()) {
                out.push((step, dir));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The most advanced complete checkpoint under `root`, if any.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(root)?.pop().map(|(_, p)| p))
}

/// Removes all but the `keep` most advanced checkpoints under `root`. Each is first renamed to a
/// hidden `.step-*.deleting` (atomically no longer a checkpoint), then deleted; leftovers of an
/// interrupted prune are removed by the next one.
pub fn prune_checkpoints(root: &Path, keep: usize) -> Result<()> {
    let list = list_checkpoints(root)?;
    let n = list.len().saturating_sub(keep);
    for (_, p) in &list[..n] {
        let Some(name) = p.file_name() else { continue };
        let doomed = root.join(format!(".{}.deleting", name.to_string_lossy()));
        std::fs::rename(p, &doomed)
            .map_err(|e| AdapterError::io("retiring old checkpoint", p, e))?;
    }
    let entries =
        std::fs::read_dir(root).map_err(|e| AdapterError::io("listing checkpoints in", root, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step-") && name.ends_with(".deleting") {
            let p = entry.path();
            std::fs::remove_dir_all(&p)
                .map_err(|e| AdapterError::io("removing old checkpoint", &p, e))?;
        }
    }
    Ok(())
}

/// The dropout counters of every attached adapter, by layer path.
pub fn dropout_steps<M: Adapters + ?Sized>(model: &M) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    model.for_each_layer(&mut |path, l| {
        if let Some(ad) = l.adapter() {
            out.insert(path.to_string(), ad.dropout_step());
        }
    })?;
    Ok(out)
}

fn check_dropout_keys<M: Adapters + ?Sized>(
    model: &M,
    steps: &BTreeMap<String, u64>,
    dir: &Path,
) -> Result<()> {
    let current = dropout_steps(model)?;
    if current.keys().ne(steps.keys()) {
        return Err(AdapterError::Resume {
            path: dir.to_path_buf(),
            what: "the adapted layers".into(),
            expected: format!("{:?}", current.keys().collect::<Vec<_>>()),
            actual: format!("{:?}", steps.keys().collect::<Vec<_>>()),
        });
    }
    Ok(())
}

/// Restores dropout counters saved by [`dropout_steps`]; `dir` names the checkpoint in errors.
pub fn set_dropout_steps<M: Adapters + ?Sized>(
    model: &M,
    steps: &BTreeMap<String, u64>,
    dir: &Path,
) -> Result<()> {
    check_dropout_keys(model, steps, dir)?;
    model.for_each_layer(&mut |path, l| {
        if let (Some(ad), Some(&s)) = (l.adapter(), steps.get(path)) {
            ad.set_dropout_step(s);
        }
    })
}

/// A saver that writes the model's adapter into a folder (e.g. PEFT's `save_adapter`).
pub type AdapterSaver<'a, M> = dyn Fn(&M, &Path) -> Result<()> + 'a;

/// Writes a checkpoint into `dir` atomically (replacing an existing one). A trainable tensor
/// holding NaN / ±Inf fails with [`AdapterError::NonFiniteWeights`] before anything is written.
pub fn save_train_state<M: Adapters + ?Sized>(
    dir: &Path,
    model: &M,
    optimizer: &AdamW,
    state: &TrainerState,
    save_adapter: Option<&AdapterSaver<'_, M>>,
) -> Result<()> {
    let trainable: Vec<(String, Tensor)> = model
        .named_trainable_vars()?
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().detach()))
        .collect();
    let what = format!("writing checkpoint `{}`", dir.display());
    for (name, t) in &trainable {
        check_finite(t, &what, name, "")?;
    }
    let parent = parent_of(dir);
    std::fs::create_dir_all(&parent)
        .map_err(|e| AdapterError::io("creating checkpoint folder", &parent, e))?;
    let tmp = Staging::new(dir)?;
    write_tensors(&tmp.path().join(TRAINABLE_FILE), &trainable, None)?;
    let mut moments: Vec<(String, Tensor)> = optimizer.state_tensors()?.into_iter().collect();
    moments.sort_by(|a, b| a.0.cmp(&b.0));
    write_tensors(&tmp.path().join(OPTIMIZER_FILE), &moments, None)?;
    let json = serde_json::to_vec_pretty(state).map_err(|source| AdapterError::Json {
        path: dir.join(STATE_FILE),
        source,
    })?;
    let state_path = tmp.path().join(STATE_FILE);
    std::fs::write(&state_path, json).map_err(|e| AdapterError::io("writing", &state_path, e))?;
    if let Some(save) = save_adapter {
        let adapter_dir = tmp.path().join(ADAPTER_DIR);
        save(model, &adapter_dir)?;
    }
    tmp.commit(false)
}

fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(AdapterError::io(
            "reading",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    candle_core::safetensors::load(path, device).map_err(|e| AdapterError::Resume {
        path: path.to_path_buf(),
        what: "contents".into(),
        expected: "a valid safetensors file".into(),
        actual: e.to_string(),
    })
}

/// Reads `trainer_state.json` of a checkpoint (refused unread past 16 MiB).
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = crate::io::bounded::read_to_string_bounded(
        &path,
        crate::io::bounded::MAX_CONFIG_BYTES,
        "reading",
    )?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|source| AdapterError::Json {
        path: path.clone(),
        source,
    })?;
    if state.format_version != FORMAT_VERSION {
        return Err(AdapterError::Resume {
            path: dir.to_path_buf(),
            what: "format_version".into(),
            expected: FORMAT_VERSION.to_string(),
            actual: state.format_version.to_string(),
        });
    }
    Ok(state)
}

/// Restores a checkpoint into `model` (trainable tensors, dropout counters) and `optimizer`;
/// returns the trainer state. Everything is checked before anything is modified, including that
/// every trainable and optimizer tensor is finite ([`AdapterError::NonFiniteWeights`] names the
/// first that is not: a run must not resume from, and then write, NaN weights).
pub fn load_train_state<M: Adapters + ?Sized>(
    dir: &Path,
    model: &M,
    optimizer: &mut AdamW,
) -> Result<TrainerState> {
    let state = read_state(dir)?;
    let vars = model.named_trainable_vars()?;
    let device = vars
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    let file = dir.join(TRAINABLE_FILE);
    let saved = load_tensors(&file, &device)?;
    let mut issues = Vec::new();
    for (name, var) in &vars {
        match saved.get(name) {
            None => issues.push(crate::error::KeyIssue::new(name, "present", "missing")),
            Some(t) if t.dims() != var.dims() || t.dtype() != var.dtype() => {
                issues.push(crate::error::KeyIssue::new(
                    name,
                    format!("{:?} {:?}", var.dtype(), var.dims()),
                    format!("{:?} {:?}", t.dtype(), t.dims()),
                ))
            }
            Some(_) => {}
        }
    }
    let known: std::collections::HashSet<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
    for key in saved.keys().filter(|k| !known.contains(k.as_str())) {
        issues.push(crate::error::KeyIssue::new(
            key,
            "absent (no such trainable tensor)",
            "present",
        ));
    }
    if !issues.is_empty() {
        return Err(AdapterError::Keys {
            context: format!("resuming from `{}`", file.display()),
            issues,
        });
    }
    let what = format!("resuming from `{}`", file.display());
    for (name, _) in &vars {
        check_finite(&saved[name], &what, name, "")?;
    }
    let opt_file = dir.join(OPTIMIZER_FILE);
    let opt_state = load_tensors(&opt_file, &device)?;
    let what = format!("resuming from `{}`", opt_file.display());
    let mut opt_names: Vec<&String> = opt_state.keys().collect();
    opt_names.sort();
    for name in opt_names {
        check_finite(&opt_state[name], &what, name, "")?;
    }
    check_dropout_keys(model, &state.dropout_steps, dir)?;
    optimizer.load_state(
        &opt_state,
        &format!("resuming from `{}`", opt_file.display()),
    )?;
    set_dropout_steps(model, &state.dropout_steps, dir)?;
    for (name, var) in &vars {
        var.set(&saved[name].to_device(var.device())?)?;
    }
    Ok(state)
}
