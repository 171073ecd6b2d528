//! The training loop: gradient accumulation, global-norm clipping, the learning-rate schedule,
//! AdamW, evaluation and checkpoints every N steps, a NaN/Inf guard, JSONL metrics and a progress
//! bar. Generic over any [`Adapters`] model and a loss closure.

use crate::adapters::Adapters;
use crate::error::{AdapterError, Result};
use crate::io::progress::{progress_bar, Unit};
use crate::train::batch::{Batch, BatchSource};
use crate::train::grads::{clip_grad_norm, GradAccumulator};
use crate::train::loss::{masked_cross_entropy_sum, token_accuracy};
use crate::train::metrics::{EvalMetrics, MetricRecord, MetricsWriter};
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::schedule::LrSchedule;
use crate::train::train_state::{
    self, checkpoint_name, AdapterSaver, TrainerState, FORMAT_VERSION,
};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a training run does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Total optimizer steps (a resumed run continues up to this).
    pub steps: u64,
    /// Micro-batches per optimizer step (gradients averaged).
    pub grad_accum: usize,
    /// The learning rate as a function of the step.
    pub schedule: LrSchedule,
    /// AdamW hyper-parameters.
    pub optimizer: AdamWConfig,
    /// Clip the global gradient norm to this (`None`: no clipping; the norm is still logged).
    pub max_grad_norm: Option<f64>,
    /// Evaluate every N steps (and after the last) when an evaluator is set.
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps (and after the last) when `checkpoint_dir` is set.
    pub checkpoint_every: Option<u64>,
    /// Where `step-NNNNNNNN/` checkpoint folders go.
    pub checkpoint_dir: Option<PathBuf>,
    /// How many checkpoints to keep (0: all).
    pub keep_checkpoints: usize,
    /// The JSONL metrics file.
    pub metrics_path: Option<PathBuf>,
    /// Show a progress bar (only ever drawn on a terminal).
    pub progress: bool,
    /// The run's seed (recorded in checkpoints).
    pub seed: u64,
    /// Check after the first backward pass of the run that every adapter tensor received a
    /// gradient ([`Adapters::check_gradients`]) and stop with its error otherwise. On by default;
    /// turn off only for a model that leaves some adapters out of the loss on purpose.
    #[serde(default = "default_true")]
    pub check_gradients: bool,
}

fn default_true() -> bool {
    true
}

impl TrainConfig {
    /// `steps` steps at peak `lr` with cosine decay, no warmup, no accumulation, clipping at 1.0,
    /// PyTorch's AdamW defaults, no eval / checkpoints / metrics, progress bar on.
    pub fn new(steps: u64, lr: f64) -> Self {
        Self {
            steps,
            grad_accum: 1,
            schedule: LrSchedule::cosine(lr, 0, steps),
            optimizer: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            eval_every: None,
            checkpoint_every: None,
            checkpoint_dir: None,
            keep_checkpoints: 0,
            metrics_path: None,
            progress: true,
            seed: 0,
            check_gradients: true,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |name: &str, expected: &str, actual: String| {
            Err(AdapterError::InvalidArgument {
                name: name.into(),
                expected: expected.into(),
                actual,
            })
        };
        if self.grad_accum == 0 {
            return bad("grad_accum", "at least 1", "0".into());
        }
        if !(self.schedule.peak_lr.is_finite() && self.schedule.peak_lr >= 0.0) {
            return bad(
                "lr",
                "a finite value ≥ 0",
                self.schedule.peak_lr.to_string(),
            );
        }
        if let Some(n) = self.max_grad_norm.filter(|n| !(n.is_finite() && *n > 0.0)) {
            return bad("max_grad_norm", "a finite value > 0", n.to_string());
        }
        if self.eval_every == Some(0) || self.checkpoint_every == Some(0) {
            return bad("eval_every / checkpoint_every", "at least 1", "0".into());
        }
        Ok(())
    }
}

/// What a run did; the histories cover resumed runs from step 1.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Optimizer steps completed.
    pub steps: u64,
    /// Mean training loss of each step (`loss_history[i]` is step `i + 1`).
    pub loss_history: Vec<f64>,
    /// Evaluations, with the step they followed.
    pub evals: Vec<(u64, EvalMetrics)>,
    /// Best evaluation loss.
    pub best_eval_loss: Option<f64>,
    /// Input tokens trained on (whole run, resumed runs included).
    pub tokens_seen: u64,
    /// Wall time of this call.
    pub elapsed: Duration,
    /// Input tokens per second during this call's training steps.
    pub tokens_per_sec: f64,
    /// Wall time in seconds of each optimizer step of this call (evaluation and checkpoints
    /// excluded), for benchmarks that want medians rather than the mean.
    pub step_seconds: Vec<f64>,
    /// The last checkpoint written or resumed from.
    pub last_checkpoint: Option<PathBuf>,
}

