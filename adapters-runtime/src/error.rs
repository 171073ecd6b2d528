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
    /// The rank is above [`crate::adapter_config::MAX_RANK`], or the adapter it gives a layer
    /// would overflow or exceed [`crate::adapter_config::MAX_ADAPTER_PARAMS`] parameters.
    #[error("layer `{layer}`: adapter rank {rank} is too large: {reason}")]
    RankTooLarge {
        /// Layer path.
        layer: String,
        /// The rank given.
        rank: usize,
        /// The bound exceeded (expected vs actual).
        reason: String,
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
    /// `attach_adapters` found no layer to adapt.
    #[error("attach_adapters attached no adapter: {reason}; fields visited: {visited}")]
    NothingAttached {
        /// Why nothing was attached.
        reason: String,
        /// The fields the visit saw, with their roles (or `none`).
        visited: String,
    },
    /// Adapted layers whose checkpoint path is unknown.
    #[error("{count} adapted layer(s) have no checkpoint path, so their adapters would be named by struct field ({fields}) and PEFT / HF checkpoints would not recognise them: build them with `adapters_runtime::nn::{{linear, linear_no_bias, linear_b, embedding}}` (which record the `VarBuilder` path) instead of `.into()` from a `candle_nn` layer, give them one with `.with_path(\"model.layers.0.self_attn.q_proj\")`, or call `name_layers_by_field()` before attaching to use the field paths on purpose")]
    UnknownCheckpointPath {
        /// How many layers.
        count: usize,
        /// Their field paths (the first few).
        fields: String,
    },
    /// Attached adapter tensors got no gradient from a backward pass.
    #[error("{missing} of {total} adapter tensors received no gradient: {summary}. Likely cause: an op between the loss and these layers records no gradient — candle 0.11's fused `candle_nn::ops::rms_norm` / `RmsNorm` / `LayerNorm`, `softmax_last_dim` and `rotary_emb::rope*` do not; use the drop-ins of `adapters_runtime::nn` (same names and signatures) — or the layers' outputs do not reach the loss")]
    MissingGradients {
        /// Tensors without a gradient.
        missing: usize,
        /// Adapter tensors in all.
        total: usize,
        /// Grouped by module: `q_proj and k_proj in 30 of 30 layers`.
        summary: String,
    },
    /// A file or folder could not be read, written or renamed.
    #[error("{what} `{path}`: {source}")]
    Io {
        /// What was being done (`reading adapter config`, …).
        what: String,
        /// The file or folder.
        path: std::path::PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than the bound for its kind; it is refused before being read.
    #[error("{what} `{path}`: the file is {actual} bytes, expected at most {max} bytes")]
    FileTooLarge {
        /// What was being read (`adapter config`, `model config`, …).
        what: String,
        /// The file.
        path: std::path::PathBuf,
        /// The bound, in bytes.
        max: u64,
        /// The file's size (or at least this many bytes, when it grew while read).
        actual: u64,
    },
    /// A JSON file is not valid JSON or does not have the expected fields.
    #[error("file `{path}`: invalid JSON: {source}")]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A safetensors file is corrupt or truncated.
    #[error("file `{path}`: not a valid safetensors file: {source}")]
    SafeTensors {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A weight cannot be stored in (or read from) a quantized format.
    #[error("layer `{layer}`: its [{rows}, {cols}] weight in {format}: {reason}")]
    Quant {
        /// The layer (or tensor) path.
        layer: String,
        /// The format's name (`nf4`, `q4_0`, …).
        format: String,
        /// Rows (output features).
        rows: usize,
        /// Columns (input features).
        cols: usize,
        /// Why (`rows of 100 are not a multiple of the 256-element block`, …).
        reason: String,
    },
    /// A GGUF file is malformed, truncated, or holds something this crate does not support.
    #[error("GGUF file `{path}`: {reason}")]
    Gguf {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with expected vs actual where it applies.
        reason: String,
    },
    /// A setting of a config file is missing, unsupported or inconsistent.
    #[error("file `{path}`: `{field}` is {actual}, expected {expected}")]
    Config {
        /// The config file.
        path: std::path::PathBuf,
        /// The field (`peft_type`, `fan_in_fan_out`, …).
        field: String,
        /// What is supported.
        expected: String,
        /// What the file holds.
        actual: String,
    },
    /// Tensors of a checkpoint do not match what the model or the config expects; lists every
    /// offending key.
    #[error("{context}: {} key(s) do not match:{}", issues.len(), KeyIssue::list(issues))]
    Keys {
        /// The file (and operation) concerned.
        context: String,
        /// Each offending key with expected vs found.
        issues: Vec<KeyIssue>,
    },
    /// The model's adapters cannot be written as one PEFT `LoraConfig`.
    #[error("layer `{layer}`: {field} is {actual}, but other layers have {expected}; PEFT's adapter_config.json holds one value for all layers")]
    Unrepresentable {
        /// Layer path.
        layer: String,
        /// The setting (`use_dora`, `use_rslora`, `lora_dropout`, `init_lora_weights`).
        field: &'static str,
        /// The value of the other layers.
        expected: String,
        /// This layer's value.
        actual: String,
    },
    /// An operation needs at least one attached adapter and the model has none.
    #[error("{op}: the model has no attached adapter")]
    NoAdapters {
        /// The operation attempted.
        op: &'static str,
    },
    /// The output path exists and overwriting was not asked for, or it is the input itself.
    #[error("output `{path}`: {reason}")]
    Output {
        /// The output path.
        path: std::path::PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// An argument (of a function or of the command) is not one of the accepted values.
    #[error("argument `{name}`: expected {expected}, got {actual}")]
    InvalidArgument {
        /// The argument.
        name: String,
        /// What is accepted.
        expected: String,
        /// What was given.
        actual: String,
    },
    /// A line of a JSONL training file is not a valid example.
    #[error("file `{path}` line {line}: {reason}")]
    DataLine {
        /// The data file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line (expected vs found).
        reason: String,
    },
    /// A tokenizer could not be loaded, or failed to encode / decode.
    #[error("tokenizer `{source_name}`: {reason}")]
    Tokenizer {
        /// The tokenizer file (or `byte-level`).
        source_name: String,
        /// What went wrong.
        reason: String,
    },
    /// A chat template could not be compiled or rendered, or refused the conversation.
    #[error("chat template `{source_name}`: {reason}")]
    ChatTemplate {
        /// The template's source (a file, or the name it was given).
        source_name: String,
        /// What went wrong.
        reason: String,
        /// The message the template passed to `raise_exception` when it refused the
        /// conversation (`Conversation roles must alternate user/assistant/…`).
        raised: Option<String>,
    },
    /// The training loss or gradient norm became NaN or infinite; training stopped.
    #[error("step {step}: {what} is {value}, not finite; training stopped ({})",
        last_checkpoint.as_ref().map_or_else(|| "no checkpoint was written".to_string(),
            |p| format!("last good checkpoint: `{}`", p.display())))]
    NonFinite {
        /// The optimizer step (1-based) being computed.
        step: u64,
        /// `loss` or `gradient norm`.
        what: &'static str,
        /// The offending value.
        value: f64,
        /// The last checkpoint written before the failure, if any.
        last_checkpoint: Option<std::path::PathBuf>,
    },
    /// A tensor about to be written or used holds NaN or infinite values.
    #[error("{what}: tensor `{tensor}` holds {count} non-finite value(s) (NaN or ±Inf) of {total}; refusing to write or use non-finite weights{hint}")]
    NonFiniteWeights {
        /// What was being done (`merging adapter … into …`, `saving adapter to …`, …).
        what: String,
        /// The tensor's name (checkpoint key or layer path).
        tensor: String,
        /// How many of its values are NaN or infinite.
        count: usize,
        /// Its number of values.
        total: usize,
        /// How to allow them anyway, when the operation can (` (pass --allow-non-finite …)`).
        hint: String,
    },
    /// A training checkpoint does not match the run that resumes from it.
    #[error("checkpoint `{path}`: {what} is {actual}, expected {expected}")]
    Resume {
        /// The checkpoint folder.
        path: std::path::PathBuf,
        /// What does not match (`tensor lora_A dtype`, `format_version`, …).
        what: String,
        /// What the resuming run expects.
        expected: String,
        /// What the checkpoint holds.
        actual: String,
    },
    /// CUDA was asked for, but this binary was built without it.
    #[error("device `{device}`: this binary was built without the `cuda` feature: rebuild with `--features cuda`")]
    CudaNotBuilt {
        /// The device name given (`cuda`, `cuda:1`, …).
        device: String,
    },
    /// CUDA was asked for, but the driver has no usable device (no GPU, wrong ordinal, old driver).
    #[error("device `{device}`: no CUDA device available: {source}")]
    CudaUnavailable {
        /// The device name given.
        device: String,
        /// The driver's error.
        #[source]
        source: candle_core::Error,
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

/// One offending checkpoint key: what was expected and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIssue {
    /// The key (as in the file, or as it would be named when missing).
    pub key: String,
    /// What the model / config expects (`shape [4, 16]`, `present`, …).
    pub expected: String,
    /// What was found (`shape [8, 16]`, `missing`, …).
    pub found: String,
}

impl KeyIssue {
    /// A key issue.
    pub fn new(
        key: impl Into<String>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }

    fn list(issues: &[KeyIssue]) -> String {
        issues.iter().map(|i| format!("\n  {i}")).collect()
    }
}

impl std::fmt::Display for KeyIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}`: expected {}, found {}",
            self.key, self.expected, self.found
        )
    }
}

impl AdapterError {
    /// An [`AdapterError::Io`] error.
    pub fn io(
        what: impl Into<String>,
        path: impl Into<std::path::PathBuf>,
        source: std::io::Error,
    ) -> Self {
        AdapterError::Io {
            what: what.into(),
            path: path.into(),
            source,
        }
    }

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
