//! `rank_pattern` / `alpha_pattern`, matched as PEFT 0.21 does: the first pattern `p` (in file
//! order) for which `(.*\.)?(p)$` matches the module path from its start wins.

use crate::error::{AdapterError, Result};
use regex::Regex;
use serde_json::{Map, Value};
use std::path::Path;

/// Compiled per-module overrides of `r` and `lora_alpha`.
#[derive(Clone, Debug, Default)]
pub struct Patterns {
    rank: Vec<(Regex, usize)>,
    alpha: Vec<(Regex, f64)>,
}

/// PEFT's pattern form: `(.*\.)?(pattern)$` from the start of the module path.
fn pattern_regex(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$"))
}

fn compile(path: &Path, field: &str, pattern: &str) -> Result<Regex> {
    pattern_regex(pattern).map_err(|e| AdapterError::Config {
        path: path.into(),
        field: format!("{field}[{pattern:?}]"),
        expected: "a regular expression".into(),
        actual: format!("invalid ({e})"),
    })
}

impl Patterns {
    /// Compiles both maps; values must be a positive integer rank and a positive alpha.
    pub fn new(
        path: &Path,
        rank: Option<&Map<String, Value>>,
        alpha: Option<&Map<String, Value>>,
    ) -> Result<Self> {
        let bad = |field: &str, key: &str, expected: &str, v: &Value| AdapterError::Config {
            path: path.into(),
            field: format!("{field}[{key:?}]"),
            expected: expected.into(),
            actual: v.to_string(),
        };
        let mut out = Patterns::default();
        for (k, v) in rank.into_iter().flatten() {
            let r = v
                .as_u64()
                .filter(|r| *r > 0)
                .ok_or_else(|| bad("rank_pattern", k, "a positive integer", v))?;
            out.rank
                .push((compile(path, "rank_pattern", k)?, r as usize));
        }
        for (k, v) in alpha.into_iter().flatten() {
            let a = v
                .as_f64()
                .filter(|a| a.is_finite() && *a > 0.0)
                .ok_or_else(|| bad("alpha_pattern", k, "a positive number", v))?;
            out.alpha.push((compile(path, "alpha_pattern", k)?, a));
        }
        Ok(out)
    }

    /// Patterns given at run time (e.g. `finetune --rank-pattern o_proj=16`), in order; a bad
    /// regular expression is an [`AdapterError::InvalidArgument`] naming `source`.
    pub fn from_pairs(
        source: &str,
        rank: &[(String, usize)],
        alpha: &[(String, f64)],
    ) -> Result<Self> {
        let bad = |what: &str, k: &str, e: String| AdapterError::InvalidArgument {
            name: format!("{source} ({what})"),
            expected: "regular expressions and positive values".into(),
            actual: format!("{k:?}: {e}"),
        };
        let mut out = Patterns::default();
        for (k, r) in rank {
            if *r == 0 {
                return Err(bad("rank", k, "rank 0".into()));
            }
            let re = pattern_regex(k).map_err(|e| bad("rank", k, e.to_string()))?;
            out.rank.push((re, *r));
        }
        for (k, a) in alpha {
            if !(a.is_finite() && *a > 0.0) {
                return Err(bad("alpha", k, format!("alpha {a}")));
            }
            let re = pattern_regex(k).map_err(|e| bad("alpha", k, e.to_string()))?;
            out.alpha.push((re, *a));
        }
        Ok(out)
    }

    /// The rank `rank_pattern` gives `module`, if any pattern matches.
    pub fn rank(&self, module: &str) -> Option<usize> {
        self.rank
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map(|(_, r)| *r)
    }

    /// The alpha `alpha_pattern` gives `module`, if any pattern matches.
    pub fn alpha(&self, module: &str) -> Option<f64> {
        self.alpha
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map(|(_, a)| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_peft() {
        let rank: Map<String, Value> =
            serde_json::from_str(r#"{"layers.1.self_attn.q_proj": 8, "v_proj": 2}"#).unwrap();
        let alpha: Map<String, Value> =
            serde_json::from_str(r#"{"^model.layers.0.mlp.up_proj": 3.5}"#).unwrap();
        let p = Patterns::new(Path::new("c.json"), Some(&rank), Some(&alpha)).unwrap();
        assert_eq!(p.rank("model.layers.1.self_attn.q_proj"), Some(8));
        assert_eq!(p.rank("model.layers.11.self_attn.q_proj"), None);
        assert_eq!(p.rank("model.layers.3.self_attn.v_proj"), Some(2));
        assert_eq!(p.rank("v_proj"), Some(2));
        assert_eq!(p.rank("model.layers.3.self_attn.xv_proj"), None);
        assert_eq!(p.alpha("model.layers.0.mlp.up_proj"), Some(3.5));
        assert_eq!(p.alpha("model.layers.0.mlp.down_proj"), None);
    }

    #[test]
    fn rejects_bad_values() {
        let rank: Map<String, Value> = serde_json::from_str(r#"{"q_proj": 0}"#).unwrap();
        let e = Patterns::new(Path::new("c.json"), Some(&rank), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rank_pattern") && e.contains("q_proj") && e.contains("c.json"),
            "{e}"
        );
        let rank: Map<String, Value> = serde_json::from_str(r#"{"(": 4}"#).unwrap();
        assert!(Patterns::new(Path::new("c.json"), Some(&rank), None).is_err());
    }
}