impl TrainSummary {
    /// The last step's training loss.
    pub fn final_loss(&self) -> Option<f64> {
        self.loss_history.last().copied()
    }
}

type Evaluator<'a, M> = dyn FnMut(&M) -> Result<EvalMetrics> + 'a;

/// Trains the adapters of a model of type `M`.
pub struct Trainer<'a, M: Adapters + ?Sized> {
    config: TrainConfig,
    optimizer: AdamW,
    state: TrainerState,
    save_adapter: Option<Box<AdapterSaver<'a, M>>>,
    eval: Option<Box<Evaluator<'a, M>>>,
    last_checkpoint: Option<PathBuf>,
    /// Whether this run already checked that gradients reach every adapter.
    gradients_checked: bool,
}

impl<'a, M: Adapters + ?Sized> Trainer<'a, M> {
    /// A trainer over `model`'s trainable tensors (adapters must be attached).
    pub fn new(model: &M, config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let params = model.named_trainable_vars()?;
        if params.is_empty() {
            return Err(AdapterError::NoAdapters { op: "train" });
        }
        let optimizer = AdamW::new(params, config.optimizer)?;
        let state = TrainerState {
            format_version: FORMAT_VERSION,
            seed: config.seed,
            config: serde_json::to_value(&config).map_err(|e| AdapterError::InvalidState {
                layer: "trainer".into(),
                op: "new",
                reason: format!("the training configuration is not serialisable: {e}"),
            })?,
            ..TrainerState::default()
        };
        Ok(Self {
            config,
            optimizer,
            state,
            save_adapter: None,
            eval: None,
            last_checkpoint: None,
            gradients_checked: false,
        })
    }

    /// Also writes the adapter into each checkpoint's `adapter/` folder with `save`
    /// (e.g. `|m, dir| save_adapter(m, dir, &SaveOptions::default())`).
    pub fn with_adapter_saver(mut self, save: impl Fn(&M, &Path) -> Result<()> + 'a) -> Self {
        self.save_adapter = Some(Box::new(save));
        self
    }

    /// Sets the evaluator, called with adapters in eval mode (see [`evaluate`]).
    pub fn with_eval(mut self, eval: impl FnMut(&M) -> Result<EvalMetrics> + 'a) -> Self {
        self.eval = Some(Box::new(eval));
        self
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        self.state.step
    }

    /// The state that checkpoints save.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Restores a checkpoint written by this trainer (model tensors, optimizer, step, data
    /// position, dropout counters, histories); the next [`Trainer::train`] continues exactly as
    /// the uninterrupted run would have.
    pub fn resume(&mut self, model: &M, data: &mut dyn BatchSource, dir: &Path) -> Result<()> {
        let state = train_state::read_state(dir)?;
        if state.step > self.config.steps {
            return Err(AdapterError::Resume {
                path: dir.to_path_buf(),
                what: "step".into(),
                expected: format!("at most {} (the run's `steps`)", self.config.steps),
                actual: state.step.to_string(),
            });
        }
        let before = data.position();
        if let Some(pos) = &state.data {
            data.restore(pos)?;
        }
        let state = match train_state::load_train_state(dir, model, &mut self.optimizer) {
            Ok(s) => s,
            Err(e) => {
                let _ = data.restore(&before);
                return Err(e);
            }
        };
        self.state = TrainerState {
            config: self.state.config.clone(),
            ..state
        };
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }

