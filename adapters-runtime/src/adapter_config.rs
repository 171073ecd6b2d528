//! Adapter hyper-parameters (`r`, `lora_alpha`, dropout, rsLoRA, init) and their validation.

use crate::error::{AdapterError, Result};
pub use crate::estimate::Method;

/// The largest rank accepted: 2^16 (real adapters use ranks up to a few hundred).
pub const MAX_RANK: usize = 1 << 16;

/// The most trainable parameters one layer's adapter may have: 2^32 (16 GiB of f32 weights,
/// before gradients and optimizer state).
pub const MAX_ADAPTER_PARAMS: usize = 1 << 32;

/// How `lora_A` is initialised (`lora_B` always starts at zero for linear layers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Init {
    /// PEFT's default (`init_lora_weights=True`): A ~ kaiming-uniform(a = √5), i.e. U(±1/√in).
    #[default]
    Kaiming,
    /// PEFT's `init_lora_weights="gaussian"`: A ~ N(0, σ = 1/r).
    Gaussian,
}

impl Init {
    /// The value PEFT writes for `init_lora_weights` in `adapter_config.json`.
    pub fn peft_value(self) -> serde_json::Value {
        match self {
            Init::Kaiming => serde_json::Value::Bool(true),
            Init::Gaussian => serde_json::Value::String("gaussian".into()),
        }
    }
}

/// The hyper-parameters of one adapter, as PEFT's `LoraConfig` spells them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdapterConfig {
    /// LoRA or DoRA (`use_dora`).
    pub method: Method,
    /// `r`, the rank of `B·A`.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`, applied to the adapter's input while training.
    pub dropout: f64,
    /// `use_rslora`: scaling α/√r instead of α/r.
    pub rslora: bool,
    /// `init_lora_weights`.
    pub init: Init,
}

impl AdapterConfig {
    /// A LoRA adapter with PEFT's defaults for everything but rank and alpha.
    pub const fn lora(rank: usize, alpha: f64) -> Self {
        Self {
            method: Method::Lora,
            rank,
            alpha,
            dropout: 0.0,
            rslora: false,
            init: Init::Kaiming,
        }
    }

    /// A DoRA adapter with PEFT's defaults for everything but rank and alpha.
    pub const fn dora(rank: usize, alpha: f64) -> Self {
        Self {
            method: Method::Dora,
            ..Self::lora(rank, alpha)
        }
    }

    /// Sets `lora_dropout`.
    pub const fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets `use_rslora`.
    pub const fn with_rslora(mut self, rslora: bool) -> Self {
        self.rslora = rslora;
        self
    }

    /// Sets `init_lora_weights`.
    pub const fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// The factor applied to `B·A`: α/r, or α/√r with rsLoRA (PEFT's `scaling`).
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Checks 1 ≤ rank ≤ [`MAX_RANK`], alpha finite and > 0, dropout in [0, 1); errors name
    /// `layer`.
    pub fn validate(&self, layer: &str) -> Result<()> {
        if self.rank == 0 {
            return Err(AdapterError::InvalidRank {
                layer: layer.into(),
                rank: self.rank,
            });
        }
        if self.rank > MAX_RANK {
            return Err(AdapterError::RankTooLarge {
                layer: layer.into(),
                rank: self.rank,
                reason: format!("expected at most {MAX_RANK}"),
            });
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(AdapterError::InvalidAlpha {
                layer: layer.into(),
                alpha: self.alpha,
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(AdapterError::InvalidDropout {
                layer: layer.into(),
                dropout: self.dropout,
            });
        }
        Ok(())
    }

    /// The trainable parameters this adapter gives a `[dout, din]` layer (for an embedding,
    /// `din = vocab`, `dout = dim`), checked before anything is allocated: an
    /// [`AdapterError::RankTooLarge`] naming `layer` when the count overflows or exceeds
    /// [`MAX_ADAPTER_PARAMS`]. (PEFT allows `r > min(din, dout)`, and so does this check.)
    pub fn check_size(&self, layer: &str, din: usize, dout: usize) -> Result<usize> {
        match crate::estimate::adapter_params(self.method, din, dout, self.rank) {
            Some(n) if n <= MAX_ADAPTER_PARAMS => Ok(n),
            n => Err(AdapterError::RankTooLarge {
                layer: layer.into(),
                rank: self.rank,
                reason: format!(
                    "on a {din} → {dout} layer it needs {} adapter parameters, expected at most {MAX_ADAPTER_PARAMS}",
                    n.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
                ),
            }),
        }
    }
}
