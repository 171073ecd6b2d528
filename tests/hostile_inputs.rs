//! Hostile inputs get typed errors, never a panic, an abort or a huge allocation: unbounded
//! `config.json` sizes, long-context RoPE tables, huge ranks, huge JSONL lines and config files,
//! and text far longer than a sequence.

use adapters_runtime::candle_core::{DType, Device, Tensor};
use adapters_runtime::hf::LlamaConfig;
use adapters_runtime::models::llama::{load_pretrained, BaseMode, Rope, RopeParameters};
use adapters_runtime::peft::PeftConfig;
use adapters_runtime::train::data::{parse_jsonl, DEFAULT_MAX_LINE_BYTES};
use adapters_runtime::train::{
    load_jsonl, prepare, Example, JsonlOptions, PackMode, PackOptions, Tokenizer,
};
use adapters_runtime::{AdaptedEmbedding, AdaptedLinear, AdapterConfig, AdapterError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A fresh folder under the system temp dir, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("hostile-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft/tiny_llama_dora/model")
}

fn fixture_config() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_model().join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A model folder holding `config` and (when `weights`) the fixture's weights.
fn model_dir(tag: &str, config: &serde_json::Value, weights: bool) -> Tmp {
    let dir = Tmp::new(tag);
    std::fs::write(
        dir.0.join("config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
    if weights {
        std::fs::copy(
            fixture_model().join("model.safetensors"),
            dir.0.join("model.safetensors"),
        )
        .unwrap();
    }
    dir
}

/// Item 4: every hostile size in `config.json` is a typed error naming the field.
#[test]
fn config_sizes_are_bounded_and_products_checked() {
    let big = |e: u32| serde_json::json!(1u64 << e);
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        // wraps heads × head_dim to a shape that passed the weight check
        (
            "num_attention_heads",
            serde_json::json!((1u64 << 62) + 4),
            "num_attention_heads",
        ),
        (
            "max_position_embeddings",
            serde_json::json!(u64::MAX),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            big(31),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            big(40),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            big(60),
            "max_position_embeddings",
        ),
        (
            "max_position_embeddings",
            serde_json::json!(0),
            "max_position_embeddings",
        ),
        ("head_dim", big(40), "head_dim"),
        ("head_dim", serde_json::json!(0), "head_dim"),
        ("hidden_size", big(40), "hidden_size"),
        ("intermediate_size", big(40), "intermediate_size"),
        ("num_hidden_layers", big(40), "num_hidden_layers"),
        ("vocab_size", big(40), "vocab_size"),
        ("num_key_value_heads", big(40), "num_key_value_heads"),
        (
            "num_key_value_heads",
            serde_json::json!(0),
            "num_key_value_heads",
        ),
        ("rms_norm_eps", serde_json::json!(-1.0), "rms_norm_eps"),
    ];
    for (key, value, field) in cases {
        let mut cfg = fixture_config();
        cfg[key] = value.clone();
        let dir = model_dir("cfg", &cfg, false);
        let e = load_pretrained(&dir.0, DType::F32, &Device::Cpu, BaseMode::Frozen)
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} was accepted"));
        match &e {
            AdapterError::Config { path, field: f, .. } => {
                assert_eq!(f, field, "{key} = {value}: {e}");
                assert!(path.ends_with("config.json"), "{e}");
            }
            other => panic!("{key} = {value}: expected a Config error, got {other}"),
        }
    }
    // Products: 4096 heads × head_dim 4096 is within each bound, but not their product.
    let mut cfg = fixture_config();
    cfg["num_attention_heads"] = serde_json::json!(4096);
    cfg["num_key_value_heads"] = serde_json::json!(4096);
    cfg["head_dim"] = serde_json::json!(4096);
    let dir = model_dir("prod", &cfg, false);
    let e = LlamaConfig::from_file(&dir.0.join("config.json")).unwrap_err();
    assert!(
        matches!(&e, AdapterError::Config { field, .. } if field == "num_attention_heads"),
        "{e}"
    );
    assert!(e.to_string().contains("× head_dim"), "{e}");
    // rope_parameters sizes and θ too.
    for (key, value) in [
        (
            "original_max_position_embeddings",
            serde_json::json!(u64::MAX),
        ),
        ("rope_theta", serde_json::json!(-1.0)),
    ] {
        let mut cfg = fixture_config();
        cfg["rope_parameters"][key] = value;
        let dir = model_dir("rope", &cfg, false);
        let e = LlamaConfig::from_file(&dir.0.join("config.json")).unwrap_err();
        assert!(
            matches!(&e, AdapterError::Config { field, .. } if field == key),
            "{key}: {e}"
        );
    }
}

