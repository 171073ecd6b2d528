//! `target_modules` as PEFT 0.21 matches them: a list of names (equal to the module path or to
//! its last components), or a regular expression matched against the whole path.

use regex::Regex;

/// Which modules an adapter targets.
#[derive(Clone, Debug)]
pub enum Targets {
    /// Names such as `q_proj`: a module matches when its path is the name or ends with `.name`.
    Names(Vec<String>),
    /// A regular expression that must match the whole module path.
    Regex(Regex),
}

impl Targets {
    /// Targets from a list of names (blank entries are ignored).
    pub fn names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        Targets::Names(
            names
                .into_iter()
                .map(|n| n.as_ref().trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        )
    }

    /// Targets from a comma-separated list (`"q_proj,v_proj"`).
    pub fn parse_list(list: &str) -> Self {
        Self::names(list.split(','))
    }

    /// Targets from a regular expression matched against whole paths.
    pub fn regex(pattern: &str) -> Result<Self, regex::Error> {
        Ok(Targets::Regex(Regex::new(&format!("^(?:{pattern})$"))?))
    }

    /// Whether `module` (a dotted path such as `model.layers.0.self_attn.q_proj`) is targeted.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Targets::Names(names) => names.iter().any(|t| {
                module == t
                    || module
                        .strip_suffix(t.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
            Targets::Regex(re) => re.is_match(module),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_whole_components() {
        let t = Targets::parse_list("q_proj, self_attn.v_proj");
        assert!(t.matches("model.layers.0.self_attn.q_proj"));
        assert!(t.matches("q_proj"));
        assert!(t.matches("model.layers.1.self_attn.v_proj"));
        assert!(!t.matches("model.layers.0.self_attn.xq_proj"));
        assert!(!t.matches("model.layers.0.mlp.v_proj"));
    }

    #[test]
    fn regex_matches_the_whole_path() {
        let t = Targets::regex(r".*\.(q|v)_proj").unwrap();
        assert!(t.matches("model.layers.0.self_attn.q_proj"));
        assert!(!t.matches("model.layers.0.self_attn.q_proj.base"));
        assert!(!t.matches("q_proj"));
    }
}
