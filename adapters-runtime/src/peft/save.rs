//! `save_adapter`: a model's adapters as a PEFT adapter folder.

use crate::adapter_config::AdapterConfig;
use crate::adapters::visit::checkpoint_path;
use crate::adapters::Adapters;
use crate::error::{AdapterError, Result};
use crate::estimate::BaseDType;
use crate::io::atomic::Staging;
use crate::io::finite::check_finite;
use crate::io::safetensors_write::{tensor_bytes, write_file, Entry, Failure, Source};
use crate::peft::adapter_file::WEIGHTS_FILE;
use crate::peft::keys;
use crate::peft::peft_config::{json_number, PeftConfig, TargetModules, CONFIG_FILE};
use candle_core::Var;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// How [`save_adapter`] writes.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// The dtype of the saved tensors; `None` keeps the adapters' own (f32, or f64 on f64 bases).
    pub dtype: Option<BaseDType>,
    /// Written as `base_model_name_or_path` (PEFT loads the base from it when asked to).
    pub base_model_name_or_path: Option<String>,
    /// Write tensors holding NaN / ±Inf values too (by default the save fails with
    /// [`AdapterError::NonFiniteWeights`] naming the tensor, and nothing is written).
    pub allow_non_finite: bool,
}

/// One adapted layer as it will be saved.
struct Saved {
    path: String,
    config: AdapterConfig,
    vars: Vec<(String, Var)>,
}

/// Writes the model's attached adapters to `dir` as PEFT's `save_pretrained` does:
/// `adapter_model.safetensors` (metadata `{"format":"pt"}`, keys
/// `base_model.model.<path>.lora_A.weight`, …) and `adapter_config.json` (with `rank_pattern` /
/// `alpha_pattern` for layers whose rank / alpha differ from the most common one). Missing parent
/// folders are created; the folder is replaced atomically; other files already in it are kept.
/// A tensor holding NaN / ±Inf (after the cast to `options.dtype`) fails the save with
/// [`AdapterError::NonFiniteWeights`] unless `options.allow_non_finite`.
pub fn save_adapter<M: Adapters + ?Sized>(
    model: &M,
    dir: impl AsRef<Path>,
    options: &SaveOptions,
) -> Result<()> {
    save_adapter_with(model, dir.as_ref(), options, |_| Ok(()))
}

/// [`save_adapter`] with a hook run on the staged folder just before it replaces `dir` (an error
/// from the hook aborts the save, as an interruption would). For tests.
#[doc(hidden)]
pub fn save_adapter_with<M: Adapters + ?Sized>(
    model: &M,
    dir: &Path,
    options: &SaveOptions,
    before_commit: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let (layers, bare) = collect(model)?;
    let config = peft_config(&layers, &bare, options)?;
    let json = config.to_json_string()?;
    let failure = Failure::default();
    let mut entries = Vec::new();
    for l in &layers {
        for (name, var) in &l.vars {
            let t = var.as_tensor().detach();
            let t = match options.dtype {
                Some(d) => t.to_dtype(d.to_candle())?,
                None => t,
            };
            let key = format!("{}{}.{name}", keys::PREFIX, l.path);
            if !options.allow_non_finite {
                let what = format!("saving adapter to `{}`", dir.display());
                let hint = " (set SaveOptions::allow_non_finite to write them anyway)";
                check_finite(&t, &what, &key, hint)?;
            }
            let (dtype, bytes) = tensor_bytes(&t)?;
            entries.push((
                key,
                Entry::new(
                    dtype,
                    t.dims().to_vec(),
                    Source::Owned(bytes),
                    &failure,
                    None,
                ),
            ));
        }
    }
    let parent = crate::io::atomic::parent_of(dir);
    std::fs::create_dir_all(&parent).map_err(|e| AdapterError::io("creating", &parent, e))?;
    let staging = Staging::new(dir)?;
    let meta = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    write_file(
        &staging.path().join(WEIGHTS_FILE),
        entries,
        Some(meta),
        &failure,
    )?;
    let config_path = staging.path().join(CONFIG_FILE);
    std::fs::write(&config_path, json).map_err(|e| AdapterError::io("writing", &config_path, e))?;
    before_commit(staging.path())?;
    staging.commit(true)
}