/// Item 4: a 10M-context config loads the tiny weights and runs quickly; the RoPE tables hold only
/// the positions used, and the logits equal the 64-context model's.
#[test]
fn long_context_config_builds_rope_tables_for_the_positions_used() {
    let mut cfg = fixture_config();
    cfg["max_position_embeddings"] = serde_json::json!(10_000_000);
    let dir = model_dir("long", &cfg, true);
    let started = Instant::now();
    let long = load_pretrained(&dir.0, DType::F32, &Device::Cpu, BaseMode::Frozen)
        .unwrap()
        .model;
    let ids = Tensor::new(&[[1u32, 5, 9, 14, 2, 7, 33, 80, 3]], &Device::Cpu).unwrap();
    let logits = long.forward(&ids).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(logits.dims(), &[1, 9, 96]);
    assert_eq!(long.rope().max_positions(), 10_000_000);
    assert_eq!(
        long.rope().built_positions(),
        16,
        "9 positions, a power of two"
    );
    let short = load_pretrained(&fixture_model(), DType::F32, &Device::Cpu, BaseMode::Frozen)
        .unwrap()
        .model;
    let want = short.forward(&ids).unwrap();
    let diff = (logits - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0, "same numerics as full tables");
}

/// Item 4: tables grown lazily give bit-identical rotations to tables built long at once, and
/// positions past `max_position_embeddings` are an error.
#[test]
fn lazily_grown_rope_tables_are_exact() {
    let p = RopeParameters {
        rope_theta: Some(500_000.0),
        rope_type: Some("llama3".into()),
        factor: Some(8.0),
        low_freq_factor: Some(1.0),
        high_freq_factor: Some(4.0),
        original_max_position_embeddings: Some(64),
        partial_rotary_factor: None,
    };
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 2, 5, 16), &dev).unwrap();
    let grown = Rope::new(16, 1000, &p, DType::F32, &dev).unwrap();
    let full = Rope::new(16, 1000, &p, DType::F32, &dev).unwrap();
    full.apply_at(&x, 995).unwrap();
    assert_eq!(full.built_positions(), 1000, "capped at max_positions");
    assert_eq!(grown.built_positions(), 0);
    for offset in [0, 3, 60, 300, 995] {
        let a = grown.apply_at(&x, offset).unwrap();
        let b = full.apply_at(&x, offset).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "offset {offset}");
    }
    assert!(grown.apply_at(&x, 996).is_err());
    assert!(grown.apply_at(&x, usize::MAX).is_err());
}

