//! `adapter_config.json`: PEFT's `LoraConfig`, read (unknown fields kept) and written (sorted keys,
//! as PEFT writes them).

use crate::adapter_config::{AdapterConfig, Init};
use crate::adapters::patterns::Patterns;
use crate::adapters::targets::Targets;
use crate::error::{AdapterError, Result};
use crate::estimate::Method;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::path::Path;

/// The config file's name inside an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// `target_modules`: a list of module names (matched on the last path components), or one regular
/// expression matched against the whole module path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Names such as `["q_proj", "v_proj"]`.
    List(Vec<String>),
    /// A regular expression (or PEFT's special `"all-linear"`).
    Regex(String),
}

/// The fields of PEFT's `LoraConfig` this crate reads and writes; every other field is kept in
/// [`PeftConfig::extra`] and written back unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    /// Must be `"LORA"` (DoRA is LoRA with `use_dora`).
    pub peft_type: String,
    /// The default rank.
    pub r: usize,
    /// The default `lora_alpha`.
    #[serde(serialize_with = "number")]
    pub lora_alpha: f64,
    /// Dropout on the adapter input while training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which modules are adapted.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// DoRA.
    #[serde(default)]
    pub use_dora: bool,
    /// Scaling α/√r instead of α/r.
    #[serde(default)]
    pub use_rslora: bool,
    /// Must be `false` (GPT-2 style `Conv1D` weights are not supported).
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Must be `"none"`.
    #[serde(default = "bias_none")]
    pub bias: String,
    /// `true` (kaiming-uniform A), `"gaussian"`, or another PEFT initialiser name.
    #[serde(default = "init_true")]
    pub init_lora_weights: Value,
    /// Per-module ranks: pattern → r (first matching pattern wins, as in PEFT).
    #[serde(default)]
    pub rank_pattern: Option<Map<String, Value>>,
    /// Per-module alphas: pattern → lora_alpha.
    #[serde(default)]
    pub alpha_pattern: Option<Map<String, Value>>,
    /// Every other field of the file, kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Whether a field's value is one this crate supports.
type Accepts = fn(&Value) -> bool;

fn bias_none() -> String {
    "none".into()
}

fn init_true() -> Value {
    Value::Bool(true)
}

/// Writes integral floats as integers (`8` rather than `8.0`), as PEFT's configs hold them.
fn number<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    json_number(*v).serialize(s)
}

