//! Whole-model operations over the layers an `#[adapter]` struct declares.
//!
//! The macro implements [`AdapterModel`] (a visitor over the struct's adapted, frozen and nested
//! fields); every model then gets the [`Adapters`] methods: attach, list, collect trainable
//! variables, merge / unmerge, enable / disable, and runtime parameter counts.

use crate::config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::estimate::Method;
use crate::layers::{AdaptedEmbedding, AdaptedLayer, AdaptedLinear};
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashSet;

/// The dimensions a field declares in its attribute, checked against the loaded weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    /// `#[adapt]` without dimensions: nothing to check.
    Unknown,
    /// `in` / `out` (for embeddings: `in` = vocab, `out` = dim).
    Dims {
        /// Input features (vocab size for embeddings).
        din: usize,
        /// Output features (embedding dim).
        dout: usize,
    },
    /// `#[frozen(params = N)]`.
    Params(usize),
}

/// What the visitor knows about a field.
#[derive(Clone, Copy, Debug)]
pub struct FieldInfo<'a> {
    /// The field's path in the struct tree (`layers.3.q_proj`).
    pub path: &'a str,
    /// Declared dimensions.
    pub declared: Declared,
    /// Whether the declaration says the linear layer has a bias.
    pub bias: bool,
}

/// A frozen (never adapted) module whose parameters are counted.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[frozen]` field: it does not implement `FrozenModule`",
    label = "`#[frozen]` needs a type that reports its parameter count",
    note = "implement `adapters_runtime::model::FrozenModule` for `{Self}` (its parameter count), or leave the field without an attribute"
)]
pub trait FrozenModule {
    /// Number of parameters.
    fn frozen_params(&self) -> usize;
    /// `(in, out)` for linear layers, `(vocab, dim)` for embeddings, when the module has them.
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        None
    }
    /// Whether the module has a bias.
    fn has_bias(&self) -> bool {
        false
    }
}

fn dims2(t: &Tensor) -> Option<(usize, usize)> {
    t.dims2().ok()
}

impl FrozenModule for candle_nn::Linear {
    fn frozen_params(&self) -> usize {
        self.weight().elem_count() + self.bias().map_or(0, |b| b.elem_count())
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        dims2(self.weight()).map(|(o, i)| (i, o))
    }
    fn has_bias(&self) -> bool {
        self.bias().is_some()
    }
}

impl FrozenModule for candle_nn::Embedding {
    fn frozen_params(&self) -> usize {
        self.embeddings().elem_count()
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        dims2(self.embeddings())
    }
}

impl FrozenModule for AdaptedLinear {
    fn frozen_params(&self) -> usize {
        AdaptedLinear::frozen_params(self)
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        Some((self.in_features(), self.out_features()))
    }
    fn has_bias(&self) -> bool {
        self.bias().is_some()
    }
}

impl FrozenModule for AdaptedEmbedding {
    fn frozen_params(&self) -> usize {
        AdaptedEmbedding::frozen_params(self)
    }
    fn dims_in_out(&self) -> Option<(usize, usize)> {
        Some((self.vocab_size(), self.hidden_size()))
    }
}

impl FrozenModule for Tensor {
    fn frozen_params(&self) -> usize {
        self.elem_count()
    }
}

/// A field as seen by a read-only visit.
pub enum LayerRef<'a> {
    /// An adapted linear layer and its adapter's configuration.
    Linear {
        /// The layer.
        layer: &'a AdaptedLinear,
        /// The configuration the attribute declares for it.
        config: AdapterConfig,
    },
    /// An adapted embedding.
    Embedding {
        /// The layer.
        layer: &'a AdaptedEmbedding,
        /// The configuration the attribute declares for it.
        config: AdapterConfig,
    },
    /// A frozen, counted module.
    Frozen {
        /// The module.
        module: &'a dyn FrozenModule,
    },
}

/// A field as seen by a mutating visit.
pub enum LayerMut<'a> {
    /// An adapted linear layer.
    Linear {
        /// The layer.
        layer: &'a mut AdaptedLinear,
        /// The configuration the attribute declares for it.
        config: AdapterConfig,
    },
    /// An adapted embedding.
    Embedding {
        /// The layer.
        layer: &'a mut AdaptedEmbedding,
        /// The configuration the attribute declares for it.
        config: AdapterConfig,
    },
    /// A frozen, counted module.
    Frozen {
        /// The module.
        module: &'a dyn FrozenModule,
    },
}

