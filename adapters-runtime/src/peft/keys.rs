//! PEFT tensor names: `base_model.model.<module>.lora_A.weight` and friends.
//!
//! PEFT's `save_pretrained` writes
//!
//! ```text
//! base_model.model.<module>.lora_A.weight            [r, in]      linear layers
//! base_model.model.<module>.lora_B.weight            [out, r]
//! base_model.model.<module>.lora_embedding_A         [r, vocab]   embeddings
//! base_model.model.<module>.lora_embedding_B         [dim, r]
//! base_model.model.<module>.lora_magnitude_vector    [out]        DoRA (no `.weight`)
//! ```
//!
//! Reading also accepts the in-memory form with the adapter name (`lora_A.default.weight`) and a
//! `.weight`-suffixed magnitude (`lora_magnitude_vector.weight`, `lora_magnitude_vector.default.weight`).

/// The prefix PEFT puts before every module path.
pub const PREFIX: &str = "base_model.model.";

/// The only adapter name accepted as an infix (PEFT strips it when saving).
pub const DEFAULT_ADAPTER: &str = "default";

/// Which tensor of an adapter a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdapterTensor {
    /// `lora_A` / `lora_embedding_A`.
    A,
    /// `lora_B` / `lora_embedding_B`.
    B,
    /// `lora_magnitude_vector` (DoRA).
    Magnitude,
}

/// Whether a module is a linear layer or an embedding (PEFT names their tensors differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `lora_A.weight` / `lora_B.weight`.
    Linear,
    /// `lora_embedding_A` / `lora_embedding_B`.
    Embedding,
}

/// A parsed adapter key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedKey {
    /// The module path in the base model (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// Which tensor.
    pub role: AdapterTensor,
    /// The layer kind the name implies (`None` for the magnitude, shared by both kinds).
    pub kind: Option<Kind>,
}

/// The key PEFT's `save_pretrained` writes for `module`'s `role` tensor.
pub fn key(module: &str, role: AdapterTensor, kind: Kind) -> String {
    format!("{PREFIX}{module}.{}", suffix(role, kind))
}

/// The suffix after the module path (`lora_A.weight`, `lora_embedding_B`, …).
pub fn suffix(role: AdapterTensor, kind: Kind) -> &'static str {
    match (role, kind) {
        (AdapterTensor::A, Kind::Linear) => "lora_A.weight",
        (AdapterTensor::B, Kind::Linear) => "lora_B.weight",
        (AdapterTensor::A, Kind::Embedding) => "lora_embedding_A",
        (AdapterTensor::B, Kind::Embedding) => "lora_embedding_B",
        (AdapterTensor::Magnitude, _) => "lora_magnitude_vector",
    }
}

/// The base checkpoint's weight name for a module (`<module>.weight`).
pub fn base_weight(module: &str) -> String {
    format!("{module}.weight")
}

/// Parses an adapter key; `None` when it is not one of PEFT's LoRA / DoRA tensor names.
pub fn parse(key: &str) -> Option<ParsedKey> {
    let rest = key.strip_prefix(PREFIX)?;
    let parts: Vec<&str> = rest.split('.').collect();
    // Strip an optional trailing `weight`, then an optional adapter name.
    let mut end = parts.len();
    let weight = parts.last() == Some(&"weight");
    if weight {
        end -= 1;
    }
    if end >= 2 && parts[end - 1] == DEFAULT_ADAPTER {
        end -= 1;
    }
    if end < 2 {
        return None;
    }
    let (role, kind) = match (parts[end - 1], weight) {
        ("lora_A", true) => (AdapterTensor::A, Some(Kind::Linear)),
        ("lora_B", true) => (AdapterTensor::B, Some(Kind::Linear)),
        ("lora_embedding_A", false) => (AdapterTensor::A, Some(Kind::Embedding)),
        ("lora_embedding_B", false) => (AdapterTensor::B, Some(Kind::Embedding)),
        ("lora_magnitude_vector", _) => (AdapterTensor::Magnitude, None),
        _ => return None,
    };
    let module = parts[..end - 1].join(".");
    if module.is_empty() || parts[..end - 1].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(ParsedKey { module, role, kind })
}

/// The last component of a module path (`q_proj` for `model.layers.0.self_attn.q_proj`).
pub fn last_component(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str) -> Option<(String, AdapterTensor, Option<Kind>)> {
        parse(k).map(|p| (p.module, p.role, p.kind))
    }

    #[test]
    fn parses_peft_names() {
        let lin = Some(Kind::Linear);
        let emb = Some(Kind::Embedding);
        assert_eq!(
            p("base_model.model.fc1.lora_A.weight"),
            Some(("fc1".into(), AdapterTensor::A, lin))
        );
        assert_eq!(
            p("base_model.model.a.b.lora_B.default.weight"),
            Some(("a.b".into(), AdapterTensor::B, lin))
        );
        assert_eq!(
            p("base_model.model.emb.lora_embedding_A"),
            Some(("emb".into(), AdapterTensor::A, emb))
        );
        assert_eq!(
            p("base_model.model.emb.lora_embedding_B.default"),
            Some(("emb".into(), AdapterTensor::B, emb))
        );
        for m in [
            "base_model.model.x.lora_magnitude_vector",
            "base_model.model.x.lora_magnitude_vector.weight",
            "base_model.model.x.lora_magnitude_vector.default.weight",
            "base_model.model.x.lora_magnitude_vector.default",
        ] {
            assert_eq!(
                p(m),
                Some(("x".into(), AdapterTensor::Magnitude, None)),
                "{m}"
            );
        }
        assert_eq!(p("fc1.lora_A.weight"), None);
        assert_eq!(p("base_model.model.fc1.lora_A"), None);
        assert_eq!(p("base_model.model.lora_A.weight"), None);
        assert_eq!(p("base_model.model.fc1.lora_A.other.weight"), None);
        assert_eq!(p("base_model.model.fc1.weight"), None);
    }

    #[test]
    fn names_round_trip() {
        for kind in [Kind::Linear, Kind::Embedding] {
            for role in [AdapterTensor::A, AdapterTensor::B, AdapterTensor::Magnitude] {
                let k = key("m.x", role, kind);
                let parsed = parse(&k).unwrap();
                assert_eq!((parsed.module.as_str(), parsed.role), ("m.x", role));
            }
        }
        assert_eq!(last_component("a.b.q_proj"), "q_proj");
        assert_eq!(last_component("emb"), "emb");
    }
}
