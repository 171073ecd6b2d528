//! Learning-rate schedules: linear warmup, then cosine decay (or constant), as pure functions of
//! the optimizer step.
//!
//! Semantics follow transformers' `get_cosine_schedule_with_warmup` /
//! `get_cosine_with_min_lr_schedule_with_warmup` with `num_cycles = 0.5`: `step` is the number of
//! optimizer steps already taken, so the first update (step 0) uses `lr · 0 / warmup` = 0 when
//! there is a warmup, exactly as the HF `Trainer` does.

use serde::{Deserialize, Serialize};

/// What follows the warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Half a cosine from the peak down to the floor at `total_steps`.
    Cosine,
    /// The peak learning rate until the end.
    Constant,
}

/// Linear warmup to `peak_lr`, then [`Decay`] down to `min_lr` at `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The learning rate reached at the end of the warmup.
    pub peak_lr: f64,
    /// Warmup steps (0: none).
    pub warmup_steps: u64,
    /// Total optimizer steps of the run.
    pub total_steps: u64,
    /// The floor the cosine decays to (transformers' `min_lr`; 0 for plain cosine).
    pub min_lr: f64,
    /// The decay after the warmup.
    pub decay: Decay,
}

impl LrSchedule {
    /// transformers' `get_cosine_schedule_with_warmup(num_cycles = 0.5)`.
    pub fn cosine(peak_lr: f64, warmup_steps: u64, total_steps: u64) -> Self {
        Self {
            peak_lr,
            warmup_steps,
            total_steps,
            min_lr: 0.0,
            decay: Decay::Cosine,
        }
    }

    /// A constant learning rate after an optional linear warmup.
    pub fn constant(peak_lr: f64, warmup_steps: u64) -> Self {
        Self {
            peak_lr,
            warmup_steps,
            total_steps: warmup_steps,
            min_lr: peak_lr,
            decay: Decay::Constant,
        }
    }

    /// Sets the floor of the cosine (`get_cosine_with_min_lr_schedule_with_warmup(min_lr)`).
    pub fn with_min_lr(mut self, min_lr: f64) -> Self {
        self.min_lr = min_lr;
        self
    }

    /// The learning rate of the update made after `step` updates (0-based).
    ///
    /// Past `total_steps` the cosine stays at its floor (transformers would climb back up).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        match self.decay {
            Decay::Constant => self.peak_lr,
            Decay::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                let floor = if self.peak_lr > 0.0 {
                    self.min_lr / self.peak_lr
                } else {
                    0.0
                };
                self.peak_lr * (cosine * (1.0 - floor) + floor).max(0.0)
            }
        }
    }
}
