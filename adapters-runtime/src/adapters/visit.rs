//! The interface between `#[adapter]`'s generated code and the runtime: [`AdapterModel`], a
//! visitor over a struct's adapted, frozen and nested fields. Users call the [`Adapters`]
//! methods instead; nothing here is needed in user code.
//!
//! [`Adapters`]: crate::adapters::Adapters

use crate::adapter_config::AdapterConfig;
use crate::adapters::frozen::FrozenModule;
use crate::error::{AdapterError, Result};
use crate::layers::{AdaptedEmbedding, AdaptedLayer, AdaptedLinear};

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
    /// A `#[frozen(params = N)]` field whose type does not implement [`FrozenModule`] (a type
    /// from another crate, say): only its declared parameter count is known, so nothing is
    /// checked against loaded weights.
    Counted {
        /// The declared `N`.
        params: usize,
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
    /// A `#[frozen(params = N)]` field whose type does not implement [`FrozenModule`]: only its
    /// declared parameter count is known (see [`LayerRef::Counted`]).
    Counted {
        /// The declared `N`.
        params: usize,
    },
}

/// A read-only visitor.
pub type Visitor<'v> = dyn FnMut(&FieldInfo<'_>, LayerRef<'_>) -> Result<()> + 'v;
/// A mutating visitor.
pub type VisitorMut<'v> = dyn FnMut(&FieldInfo<'_>, LayerMut<'_>) -> Result<()> + 'v;

/// Implemented by `#[adapter]`: visits every adapted, frozen and nested field in declaration order.
/// (`#[nested]` fields name [`AdapterStruct`], whose message covers that case.)
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an adapter model: it is not annotated with `#[adapter(...)]`",
    label = "needs a struct annotated with `#[adapter(...)]`",
    note = "add `#[adapter(lora|dora, rank = .., alpha = ..)]` to `{Self}`"
)]
pub trait AdapterModel {
    /// Visits the fields, paths prefixed by `prefix` (`""` at the root).
    fn visit_layers(&self, prefix: &str, f: &mut Visitor<'_>) -> Result<()>;
    /// Visits the fields mutably.
    fn visit_layers_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) -> Result<()>;
}

/// Implemented by `#[adapter]` next to [`AdapterModel`]: what a struct that nests this one reads,
/// its compile-time sizes and its visit. The generated code of a `#[nested]` field names this
/// trait, at the field's element type, for both, so a type that is not annotated is reported
/// once, in these words.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[nested]` field: it is not annotated with `#[adapter(...)]`",
    label = "`#[nested]` needs a struct annotated with `#[adapter(...)]`",
    note = "annotate `{Self}` with `#[adapter(...)]` (a struct that only nests others needs no arguments), or mark the field `#[frozen(params = N)]` to only count it"
)]
pub trait AdapterStruct: AdapterModel {
    /// `[TRAINABLE_PARAMS, FROZEN_PARAMS, ADAPTER_BYTES, BASE_BYTES, ACTIVATION_BYTES_PER_TOKEN,
    /// VRAM_BYTES]`, or why they are unknown at compile time (the message names the field).
    const SIZES: core::result::Result<[usize; 6], &'static str>;

    /// [`AdapterModel::visit_layers`], reached through this trait.
    fn visit_nested(&self, prefix: &str, f: &mut Visitor<'_>) -> Result<()> {
        self.visit_layers(prefix, f)
    }

    /// [`AdapterModel::visit_layers_mut`], reached through this trait.
    fn visit_nested_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) -> Result<()> {
        self.visit_layers_mut(prefix, f)
    }
}

/// A `#[frozen(params = N)]` field and its `N`, for the generated visit to choose between
/// [`LayerRef::Frozen`] (the type implements [`FrozenModule`], so `N` is checked against the
/// loaded module) and [`LayerRef::Counted`] (any other type) by autoref-based dispatch: with
/// [`FrozenKind`] and [`CountedKind`] in scope, `(&CountedField(&x, n)).layer_ref()` picks the
/// first when it applies.
pub struct CountedField<'a, T>(pub &'a T, pub usize);

/// The dispatch of [`CountedField`] for types implementing [`FrozenModule`].
pub trait FrozenKind<'a> {
    /// [`LayerRef::Frozen`].
    fn layer_ref(&self) -> LayerRef<'a>;
    /// [`LayerMut::Frozen`].
    fn layer_mut(&self) -> LayerMut<'a>;
}

impl<'a, T: FrozenModule> FrozenKind<'a> for CountedField<'a, T> {
    fn layer_ref(&self) -> LayerRef<'a> {
        LayerRef::Frozen { module: self.0 }
    }
    fn layer_mut(&self) -> LayerMut<'a> {
        LayerMut::Frozen { module: self.0 }
    }
}

/// The dispatch of [`CountedField`] for any other type.
pub trait CountedKind<'a> {
    /// [`LayerRef::Counted`].
    fn layer_ref(&self) -> LayerRef<'a>;
    /// [`LayerMut::Counted`].
    fn layer_mut(&self) -> LayerMut<'a>;
}

impl<'a, T> CountedKind<'a> for &CountedField<'a, T> {
    fn layer_ref(&self) -> LayerRef<'a> {
        LayerRef::Counted { params: self.1 }
    }
    fn layer_mut(&self) -> LayerMut<'a> {
        LayerMut::Counted { params: self.1 }
    }
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
pub(crate) fn check_declared(
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
                    what: "the loaded weight's (in, out)".into(),
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

impl<'a> LayerRef<'a> {
    /// The adapted layer behind the field (linear or embedding) and its declared configuration;
    /// `None` for a frozen or counted field.
    pub fn adapted(&self) -> Option<(&'a dyn AdaptedLayer, AdapterConfig)> {
        match *self {
            LayerRef::Linear { layer, config } => Some((layer, config)),
            LayerRef::Embedding { layer, config } => Some((layer, config)),
            LayerRef::Frozen { .. } | LayerRef::Counted { .. } => None,
        }
    }
}

impl<'a> LayerMut<'a> {
    /// The adapted layer behind the field and its declared configuration; `None` when frozen or
    /// counted.
    pub fn into_adapted(self) -> Option<(&'a mut dyn AdaptedLayer, AdapterConfig)> {
        match self {
            LayerMut::Linear { layer, config } => Some((layer, config)),
            LayerMut::Embedding { layer, config } => Some((layer, config)),
            LayerMut::Frozen { .. } | LayerMut::Counted { .. } => None,
        }
    }
}

/// The path a layer's adapter tensors are named under: its VarBuilder path, else its field path.
pub fn checkpoint_path(layer: &dyn AdaptedLayer, info: &FieldInfo<'_>) -> String {
    layer.path().unwrap_or(info.path).to_string()
}
