//! [`TargetSpec`]: PEFT's `LoraConfig` module selection at run time — `target_modules` (names,
//! a regular expression, or `all-linear`), `exclude_modules`, `layers_to_transform` /
//! `layers_pattern`, `rank_pattern` / `alpha_pattern` — with PEFT 0.21's semantics.
//!
//! * Names: a module is targeted when its path equals a name, or ends with `.` + name. Only then
//!   do `layers_to_transform` apply (PEFT checks them after a suffix match, not after an exact
//!   one): the layer index is the number after `.<layers_pattern>.` (any component when no
//!   pattern is given: the first number after two components), and a module without one is not
//!   targeted. With a regular expression or `all-linear` they are an error, as in PEFT.
//! * A regular expression must match the whole path (`re.fullmatch`).
//! * `all-linear` (any case): every linear layer except the output layer (`lm_head`).
//! * `exclude_modules` (names or a regular expression, the same matching) removes modules.
//! * `rank_pattern` / `alpha_pattern`: the first pattern `p` for which `(.*\.)?(p)$` matches the
//!   path from its start gives that module's `r` / `lora_alpha`.

use crate::adapter_config::AdapterConfig;
use crate::adapters::patterns::Patterns;
use crate::adapters::targets::Targets;
use regex::Regex;

/// Which modules are selected before exclusions.
#[derive(Clone, Debug)]
pub enum Selection {
    /// Names or a regular expression ([`Targets`]).
    Modules(Targets),
    /// Every linear layer but the output layer (PEFT's `"all-linear"`).
    AllLinear,
}

/// A run-time adapter plan with PEFT's targeting semantics (see the module documentation).
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// The adapter every selected module gets (before `rank_pattern` / `alpha_pattern`).
    pub config: AdapterConfig,
    /// `target_modules`.
    pub selection: Selection,
    /// `exclude_modules`.
    pub exclude: Option<Targets>,
    /// `layers_to_transform`: only these layer indexes (name targets only).
    pub layers_to_transform: Option<Vec<usize>>,
    /// `layers_pattern`: the path component(s) the layer index follows (`layers`, `h`, …).
    pub layers_pattern: Vec<String>,
    /// `rank_pattern` / `alpha_pattern`.
    pub patterns: Patterns,
}

impl TargetSpec {
    /// Every module named in `targets` (a comma-separated list; `all-linear` for every linear
    /// layer but the output layer) gets `config`.
    pub fn new(config: AdapterConfig, targets: &str) -> Self {
        let selection = if targets.trim().eq_ignore_ascii_case("all-linear") {
            Selection::AllLinear
        } else {
            Selection::Modules(Targets::parse_list(targets))
        };
        Self {
            config,
            selection,
            exclude: None,
            layers_to_transform: None,
            layers_pattern: Vec::new(),
            patterns: Patterns::default(),
        }
    }

    /// Checks what PEFT's `LoraConfig` refuses: `layers_to_transform` / `layers_pattern` with a
    /// regular expression or `all-linear` (they only filter name targets), and a bad
    /// `layers_pattern` expression.
    pub fn validate(&self) -> crate::error::Result<()> {
        let layered = self.layers_to_transform.is_some() || !self.layers_pattern.is_empty();
        let named = matches!(self.selection, Selection::Modules(Targets::Names(_)));
        if layered && !named {
            return Err(crate::error::AdapterError::InvalidArgument {
                name: "layers_to_transform".into(),
                expected: "name targets (PEFT refuses it with a regular expression or all-linear)"
                    .into(),
                actual: format!("{:?}", self.layers_to_transform),
            });
        }
        for p in &self.layers_pattern {
            Regex::new(p).map_err(|e| crate::error::AdapterError::InvalidArgument {
                name: "layers_pattern".into(),
                expected: "a regular expression".into(),
                actual: format!("{p:?}: {e}"),
            })?;
        }
        Ok(())
    }

    /// The configuration of the module at `path` (`embedding`: whether it is an embedding), or
    /// `None` when the spec leaves it bare.
    pub fn config_for(&self, path: &str, embedding: bool) -> Option<AdapterConfig> {
        let selected = match &self.selection {
            Selection::AllLinear => !embedding && !is_output_layer(path),
            Selection::Modules(Targets::Regex(re)) => re.is_match(path),
            Selection::Modules(t @ Targets::Names(names)) => {
                if names.iter().any(|n| n == path) {
                    true
                } else {
                    t.matches(path) && self.layer_selected(path)
                }
            }
        };
        if !selected || self.exclude.as_ref().is_some_and(|e| e.matches(path)) {
            return None;
        }
        let mut c = self.config;
        if let Some(r) = self.patterns.rank(path) {
            c.rank = r;
        }
        if let Some(a) = self.patterns.alpha(path) {
            c.alpha = a;
        }
        Some(c)
    }

    /// Whether `layers_to_transform` keep `path` (always, when not given).
    fn layer_selected(&self, path: &str) -> bool {
        let Some(keep) = self.layers_to_transform.as_ref().filter(|l| !l.is_empty()) else {
            return true;
        };
        // PEFT's expressions, `re.match`ed (anchored at the start): the first number that
        // follows two components, or the one after `.<pattern>.`.
        let patterns: Vec<String> = if self.layers_pattern.is_empty() {
            vec![r"^.*?\.[^.]*\.(\d+)\.".into()]
        } else {
            self.layers_pattern
                .iter()
                .map(|p| format!(r"^(?:|.*?\.){p}\.(\d+)\."))
                .collect()
        };
        let index = patterns.iter().find_map(|p| {
            let re = Regex::new(p).ok()?;
            re.captures(path)?.get(1)?.as_str().parse::<usize>().ok()
        });
        index.is_some_and(|i| keep.contains(&i))
    }
}

/// The output layer PEFT's `all-linear` leaves out.
fn is_output_layer(path: &str) -> bool {
    path == "lm_head" || path.ends_with(".lm_head")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter_config::Init;
    use crate::estimate::Method;

    fn cfg() -> AdapterConfig {
        AdapterConfig {
            method: Method::Lora,
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            rslora: false,
            init: Init::Kaiming,
        }
    }

    #[test]
    fn layers_to_transform_apply_after_a_suffix_match_only() {
        let mut s = TargetSpec::new(cfg(), "q_proj,model.layers.0.mlp.up_proj");
        s.layers_to_transform = Some(vec![1]);
        assert!(s
            .config_for("model.layers.1.self_attn.q_proj", false)
            .is_some());
        assert!(s
            .config_for("model.layers.0.self_attn.q_proj", false)
            .is_none());
        // An exact name is taken whatever its layer (PEFT checks layers after a suffix match).
        assert!(s.config_for("model.layers.0.mlp.up_proj", false).is_some());
        s.layers_pattern = vec!["blocks".into()];
        assert!(s
            .config_for("model.layers.1.self_attn.q_proj", false)
            .is_none());
    }

    #[test]
    fn all_linear_leaves_out_embeddings_and_the_head() {
        let s = TargetSpec::new(cfg(), "all-linear");
        assert!(s
            .config_for("model.layers.3.mlp.down_proj", false)
            .is_some());
        assert!(s.config_for("model.embed_tokens", true).is_none());
        assert!(s.config_for("lm_head", false).is_none());
    }
}
