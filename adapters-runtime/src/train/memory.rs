//! `estimate_training`: the training-memory breakdown of adapting an HF model, from the same
//! `const fn`s ([`crate::estimate`]) as the `#[adapter]` macro's constants.
//!
//! [`estimate_training_quantized`] counts a QLoRA-style base: every decoder projection's weight
//! (adapted or not, as `models::llama::load_model` stores them) in a [`QuantFormat`], everything
//! else frozen (embeddings, norms, biases, the output head) in the base dtype, as
//! [`est::BaseStorage`] defines it.

use crate::error::{AdapterError, Result};
use crate::estimate::{self as est, human_bytes, BaseDType, BaseStorage, Method, QuantFormat};
use crate::hf::llama_config::LlamaConfig;
use crate::hf::llama_layout::{LlamaLayout, ModuleDims};
use crate::io::table::{thousands, Table};
use std::fmt;

/// What to estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstimateRequest {
    /// LoRA or DoRA.
    pub method: Method,
    /// Adapter rank.
    pub rank: usize,
    /// Adapted modules by name (`q_proj`, …, `embed_tokens`, `lm_head`, or `all-linear`).
    pub targets: Vec<String>,
    /// Dtype of the frozen base weights and activations.
    pub dtype: BaseDType,
    /// Tokens per batch (batch size × sequence length) for the activations; 0 leaves them out.
    pub batch_tokens: usize,
    /// Sequence length, for the attention scores (`heads × seq` per token and layer); 0 leaves
    /// them out.
    pub seq_len: usize,
}

/// The estimate, part by part (bytes), as [`est::vram_bytes_from_base`] sums it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingEstimate {
    /// The request.
    pub request: EstimateRequest,
    /// The adapted module names (after expanding `all-linear`).
    pub targets: Vec<&'static str>,
    /// Adapted layers in the model.
    pub adapted_layers: usize,
    /// Frozen base parameters.
    pub frozen_params: usize,
    /// Trainable adapter parameters.
    pub trainable_params: usize,
    /// The format of the projection weights, if they are stored quantized.
    pub quant: Option<QuantFormat>,
    /// Frozen parameters stored quantized (every projection's weight; 0 without `quant`).
    pub quantized_params: usize,
    /// Frozen weights: the projection weights in `quant` if given, the rest in the base dtype.
    pub base_bytes: usize,
    /// Adapter weights (f32).
    pub adapter_bytes: usize,
    /// Adapter gradients (f32).
    pub gradient_bytes: usize,
    /// AdamW state (two f32 moments).
    pub optimizer_bytes: usize,
    /// Activations kept for the backward pass, per token.
    pub activation_bytes_per_token: usize,
    /// Activations for `batch_tokens` tokens.
    pub activation_bytes: usize,
    /// The total ([`est::vram_bytes_from_base`]).
    pub total_bytes: usize,
}

/// Resolves target names against the model's modules (`all-linear`: the seven projections).
fn resolve_targets(modules: &[ModuleDims], targets: &[String]) -> Result<Vec<&'static str>> {
    let mut out: Vec<&'static str> = Vec::new();
    for t in targets.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let names: Vec<&'static str> = if t == "all-linear" {
            modules
                .iter()
                .filter(|m| !m.embedding && m.name != "lm_head")
                .map(|m| m.name)
                .collect()
        } else {
            match modules.iter().find(|m| m.name == t) {
                Some(m) => vec![m.name],
                None => {
                    let known: Vec<&str> = modules.iter().map(|m| m.name).collect();
                    return Err(AdapterError::InvalidArgument {
                        name: "targets".into(),
                        expected: format!("module names among {} or all-linear", known.join(", ")),
                        actual: format!("{t:?}"),
                    });
                }
            }
        };
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    if out.is_empty() {
        return Err(AdapterError::InvalidArgument {
            name: "targets".into(),
            expected: "at least one module name".into(),
            actual: "none".into(),
        });
    }
    Ok(out)
}

/// Parses a quantization format name as [`QuantFormat::parse`] does (`nf4`, `q4_0`, …, `q4k`,
/// llama.cpp's `Q4_K`); an unknown name is an [`AdapterError::InvalidArgument`] listing
/// [`QuantFormat::names`].
pub fn parse_quant(name: &str) -> Result<QuantFormat> {
    QuantFormat::parse(name).ok_or_else(|| AdapterError::InvalidArgument {
        name: "quant".into(),
        expected: format!("a quantization format among {}", QuantFormat::names()),
        actual: format!("{name:?}"),
    })
}

