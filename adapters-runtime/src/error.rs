//! The one error type of the runtime: every failure names the layer (or file / key) and the
//! expected versus the actual value.

use candle_core::DType;

/// Result alias used across the runtime.
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

/// Everything that can go wrong while building, attaching, running or merging adapters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// `rank` must be at least 1.
    #[error("layer `{layer}`: adapter rank must be at least 1, got {rank}")]
    InvalidRank {
        /// Layer path.
        layer: String,
        /// The rank given.
        rank: usize,
    },
    /// `alpha` must be finite and strictly positive.
    #[error("layer `{layer}`: lora_alpha must be finite and > 0, got {alpha}")]
    InvalidAlpha {
        /// Layer path.
        layer: String,
        /// The alpha given.
        alpha: f64,
    },
    /// `dropout` must lie in `[0, 1)`.
    #[error("layer `{layer}`: lora_dropout must be in [0, 1), got {dropout}")]
    InvalidDropout {
        /// Layer path.
        layer: String,
        /// The dropout probability given.
        dropout: f64,
    },
    /// A tensor does not have the shape the layer needs.
    #[error("layer `{layer}`: {what} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Layer path.
        layer: String,
        /// Which tensor (e.g. `lora_A`, `input`).
        what: String,
        /// The expected dims.
        expected: Vec<usize>,
        /// The dims found.
        actual: Vec<usize>,
    },
    /// A tensor does not have the dtype the layer needs.
    #[error("layer `{layer}`: {what} has dtype {actual:?}, expected {expected}")]
    DTypeMismatch {
        /// Layer path.
        layer: String,
        /// Which tensor.
        what: String,
        /// What was expected, in words (e.g. `a float dtype`, `F32`).
        expected: String,
        /// The dtype found.
        actual: DType,
    },
    /// A collection declared with `count = N` holds another number of elements.
    #[error("`{path}`: declared count = {expected}, but the model holds {actual} elements")]
    CountMismatch {
        /// Field path.
        path: String,
        /// Declared count.
        expected: usize,
        /// Actual length.
        actual: usize,
    },
    /// A frozen field declared with `params = N` holds another number of parameters.
    #[error("`{path}`: declared params = {expected}, but the loaded weights hold {actual}")]
    ParamCountMismatch {
        /// Field path.
        path: String,
        /// Declared parameter count.
        expected: usize,
        /// Actual parameter count.
        actual: usize,
    },
    /// An operation that needs an adapter was called on a bare layer.
    #[error("layer `{layer}`: {op} needs an attached adapter, but none is attached")]
    NotAttached {
        /// Layer path.
        layer: String,
        /// The operation attempted.
        op: &'static str,
    },
    /// `attach` was called twice on the same layer.
    #[error("layer `{layer}`: an adapter is already attached")]
    AlreadyAttached {
        /// Layer path.
        layer: String,
    },
    /// An operation is not valid in the layer's current state (e.g. merging twice).
    #[error("layer `{layer}`: cannot {op}: {reason}")]
    InvalidState {
        /// Layer path.
        layer: String,
        /// The operation attempted.
        op: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Two layers resolved to the same checkpoint path.
    #[error("two adapted layers share the path `{path}`; adapter names must be unique")]
    DuplicatePath {
        /// The clashing path.
        path: String,
    },
    /// An error from candle, with the layer it happened in when known.
    #[error("layer `{layer}`: {source}")]
    InLayer {
        /// Layer path.
        layer: String,
        /// The underlying candle error.
        #[source]
        source: candle_core::Error,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl AdapterError {
    /// Turns this error into a candle error, for code paths bound by candle's `Module` trait.
    pub fn into_candle(self) -> candle_core::Error {
        match self {
            AdapterError::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// Adds the layer path to a candle error.
pub(crate) trait InLayer<T> {
    fn in_layer(self, layer: &str) -> Result<T>;
}

impl<T> InLayer<T> for candle_core::Result<T> {
    fn in_layer(self, layer: &str) -> Result<T> {
        self.map_err(|source| AdapterError::InLayer {
            layer: layer.to_string(),
            source,
        })
    }
}
