//! Whole-model adapter operations over an `#[adapter]` struct: attach, list, collect trainable
//! variables, merge / unmerge, enable / disable, count, and check that gradients reach every
//! adapter.

pub mod frozen;
mod gradients;
pub mod patterns;
pub mod target_spec;
pub mod targets;
#[doc(hidden)]
pub mod visit;

use crate::adapter_config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::estimate::Method;
use crate::layers::AdaptedLayer;
use candle_core::backprop::GradStore;
use candle_core::Var;
use candle_nn::VarMap;
use std::collections::HashSet;
use visit::{check_declared, checkpoint_path, AdapterModel, LayerMut, LayerRef};

pub use frozen::FrozenModule;
pub use patterns::Patterns;
pub use target_spec::TargetSpec;
pub use targets::Targets;
// A second path to the trait, so that rustc's diagnostics name it `AdapterStruct` rather than by
// its path through `__private`.
#[doc(hidden)]
pub use visit::AdapterStruct;

/// One adapted layer, as listed by [`Adapters::adapter_layers`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    /// Checkpoint path of the base weight, without `.weight`.
    pub path: String,
    /// Whether the layer is an embedding.
    pub embedding: bool,
    /// LoRA or DoRA.
    pub method: Method,
    /// Rank.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// The applied scaling.
    pub scaling: f64,
    /// Input features (vocab for embeddings).
    pub din: usize,
    /// Output features (dim for embeddings).
    pub dout: usize,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Whether the adapter is merged.
    pub merged: bool,
}

/// How many field paths an error message lists before summarising the rest.
const LISTED: usize = 12;