/// A float as a JSON number, integral values as integers.
pub(crate) fn json_number(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

impl PeftConfig {
    /// Reads and checks `path` (an `adapter_config.json`).
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::io::bounded::read_to_string_bounded(
            path,
            crate::io::bounded::MAX_CONFIG_BYTES,
            "reading adapter config",
        )?;
        let config: PeftConfig =
            serde_json::from_str(&text).map_err(|source| AdapterError::Json {
                path: path.into(),
                source,
            })?;
        config.check(path)?;
        Ok(config)
    }

    /// Checks the settings this crate supports, naming `path` in errors.
    pub fn check(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, expected: &str, actual: String| AdapterError::Config {
            path: path.into(),
            field: field.into(),
            expected: expected.into(),
            actual,
        };
        if self.peft_type != "LORA" {
            return Err(bad(
                "peft_type",
                "\"LORA\"",
                format!("{:?}", self.peft_type),
            ));
        }
        if self.r == 0 {
            return Err(bad("r", "at least 1", "0".into()));
        }
        if self.fan_in_fan_out {
            return Err(bad(
                "fan_in_fan_out",
                "false (Conv1D weights are not supported)",
                "true".into(),
            ));
        }
        if self.bias != "none" {
            return Err(bad("bias", "\"none\"", format!("{:?}", self.bias)));
        }
        let unsupported: [(&str, Accepts); 4] = [
            ("lora_bias", |v: &Value| {
                v.is_null() || v == &Value::Bool(false)
            }),
            ("modules_to_save", |v: &Value| {
                v.is_null() || v.as_array().is_some_and(|a| a.is_empty())
            }),
            ("trainable_token_indices", |v: &Value| v.is_null()),
            ("layer_replication", |v: &Value| v.is_null()),
        ];
        for (field, ok) in unsupported {
            if let Some(v) = self.extra.get(field).filter(|v| !ok(v)) {
                return Err(bad(field, "null or false (not supported)", v.to_string()));
            }
        }
        self.patterns(path).map(|_| ())
    }

    /// The compiled `rank_pattern` / `alpha_pattern`.
    pub fn patterns(&self, path: &Path) -> Result<Patterns> {
        Patterns::new(
            path,
            self.rank_pattern.as_ref(),
            self.alpha_pattern.as_ref(),
        )
    }

    /// LoRA or DoRA.
    pub fn method(&self) -> Method {
        if self.use_dora {
            Method::Dora
        } else {
            Method::Lora
        }
    }

    /// The initialiser named by `init_lora_weights` (`"gaussian"` → Gaussian, else Kaiming).
    pub fn init(&self) -> Init {
        match self.init_lora_weights.as_str() {
            Some("gaussian") => Init::Gaussian,
            _ => Init::Kaiming,
        }
    }

    /// The configuration of `module` (rank and alpha after `rank_pattern` / `alpha_pattern`).
    pub fn layer_config(&self, module: &str, patterns: &Patterns) -> AdapterConfig {
        AdapterConfig {
            method: self.method(),
            rank: patterns.rank(module).unwrap_or(self.r),
            alpha: patterns.alpha(module).unwrap_or(self.lora_alpha),
            dropout: self.lora_dropout,
            rslora: self.use_rslora,
            init: self.init(),
        }
    }

    /// Whether PEFT would adapt `module` given `target_modules`; `None` when this cannot be told
    /// from the config alone (`all-linear`, `layers_to_transform`, `exclude_modules`).
    pub fn targets(&self, module: &str) -> Option<bool> {
        let restricted = ["layers_to_transform", "layers_pattern", "exclude_modules"]
            .iter()
            .any(|f| self.extra.get(*f).is_some_and(|v| !v.is_null()));
        if restricted {
            return None;
        }
        let targets = match self.target_modules.as_ref()? {
            TargetModules::List(names) => Targets::names(names),
            TargetModules::Regex(r) if r == "all-linear" => return None,
            TargetModules::Regex(r) => Targets::regex(r).ok()?,
        };
        Some(targets.matches(module))
    }

    /// The file's JSON, keys sorted at every level as PEFT writes it.
    pub fn to_json_string(&self) -> Result<String> {
        let value = serde_json::to_value(self).map_err(|e| AdapterError::InvalidState {
            layer: CONFIG_FILE.into(),
            op: "serialize",
            reason: e.to_string(),
        })?;
        let sorted = sort_keys(value);
        serde_json::to_string_pretty(&sorted).map_err(|e| AdapterError::InvalidState {
            layer: CONFIG_FILE.into(),
            op: "serialize",
            reason: e.to_string(),
        })
    }
}

fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> PeftConfig {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn reads_minimal_and_keeps_unknown_fields() {
        let c = parse(
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["fc1"],"task_type":null,"x":1}"#,
        );
        assert_eq!(
            (c.r, c.lora_alpha, c.use_dora, c.bias.as_str()),
            (4, 8.0, false, "none")
        );
        assert_eq!(c.extra.get("x"), Some(&Value::from(1)));
        assert!(c.check(Path::new("a.json")).is_ok());
        let s = c.to_json_string().unwrap();
        assert!(s.contains("\"lora_alpha\": 8,"), "{s}");
        assert!(s.contains("\"x\": 1"), "{s}");
    }

    #[test]
    fn targets_follow_peft() {
        let c =
            parse(r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj","fc1"]}"#);
        assert_eq!(c.targets("model.layers.0.self_attn.q_proj"), Some(true));
        assert_eq!(c.targets("fc1"), Some(true));
        assert_eq!(c.targets("xfc1"), Some(false));
        let c = parse(
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":".*\\.(q|v)_proj"}"#,
        );
        assert_eq!(c.targets("model.layers.0.self_attn.q_proj"), Some(true));
        assert_eq!(c.targets("model.layers.0.self_attn.k_proj"), Some(false));
    }

    #[test]
    fn rejects_unsupported() {
        let p = Path::new("cfg.json");
        let c = parse(r#"{"peft_type":"IA3","r":4,"lora_alpha":8}"#);
        let e = c.check(p).unwrap_err().to_string();
        assert!(
            e.contains("peft_type") && e.contains("IA3") && e.contains("cfg.json"),
            "{e}"
        );
        let c = parse(r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"fan_in_fan_out":true}"#);
        assert!(c
            .check(p)
            .unwrap_err()
            .to_string()
            .contains("fan_in_fan_out"));
        let c = parse(r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"modules_to_save":["score"]}"#);
        assert!(c
            .check(p)
            .unwrap_err()
            .to_string()
            .contains("modules_to_save"));
    }
}