    /// Runs the evaluator (if any) with adapters in eval mode, records and returns its result.
    pub fn evaluate(&mut self, model: &mut M) -> Result<Option<EvalMetrics>> {
        let Some(eval) = self.eval.as_mut() else {
            return Ok(None);
        };
        let was_training = adapters_training(model)?;
        model.set_adapters_training(false)?;
        let result = eval(model);
        model.set_adapters_training(was_training)?;
        let m = result?;
        self.state.evals.push((self.state.step, m.clone()));
        if self.state.best_eval_loss.is_none_or(|b| m.loss < b) {
            self.state.best_eval_loss = Some(m.loss);
        }
        Ok(Some(m))
    }

    /// Writes a checkpoint of the current state to `checkpoint_dir/step-NNNNNNNN` and prunes old
    /// ones; returns its folder.
    pub fn save_checkpoint(&mut self, model: &M, data: &dyn BatchSource) -> Result<PathBuf> {
        let root =
            self.config
                .checkpoint_dir
                .clone()
                .ok_or_else(|| AdapterError::InvalidArgument {
                    name: "checkpoint_dir".into(),
                    expected: "a folder".into(),
                    actual: "none configured".into(),
                })?;
        let dir = root.join(checkpoint_name(self.state.step));
        self.state.data = Some(data.position());
        self.state.dropout_steps = train_state::dropout_steps(model)?;
        train_state::save_train_state(
            &dir,
            model,
            &self.optimizer,
            &self.state,
            self.save_adapter.as_deref(),
        )?;
        if self.config.keep_checkpoints > 0 {
            train_state::prune_checkpoints(&root, self.config.keep_checkpoints)?;
        }
        self.last_checkpoint = Some(dir.clone());
        Ok(dir)
    }

    /// Trains until `config.steps`. `loss_fn(model, batch, train)` returns the scalar loss of a
    /// micro-batch (e.g. [`crate::train::masked_cross_entropy`] of the model's logits); `train`
    /// is true here and false when the caller reuses it for evaluation. Adapters are in training
    /// mode during the loop and in eval mode afterwards.
    pub fn train<F>(
        &mut self,
        model: &mut M,
        data: &mut dyn BatchSource,
        mut loss_fn: F,
    ) -> Result<TrainSummary>
    where
        F: FnMut(&M, &Batch, bool) -> Result<Tensor>,
    {
        let started = Instant::now();
        let mut metrics = match &self.config.metrics_path {
            Some(p) => Some(MetricsWriter::open(p, Some(self.state.step))?),
            None => None,
        };
        let bar = progress_bar(
            self.config.progress,
            Unit::Steps,
            self.config.steps,
            self.state.step,
        );
        let (mut run_tokens, mut run_time) = (0u64, Duration::ZERO);
        let mut step_seconds = Vec::new();
        model.set_adapters_training(true)?;
        while self.state.step < self.config.steps {
            let t0 = Instant::now();
            let lr = self.config.schedule.lr_at(self.state.step);
            let (loss, tokens, grad_norm) = match self.optimizer_step(model, data, &mut loss_fn, lr)
            {
                Ok(v) => v,
                Err(e) => {
                    bar.abandon();
                    let _ = model.set_adapters_training(false);
                    return Err(e);
                }
            };
            let dt = t0.elapsed();
            run_tokens += tokens;
            run_time += dt;
            step_seconds.push(dt.as_secs_f64());
            let tps = tokens as f64 / dt.as_secs_f64().max(1e-9);
            self.state.step += 1;
            self.state.tokens_seen += tokens;
            self.state.loss_history.push(loss);
            let step = self.state.step;
            let last = step == self.config.steps;
            let mut record = MetricRecord {
                step,
                loss: Some(loss),
                lr: Some(lr),
                grad_norm: Some(grad_norm),
                tokens_per_sec: Some(tps),
                ..MetricRecord::default()
            };
            if self.eval.is_some()
                && self
                    .config
                    .eval_every
                    .is_some_and(|n| step.is_multiple_of(n) || last)
            {
                if let Some(m) = self.evaluate(model)? {
                    record.eval_loss = Some(m.loss);
                    record.eval_acc = m.accuracy;
                }
            }
            if let Some(w) = metrics.as_mut() {
                w.write(&record)?;
            }
            if self.config.checkpoint_dir.is_some()
                && (last
                    || self
                        .config
                        .checkpoint_every
                        .is_some_and(|n| step.is_multiple_of(n)))
            {
                self.save_checkpoint(model, data)?;
            }
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tps:.0} tok/s"));
        }
        bar.finish();
        model.set_adapters_training(false)?;
        Ok(TrainSummary {
            steps: self.state.step,
            loss_history: self.state.loss_history.clone(),
            evals: self.state.evals.clone(),
            best_eval_loss: self.state.best_eval_loss,
            tokens_seen: self.state.tokens_seen,
            elapsed: started.elapsed(),
            tokens_per_sec: run_tokens as f64 / run_time.as_secs_f64().max(1e-9),
            step_seconds,
            last_checkpoint: self.last_checkpoint.clone(),
        })
    }

    /// One optimizer step over `grad_accum` micro-batches: `(mean loss, input tokens, grad norm)`.
    fn optimizer_step<F>(
        &mut self,
        model: &M,
        data: &mut dyn BatchSource,
        loss_fn: &mut F,
        lr: f64,
    ) -> Result<(f64, u64, f64)>
    where
        F: FnMut(&M, &Batch, bool) -> Result<Tensor>,
    {
        let step = self.state.step + 1;
        let mut acc = GradAccumulator::new();
        let (mut loss_sum, mut tokens) = (0.0, 0u64);
        for _ in 0..self.config.grad_accum {
            let batch = data.next_batch()?;
            tokens += batch.tokens as u64;
            let loss = loss_fn(model, &batch, true)?;
            let value = scalar(&loss)?;
            if !value.is_finite() {
                return Err(self.non_finite(step, "loss", value));
            }
            loss_sum += value;
            let grads = loss.backward()?;
            if self.config.check_gradients && !self.gradients_checked {
                model.check_gradients(&grads)?;
                self.gradients_checked = true;
            }
            acc.add_store(self.optimizer.params(), &grads)?;
        }
        let mut grads = acc.finish()?;
        let norm = match self.config.max_grad_norm {
            Some(max) => clip_grad_norm(&mut grads, max)?,
            None => grads.global_norm()?,
        };
        if !norm.is_finite() {
            return Err(self.non_finite(step, "gradient norm", norm));
        }
        self.optimizer.step(&grads, lr)?;
        Ok((loss_sum / self.config.grad_accum as f64, tokens, norm))
    }

    fn non_finite(&self, step: u64, what: &'static str, value: f64) -> AdapterError {
        AdapterError::NonFinite {
            step,
            what,
            value,
            last_checkpoint: self.last_checkpoint.clone(),
        }
    }
}