/// Estimates the training memory of adapting `config`'s model as `request` says, every frozen
/// weight in the request's dtype ([`estimate_training_quantized`] without a format).
pub fn estimate_training(
    config: &LlamaConfig,
    request: &EstimateRequest,
) -> Result<TrainingEstimate> {
    estimate_training_quantized(config, request, None)
}

/// Estimates the training memory of adapting `config`'s model as `request` says, the weights of
/// every decoder projection (the seven of each layer, adapted or not — what
/// `models::llama::load_model` quantizes, and what bitsandbytes' 4-bit loading quantizes) stored
/// in `quant` (QLoRA / QDoRA; `None`: in the dtype). Their biases, the embeddings, the norms and
/// the output head stay in the request's dtype; adapters, gradients, AdamW state and activations
/// are as without `quant`. A GGML format whose block does not divide a projection's input
/// features is an [`AdapterError::InvalidArgument`] naming the projection.
pub fn estimate_training_quantized(
    config: &LlamaConfig,
    request: &EstimateRequest,
    quant: Option<QuantFormat>,
) -> Result<TrainingEstimate> {
    if request.rank == 0 {
        return Err(AdapterError::InvalidRank {
            layer: "--rank".into(),
            rank: 0,
        });
    }
    let (m, r, dt) = (request.method, request.rank, request.dtype);
    let layout = LlamaLayout::new(config);
    let modules = layout.modules();
    let targets = resolve_targets(&modules, &request.targets)?;
    let storage = BaseStorage::new(dt, quant);
    let mut frozen = Some(layout.norm_params());
    let mut base = est::dense_base_bytes(frozen, dt);
    let mut quantized = Some(0);
    let (mut trainable, mut act, mut adapted_layers) = (Some(0), Some(0), 0);
    for d in &modules {
        let adapted = targets.contains(&d.name);
        let count = Some(d.count);
        if !d.tied {
            let params = if d.embedding {
                est::embedding_params(d.din, d.dout)
            } else {
                est::linear_params(d.din, d.dout, d.bias)
            };
            frozen = est::add(frozen, est::mul(count, params));
            let projection = !d.embedding && d.name != "lm_head";
            let bytes = match (projection, quant) {
                (true, Some(q)) => {
                    if !q.fits_row(d.din) {
                        return Err(AdapterError::InvalidArgument {
                            name: "quant".into(),
                            expected: format!(
                                "a format whose block divides every projection's input features ({} stores each row of a weight [out, in] in whole blocks of {} elements)",
                                q.name(),
                                q.block_elems()
                            ),
                            actual: format!(
                                "{} with {} input features ({} % {} = {})",
                                d.name,
                                d.din,
                                d.din,
                                q.block_elems(),
                                d.din % q.block_elems()
                            ),
                        });
                    }
                    let weights = est::mul(count, d.din.checked_mul(d.dout));
                    quantized = est::add(quantized, weights);
                    est::adapted_linear_base_bytes(storage, d.din, d.dout, d.bias)
                }
                _ => est::dense_base_bytes(params, dt),
            };
            base = est::add(base, est::mul(count, bytes));
        }
        let per_token = match (adapted, d.embedding) {
            (true, true) => est::activation_bytes_adapted_embedding(m, d.dout, r, dt),
            (true, false) => est::activation_bytes_adapted_linear(m, d.din, d.dout, r, dt),
            (false, true) => Some(0),
            (false, false) => est::activation_bytes_frozen_linear(d.din, dt),
        };
        act = est::add(act, est::mul(count, per_token));
        if adapted {
            let params = est::adapter_params(m, d.din, d.dout, r);
            trainable = est::add(trainable, est::mul(count, params));
            adapted_layers += d.count;
        }
    }
    // What the decoder itself keeps besides the projections (attention internals, SwiGLU,
    // residuals, the scores for `seq_len`) and the loss's share after the last layer.
    let layer = est::activation_bytes_llama_layer(
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.kv_heads(),
        config.head_dim(),
        request.seq_len,
        dt,
    );
    act = est::sum(&[
        act,
        est::mul(Some(config.num_hidden_layers), layer),
        est::activation_bytes_lm_output(config.hidden_size, dt),
    ]);
    let overflow = || AdapterError::InvalidArgument {
        name: "estimate".into(),
        expected: "sizes whose products fit in 64 bits".into(),
        actual: format!(
            "an overflow with rank {r}, batch_tokens {} and the model's dimensions",
            request.batch_tokens
        ),
    };
    let (frozen, base, quantized, trainable, act) = (
        frozen.ok_or_else(overflow)?,
        base.ok_or_else(overflow)?,
        quantized.ok_or_else(overflow)?,
        trainable.ok_or_else(overflow)?,
        act.ok_or_else(overflow)?,
    );
    let activation_bytes = request.batch_tokens.checked_mul(act).ok_or_else(overflow)?;
    Ok(TrainingEstimate {
        request: request.clone(),
        targets,
        adapted_layers,
        frozen_params: frozen,
        trainable_params: trainable,
        quant,
        quantized_params: quantized,
        base_bytes: base,
        adapter_bytes: est::adapter_bytes(trainable).ok_or_else(overflow)?,
        gradient_bytes: trainable
            .checked_mul(est::GRAD_BYTES)
            .ok_or_else(overflow)?,
        optimizer_bytes: trainable
            .checked_mul(est::ADAMW_STATE_BYTES)
            .ok_or_else(overflow)?,
        activation_bytes_per_token: act,
        activation_bytes,
        total_bytes: est::vram_bytes_from_base(base, trainable, activation_bytes)
            .ok_or_else(overflow)?,
    })
}

