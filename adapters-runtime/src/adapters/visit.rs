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
