//! Phase 1 of the default run: pretrain the small base model (all weights trainable) on generated
//! text and write it as an HF checkpoint (`config.json` + `model.safetensors`).

use crate::{default_model, tasks};
use adapters_runtime::candle_core::{DType, Device};
use adapters_runtime::hf::save_model_folder;
use adapters_runtime::io::atomic::Staging;
use adapters_runtime::io::progress::{progress_bar, Unit};
use adapters_runtime::models::llama::init_random;
use adapters_runtime::train::{
    clip_grad_norm, masked_cross_entropy, prepare, AdamW, AdamWConfig, BatchLoader, BatchSource,
    Example, Grads, LrSchedule, PackMode, PackOptions, Tokenizer,
};
use std::path::Path;

/// What the marker file records, so a stale base is rebuilt.
const MARKER: &str = "pretrain.json";

/// Pretraining settings.
pub struct Pretrain {
    /// Optimizer steps.
    pub steps: u64,
    /// Sequences per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Seed of the init and the data.
    pub seed: u64,
}

fn marker(p: &Pretrain) -> serde_json::Value {
    serde_json::json!({ "task": "copy-v1", "steps": p.steps, "batch": p.batch, "lr": p.lr, "seed": p.seed })
}

/// The base checkpoint phase 1 made with the default settings (`--pretrain`, 2000 steps, seed
/// 1234), shipped inside the example so the default run starts from it.
const EMBEDDED: [(&str, &[u8]); 3] = [
    ("config.json", include_bytes!("base/config.json")),
    (
        "model.safetensors",
        include_bytes!("base/model.safetensors"),
    ),
    (MARKER, include_bytes!("base/pretrain.json")),
];

/// The settings the embedded base was made with.
pub fn embedded_settings() -> Pretrain {
    Pretrain {
        steps: 2000,
        batch: 32,
        lr: 3e-3,
        seed: 1234,
    }
}

/// Writes the embedded base checkpoint to `dir`, atomically (a staged sibling folder renamed
/// over it).
pub fn install_embedded(dir: &Path) -> adapters_runtime::Result<()> {
    let staging = Staging::new(dir)?;
    for (name, bytes) in EMBEDDED {
        let path = staging.path().join(name);
        std::fs::write(&path, bytes)
            .map_err(|e| adapters_runtime::AdapterError::io("writing", &path, e))?;
    }
    staging.commit(false)
}

/// Whether `dir` already holds the base this configuration would make.
pub fn is_current(dir: &Path, p: &Pretrain) -> bool {
    std::fs::read_to_string(dir.join(MARKER))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v == marker(p))
        && dir.join("model.safetensors").exists()
}

/// Trains the base model from scratch and writes it to `dir`. Returns the final training loss.
pub fn run(dir: &Path, p: &Pretrain, device: &Device) -> Result<f64, Box<dyn std::error::Error>> {
    let config = default_model::config();
    let (model, varmap) = init_random(&config, DType::F32, device, p.seed)?;
    let tok = Tokenizer::byte_level();
    let examples: Vec<Example> = tasks::pretrain_corpus(8000, p.seed)
        .into_iter()
        .map(Example::Text)
        .collect();
    let prepared = prepare(
        &examples,
        &tok,
        PackOptions {
            seq_len: 24,
            mode: PackMode::Pad,
        },
    )?;
    let mut loader = BatchLoader::new(
        prepared.sequences,
        p.batch,
        tok.pad_id(),
        device,
        p.seed,
        true,
    )?;
    let mut params: Vec<_> = varmap
        .data()
        .lock()
        .map_err(|_| "poisoned VarMap")?
        .clone()
        .into_iter()
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            weight_decay: 0.01,
            ..AdamWConfig::default()
        },
    )?;
    let schedule = LrSchedule::cosine(p.lr, p.steps / 10, p.steps).with_min_lr(p.lr / 10.0);
    let bar = progress_bar(true, Unit::Steps, p.steps, 0);
    let mut loss_value = f64::NAN;
    for step in 0..p.steps {
        let batch = loader.next_batch()?;
        let logits = model.forward(&batch.input_ids)?;
        let loss = masked_cross_entropy(&logits, &batch.targets, &batch.loss_mask)?;
        loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Err(format!("pretraining step {step}: loss is {loss_value}").into());
        }
        let mut grads = Grads::from_store(&params, &loss.backward()?)?;
        clip_grad_norm(&mut grads, 1.0)?;
        opt.step(&grads, schedule.lr_at(step))?;
        bar.set_message(format!("pretrain loss {loss_value:.3}"));
        bar.inc(1);
    }
    bar.finish();
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| adapters_runtime::AdapterError::io("creating", parent, e))?;
    save_model_folder(dir, &config, &model.base_tensors(false)?, &[])?;
    std::fs::write(dir.join(MARKER), serde_json::to_string_pretty(&marker(p))?)?;
    Ok(loss_value)
}
