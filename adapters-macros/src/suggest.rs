//! "Did you mean" hints for unknown keys and values: edit distance, plus PEFT's spellings of the
//! same settings (`r`, `lora_alpha`, `use_dora`, ...), which users coming from Python will type.

/// Known aliases: (what the user may write, what the DSL calls it).
const ALIASES: &[(&str, &str)] = &[
    ("r", "rank"),
    ("lora_r", "rank"),
    ("lora_alpha", "alpha"),
    ("lora_dropout", "dropout"),
    ("use_dora", "dora"),
    ("use_rslora", "rslora"),
    ("init_lora_weights", "init"),
    ("max_params", "max_trainable_params"),
    ("max_trainable", "max_trainable_params"),
    ("max_memory", "max_vram"),
    ("vram", "max_vram"),
    ("tokens", "batch_tokens"),
    ("in_features", "in"),
    ("din", "in"),
    ("input", "in"),
    ("out_features", "out"),
    ("dout", "out"),
    ("output", "out"),
    ("num_embeddings", "in"),
    ("vocab", "in"),
    ("embedding_dim", "out"),
    ("len", "count"),
    ("n", "count"),
    ("num", "count"),
    ("size", "count"),
    ("num_params", "params"),
];

/// The candidate closest to `word`, if it is close enough to be a likely typo (or an alias).
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == word) {
        if let Some(c) = candidates.iter().find(|c| *c == to) {
            return Some(c);
        }
    }
    let lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (distance(&lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` or `; expected one of `a`, `b`` — the tail of an "unknown ..." message.
pub fn hint(word: &str, candidates: &[&str]) -> String {
    match closest(word, candidates) {
        Some(c) => format!("; did you mean `{c}`?"),
        None => format!("; expected one of {}", list(candidates)),
    }
}

/// `` `a`, `b`, `c` ``.
pub fn list(candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = v;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_and_aliases() {
        let keys = ["lora", "dora", "rank", "alpha", "max_vram"];
        assert_eq!(closest("rnak", &keys), Some("rank"));
        assert_eq!(closest("droa", &keys), Some("dora"));
        assert_eq!(closest("r", &keys), Some("rank"));
        assert_eq!(closest("lora_alpha", &keys), Some("alpha"));
        assert_eq!(closest("max_vrma", &keys), Some("max_vram"));
        assert_eq!(closest("banana", &keys), None);
        assert_eq!(distance("", "abc"), 3);
    }
}
