//! Padded batches of sequences, and a seeded shuffling loader whose position (seed, epoch, index)
//! is saved with checkpoints so a resumed run sees exactly the batches it would have seen.

use crate::error::{AdapterError, Result};
use crate::seed::{mix_seed, Fnv1a};
use crate::train::data::permutation;
use crate::train::pack::Sequence;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// A padded batch: `targets[b, t] = ids[b, t + 1]`; padded positions have `loss_mask` 0.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Input ids, `[B, T]` u32 (right-padded with the PAD id).
    pub input_ids: Tensor,
    /// Next-token targets, `[B, T]` u32.
    pub targets: Tensor,
    /// 1.0 where the loss covers the target, else 0.0; `[B, T]` f32.
    pub loss_mask: Tensor,
    /// Non-padding input tokens.
    pub tokens: usize,
    /// Loss targets (the sum of `loss_mask`).
    pub target_tokens: usize,
}

impl Batch {
    /// Builds a batch from sequences (each of at least 2 tokens), padded to the longest.
    pub fn from_sequences(seqs: &[&Sequence], pad_id: u32, device: &Device) -> Result<Batch> {
        let t = seqs
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        if t == 0 {
            return Err(AdapterError::InvalidArgument {
                name: "batch".into(),
                expected: "at least one sequence of 2 or more tokens".into(),
                actual: format!("{} sequence(s), none longer than 1 token", seqs.len()),
            });
        }
        let b = seqs.len();
        let mut input = vec![pad_id; b * t];
        let mut target = vec![pad_id; b * t];
        let mut mask = vec![0f32; b * t];
        let (mut tokens, mut target_tokens) = (0, 0);
        for (row, s) in seqs.iter().enumerate() {
            if s.mask.len() != s.len() {
                return Err(AdapterError::ShapeMismatch {
                    layer: format!("batch row {row}"),
                    what: "loss mask".into(),
                    expected: vec![s.len()],
                    actual: vec![s.mask.len()],
                });
            }
            if s.len() < 2 {
                continue;
            }
            let n = s.len() - 1;
            let o = row * t;
            input[o..o + n].copy_from_slice(&s.ids[..n]);
            target[o..o + n].copy_from_slice(&s.ids[1..=n]);
            for (i, &m) in s.mask[1..=n].iter().enumerate() {
                if m {
                    mask[o + i] = 1.0;
                    target_tokens += 1;
                }
            }
            tokens += n;
        }
        Ok(Batch {
            input_ids: Tensor::from_vec(input, (b, t), device)?,
            targets: Tensor::from_vec(target, (b, t), device)?,
            loss_mask: Tensor::from_vec(mask, (b, t), device)?,
            tokens,
            target_tokens,
        })
    }

    /// `(B, T)`.
    pub fn dims(&self) -> (usize, usize) {
        self.input_ids.dims2().unwrap_or((0, 0))
    }
}

/// Where a loader stands: the next batch is the one at `index` in epoch `epoch`'s order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    /// The shuffling seed.
    pub seed: u64,
    /// Epochs completed.
    pub epoch: u64,
    /// Sequences of the current epoch already served.
    pub index: usize,
    /// Number of sequences (checked on restore).
    pub sequences: usize,
    /// A hash of the sequences' ids and masks (checked on restore: same data).
    pub fingerprint: u64,
}

/// Anything the trainer can draw batches from.
pub trait BatchSource {
    /// The next training batch (the source cycles through epochs).
    fn next_batch(&mut self) -> Result<Batch>;
    /// The current position, saved with checkpoints.
    fn position(&self) -> DataPosition;
    /// Moves to a saved position.
    fn restore(&mut self, position: &DataPosition) -> Result<()>;
}

/// Serves batches of `batch_size` sequences, reshuffled every epoch (seeded by `seed` and the
/// epoch), the last batch of an epoch possibly smaller; cycles forever.
#[derive(Clone, Debug)]
pub struct BatchLoader {
    sequences: Vec<Sequence>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    epoch: u64,
    index: usize,
    order: Vec<usize>,
    pad_id: u32,
    device: Device,
    fingerprint: u64,
}