/// The value of a one-element loss tensor.
fn scalar(loss: &Tensor) -> Result<f64> {
    if loss.elem_count() != 1 {
        return Err(AdapterError::ShapeMismatch {
            layer: "loss".into(),
            what: "loss returned by the loss closure".into(),
            expected: vec![],
            actual: loss.dims().to_vec(),
        });
    }
    let v = loss
        .detach()
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok(v[0])
}

/// Whether any attached adapter is in training mode.
fn adapters_training<M: Adapters + ?Sized>(model: &M) -> Result<bool> {
    let mut any = false;
    model.for_each_layer(&mut |_, l| any |= l.adapter().is_some_and(|a| a.is_training()))?;
    Ok(any)
}

/// Token-weighted loss and accuracy of `forward` (returning logits `[B, T, V]`) over `batches`;
/// for a [`Trainer::with_eval`] evaluator (which runs with adapters in eval mode).
pub fn evaluate<M: ?Sized>(
    model: &M,
    batches: &[Batch],
    mut forward: impl FnMut(&M, &Batch) -> Result<Tensor>,
) -> Result<EvalMetrics> {
    let (mut loss_sum, mut correct, mut total) = (0.0f64, 0usize, 0usize);
    for b in batches {
        let logits = forward(model, b)?.detach();
        let (sum, _) = masked_cross_entropy_sum(&logits, &b.targets, &b.loss_mask)?;
        loss_sum += f64::from(sum.to_scalar::<f32>()?);
        let (c, t) = token_accuracy(&logits, &b.targets, &b.loss_mask)?;
        correct += c;
        total += t;
    }
    let denom = total.max(1) as f64;
    Ok(EvalMetrics {
        loss: loss_sum / denom,
        accuracy: Some(correct as f64 / denom),
        tokens: total,
    })
}
