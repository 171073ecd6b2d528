//! `load_adapter`: a PEFT adapter folder onto a model's bare adapted layers.

use crate::adapter_config::AdapterConfig;
use crate::adapters::visit::checkpoint_path;
use crate::adapters::Adapters;
use crate::error::{AdapterError, KeyIssue, Result};
use crate::peft::adapter_file::{AdapterCheckpoint, ModuleAdapter};
use crate::peft::keys::{AdapterTensor, Kind};
use candle_nn::VarMap;
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// How [`load_adapter`] matches the checkpoint to the model.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Strict (the default): every tensor of the file must find an adapted layer, every layer that
    /// `target_modules` names must have its tensors, and each layer's rank, alpha, method and
    /// rsLoRA must equal what the model declares. Lenient: unmatched tensors and layers are only
    /// reported, and the file's configuration wins. Shapes are always checked.
    pub strict: bool,
    /// Keys and shapes stay strict, but each layer's rank, alpha, method and rsLoRA come from
    /// `adapter_config.json` instead of having to equal the model's declaration — for models
    /// whose adapter configuration is chosen at run time (e.g. [`crate::models::llama::Llama`]).
    pub config_from_file: bool,
    /// Registers the loaded tensors here (as `attach_adapters` does) so training can resume.
    pub varmap: Option<&'a VarMap>,
    /// Load tensors holding NaN / ±Inf values too (by default the load fails with
    /// [`AdapterError::NonFiniteWeights`] naming the tensor).
    pub allow_non_finite: bool,
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("strict", &self.strict)
            .field("config_from_file", &self.config_from_file)
            .field("varmap", &self.varmap.map(|_| "VarMap"))
            .field("allow_non_finite", &self.allow_non_finite)
            .finish()
    }
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            strict: true,
            config_from_file: false,
            varmap: None,
            allow_non_finite: false,
        }
    }
}

/// What [`load_adapter`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Layers that got an adapter, in visiting order.
    pub loaded: Vec<String>,
    /// Modules of the file with no adapted layer in the model (lenient mode only).
    pub unexpected: Vec<String>,
    /// Layers that `target_modules` names but the file lacks (lenient mode only).
    pub missing: Vec<String>,
}

/// A model layer as seen by the checking pass.
struct Slot {
    path: String,
    kind: Kind,
    /// `[out, in]` (linear) or `[vocab, dim]` (embedding).
    shape: [usize; 2],
    declared: AdapterConfig,
    attached: bool,
}

/// Loads the PEFT adapter in `dir` onto `model`, whose adapted layers must be bare: each layer
/// gets `attach_weights` with the configuration of `adapter_config.json` (`r`, `lora_alpha`,
/// `rank_pattern`, `alpha_pattern`, `use_dora`, `use_rslora`, `lora_dropout`). Every problem is
/// reported at once, each key with expected vs found, before any layer changes. A tensor holding
/// NaN / ±Inf fails with [`AdapterError::NonFiniteWeights`] naming its key, unless
/// `options.allow_non_finite`.
pub fn load_adapter<M: Adapters + ?Sized>(
    model: &mut M,
    dir: impl AsRef<Path>,
    options: &LoadOptions<'_>,
) -> Result<LoadReport> {
    let dir = dir.as_ref();
    let ckpt = AdapterCheckpoint::read(dir)?;
    if !options.allow_non_finite {
        ckpt.check_finite(" (set LoadOptions::allow_non_finite to load them anyway)")?;
    }
    let slots = slots(model)?;
    let mut issues = Vec::new();
    let mut report = LoadReport::default();
    let mut used = HashSet::new();
    for s in &slots {
        match ckpt.module(&s.path) {
            Some(ad) => {
                used.insert(s.path.as_str());
                check_slot(
                    s,
                    ad,
                    options.strict && !options.config_from_file,
                    &mut issues,
                );
            }
            None if ckpt.config.targets(&s.path) == Some(true) => {
                if options.strict {
                    let key = crate::peft::keys::key(&s.path, AdapterTensor::A, s.kind);
                    issues.push(KeyIssue::new(
                        key,
                        "present (target_modules names this layer)",
                        "missing",
                    ));
                } else {
                    report.missing.push(s.path.clone());
                }
            }
            None => {}
        }
    }
    for m in ckpt
        .modules
        .iter()
        .filter(|m| !used.contains(m.module.as_str()))
    {
        if options.strict {
            issues.push(KeyIssue::new(
                m.key(AdapterTensor::A),
                "a tensor of an adapted layer of the model",
                format!("no adapted layer `{}` in the model", m.module),
            ));
        } else {
            report.unexpected.push(m.module.clone());
        }
    }
    if !issues.is_empty() {
        return Err(AdapterError::Keys {
            context: format!("loading adapter `{}`", dir.display()),
            issues,
        });
    }
    attach_all(model, &ckpt, options, &mut report)?;
    Ok(report)
}