/// The attached adapters (in visiting order) and the last path components of every other field.
fn collect<M: Adapters + ?Sized>(model: &M) -> Result<(Vec<Saved>, HashSet<String>)> {
    let mut layers = Vec::new();
    let mut bare = HashSet::new();
    let mut seen = HashSet::new();
    model.visit_layers("", &mut |info, layer| {
        let (path, ad, vars) = match layer.adapted() {
            Some((l, _)) => (checkpoint_path(l, info), l.adapter(), l.named_vars()),
            None => (info.path.to_string(), None, Vec::new()),
        };
        let Some(ad) = ad else {
            bare.insert(keys::last_component(&path).to_string());
            return Ok(());
        };
        if !seen.insert(path.clone()) {
            return Err(AdapterError::DuplicatePath { path });
        }
        layers.push(Saved {
            path,
            config: *ad.config(),
            vars,
        });
        Ok(())
    })?;
    if layers.is_empty() {
        return Err(AdapterError::NoAdapters { op: "save_adapter" });
    }
    Ok((layers, bare))
}

/// The most common value (the first seen among equally common ones).
fn most_common<T: PartialEq + Copy>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let max = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == max).map(|(v, _)| v)
}

/// The single PEFT config for all layers; settings PEFT holds once must agree across layers.
fn peft_config(
    layers: &[Saved],
    bare: &HashSet<String>,
    options: &SaveOptions,
) -> Result<PeftConfig> {
    let first = layers[0].config;
    for l in layers {
        let c = l.config;
        let differ = |field: &'static str, a: String, b: String| AdapterError::Unrepresentable {
            layer: l.path.clone(),
            field,
            expected: a,
            actual: b,
        };
        if c.method != first.method {
            return Err(differ(
                "use_dora",
                first.method.name().into(),
                c.method.name().into(),
            ));
        }
        if c.rslora != first.rslora {
            return Err(differ(
                "use_rslora",
                first.rslora.to_string(),
                c.rslora.to_string(),
            ));
        }
        if c.dropout != first.dropout {
            return Err(differ(
                "lora_dropout",
                first.dropout.to_string(),
                c.dropout.to_string(),
            ));
        }
        if c.init != first.init {
            return Err(differ(
                "init_lora_weights",
                format!("{:?}", first.init),
                format!("{:?}", c.init),
            ));
        }
    }
    let r = most_common(layers.iter().map(|l| l.config.rank)).unwrap_or(first.rank);
    let alpha = most_common(layers.iter().map(|l| l.config.alpha)).unwrap_or(first.alpha);
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    let mut targets = BTreeSet::new();
    for l in layers {
        if l.config.rank != r {
            rank_pattern.insert(l.path.clone(), Value::from(l.config.rank));
        }
        if l.config.alpha != alpha {
            alpha_pattern.insert(l.path.clone(), json_number(l.config.alpha));
        }
        // A bare layer with the same name would be adapted by PEFT too: name the full path then.
        let last = keys::last_component(&l.path);
        targets.insert(if bare.contains(last) {
            l.path.clone()
        } else {
            last.to_string()
        });
    }
    let mut extra = Map::new();
    extra.insert(
        "base_model_name_or_path".into(),
        options.base_model_name_or_path.clone().into(),
    );
    for (k, v) in [
        ("task_type", Value::Null),
        ("inference_mode", Value::Bool(true)),
        ("modules_to_save", Value::Null),
        ("layers_to_transform", Value::Null),
        ("layers_pattern", Value::Null),
        ("lora_bias", Value::Bool(false)),
        ("revision", Value::Null),
    ] {
        extra.insert(k.into(), v);
    }
    Ok(PeftConfig {
        peft_type: "LORA".into(),
        r,
        lora_alpha: alpha,
        lora_dropout: first.dropout,
        target_modules: Some(TargetModules::List(targets.into_iter().collect())),
        use_dora: first.method == crate::estimate::Method::Dora,
        use_rslora: first.rslora,
        fan_in_fan_out: false,
        bias: "none".into(),
        init_lora_weights: first.init.peft_value(),
        rank_pattern: Some(rank_pattern),
        alpha_pattern: Some(alpha_pattern),
        extra,
    })
}
