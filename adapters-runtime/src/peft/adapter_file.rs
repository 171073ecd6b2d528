//! Reading a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`) into
//! per-module tensors, checking every key, dtype and shape against the config.

use crate::adapter_config::AdapterConfig;
use crate::error::{AdapterError, KeyIssue, Result};
use crate::io::finite::check_finite;
use crate::io::safetensors_file::{to_tensor, MappedFile};
use crate::peft::keys::{self, AdapterTensor, Kind};
use crate::peft::peft_config::{PeftConfig, CONFIG_FILE};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The weights file's name inside an adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// One adapted module of a checkpoint.
#[derive(Debug)]
pub struct ModuleAdapter {
    /// The module path in the base model (`model.layers.0.self_attn.q_proj`).
    pub module: String,
    /// Linear layer or embedding.
    pub kind: Kind,
    /// Its configuration (rank and alpha after `rank_pattern` / `alpha_pattern`).
    pub config: AdapterConfig,
    /// `lora_A` `[r, in]` (`lora_embedding_A` `[r, vocab]`), as stored.
    pub a: Tensor,
    /// `lora_B` `[out, r]` (`lora_embedding_B` `[dim, r]`), as stored.
    pub b: Tensor,
    /// The DoRA magnitude `[out]`, as stored.
    pub magnitude: Option<Tensor>,
    /// Bytes the module's tensors take in the file.
    pub file_bytes: usize,
}

impl ModuleAdapter {
    /// Input features (vocab size for embeddings), from `A`'s shape.
    pub fn din(&self) -> usize {
        self.a.dims().get(1).copied().unwrap_or(0)
    }

    /// Output features (embedding dim), from `B`'s shape.
    pub fn dout(&self) -> usize {
        self.b.dims().first().copied().unwrap_or(0)
    }

    /// Trainable parameters (elements of A, B and the magnitude).
    pub fn params(&self) -> usize {
        self.a.elem_count()
            + self.b.elem_count()
            + self.magnitude.as_ref().map_or(0, |m| m.elem_count())
    }

    /// The key PEFT writes for this module's `role` tensor.
    pub fn key(&self, role: AdapterTensor) -> String {
        keys::key(&self.module, role, self.kind)
    }

    /// The base weight's shape this adapter fits: `[out, in]`, or `[vocab, dim]` for embeddings.
    pub fn base_shape(&self) -> [usize; 2] {
        match self.kind {
            Kind::Linear => [self.dout(), self.din()],
            Kind::Embedding => [self.din(), self.dout()],
        }
    }
}

/// A PEFT adapter folder, read and checked.
#[derive(Debug)]
pub struct AdapterCheckpoint {
    /// The folder.
    pub dir: PathBuf,
    /// Its `adapter_config.json`.
    pub config: PeftConfig,
    /// The adapted modules, sorted by path.
    pub modules: Vec<ModuleAdapter>,
}

/// The tensors found for one module while grouping keys.
#[derive(Default)]
struct Group {
    found: BTreeMap<AdapterTensor, (String, Option<Kind>)>,
}

