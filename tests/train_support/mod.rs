//! Helpers for the trainer tests: a tiny language model with two adapted linear layers
//! (implementing `AdapterModel` by hand), deterministic tensors and scratch folders.
#![allow(dead_code)]

#[path = "../common/device.rs"]
mod device;
pub use device::test_device;

use adapters_runtime::adapters::visit::{
    join_path, AdapterModel, Declared, FieldInfo, LayerMut, LayerRef, Visitor, VisitorMut,
};
use adapters_runtime::candle_core::{DType, Tensor};
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::train::Batch;
use adapters_runtime::{AdaptedLinear, AdapterConfig, Adapters, Result};
use std::path::PathBuf;

/// A deterministic pseudo-random tensor in `[-scale, scale)`, on the test device.
pub fn tensor(seed: u64, dims: &[usize], scale: f32) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, dims, &test_device()).unwrap()
}

/// `embed (frozen) → fc1 (DoRA, dropout 0.1) → tanh → fc2 (LoRA)`: logits over `vocab`.
pub struct TinyLm {
    pub embed: Tensor,
    pub fc1: AdaptedLinear,
    pub fc2: AdaptedLinear,
}

pub const DIM: usize = 16;
pub const HIDDEN: usize = 32;

const FC1: AdapterConfig = AdapterConfig::dora(4, 8.0).with_dropout(0.1);
const FC2: AdapterConfig = AdapterConfig::lora(4, 8.0);

impl TinyLm {
    /// A model with fixed base weights and adapters attached with `seed`.
    pub fn new(vocab: usize, seed: u64) -> (Self, VarMap) {
        let mut m = Self {
            embed: tensor(1, &[vocab, DIM], 1.0),
            fc1: AdaptedLinear::new(tensor(2, &[HIDDEN, DIM], 0.3), None).with_path("fc1"),
            fc2: AdaptedLinear::new(tensor(3, &[vocab, HIDDEN], 0.3), None).with_path("fc2"),
        };
        let varmap = VarMap::new();
        m.attach_adapters(&varmap, seed).unwrap();
        (m, varmap)
    }

    /// Logits `[B, T, V]`.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, DIM))?;
        let h = self.fc1.forward_t(&x, train)?.tanh()?;
        self.fc2.forward_t(&h, train)
    }

    /// The masked cross entropy of a batch.
    pub fn loss(&self, batch: &Batch, train: bool) -> Result<Tensor> {
        let logits = self.forward(&batch.input_ids, train)?;
        adapters_runtime::train::masked_cross_entropy(&logits, &batch.targets, &batch.loss_mask)
    }
}

impl AdapterModel for TinyLm {
    fn visit_layers(&self, prefix: &str, f: &mut Visitor<'_>) -> Result<()> {
        let p = join_path(prefix, "embed");
        f(
            &FieldInfo {
                path: &p,
                declared: Declared::Unknown,
                bias: false,
            },
            LayerRef::Frozen {
                module: &self.embed,
            },
        )?;
        let p = join_path(prefix, "fc1");
        f(
            &FieldInfo {
                path: &p,
                declared: Declared::Unknown,
                bias: false,
            },
            LayerRef::Linear {
                layer: &self.fc1,
                config: FC1,
            },
        )?;
        let p = join_path(prefix, "fc2");
        f(
            &FieldInfo {
                path: &p,
                declared: Declared::Unknown,
                bias: false,
            },
            LayerRef::Linear {
                layer: &self.fc2,
                config: FC2,
            },
        )
    }

    fn visit_layers_mut(&mut self, prefix: &str, f: &mut VisitorMut<'_>) -> Result<()> {
        let p = join_path(prefix, "embed");
        f(
            &FieldInfo {
                path: &p,
                declared: Declared::Unknown,
                bias: false,
            },
            LayerMut::Frozen {
                module: &self.embed,
            },
        )?;
        let p = join_path(prefix, "fc1");
        f(
            &FieldInfo {
                path: &p,
                declared: Declared::Unknown,
                bias: false,
            },
            LayerMut::Linear {
                layer: &mut self.fc1,
                config: FC1,
            },
        )?;
        let p = join_path(prefix, "fc2");
        f(
            &FieldInfo {
                path: &p,
                declared: Declared::Unknown,
                bias: false,
            },
            LayerMut::Linear {
                layer: &mut self.fc2,
                config: FC2,
            },
        )
    }
}

/// Every trainable tensor's values as f32 bits, by name.
pub fn param_bits(m: &TinyLm) -> Vec<(String, Vec<u32>)> {
    m.named_trainable_vars()
        .unwrap()
        .into_iter()
        .map(|(n, v)| {
            let vals: Vec<f32> = v
                .as_tensor()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (n, vals.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

/// A fresh, empty scratch folder under the system temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adapters-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Values of a tensor as f64.
pub fn vals(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
