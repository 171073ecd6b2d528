//! Choosing the next token from logits as transformers' `generate` does: repetition penalty,
//! then temperature, top-k and top-p, then greedy argmax or a seeded draw.

use crate::error::{AdapterError, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen (transformers' knobs, same names and meaning).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; `0` decodes greedily (transformers' `do_sample=False`).
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (ties with the k-th kept); `0`: all.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least `top_p`; `1`: all.
    pub top_p: f64,
    /// Divides positive (multiplies negative) logits of tokens already in the sequence, prompt
    /// included (CTRL's penalty, as transformers applies it, greedy decoding too); `1`: off.
    pub repetition_penalty: f64,
    /// Seed of the draws: the same seed, model and prompt give the same tokens.
    pub seed: u64,
}

impl Default for Sampling {
    /// Greedy decoding, no penalty.
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks the values (finite, temperature ≥ 0, 0 < top_p ≤ 1, penalty > 0).
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, expected: &str, actual: f64| {
            Err(AdapterError::InvalidArgument {
                name: name.into(),
                expected: expected.into(),
                actual: actual.to_string(),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                "a finite value ≥ 0 (0: greedy)",
                self.temperature,
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", "a value in (0, 1]", self.top_p);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                "a finite value > 0 (1: off)",
                self.repetition_penalty,
            );
        }
        Ok(())
    }

    /// Whether tokens are drawn (temperature > 0) rather than chosen greedily.
    pub fn samples(&self) -> bool {
        self.temperature > 0.0
    }
}

/// Picks tokens by a [`Sampling`], with its own seeded generator.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded with `sampling.seed` (checked with [`Sampling::validate`]).
    pub fn new(sampling: Sampling) -> Result<Self> {
        sampling.validate()?;
        Ok(Self {
            rng: StdRng::seed_from_u64(sampling.seed),
            sampling,
        })
    }

    /// The settings.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// The next token from one position's `logits`, `history` being the sequence so far
    /// (prompt and generated tokens, for the repetition penalty). NaN logits are never chosen.
    pub fn next(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        let mut scores: Vec<f64> = logits.iter().map(|&l| f64::from(l)).collect();
        apply_repetition_penalty(&mut scores, history, self.sampling.repetition_penalty);
        if !self.sampling.samples() {
            return argmax(&scores).ok_or_else(no_token);
        }
        for s in &mut scores {
            *s /= self.sampling.temperature;
        }
        top_k(&mut scores, self.sampling.top_k);
        top_p(&mut scores, self.sampling.top_p);
        let probs = softmax(&scores).ok_or_else(no_token)?;
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        let mut last = None;
        for (i, p) in probs.iter().enumerate() {
            if *p > 0.0 {
                acc += p;
                last = Some(i);
                if u < acc {
                    return Ok(i as u32);
                }
            }
        }
        // Rounding left `acc` a hair under 1: the last possible token.
        last.map(|i| i as u32).ok_or_else(no_token)
    }
}

/// The error when no token can be chosen.
pub(super) fn no_token() -> AdapterError {
    AdapterError::InvalidState {
        layer: "sampler".into(),
        op: "next token",
        reason: "every logit is NaN or −∞: no token can be chosen".into(),
    }
}

/// The index of the largest score (the first of equal ones, as `torch.argmax`); NaN skipped.
pub fn argmax(scores: &[f64]) -> Option<u32> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if s.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.filter(|(_, s)| *s > f64::NEG_INFINITY)
        .map(|(i, _)| i as u32)
}

/// transformers' `RepetitionPenaltyLogitsProcessor`: each distinct token of `history` once.
fn apply_repetition_penalty(scores: &mut [f64], history: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &t in history {
        let Some(s) = scores.get_mut(t as usize) else {
            continue;
        };
        if std::mem::replace(&mut seen[t as usize], true) {
            continue;
        }
        *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
    }
}

/// transformers' `TopKLogitsWarper`: scores below the k-th largest become −∞.
fn top_k(scores: &mut [f64], k: usize) {
    if k == 0 || k >= scores.len() {
        return;
    }
    let mut sorted: Vec<f64> = scores.iter().copied().filter(|s| !s.is_nan()).collect();
    if k >= sorted.len() {
        return;
    }
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    for s in scores.iter_mut() {
        if s.is_nan() || *s < kth {
            *s = f64::NEG_INFINITY;
        }
    }
}