/// `a, b, c and 9 more`.
fn list_some(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    let shown = items
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Whole-model adapter operations, for every [`AdapterModel`] (every `#[adapter]` struct).
pub trait Adapters: AdapterModel {
    /// Checks every declared dimension against the loaded weights, attaches a freshly initialised
    /// adapter to every `#[adapt]` field (seeded by `seed`), and registers the trainable tensors in
    /// `varmap` under `<path>.lora_A.weight`, `<path>.lora_B.weight`, `<path>.lora_magnitude_vector`.
    ///
    /// Errors when nothing was attached (a forgotten `#[nested]`, say) and when an adapted layer
    /// has no checkpoint path (see [`AdapterError::UnknownCheckpointPath`]).
    fn attach_adapters(&mut self, varmap: &VarMap, seed: u64) -> Result<()> {
        self.attach_adapters_with(varmap, seed, &mut |_, config| Some(config))
    }

    /// [`Adapters::attach_adapters`] with a plan: for each `#[adapt]` field, `plan(path, declared
    /// config)` returns the configuration to attach, or `None` to leave the layer bare (frozen).
    /// This is how run-time choices (`--method`, `--rank`, `--targets`) override the attribute.
    /// A plan that chooses no layer is an error.
    fn attach_adapters_with(
        &mut self,
        varmap: &VarMap,
        seed: u64,
        plan: &mut dyn FnMut(&str, AdapterConfig) -> Option<AdapterConfig>,
    ) -> Result<()> {
        self.check_declared()?;
        let mut pathless = Vec::new();
        let mut visited = Vec::new();
        self.visit_layers("", &mut |info, layer| {
            let role = match (&layer, layer.adapted()) {
                (_, Some((l, _))) => {
                    if l.path().is_none() {
                        pathless.push(info.path.to_string());
                    }
                    "#[adapt]"
                }
                (LayerRef::Frozen { .. } | LayerRef::Counted { .. }, None) => "#[frozen]",
                _ => "?",
            };
            visited.push(format!("{} ({role})", info.path));
            Ok(())
        })?;
        if !pathless.is_empty() {
            return Err(AdapterError::UnknownCheckpointPath {
                count: pathless.len(),
                fields: list_some(&pathless),
            });
        }
        let (mut seen, mut adapted) = (HashSet::new(), 0usize);
        self.visit_layers_mut("", &mut |info, layer| {
            let Some((layer, declared)) = layer.into_adapted() else {
                return Ok(());
            };
            let path = checkpoint_path(layer, info);
            let Some(config) = plan(&path, declared) else {
                return Ok(());
            };
            layer.attach(config, seed)?;
            if !seen.insert(path.clone()) {
                return Err(AdapterError::DuplicatePath { path });
            }
            adapted += 1;
            insert_vars(varmap, &path, layer.named_vars())
        })?;
        if adapted == 0 {
            let has_adapt = visited.iter().any(|v| v.ends_with("(#[adapt])"));
            let reason = if has_adapt {
                "the plan (run-time targets) chose none of the `#[adapt]` fields"
            } else {
                "no `#[adapt]` field was found (a nested struct without `#[nested]`?)"
            };
            return Err(AdapterError::NothingAttached {
                reason: reason.into(),
                visited: list_some(&visited),
            });
        }
        Ok(())
    }

    /// Attaches adapters as `spec` selects them, with PEFT 0.21's semantics (`target_modules` as
    /// names, a regular expression or `all-linear`, `exclude_modules`, `layers_to_transform`,
    /// `rank_pattern` / `alpha_pattern`; see [`TargetSpec`]). The saved `adapter_config.json`
    /// names exactly the attached modules, so PEFT selects the same ones on load.
    fn attach_adapters_matching(
        &mut self,
        varmap: &VarMap,
        seed: u64,
        spec: &TargetSpec,
    ) -> Result<()> {
        spec.validate()?;
        let mut embeddings = HashSet::new();
        self.for_each_layer(&mut |path, l| {
            if l.is_embedding() {
                embeddings.insert(path.to_string());
            }
        })?;
        self.attach_adapters_with(varmap, seed, &mut |path, _| {
            spec.config_for(path, embeddings.contains(path))
        })
    }

    /// Names every adapted layer that has no checkpoint path by its field path (`layers.0.q`), so
    /// that [`Adapters::attach_adapters`] accepts a model built without a `VarBuilder` (from
    /// tensors, or with `.into()` from `candle_nn` layers). Its adapters are then saved under
    /// those names, which only match a checkpoint whose modules are named like the fields.
    fn name_layers_by_field(&mut self) -> Result<()> {
        self.visit_layers_mut("", &mut |info, layer| {
            if let Some((l, _)) = layer.into_adapted() {
                if l.path().is_none() {
                    l.set_path(info.path.to_string());
                }
            }
            Ok(())
        })
    }

    /// Checks declared dimensions (and collection counts) against the loaded weights.
    fn check_declared(&self) -> Result<()> {
        self.visit_layers("", &mut |info, layer| match (layer.adapted(), layer) {
            (Some((l, _)), _) => {
                check_declared(info, Some(l.dims_in_out()), l.frozen_params(), l.has_bias())
            }
            (None, LayerRef::Frozen { module }) => check_declared(
                info,
                module.dims_in_out(),
                module.frozen_params(),
                module.has_bias(),
            ),
            // `#[frozen(params = N)]` on a type that is not a `FrozenModule`: nothing to check.
            (None, _) => Ok(()),
        })
    }

    /// Runs `f(checkpoint path, layer)` on every adapted layer (attached or bare).
    fn for_each_layer(&self, f: &mut dyn FnMut(&str, &dyn AdaptedLayer)) -> Result<()> {
        self.visit_layers("", &mut |info, layer| {
            if let Some((l, _)) = layer.adapted() {
                f(&checkpoint_path(l, info), l);
            }
            Ok(())
        })
    }

    /// The adapted layers, in declaration order.
    fn adapter_layers(&self) -> Result<Vec<LayerSummary>> {
        let mut out = Vec::new();
        self.for_each_layer(&mut |path, l| {
            let Some(ad) = l.adapter() else { return };
            let c = ad.config();
            let (din, dout) = l.dims_in_out();
            out.push(LayerSummary {
                path: path.to_string(),
                embedding: l.is_embedding(),
                method: c.method,
                rank: c.rank,
                alpha: c.alpha,
                scaling: ad.scaling(),
                din,
                dout,
                trainable_params: l.trainable_params(),
                merged: ad.is_merged(),
            });
        })?;
        Ok(out)
    }

    /// Every trainable tensor with its full PEFT-style name (`<path>.lora_A.weight`, …).
    fn named_trainable_vars(&self) -> Result<Vec<(String, Var)>> {
        let mut out = Vec::new();
        self.for_each_layer(&mut |path, l| {
            out.extend(
                l.named_vars()
                    .into_iter()
                    .map(|(k, v)| (format!("{path}.{k}"), v)),
            );
        })?;
        Ok(out)
    }

    /// Every trainable tensor, for an optimizer.
    fn trainable_vars(&self) -> Result<Vec<Var>> {
        Ok(self
            .named_trainable_vars()?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Checks that a backward pass reached every attached adapter tensor: an error names each
    /// tensor without a gradient entry, grouped by module (`q_proj and k_proj in 30 of 30
    /// layers`), with the likely cause. A gradient that is present but zero is fine (`lora_A`'s
    /// is exactly zero at the first step, while `lora_B = 0`).
    fn check_gradients(&self, grads: &GradStore) -> Result<()> {
        gradients::check(self, grads)
    }

    /// Merges every adapter into its base weight.
    fn merge_adapters(&mut self) -> Result<()> {
        self.for_each_adapted(&mut |l| l.merge())
    }

    /// Unmerges every adapter.
    fn unmerge_adapters(&mut self) -> Result<()> {
        self.for_each_adapted(&mut |l| l.unmerge())
    }

    /// Enables or disables every adapter (disabled: the base model's output).
    fn set_adapters_enabled(&mut self, enabled: bool) -> Result<()> {
        self.for_each_adapted(&mut |l| l.set_enabled(enabled))
    }

    /// DoRA norm caching, as PEFT's `DoraCaching`: while on, each DoRA layer computes its
    /// detached norm `‖W0 + s·B·A‖` once and reuses it, instead of forming `W0·Aᵀ` on every
    /// forward — for generation, where the adapters do not change
    /// ([`crate::generate::generate`] turns it on for its duration). Turning it on or off drops
    /// the cached norms. While on, a change of `A` or `B` (a training step, a load) is not seen
    /// by the norm: turn it off before training.
    fn set_dora_norm_caching(&self, on: bool) -> Result<()> {
        self.for_each_layer(&mut |_, l| {
            if let Some(ad) = l.adapter() {
                ad.set_norm_caching(on);
            }
        })
    }

    /// Training mode for every adapter (dropout on the adapter input).
    fn set_adapters_training(&mut self, training: bool) -> Result<()> {
        self.for_each_adapted(&mut |l| {
            l.set_training(training);
            Ok(())
        })
    }

    /// Runs `f` on every adapted layer that has an adapter attached.
    fn for_each_adapted(
        &mut self,
        f: &mut dyn FnMut(&mut dyn AdaptedLayer) -> Result<()>,
    ) -> Result<()> {
        self.visit_layers_mut(
            "",
            &mut |_, layer: LayerMut<'_>| match layer.into_adapted() {
                Some((l, _)) if l.adapter().is_some() => f(l),
                _ => Ok(()),
            },
        )
    }

    /// Trainable parameters, counted on the attached adapters.
    fn trainable_params(&self) -> Result<usize> {
        let mut n = 0;
        self.for_each_layer(&mut |_, l| n += l.trainable_params())?;
        Ok(n)
    }

    /// Frozen base parameters: adapted layers' base weights plus `#[frozen]` fields (the declared
    /// `N` of a `#[frozen(params = N)]` field whose type does not implement [`FrozenModule`]).
    fn frozen_params(&self) -> Result<usize> {
        let mut n = 0;
        self.visit_layers("", &mut |_, layer| {
            n += match (layer.adapted(), layer) {
                (Some((l, _)), _) => l.frozen_params(),
                (None, LayerRef::Frozen { module }) => module.frozen_params(),
                (None, LayerRef::Counted { params }) => params,
                (None, _) => 0,
            };
            Ok(())
        })?;
        Ok(n)
    }
}

impl<T: AdapterModel + ?Sized> Adapters for T {}

/// Inserts a layer's adapter tensors into `varmap` as `<path>.<name>`.
pub(crate) fn insert_vars(varmap: &VarMap, path: &str, vars: Vec<(String, Var)>) -> Result<()> {
    register_vars(
        varmap,
        path,
        vars.into_iter()
            .map(|(k, v)| Ok((format!("{path}.{k}"), v))),
    )
}

/// Inserts named variables into `varmap`; `context` names the model or layer in errors.
pub(crate) fn register_vars(
    varmap: &VarMap,
    context: &str,
    vars: impl IntoIterator<Item = Result<(String, Var)>>,
) -> Result<()> {
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| AdapterError::InvalidState {
            layer: context.into(),
            op: "register",
            reason: "the VarMap's lock is poisoned".into(),
        })?;
    for var in vars {
        let (name, v) = var?;
        data.insert(name, v);
    }
    Ok(())
}
