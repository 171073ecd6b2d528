//! Helpers of the PEFT checkpoint and command tests: temp folders, the fixture models written by
//! hand as `AdapterModel`s (no macro), and file helpers.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
#[allow(unused_imports)]
pub use common::{assert_close, fixtures_root, rel_err, test_device};

use adapters_runtime::adapters::visit::{
    join_path, AdapterModel, Declared, FieldInfo, LayerMut, LayerRef, Visitor, VisitorMut,
};
use adapters_runtime::candle_core::{DType, Device, Tensor};
use adapters_runtime::{AdaptedEmbedding, AdaptedLinear, AdapterConfig, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `tests/fixtures/peft/<case>` (under `ADAPTERS_FIXTURES` when set).
pub fn fixture(case: &str) -> PathBuf {
    fixtures_root().join("peft").join(case)
}

/// A fresh folder under the system temp folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `adapters-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("adapters-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `path/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names in the folder, sorted.
    pub fn entries(&self) -> Vec<String> {
        entries(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The names in a folder, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Copies a folder's files (not recursive).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Loads a safetensors file onto the CPU.
pub fn load(path: &Path) -> HashMap<String, Tensor> {
    adapters_runtime::candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Saves tensors as a safetensors file.
pub fn save(tensors: &HashMap<String, Tensor>, path: &Path) {
    adapters_runtime::candle_core::safetensors::save(tensors, path).unwrap();
}

/// Whether two tensors are equal bit for bit (same dtype, shape and bytes).
pub fn bit_equal(a: &Tensor, b: &Tensor) -> bool {
    a.dtype() == b.dtype()
        && a.dims() == b.dims()
        && (a
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            == b.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap())
}

/// The configuration `case.json` describes.
pub fn case_config(case: &str) -> AdapterConfig {
    let text = std::fs::read_to_string(fixture(case).join("case.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let r = j["r"].as_u64().unwrap() as usize;
    let alpha = j["alpha"].as_f64().unwrap();
    let c = match j["kind"].as_str().unwrap() {
        "dora" => AdapterConfig::dora(r, alpha),
        _ => AdapterConfig::lora(r, alpha),
    };
    c.with_rslora(j["rslora"].as_bool().unwrap_or(false))
}

fn info(path: &str, bias: bool) -> FieldInfo<'_> {
    FieldInfo {
        path,
        declared: Declared::Unknown,
        bias,
    }
}

/// `t` in `dt` on the test device.
fn on_device(t: &Tensor, dt: DType) -> Tensor {
    t.to_dtype(dt).unwrap().to_device(&test_device()).unwrap()
}

fn bare_linear(base: &HashMap<String, Tensor>, name: &str, dt: DType) -> AdaptedLinear {
    let w = on_device(&base[&format!("{name}.weight")], dt);
    let b = base.get(&format!("{name}.bias")).map(|b| on_device(b, dt));
    AdaptedLinear::new(w, b).with_path(name)
}

/// `y = fc2(silu(fc1(x)))`, written by hand as an `AdapterModel`.
pub struct Mlp {
    pub fc1: AdaptedLinear,
    pub fc2: AdaptedLinear,
    pub cfg1: AdapterConfig,
    pub cfg2: AdapterConfig,
}

/// `y = fc1(emb(ids))`.
pub struct EmbMlp {
    pub emb: AdaptedEmbedding,
    pub fc1: AdaptedLinear,
    pub cfg_emb: AdapterConfig,
    pub cfg_fc1: AdapterConfig,
}

/// A fixture case's model.
pub enum CaseModel {
    Mlp(Mlp),
    Emb(EmbMlp),
}

impl CaseModel {
    /// The bare model of `case` (from `base.safetensors`) in `dt`, declaring `cfg` on every layer.
    pub fn bare(case: &str, dt: DType, cfg: AdapterConfig) -> Self {
        let base = load(&fixture(case).join("base.safetensors"));
        if let Some(e) = base.get("emb.weight") {
            CaseModel::Emb(EmbMlp {
                emb: AdaptedEmbedding::new(on_device(e, dt)).with_path("emb"),
                fc1: bare_linear(&base, "fc1", dt),
                cfg_emb: cfg,
                cfg_fc1: cfg,
            })
        } else {
            CaseModel::Mlp(Mlp {
                fc1: bare_linear(&base, "fc1", dt),
                fc2: bare_linear(&base, "fc2", dt),
                cfg1: cfg,
                cfg2: cfg,
            })
        }
    }

    /// The model's output for the fixture's `x` (cast to `dt` when float).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        use adapters_runtime::candle_core::Module;
        match self {
            CaseModel::Mlp(m) => {
                let dt = m.fc1.weight().dtype();
                let x = on_device(x, dt);
                m.fc2
                    .forward(&m.fc1.forward(&x).unwrap().silu().unwrap())
                    .unwrap()
            }
            CaseModel::Emb(m) => {
                let ids = on_device(x, x.dtype());
                m.fc1.forward(&m.emb.forward(&ids).unwrap()).unwrap()
            }
        }
    }

    /// The fixture's input.
    pub fn input(case: &str) -> Tensor {
        load(&fixture(case).join("io.safetensors"))["x"].clone()
    }
}

impl AdapterModel for CaseModel {
    fn visit_layers(&self, prefix: &str, f: &mut Visitor<'_>) -> Result<()> {
        match self {
            CaseModel::Mlp(m) => {
                let (p1, p2) = (join_path(prefix, "fc1"), join_path(prefix, "fc2"));
                f(
                    &info(&p1, m.fc1.bias().is_some()),
                    LayerRef::Linear {
                        layer: &m.fc1,
                        config: m.cfg1,
                    },
                )?;
                f(
                    &info(&p2, m.fc2.bias().is_some()),
                    LayerRef::Linear {
                        layer: &m.fc2,
                        config: m.cfg2,
                    },
                )
            }
            CaseModel::Emb(m) => {
                let (pe, p1) = (join_path(prefix, "emb"), join_path(prefix, "fc1"));
                f(
                    &info(&pe, false),
                    LayerRef::Embedding {
                        layer: &m.emb,
                        config: m.cfg_emb,
                    },
                )?;
                f(
                    &info(&p1, m.fc1.bias().is_some()),
                    LayerRef::Linear {
                        layer: &m.fc1,
                        config: m.cfg_fc1,
                    },
                )
            }
        }
    }

    fn visit_layers_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) -> Result<()> {
        match self {
            CaseModel::Mlp(m) => {
                let (p1, p2) = (join_path(prefix, "fc1"), join_path(prefix, "fc2"));
                let b1 = m.fc1.bias().is_some();
                f(
                    &info(&p1, b1),
                    LayerMut::Linear {
                        layer: &mut m.fc1,
                        config: m.cfg1,
                    },
                )?;
                let b2 = m.fc2.bias().is_some();
                f(
                    &info(&p2, b2),
                    LayerMut::Linear {
                        layer: &mut m.fc2,
                        config: m.cfg2,
                    },
                )
            }
            CaseModel::Emb(m) => {
                let (pe, p1) = (join_path(prefix, "emb"), join_path(prefix, "fc1"));
                f(
                    &info(&pe, false),
                    LayerMut::Embedding {
                        layer: &mut m.emb,
                        config: m.cfg_emb,
                    },
                )?;
                let b1 = m.fc1.bias().is_some();
                f(
                    &info(&p1, b1),
                    LayerMut::Linear {
                        layer: &mut m.fc1,
                        config: m.cfg_fc1,
                    },
                )
            }
        }
    }
}

/// The seven projections of every layer of `tiny_llama_dora` (and optionally its embedding), as
/// bare adapted layers named like the checkpoint.
pub struct Projections {
    pub layers: Vec<(String, AdaptedLinear, AdapterConfig)>,
    pub embed: Option<(AdaptedEmbedding, AdapterConfig)>,
}

/// The module paths of Llama layer `i`'s projections (`model.layers.0.self_attn.q_proj`, …), from
/// the runtime's one layout table.
pub fn projection_paths(i: usize) -> Vec<String> {
    adapters_runtime::hf::llama_layout::PROJECTIONS
        .iter()
        .map(|p| adapters_runtime::hf::LlamaLayout::projection_path(i, p))
        .collect()
}

impl Projections {
    /// From `tiny_llama_dora/model/model.safetensors`; `config(path)` gives each layer's declared
    /// configuration; `embed` adds `model.embed_tokens`.
    pub fn tiny_llama(
        config: impl Fn(&str) -> AdapterConfig,
        embed: Option<AdapterConfig>,
    ) -> Self {
        let base = load(&fixture("tiny_llama_dora").join("model/model.safetensors"));
        let mut layers = Vec::new();
        for i in 0..2 {
            for path in projection_paths(i) {
                let l = bare_linear(&base, &path, DType::F32).with_path(path.clone());
                let c = config(&path);
                layers.push((path, l, c));
            }
        }
        let embed = embed.map(|c| {
            let e = AdaptedEmbedding::new({
                let t = &base["model.embed_tokens.weight"];
                on_device(t, t.dtype())
            })
            .with_path("model.embed_tokens");
            (e, c)
        });
        Projections { layers, embed }
    }
}

impl AdapterModel for Projections {
    fn visit_layers(&self, prefix: &str, f: &mut Visitor<'_>) -> Result<()> {
        if let Some((e, c)) = &self.embed {
            let p = join_path(prefix, "model.embed_tokens");
            f(
                &info(&p, false),
                LayerRef::Embedding {
                    layer: e,
                    config: *c,
                },
            )?;
        }
        for (path, l, c) in &self.layers {
            let p = join_path(prefix, path);
            f(
                &info(&p, false),
                LayerRef::Linear {
                    layer: l,
                    config: *c,
                },
            )?;
        }
        Ok(())
    }

    fn visit_layers_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) -> Result<()> {
        if let Some((e, c)) = &mut self.embed {
            let p = join_path(prefix, "model.embed_tokens");
            f(
                &info(&p, false),
                LayerMut::Embedding {
                    layer: e,
                    config: *c,
                },
            )?;
        }
        for (path, l, c) in &mut self.layers {
            let p = join_path(prefix, path);
            f(
                &info(&p, false),
                LayerMut::Linear {
                    layer: l,
                    config: *c,
                },
            )?;
        }
        Ok(())
    }
}

/// [`common::rand_tensor`] on the CPU (these tests write it into files).
pub fn rand_tensor(seed: u64, dims: &[usize], scale: f64, dtype: DType) -> Tensor {
    common::rand_tensor(seed, dims, scale, dtype)
        .to_device(&Device::Cpu)
        .unwrap()
}

/// Gives every adapter tensor of `model` random values (B non-zero, magnitudes perturbed), so
/// that every term of the adapter matters.
pub fn perturb<M: adapters_runtime::Adapters + ?Sized>(model: &M, seed: u64, scale: f64) {
    for (i, (name, var)) in model
        .named_trainable_vars()
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let t = var.as_tensor();
        let noise = rand_tensor(seed + i as u64, t.dims(), scale, t.dtype())
            .to_device(t.device())
            .unwrap();
        let v = if name.ends_with("lora_magnitude_vector") {
            (t + noise).unwrap()
        } else {
            noise
        };
        var.set(&v).unwrap();
    }
}