impl AdapterCheckpoint {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`. Every key must be a
    /// LoRA / DoRA tensor name, every module needs A and B (and a magnitude iff `use_dora`), ranks
    /// must match `r` / `rank_pattern`; all offending keys are reported together.
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder");
            return Err(AdapterError::io("reading adapter folder", dir, e));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config = PeftConfig::read(&config_path)?;
        let patterns = config.patterns(&config_path)?;
        let file = MappedFile::open(&dir.join(WEIGHTS_FILE))?;
        let st = file.tensors()?;
        let mut issues = Vec::new();
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for name in st.names() {
            let Some(parsed) = keys::parse(name) else {
                issues.push(KeyIssue::new(
                    name,
                    "a LoRA/DoRA tensor name (base_model.model.<module>.lora_A.weight, .lora_B.weight, .lora_embedding_A/B, .lora_magnitude_vector)",
                    "an unrecognised key",
                ));
                continue;
            };
            let g = groups.entry(parsed.module).or_default();
            if let Some((other, _)) = g.found.get(&parsed.role) {
                issues.push(KeyIssue::new(
                    name,
                    "one tensor per role",
                    format!("a duplicate of `{other}`"),
                ));
                continue;
            }
            g.found.insert(parsed.role, (name.to_string(), parsed.kind));
        }
        let mut modules = Vec::new();
        for (module, group) in groups {
            let cfg = config.layer_config(&module, &patterns);
            match check_group(&module, &group, &config, cfg, &mut issues) {
                Some((kind, ka, kb, km)) => {
                    let load = |k: &str| -> Result<(Tensor, usize)> {
                        let v = st.tensor(k).map_err(|e| AdapterError::SafeTensors {
                            path: file.path().into(),
                            source: e,
                        })?;
                        check_adapter_dtype(file.path(), k, v.dtype())?;
                        Ok((to_tensor(&v, file.path(), k)?, v.data().len()))
                    };
                    let (a, na) = load(&ka)?;
                    let (b, nb) = load(&kb)?;
                    let m = km.as_deref().map(load).transpose()?;
                    let file_bytes = na + nb + m.as_ref().map_or(0, |m| m.1);
                    let ad = ModuleAdapter {
                        module,
                        kind,
                        config: cfg,
                        a,
                        b,
                        magnitude: m.map(|m| m.0),
                        file_bytes,
                    };
                    check_tensors(&ad, &ka, &kb, km.as_deref(), &mut issues);
                    modules.push(ad);
                }
                None => continue,
            }
        }
        if !issues.is_empty() {
            return Err(AdapterError::Keys {
                context: format!("adapter `{}`", file.path().display()),
                issues,
            });
        }
        if modules.is_empty() {
            return Err(AdapterError::Keys {
                context: format!("adapter `{}`", file.path().display()),
                issues: vec![KeyIssue::new(
                    "base_model.model.*.lora_A.weight",
                    "at least one adapted module",
                    "no tensors",
                )],
            });
        }
        for m in &modules {
            m.config.validate(&m.module)?;
        }
        Ok(AdapterCheckpoint {
            dir: dir.to_path_buf(),
            config,
            modules,
        })
    }

    /// Fails with [`AdapterError::NonFiniteWeights`] naming the first tensor (by its key in
    /// `adapter_model.safetensors`) that holds a NaN or ±Inf value; `hint` is appended to the
    /// message (how the caller can allow them).
    pub fn check_finite(&self, hint: &str) -> Result<()> {
        let what = format!("adapter `{}`", self.dir.join(WEIGHTS_FILE).display());
        for m in &self.modules {
            let magnitude = m.magnitude.as_ref().map(|t| (AdapterTensor::Magnitude, t));
            let tensors = [(AdapterTensor::A, &m.a), (AdapterTensor::B, &m.b)];
            for (role, t) in tensors.into_iter().chain(magnitude) {
                check_finite(t, &what, &m.key(role), hint)?;
            }
        }
        Ok(())
    }

    /// The module adapter for `path`, if the checkpoint has one.
    pub fn module(&self, path: &str) -> Option<&ModuleAdapter> {
        self.modules
            .binary_search_by(|m| m.module.as_str().cmp(path))
            .ok()
            .map(|i| &self.modules[i])
    }
}

/// Checks that a module has A, B (of one kind) and a magnitude iff DoRA; returns its kind and the
/// keys of A, B and the magnitude.
fn check_group(
    module: &str,
    g: &Group,
    config: &PeftConfig,
    cfg: AdapterConfig,
    issues: &mut Vec<KeyIssue>,
) -> Option<(Kind, String, String, Option<String>)> {
    let kinds: Vec<Kind> = g.found.values().filter_map(|(_, k)| *k).collect();
    let kind = *kinds.first().unwrap_or(&Kind::Linear);
    if kinds.iter().any(|k| *k != kind) {
        let names: Vec<&str> = g.found.values().map(|(n, _)| n.as_str()).collect();
        issues.push(KeyIssue::new(
            names.join(", "),
            "lora_A/lora_B (linear) or lora_embedding_A/B (embedding), not both",
            "a mix",
        ));
        return None;
    }
    let mut ok = true;
    for role in [AdapterTensor::A, AdapterTensor::B] {
        if !g.found.contains_key(&role) {
            issues.push(KeyIssue::new(
                keys::key(module, role, kind),
                "present",
                "missing",
            ));
            ok = false;
        }
    }
    let dora = cfg.method == crate::estimate::Method::Dora;
    match (g.found.get(&AdapterTensor::Magnitude), dora) {
        (None, true) => {
            issues.push(KeyIssue::new(
                keys::key(module, AdapterTensor::Magnitude, kind),
                "present (use_dora is true)",
                "missing",
            ));
            ok = false;
        }
        (Some((k, _)), false) => {
            issues.push(KeyIssue::new(
                k,
                "absent (use_dora is false)",
                "a DoRA magnitude",
            ));
            ok = false;
        }
        _ => {}
    }
    if config.targets(module) == Some(false) {
        issues.push(KeyIssue::new(
            keys::key(module, AdapterTensor::A, kind),
            "a module matched by target_modules",
            format!("`{module}`, which target_modules does not match"),
        ));
        ok = false;
    }
    let get = |r: AdapterTensor| g.found.get(&r).map(|(n, _)| n.clone());
    match (ok, get(AdapterTensor::A), get(AdapterTensor::B)) {
        (true, Some(a), Some(b)) => Some((kind, a, b, get(AdapterTensor::Magnitude))),
        _ => None,
    }
}

/// The dtypes an adapter tensor may have: PEFT saves f32 (or the dtype it trained in); 8-, 6- and
/// 4-bit floats are not adapter formats (and candle's F8 → f64 conversion does not terminate).
const ADAPTER_DTYPES: [safetensors::Dtype; 4] = [
    safetensors::Dtype::F16,
    safetensors::Dtype::BF16,
    safetensors::Dtype::F32,
    safetensors::Dtype::F64,
];

/// Refuses an adapter tensor whose dtype is not one of [`ADAPTER_DTYPES`].
fn check_adapter_dtype(file: &Path, key: &str, dtype: safetensors::Dtype) -> Result<()> {
    if ADAPTER_DTYPES.contains(&dtype) {
        return Ok(());
    }
    Err(AdapterError::Keys {
        context: format!("adapter weights `{}`", file.display()),
        issues: vec![KeyIssue::new(
            key,
            "dtype f16, bf16, f32 or f64",
            format!("dtype {dtype:?}"),
        )],
    })
}

/// Checks dtypes and shapes of one module's tensors against its rank.
fn check_tensors(
    ad: &ModuleAdapter,
    ka: &str,
    kb: &str,
    km: Option<&str>,
    issues: &mut Vec<KeyIssue>,
) {
    let r = ad.config.rank;
    let mut check = |key: &str, t: &Tensor, ok: bool, expected: String| {
        if !t.dtype().is_float() {
            issues.push(KeyIssue::new(
                key,
                "a float dtype",
                format!("{:?}", t.dtype()),
            ));
        } else if !ok {
            issues.push(KeyIssue::new(
                key,
                expected,
                format!("shape {:?}", t.dims()),
            ));
        }
    };
    let a_ok = ad.a.rank() == 2 && ad.a.dims()[0] == r;
    check(
        ka,
        &ad.a,
        a_ok,
        format!("shape [{r}, in] (r = {r} from r / rank_pattern)"),
    );
    let b_ok = ad.b.rank() == 2 && ad.b.dims()[1] == r;
    check(
        kb,
        &ad.b,
        b_ok,
        format!("shape [out, {r}] (r = {r} from r / rank_pattern)"),
    );
    if let (Some(km), Some(m)) = (km, &ad.magnitude) {
        let out = ad.dout();
        check(
            km,
            m,
            m.dims() == [out],
            format!("shape [{out}] (the rows of lora_B)"),
        );
    }
}
