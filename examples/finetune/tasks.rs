//! Generated data: the pretraining text of the default base model, and the fine-tuning task.
//!
//! * Pretraining: `copy abcde>abcde` — five random letters, then the same letters.
//! * Fine-tuning (a different task): `shift abcde>` → `bcdef` — each letter moved one step along
//!   the alphabet (`z` → `a`). The base model, which only ever copied, gets it wrong; a DoRA
//!   adapter on the frozen base learns it from a few hundred examples, and is scored on strings
//!   it never saw.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

/// Letters per string.
pub const LEN: usize = 5;

fn word(rng: &mut StdRng) -> String {
    (0..LEN)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

/// `n` pretraining lines.
pub fn pretrain_corpus(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let w = word(&mut rng);
            format!("copy {w}>{w}")
        })
        .collect()
}

fn shift(w: &str) -> String {
    w.bytes()
        .map(|b| (b'a' + (b - b'a' + 1) % 26) as char)
        .collect()
}

/// Prompt / completion pairs.
pub type Pairs = Vec<(String, String)>;

/// `(train, eval)` prompt / completion pairs of the shift task over disjoint strings.
pub fn shift_task(train: usize, eval: usize, seed: u64) -> (Pairs, Pairs) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut words = BTreeSet::new();
    let mut ordered = Vec::new();
    while ordered.len() < train + eval {
        let w = word(&mut rng);
        if words.insert(w.clone()) {
            ordered.push(w);
        }
    }
    let pair = |w: &String| (format!("shift {w}>"), shift(w));
    let eval_set = ordered[train..].iter().map(pair).collect();
    let train_set = ordered[..train].iter().map(pair).collect();
    (train_set, eval_set)
}

/// Writes pairs as `{"prompt", "completion"}` JSONL (atomically).
pub fn write_jsonl(
    path: &std::path::Path,
    pairs: &[(String, String)],
) -> adapters_runtime::Result<()> {
    let mut text = String::new();
    for (p, c) in pairs {
        text.push_str(&serde_json::json!({ "prompt": p, "completion": c }).to_string());
        text.push('\n');
    }
    adapters_runtime::io::atomic::write_file_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn shift_wraps() {
        assert_eq!(super::shift("abzyx"), "bcazy");
    }
}