/// The model's adapted layers (linear and embedding), with their paths and shapes.
fn slots<M: Adapters + ?Sized>(model: &M) -> Result<Vec<Slot>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    model.visit_layers("", &mut |info, layer| {
        let Some((layer, declared)) = layer.adapted() else {
            return Ok(());
        };
        let (din, dout) = layer.dims_in_out();
        let (kind, shape) = if layer.is_embedding() {
            (Kind::Embedding, [din, dout])
        } else {
            (Kind::Linear, [dout, din])
        };
        let slot = Slot {
            path: checkpoint_path(layer, info),
            kind,
            shape,
            declared,
            attached: layer.adapter().is_some(),
        };
        if !seen.insert(slot.path.clone()) {
            return Err(AdapterError::DuplicatePath { path: slot.path });
        }
        out.push(slot);
        Ok(())
    })?;
    Ok(out)
}

/// Checks one layer against its tensors: kind, shapes, bare state and (strict) configuration.
fn check_slot(s: &Slot, ad: &ModuleAdapter, check_config: bool, issues: &mut Vec<KeyIssue>) {
    let key = ad.key(AdapterTensor::A);
    if ad.kind != s.kind {
        let want = match s.kind {
            Kind::Linear => "lora_A.weight / lora_B.weight (the model's layer is linear)",
            Kind::Embedding => {
                "lora_embedding_A / lora_embedding_B (the model's layer is an embedding)"
            }
        };
        issues.push(KeyIssue::new(key, want, "the other layer kind's names"));
        return;
    }
    if s.attached {
        issues.push(KeyIssue::new(
            key,
            "a bare layer to load into",
            format!("`{}` already has an adapter", s.path),
        ));
    }
    let r = ad.config.rank;
    let (din, dout) = match s.kind {
        Kind::Linear => (s.shape[1], s.shape[0]),
        Kind::Embedding => (s.shape[0], s.shape[1]),
    };
    let mut shape = |role: AdapterTensor, t: &candle_core::Tensor, want: Vec<usize>| {
        if t.dims() != want.as_slice() {
            issues.push(KeyIssue::new(
                ad.key(role),
                format!("shape {want:?}"),
                format!("shape {:?}", t.dims()),
            ));
        }
    };
    shape(AdapterTensor::A, &ad.a, vec![r, din]);
    shape(AdapterTensor::B, &ad.b, vec![dout, r]);
    if let Some(m) = &ad.magnitude {
        shape(AdapterTensor::Magnitude, m, vec![dout]);
    }
    if check_config {
        let (d, f) = (s.declared, ad.config);
        let mut differ = |what: &str, want: String, got: String| {
            issues.push(KeyIssue::new(
                ad.key(AdapterTensor::A),
                format!("{what} {want} (as the model declares for `{}`)", s.path),
                format!("{what} {got} (adapter_config.json)"),
            ));
        };
        if d.method != f.method {
            differ("method", d.method.name().into(), f.method.name().into());
        }
        if d.rank != f.rank {
            differ("rank", d.rank.to_string(), f.rank.to_string());
        }
        if d.alpha != f.alpha {
            differ("lora_alpha", d.alpha.to_string(), f.alpha.to_string());
        }
        if d.rslora != f.rslora {
            differ("use_rslora", d.rslora.to_string(), f.rslora.to_string());
        }
    }
}

/// Attaches every matched module and registers its tensors.
fn attach_all<M: Adapters + ?Sized>(
    model: &mut M,
    ckpt: &AdapterCheckpoint,
    options: &LoadOptions<'_>,
    report: &mut LoadReport,
) -> Result<()> {
    model.visit_layers_mut("", &mut |info, layer| {
        let Some((layer, _)) = layer.into_adapted() else {
            return Ok(());
        };
        let path = checkpoint_path(layer, info);
        let Some(ad) = ckpt.module(&path) else {
            return Ok(());
        };
        layer.set_path(path.clone());
        layer.attach_weights(ad.config, &ad.a, &ad.b, ad.magnitude.as_ref())?;
        let named = layer.named_vars();
        if let Some(vm) = options.varmap {
            crate::adapters::insert_vars(vm, &path, named)?;
        }
        report.loaded.push(path);
        Ok(())
    })
}