impl BatchLoader {
    /// A loader over `sequences` (not empty), `batch_size` ≥ 1.
    pub fn new(
        sequences: Vec<Sequence>,
        batch_size: usize,
        pad_id: u32,
        device: &Device,
        seed: u64,
        shuffle: bool,
    ) -> Result<Self> {
        if sequences.is_empty() || batch_size == 0 {
            return Err(AdapterError::InvalidArgument {
                name: "batch loader".into(),
                expected: "at least one sequence and batch_size ≥ 1".into(),
                actual: format!("{} sequence(s), batch_size {batch_size}", sequences.len()),
            });
        }
        let fingerprint = fingerprint(&sequences);
        let mut loader = Self {
            sequences,
            batch_size,
            shuffle,
            seed,
            epoch: 0,
            index: 0,
            order: Vec::new(),
            pad_id,
            device: device.clone(),
            fingerprint,
        };
        loader.order = loader.epoch_order(0);
        Ok(loader)
    }

    /// The order sequences are served in during `epoch`.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            permutation(self.sequences.len(), mix_seed(self.seed, epoch))
        } else {
            (0..self.sequences.len()).collect()
        }
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.sequences.len().div_ceil(self.batch_size)
    }

    /// The sequences.
    pub fn sequences(&self) -> &[Sequence] {
        &self.sequences
    }

    /// All sequences once, in order, as batches (for evaluation); does not move the position.
    pub fn batches_in_order(&self) -> Result<Vec<Batch>> {
        self.sequences
            .chunks(self.batch_size)
            .map(|c| {
                Batch::from_sequences(&c.iter().collect::<Vec<_>>(), self.pad_id, &self.device)
            })
            .collect()
    }
}

impl BatchSource for BatchLoader {
    fn next_batch(&mut self) -> Result<Batch> {
        if self.index >= self.order.len() {
            self.epoch += 1;
            self.index = 0;
            self.order = self.epoch_order(self.epoch);
        }
        let end = (self.index + self.batch_size).min(self.order.len());
        let seqs: Vec<&Sequence> = self.order[self.index..end]
            .iter()
            .map(|&i| &self.sequences[i])
            .collect();
        self.index = end;
        Batch::from_sequences(&seqs, self.pad_id, &self.device)
    }

    fn position(&self) -> DataPosition {
        DataPosition {
            seed: self.seed,
            epoch: self.epoch,
            index: self.index,
            sequences: self.sequences.len(),
            fingerprint: self.fingerprint,
        }
    }

    fn restore(&mut self, p: &DataPosition) -> Result<()> {
        if p.sequences != self.sequences.len() || p.fingerprint != self.fingerprint {
            return Err(AdapterError::InvalidArgument {
                name: "data position".into(),
                expected: format!(
                    "{} sequences with fingerprint {:016x}",
                    self.sequences.len(),
                    self.fingerprint
                ),
                actual: format!(
                    "{} sequences with fingerprint {:016x}: the training data changed",
                    p.sequences, p.fingerprint
                ),
            });
        }
        if p.index > p.sequences {
            return Err(AdapterError::InvalidArgument {
                name: "data position index".into(),
                expected: format!("at most {} (the number of sequences)", p.sequences),
                actual: format!("{}: the checkpoint's data position is corrupt", p.index),
            });
        }
        self.seed = p.seed;
        self.epoch = p.epoch;
        self.index = p.index;
        self.order = self.epoch_order(p.epoch);
        Ok(())
    }
}

/// FNV-1a over the sequences' ids and masks.
fn fingerprint(seqs: &[Sequence]) -> u64 {
    let mut h = Fnv1a::default();
    for s in seqs {
        h.word(s.ids.len() as u64);
        for (&id, &m) in s.ids.iter().zip(&s.mask) {
            h.word(u64::from(id) << 1 | u64::from(m));
        }
    }
    h.finish()
}