/// Item 5: a rank above the bound, or one whose adapter would be too large for the layer, is a
/// typed error before anything is allocated.
#[test]
fn huge_ranks_are_refused_before_allocating() {
    let e = AdapterConfig::dora(1_000_000, 16.0)
        .validate("--rank")
        .unwrap_err();
    assert!(
        matches!(
            e,
            AdapterError::RankTooLarge {
                rank: 1_000_000,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("at most 65536"), "{e}");
    // A 2^16 × 2^16 base (a broadcast view: nothing allocated) with rank 2^16 would need 2^33
    // adapter parameters.
    let dev = Device::Cpu;
    let base = Tensor::zeros(1, DType::F32, &dev)
        .unwrap()
        .broadcast_as((1 << 16, 1 << 16))
        .unwrap();
    let mut lin = AdaptedLinear::new(base.clone(), None).with_path("big.q_proj");
    let e = lin
        .attach(AdapterConfig::lora(1 << 16, 16.0), 0)
        .unwrap_err();
    assert!(
        matches!(&e, AdapterError::RankTooLarge { layer, .. } if layer == "big.q_proj"),
        "{e}"
    );
    assert!(e.to_string().contains("65536 → 65536"), "{e}");
    let mut emb = AdaptedEmbedding::new(base).with_path("big.embed");
    let e = emb
        .attach(AdapterConfig::dora(1 << 16, 16.0), 0)
        .unwrap_err();
    assert!(matches!(e, AdapterError::RankTooLarge { .. }), "{e}");
    // Large but sane ranks (even above min(in, out), as PEFT allows) still attach.
    let small = Tensor::zeros((8, 4), DType::F32, &dev).unwrap();
    let mut lin = AdaptedLinear::new(small, None).with_path("small");
    lin.attach(AdapterConfig::lora(64, 16.0), 0).unwrap();
    assert_eq!(lin.trainable_params(), 64 * 12);
}

/// A file of `size` bytes: `[0,0,0,…]`.
fn zeros_json(path: &Path, size: usize) {
    let mut s = String::with_capacity(size);
    s.push('[');
    while s.len() + 3 < size {
        s.push_str("0,");
    }
    s.push_str("0]");
    std::fs::write(path, s).unwrap();
}

/// Item 6: JSON config files over 16 MiB are refused by their size, naming the file.
#[test]
fn oversized_config_files_are_refused_by_size() {
    let dir = Tmp::new("big");
    let big = 17 << 20;
    let adapter = dir.0.join("adapter_config.json");
    zeros_json(&adapter, big);
    let e = PeftConfig::read(&adapter).unwrap_err();
    assert!(
        matches!(&e, AdapterError::FileTooLarge { path, max, .. } if path == &adapter && *max == 16 << 20),
        "{e}"
    );
    assert!(e.to_string().contains("adapter_config.json"), "{e}");
    let config = dir.0.join("config.json");
    zeros_json(&config, big);
    let e = LlamaConfig::from_file(&config).unwrap_err();
    assert!(matches!(e, AdapterError::FileTooLarge { .. }), "{e}");
    // tokenizer_config.json beside a tokenizer.json.
    std::fs::write(dir.0.join("tokenizer.json"), "{}").unwrap();
    zeros_json(&dir.0.join("tokenizer_config.json"), big);
    let e = Tokenizer::from_file(dir.0.join("tokenizer.json")).unwrap_err();
    assert!(
        matches!(&e, AdapterError::FileTooLarge { path, .. } if path.ends_with("tokenizer_config.json")),
        "{e}"
    );
}

/// Item 6: a line over `max_line_bytes` is a typed error naming file and line (or is skipped),
/// found without holding the line.
#[test]
fn huge_jsonl_lines_are_bounded() {
    assert_eq!(DEFAULT_MAX_LINE_BYTES, 16 << 20);
    assert_eq!(
        JsonlOptions::default().max_line_bytes,
        DEFAULT_MAX_LINE_BYTES
    );
    let dir = Tmp::new("jsonl");
    let path = dir.0.join("train.jsonl");
    let huge = format!("{{\"text\": \"{}\"}}", "a".repeat(17 << 20));
    std::fs::write(
        &path,
        format!("{{\"text\": \"ok\"}}\n{huge}\n{{\"text\": \"fine\"}}\n"),
    )
    .unwrap();
    let e = load_jsonl(&path, &JsonlOptions::default()).unwrap_err();
    match &e {
        AdapterError::DataLine {
            path: p,
            line,
            reason,
        } => {
            assert_eq!((p, *line), (&path, 2), "{e}");
            assert!(reason.contains("max_line_bytes"), "{e}");
        }
        other => panic!("expected a DataLine error, got {other}"),
    }
    let skip = JsonlOptions {
        skip_bad_lines: true,
        ..JsonlOptions::default()
    };
    let ds = load_jsonl(&path, &skip).unwrap();
    assert_eq!(
        ds.examples,
        vec![Example::Text("ok".into()), Example::Text("fine".into())]
    );
    assert_eq!(ds.lines, vec![1, 3]);
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.skipped[0].line, 2);
    // A custom bound, in memory too (the newline is not counted).
    let small = JsonlOptions {
        max_line_bytes: 16,
        ..JsonlOptions::default()
    };
    let text = b"{\"text\": \"abc\"}\r\n{\"text\": \"abcdefgh\"}\n";
    let e = parse_jsonl(text, Path::new("d.jsonl"), &small).unwrap_err();
    assert!(matches!(e, AdapterError::DataLine { line: 2, .. }), "{e}");
    assert!(e.to_string().contains("max_line_bytes = 16"), "{e}");
}

/// Item 6: text far longer than a sequence is cut before tokenizing, and the cut is counted.
#[test]
fn long_text_is_cut_before_tokenizing() {
    let tok = Tokenizer::byte_level();
    let opts = PackOptions {
        seq_len: 16,
        mode: PackMode::Pad,
    };
    // cap = 17 tokens, so at most 17 × 64 = 1088 bytes of text are tokenized.
    let long = Example::Text("a".repeat(1_000_000));
    let p = prepare(std::slice::from_ref(&long), &tok, opts).unwrap();
    assert_eq!(p.truncated, 1);
    assert_eq!(p.truncated_bytes, 1_000_000 - 1088);
    assert_eq!(
        p.truncated_tokens,
        1 + 1088 - 17,
        "BOS + the text kept − cap"
    );
    assert_eq!(p.sequences[0].len(), 17);
    assert!(p.summary().contains("bytes of text"), "{}", p.summary());
    // Multi-byte text is cut at a char boundary: 362 × 3 = 1086 bytes kept.
    let euros = Example::Text("€".repeat(100_000));
    let p = prepare(&[euros], &tok, opts).unwrap();
    assert_eq!(p.truncated_bytes, 300_000 - 1086);
    // A huge prompt leaves nothing of the completion: dropped, and counted.
    let pc = Example::PromptCompletion {
        prompt: "p".repeat(5_000),
        completion: "c".repeat(10),
    };
    let p = prepare(&[pc], &tok, opts).unwrap();
    assert_eq!((p.truncated, p.dropped), (1, 1));
    assert_eq!(p.truncated_bytes, 5_000 - 1088 + 10);
    // Short examples are untouched.
    let p = prepare(&[Example::Text("hello".into())], &tok, opts).unwrap();
    assert_eq!((p.truncated, p.truncated_bytes), (0, 0));
    assert_eq!(p.sequences[0].len(), 7);
}

/// A `tokenizer.json` with a syntax error, or invalid UTF-8, inside its `decoder` value (found
/// by the `tokenizer` fuzz target): tokenizers 0.23 panics on it (`expect("Helper")`); it must be a typed error.
#[test]
fn malformed_tokenizer_json_is_an_error_not_a_panic() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/tokenizer_bad_decoder.json");
    let bytes = std::fs::read(&path).unwrap();
    let e = Tokenizer::from_bytes(&bytes, "bad", None).unwrap_err();
    assert!(matches!(e, AdapterError::Tokenizer { .. }), "{e}");
    assert!(e.to_string().contains("not a valid tokenizer.json"), "{e}");
    let e = Tokenizer::from_file(&path).unwrap_err();
    assert!(matches!(e, AdapterError::Tokenizer { .. }), "{e}");
    // Invalid UTF-8 in a key of the `decoder` value (the second crash).
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/tokenizer_bad_utf8.json"),
    )
    .unwrap();
    let e = Tokenizer::from_bytes(&bytes, "bad", None).unwrap_err();
    assert!(matches!(e, AdapterError::Tokenizer { .. }), "{e}");
    // Crafted BPE `merges` (the third crash, a panic inside tokenizers): a typed error.
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz/tokenizer_bpe_merges_open.json"),
    )
    .unwrap();
    let e = Tokenizer::from_bytes(&bytes, "bpe", None).unwrap_err();
    assert!(matches!(e, AdapterError::Tokenizer { .. }), "{e}");
    // Truncated anywhere, the valid seed is still an error, never a panic.
    let seed = include_bytes!("../fuzz/corpus/tokenizer/seed_bpe");
    for cut in 0..seed.len() {
        assert!(
            Tokenizer::from_bytes(&seed[..cut], "cut", None).is_err(),
            "cut {cut}"
        );
    }
}