/// transformers' `TopPLogitsWarper`: in ascending order, tokens whose cumulative probability is
/// ≤ 1 − top_p are removed; the most likely token always stays.
fn top_p(scores: &mut [f64], p: f64) {
    if p >= 1.0 {
        return;
    }
    let Some(probs) = softmax(scores) else {
        return;
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]).then(a.cmp(&b)));
    let mut cum = 0.0;
    let last = order.len().saturating_sub(1);
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum <= 1.0 - p && rank < last {
            scores[i] = f64::NEG_INFINITY;
        }
    }
}

/// Softmax of `scores` (NaN as −∞); `None` when nothing is finite.
fn softmax(scores: &[f64]) -> Option<Vec<f64>> {
    let max = scores
        .iter()
        .copied()
        .filter(|s| !s.is_nan())
        .fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return None;
    }
    let e: Vec<f64> = scores
        .iter()
        .map(|&s| if s.is_nan() { 0.0 } else { (s - max).exp() })
        .collect();
    let sum: f64 = e.iter().sum();
    Some(e.into_iter().map(|x| x / sum).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f64::NAN]), Some(1));
        assert_eq!(argmax(&[f64::NAN, f64::NEG_INFINITY]), None);
        let mut s = Sampler::new(Sampling::greedy()).unwrap();
        assert_eq!(s.next(&[0.5, f32::NAN, 2.0], &[]).unwrap(), 2);
        assert!(s.next(&[f32::NAN, f32::NEG_INFINITY], &[]).is_err());
    }

    #[test]
    fn repetition_penalty_is_transformers() {
        // torch: scores.gather(ids); where(score < 0, score * p, score / p); scatter back.
        let mut s = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut s, &[0, 1, 0], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0]);
        // Greedy decoding changes its choice under the penalty.
        let mut g = Sampler::new(Sampling {
            repetition_penalty: 3.0,
            ..Sampling::greedy()
        })
        .unwrap();
        assert_eq!(g.next(&[2.0, 1.0], &[0]).unwrap(), 1);
    }

    #[test]
    fn top_k_keeps_ties_and_top_p_keeps_the_nucleus() {
        let mut s = vec![1.0, 3.0, 2.0, 3.0];
        top_k(&mut s, 1);
        assert_eq!(s, vec![f64::NEG_INFINITY, 3.0, f64::NEG_INFINITY, 3.0]);
        // probs ≈ [0.6439, 0.2369, 0.0871, 0.0321]: top_p 0.7 keeps the first two.
        let mut s = vec![3.0, 2.0, 1.0, 0.0];
        top_p(&mut s, 0.7);
        assert_eq!(&s[..2], &[3.0, 2.0]);
        assert!(s[2..].iter().all(|x| *x == f64::NEG_INFINITY));
        // A tiny top_p keeps the most likely token.
        let mut s = vec![0.0, 5.0];
        top_p(&mut s, 1e-9);
        assert_eq!(s, vec![f64::NEG_INFINITY, 5.0]);
    }

    #[test]
    fn draws_follow_the_distribution_and_the_seed() {
        let sampling = Sampling {
            temperature: 1.0,
            seed: 7,
            ..Sampling::default()
        };
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let mut s = Sampler::new(sampling.clone()).unwrap();
        let draws: Vec<u32> = (0..4000).map(|_| s.next(&logits, &[]).unwrap()).collect();
        let ones = draws.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
        let mut again = Sampler::new(sampling).unwrap();
        let replay: Vec<u32> = (0..4000)
            .map(|_| again.next(&logits, &[]).unwrap())
            .collect();
        assert_eq!(draws, replay);
        // top_k 1 makes sampling greedy.
        let mut k1 = Sampler::new(Sampling {
            temperature: 5.0,
            top_k: 1,
            ..Sampling::default()
        })
        .unwrap();
        assert!((0..100).all(|_| k1.next(&logits, &[]).unwrap() == 1));
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            Sampling {
                temperature: -1.0,
                ..Sampling::default()
            },
            Sampling {
                top_p: 0.0,
                ..Sampling::default()
            },
            Sampling {
                repetition_penalty: 0.0,
                ..Sampling::default()
            },
            Sampling {
                temperature: f64::NAN,
                ..Sampling::default()
            },
        ] {
            assert!(Sampler::new(bad).is_err());
        }
    }
}