fn dtype_name(d: BaseDType) -> &'static str {
    match d {
        BaseDType::F32 => "f32",
        BaseDType::BF16 => "bf16",
        BaseDType::F16 => "f16",
    }
}

impl fmt::Display for TrainingEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = &self.request;
        let quantized = match self.quant {
            Some(format) => format!(", projection weights {}", format.name()),
            None => String::new(),
        };
        writeln!(
            f,
            "{} r={} on {} ({} adapted layers), base {}{quantized}, {} tokens per batch\n",
            q.method.name(),
            q.rank,
            self.targets.join(","),
            self.adapted_layers,
            dtype_name(q.dtype),
            thousands(q.batch_tokens),
        )?;
        let mut t = Table::new(
            &["part", "elements", "bytes", "how"],
            &[false, true, true, false],
        );
        let tp = thousands(self.trainable_params);
        let rows = [
            (
                "base weights",
                thousands(self.frozen_params),
                self.base_bytes,
                match self.quant {
                    Some(format) => format!(
                        "{} projection weights in {}, the rest × {} B",
                        thousands(self.quantized_params),
                        format.name(),
                        q.dtype.size_in_bytes()
                    ),
                    None => format!("frozen × {} B", q.dtype.size_in_bytes()),
                },
            ),
            (
                "adapter weights",
                tp.clone(),
                self.adapter_bytes,
                format!("trainable × {} B (f32)", est::ADAPTER_PARAM_BYTES),
            ),
            (
                "gradients",
                tp.clone(),
                self.gradient_bytes,
                format!("trainable × {} B (f32)", est::GRAD_BYTES),
            ),
            (
                "optimizer state",
                tp,
                self.optimizer_bytes,
                format!("trainable × {} B (AdamW, 2 × f32)", est::ADAMW_STATE_BYTES),
            ),
            (
                "activations",
                thousands(q.batch_tokens),
                self.activation_bytes,
                format!(
                    "tokens × {} per token",
                    human_bytes(self.activation_bytes_per_token)
                ),
            ),
        ];
        for (part, n, bytes, how) in rows {
            t.row(vec![part.into(), n, human_bytes(bytes), how]);
        }
        t.rule();
        t.row(vec![
            "total".into(),
            String::new(),
            human_bytes(self.total_bytes),
            format!("{} B", thousands(self.total_bytes)),
        ]);
        write!(f, "{t}")?;
        if q.batch_tokens == 0 {
            writeln!(
                f,
                "\nactivations not counted: pass --batch-tokens N (batch size × sequence length)"
            )?;
        }
        Ok(())
    }
}