/// A read-only visitor.
pub type Visitor<'v> = dyn FnMut(&FieldInfo<'_>, LayerRef<'_>) -> Result<()> + 'v;
/// A mutating visitor.
pub type VisitorMut<'v> = dyn FnMut(&FieldInfo<'_>, LayerMut<'_>) -> Result<()> + 'v;

/// Implemented by `#[adapter]`: visits every adapted, frozen and nested field in declaration order.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[nested]` field: it is not annotated with `#[adapter(...)]`",
    label = "`#[nested]` needs a struct annotated with `#[adapter(...)]`",
    note = "add `#[adapter(lora|dora, rank = .., alpha = ..)]` to `{Self}`, or mark the field `#[frozen]`"
)]
pub trait AdapterModel {
    /// Visits the fields, paths prefixed by `prefix` (`""` at the root).
    fn visit_layers(&self, prefix: &str, f: &mut Visitor<'_>) -> Result<()>;
    /// Visits the fields mutably.
    fn visit_layers_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) -> Result<()>;
}

/// `prefix.name`, or `name` at the root.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Checks a collection's length against its declared `count`.
pub fn check_count(path: &str, expected: usize, actual: usize) -> Result<()> {
    if expected != actual {
        return Err(AdapterError::CountMismatch {
            path: path.into(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Checks a field's loaded dimensions against its declaration.
fn check_declared(
    info: &FieldInfo<'_>,
    dims: Option<(usize, usize)>,
    params: usize,
    bias: bool,
) -> Result<()> {
    match info.declared {
        Declared::Unknown => Ok(()),
        Declared::Params(n) if n != params => Err(AdapterError::ParamCountMismatch {
            path: info.path.into(),
            expected: n,
            actual: params,
        }),
        Declared::Params(_) => Ok(()),
        Declared::Dims { din, dout } => {
            let actual = dims.map_or_else(Vec::new, |(i, o)| vec![i, o]);
            if actual != [din, dout] {
                return Err(AdapterError::ShapeMismatch {
                    layer: info.path.into(),
                    what: "declared (in, out)".into(),
                    expected: vec![din, dout],
                    actual,
                });
            }
            if bias != info.bias {
                return Err(AdapterError::InvalidState {
                    layer: info.path.into(),
                    op: "attach",
                    reason: format!(
                        "declared bias = {}, but the loaded layer has{} a bias",
                        info.bias,
                        if bias { "" } else { " no" }
                    ),
                });
            }
            Ok(())
        }
    }
}

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

impl<'a> LayerRef<'a> {
    /// The adapted layer behind the field (linear or embedding) and its declared configuration;
    /// `None` for a frozen field.
    pub fn adapted(&self) -> Option<(&'a dyn AdaptedLayer, AdapterConfig)> {
        match *self {
            LayerRef::Linear { layer, config } => Some((layer, config)),
            LayerRef::Embedding { layer, config } => Some((layer, config)),
            LayerRef::Frozen { .. } => None,
        }
    }
}

impl<'a> LayerMut<'a> {
    /// The adapted layer behind the field and its declared configuration; `None` when frozen.
    pub fn into_adapted(self) -> Option<(&'a mut dyn AdaptedLayer, AdapterConfig)> {
        match self {
            LayerMut::Linear { layer, config } => Some((layer, config)),
            LayerMut::Embedding { layer, config } => Some((layer, config)),
            LayerMut::Frozen { .. } => None,
        }
    }
}

/// The path a layer's adapter tensors are named under: its VarBuilder path, else its field path.
pub fn checkpoint_path(layer: &dyn AdaptedLayer, info: &FieldInfo<'_>) -> String {
    layer.path().unwrap_or(info.path).to_string()
}

/// Whole-model adapter operations, for every [`AdapterModel`].
pub trait Adapters: AdapterModel {
    /// Checks every declared dimension against the loaded weights, attaches a freshly initialised
    /// adapter to every `#[adapt]` field (seeded by `seed`), and registers the trainable tensors in
    /// `varmap` under `<path>.lora_A.weight`, `<path>.lora_B.weight`, `<path>.lora_magnitude_vector`.
    fn attach_adapters(&mut self, varmap: &VarMap, seed: u64) -> Result<()> {
        self.attach_adapters_with(varmap, seed, &mut |_, config| Some(config))
    }

    /// [`Adapters::attach_adapters`] with a plan: for each `#[adapt]` field, `plan(path, declared
    /// config)` returns the configuration to attach, or `None` to leave the layer bare (frozen).
    /// This is how run-time choices (`--method`, `--rank`, `--targets`) override the attribute.
    fn attach_adapters_with(
        &mut self,
        varmap: &VarMap,
        seed: u64,
        plan: &mut dyn FnMut(&str, AdapterConfig) -> Option<AdapterConfig>,
    ) -> Result<()> {
        self.check_declared()?;
        let mut seen = HashSet::new();
        self.visit_layers_mut("", &mut |info, layer| {
            let Some((layer, declared)) = layer.into_adapted() else {
                return Ok(());
            };
            let path = checkpoint_path(layer, info);
            layer.set_path(path.clone());
            let Some(config) = plan(&path, declared) else {
                return Ok(());
            };
            layer.attach(config, seed)?;
            if !seen.insert(path.clone()) {
                return Err(AdapterError::DuplicatePath { path });
            }
            insert_vars(varmap, &path, layer.named_vars())
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
            (None, _) => Ok(()),
        })
    }

    /// Runs `f(checkpoint path, layer)` on every adapted layer (attached or bare).
    fn for_each_layer(&self, f: &mut dyn FnMut(&str, &dyn AdaptedLayer)) {
        let _ = self.visit_layers("", &mut |info, layer| {
            if let Some((l, _)) = layer.adapted() {
                f(&checkpoint_path(l, info), l);
            }
            Ok(())
        });
    }

    /// The adapted layers, in declaration order.
    fn adapter_layers(&self) -> Vec<LayerSummary> {
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
        });
        out
    }

    /// Every trainable tensor with its full PEFT-style name (`<path>.lora_A.weight`, …).
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.for_each_layer(&mut |path, l| {
            out.extend(
                l.named_vars()
                    .into_iter()
                    .map(|(k, v)| (format!("{path}.{k}"), v)),
            );
        });
        out
    }

    /// Every trainable tensor, for an optimizer.
    fn trainable_vars(&self) -> Vec<Var> {
        self.named_trainable_vars()
            .into_iter()
            .map(|(_, v)| v)
            .collect()
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
        self.visit_layers_mut("", &mut |_, layer| match layer.into_adapted() {
            Some((l, _)) if l.adapter().is_some() => f(l),
            _ => Ok(()),
        })
    }

    /// Trainable parameters, counted on the attached adapters.
    fn trainable_params(&self) -> usize {
        let mut n = 0;
        self.for_each_layer(&mut |_, l| n += l.trainable_params());
        n
    }

    /// Frozen base parameters: adapted layers' base weights plus `#[frozen]` fields.
    fn frozen_params(&self) -> usize {
        let mut n = 0;
        let _ = self.visit_layers("", &mut |_, layer| {
            n += match (layer.adapted(), layer) {
                (Some((l, _)), _) => l.frozen_params(),
                (None, LayerRef::Frozen { module }) => module.frozen_params(),
                (None, _) => 0,
            };
            Ok(())
        });
        n
    }
}

impl<T: AdapterModel + ?Sized> Adapters for T {}

/// Inserts a layer's adapter tensors into `varmap` as `<path>.<name>`.
pub(crate) fn insert_vars(varmap: &VarMap, path: &str, vars: Vec<(String, Var)>) -> Result<()> {
    let mut data = varmap
        .data()
        .lock()
        .map_err(|_| AdapterError::InvalidState {
            layer: path.into(),
            op: "register",
            reason: "the VarMap's lock is poisoned".into(),
        })?;
    for (k, v) in vars {
        data.insert(format!("{path}.{k}"), v);
    }
    Ok(())
}
