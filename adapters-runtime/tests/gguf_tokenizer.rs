//! `Tokenizer::from_gguf_metadata` against transformers: the GGUF files of
//! `tests/fixtures/gguf_tokenizer` (made by `scripts/make_gguf_tokenizer_fixtures.py`) give the ids
//! `AutoTokenizer.from_pretrained(dir, gguf_file=…)` gives, with and without special tokens, the
//! same decoded text and the same BOS / EOS ids; malformed metadata is a typed error naming the key.

use adapters_runtime::candle_core::quantized::gguf_file::{Content, Value};
use adapters_runtime::train::Tokenizer;
use adapters_runtime::AdapterError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const CASES: [&str; 4] = ["bpe_default", "bpe_llama3", "spm_llama", "spm_phi3"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf_tokenizer")
}

fn metadata(case: &str) -> (PathBuf, HashMap<String, Value>) {
    let path = dir().join(format!("{case}.gguf"));
    let mut file = std::fs::File::open(&path).expect("fixture GGUF");
    let content = Content::read(&mut file).expect("candle reads the fixture GGUF");
    (path, content.metadata)
}

fn expected(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join(format!("{case}.json"))).expect("fixture JSON");
    serde_json::from_str(&text).expect("fixture JSON parses")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an id array")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

fn opt_id(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().map(|x| x as u32)
}

/// Every fixture string: our ids equal transformers' (`encode` without special tokens, and the
/// HF tokenizer's post-processed encoding with them), the decoded text is theirs.
#[test]
fn ids_and_texts_equal_transformers() {
    let mut checked = 0;
    for case in CASES {
        let (path, meta) = metadata(case);
        let tok =
            Tokenizer::from_gguf_metadata(&meta, &path).unwrap_or_else(|e| panic!("{case}: {e}"));
        let want = expected(case);
        let hf = tok.hf().expect("an HF tokenizer");
        for c in want["cases"].as_array().expect("cases") {
            let text = c["text"].as_str().expect("text");
            let plain = tok.encode(text).expect("encode");
            assert_eq!(
                plain,
                ids(&c["ids_no_special"]),
                "{case}: ids of {text:?} without special tokens"
            );
            let with = hf.encode(text, true).expect("encode with special tokens");
            assert_eq!(
                with.get_ids(),
                ids(&c["ids"]).as_slice(),
                "{case}: ids of {text:?} with special tokens"
            );
            let decoded = tok.decode(&plain).expect("decode");
            assert_eq!(
                decoded,
                c["decoded"].as_str().expect("decoded"),
                "{case}: decoding {text:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, CASES.len() * 15);
}

/// BOS / EOS as transformers has them; PAD the file's, else EOS (our fallback; transformers has
/// none); the vocabulary the file's token count.
#[test]
fn special_ids_equal_transformers() {
    for case in CASES {
        let (path, meta) = metadata(case);
        let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
        let want = expected(case);
        assert_eq!(tok.bos_id(), opt_id(&want["bos_token_id"]), "{case}: bos");
        assert_eq!(tok.eos_id(), opt_id(&want["eos_token_id"]), "{case}: eos");
        let pad = opt_id(&want["pad_token_id"])
            .or(tok.eos_id())
            .expect("pad or eos");
        assert_eq!(tok.pad_id(), pad, "{case}: pad");
        let Value::Array(tokens) = &meta["tokenizer.ggml.tokens"] else {
            panic!("tokens")
        };
        assert_eq!(tok.vocab_size(), tokens.len(), "{case}: vocabulary size");
        assert_eq!(tok.name(), path.display().to_string());

        let from_file = Tokenizer::from_gguf_file(&path).expect("reads the file");
        let text = "Hello world, naïve café";
        assert_eq!(
            from_file.encode(text).unwrap(),
            tok.encode(text).unwrap(),
            "{case}"
        );
    }
}

/// Where transformers appends a token the file lacks (its GPT-2 class's default
/// `<|endoftext|>`), we do not: every id stays below the file's token count, the size of the
/// model's embedding table.
#[test]
fn no_token_beyond_the_file_vocabulary() {
    let (path, meta) = metadata("bpe_default");
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
    assert!(tok.hf().unwrap().token_to_id("<|endoftext|>").is_none());
    let ids = tok.encode("a<|endoftext|>b").expect("encode");
    assert!(
        ids.len() > 3 && ids.iter().all(|&i| (i as usize) < tok.vocab_size()),
        "{ids:?}"
    );
}

/// The decoded ids of every string come back as the string (where the tokenizer keeps it: not the
/// leading space SentencePiece's decoder strips, nor the special tokens decoding skips).
#[test]
fn decode_round_trips() {
    for case in CASES {
        let (path, meta) = metadata(case);
        let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
        for text in [
            "Hello world",
            "naïve café 日本語 🙂",
            "line one\nline two",
            "x = 1234;",
        ] {
            let ids = tok.encode(text).expect("encode");
            assert_eq!(tok.decode(&ids).expect("decode"), text, "{case}: {text:?}");
        }
    }
}

/// The error `from_gguf_metadata` gives for `meta`, checked to be a config error naming `key`
/// and the file.
fn config_error(meta: &HashMap<String, Value>, path: &Path, key: &str) -> String {
    let err = Tokenizer::from_gguf_metadata(meta, path).expect_err("malformed metadata is refused");
    let text = err.to_string();
    match &err {
        AdapterError::Config { path: p, field, .. } => {
            assert_eq!(p, path, "{text}");
            assert_eq!(field, key, "{text}");
        }
        other => panic!("expected a Config error naming `{key}`, got {other:?}"),
    }
    assert!(
        text.contains(key) && text.contains(&path.display().to_string()),
        "{text}"
    );
    text
}

#[test]
fn unknown_model_is_a_typed_error() {
    let (path, mut meta) = metadata("spm_llama");
    meta.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
    let text = config_error(&meta, &path, "tokenizer.ggml.model");
    assert!(text.contains("`t5`") && text.contains("gpt2"), "{text}");

    meta.remove("tokenizer.ggml.model");
    let text = config_error(&meta, &path, "tokenizer.ggml.model");
    assert!(text.contains("missing"), "{text}");

    meta.insert("tokenizer.ggml.model".into(), Value::U32(2));
    let text = config_error(&meta, &path, "tokenizer.ggml.model");
    assert!(text.contains("a string") && text.contains("u32"), "{text}");

    let (path, mut meta) = metadata("spm_llama");
    meta.insert(
        "general.architecture".into(),
        Value::String("gemma2".into()),
    );
    config_error(&meta, &path, "general.architecture");
}

#[test]
fn scores_and_types_must_have_one_entry_per_token() {
    let (path, mut meta) = metadata("spm_llama");
    let Some(Value::Array(scores)) = meta.get_mut("tokenizer.ggml.scores") else {
        panic!("scores")
    };
    scores.pop();
    let n = scores.len() + 1;
    let text = config_error(&meta, &path, "tokenizer.ggml.scores");
    assert!(
        text.contains(&format!("{} entries", n - 1)) && text.contains(&n.to_string()),
        "{text}"
    );

    let (path, mut meta) = metadata("bpe_default");
    let Some(Value::Array(types)) = meta.get_mut("tokenizer.ggml.token_type") else {
        panic!("token types")
    };
    types.push(Value::I32(1));
    config_error(&meta, &path, "tokenizer.ggml.token_type");

    let (path, mut meta) = metadata("spm_llama");
    let Some(Value::Array(scores)) = meta.get_mut("tokenizer.ggml.scores") else {
        panic!("scores")
    };
    scores[5] = Value::String("high".into());
    let text = config_error(&meta, &path, "tokenizer.ggml.scores");
    assert!(text.contains("element 5"), "{text}");
    let Some(Value::Array(scores)) = meta.get_mut("tokenizer.ggml.scores") else {
        panic!("scores")
    };
    scores[5] = Value::F32(f32::NAN);
    let text = config_error(&meta, &path, "tokenizer.ggml.scores");
    assert!(text.contains("NaN for token 5"), "{text}");
    meta.insert("tokenizer.ggml.scores".into(), Value::F32(0.5));
    config_error(&meta, &path, "tokenizer.ggml.scores");
}

#[test]
fn malformed_merges_are_typed_errors() {
    for (bad, what) in [
        ("Ġ t h", "3 parts"),
        ("Ġt", "1 parts"),
        ("Ġ  t", "3 parts"),
        ("zzz qqq", "is not a token"),
    ] {
        let (path, mut meta) = metadata("bpe_default");
        let Some(Value::Array(merges)) = meta.get_mut("tokenizer.ggml.merges") else {
            panic!("merges")
        };
        merges[3] = Value::String(bad.into());
        let text = config_error(&meta, &path, "tokenizer.ggml.merges");
        assert!(
            text.contains("merge 3") && text.contains(what),
            "{bad:?}: {text}"
        );
    }
    let (path, mut meta) = metadata("bpe_default");
    meta.remove("tokenizer.ggml.merges");
    config_error(&meta, &path, "tokenizer.ggml.merges");
}

#[test]
fn out_of_range_or_mistyped_ids_are_typed_errors() {
    let (path, mut meta) = metadata("bpe_llama3");
    let Value::Array(tokens) = &meta["tokenizer.ggml.tokens"] else {
        panic!("tokens")
    };
    let n = tokens.len();
    meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(n as u32));
    let text = config_error(&meta, &path, "tokenizer.ggml.bos_token_id");
    assert!(
        text.contains(&format!("below {n}")) && text.contains(&format!("is {n},")),
        "{text}"
    );

    meta.insert("tokenizer.ggml.bos_token_id".into(), Value::I32(-1));
    config_error(&meta, &path, "tokenizer.ggml.bos_token_id");
    meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U64(u64::MAX));
    config_error(&meta, &path, "tokenizer.ggml.bos_token_id");
    meta.insert(
        "tokenizer.ggml.bos_token_id".into(),
        Value::String("0".into()),
    );
    config_error(&meta, &path, "tokenizer.ggml.bos_token_id");

    let (path, mut meta) = metadata("bpe_llama3");
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::U8(1));
    config_error(&meta, &path, "tokenizer.ggml.add_bos_token");

    let (path, mut meta) = metadata("bpe_llama3");
    meta.insert("tokenizer.ggml.tokens".into(), Value::Array(vec![]));
    config_error(&meta, &path, "tokenizer.ggml.tokens");
    meta.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(vec![Value::U8(1)]),
    );
    config_error(&meta, &path, "tokenizer.ggml.tokens");
    meta.remove("tokenizer.ggml.tokens");
    config_error(&meta, &path, "tokenizer.ggml.tokens");
}

/// The file's flags drive the post-processor: EOS appended instead of BOS prepended.
#[test]
fn add_bos_and_add_eos_flags() {
    let (path, mut meta) = metadata("spm_llama");
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    meta.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
    let plain = tok.encode("Hello world").expect("encode");
    let with = tok
        .hf()
        .expect("hf")
        .encode("Hello world", true)
        .expect("encode");
    let mut want = plain.clone();
    want.push(tok.eos_id().expect("eos"));
    assert_eq!(with.get_ids(), want.as_slice());

    // Absent: SentencePiece adds BOS, byte-level nothing (as transformers).
    meta.remove("tokenizer.ggml.add_bos_token");
    meta.remove("tokenizer.ggml.add_eos_token");
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
    let with = tok
        .hf()
        .expect("hf")
        .encode("Hello world", true)
        .expect("encode");
    assert_eq!(with.get_ids()[0], 1);
    let (path, mut meta) = metadata("bpe_default");
    meta.remove("tokenizer.ggml.add_bos_token");
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
    let plain = tok.encode("Hello world").expect("encode");
    let with = tok
        .hf()
        .expect("hf")
        .encode("Hello world", true)
        .expect("encode");
    assert_eq!(with.get_ids(), plain.as_slice());
}

/// Hostile metadata does not panic: every token a long run of one character (deriving merges
/// stays bounded), merges naming tokens out of the vocabulary, duplicate tokens.
#[test]
fn hostile_metadata_does_not_panic() {
    let (path, mut meta) = metadata("spm_llama");
    let Some(Value::Array(tokens)) = meta.get_mut("tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    for (i, t) in tokens.iter_mut().enumerate().skip(3) {
        *t = Value::String("a".repeat(1 + i % 40));
    }
    let _ = Tokenizer::from_gguf_metadata(&meta, &path);

    let (path, mut meta) = metadata("spm_llama");
    let Some(Value::Array(tokens)) = meta.get_mut("tokenizer.ggml.tokens") else {
        panic!("tokens")
    };
    tokens[300] = Value::String("x".repeat(50_000));
    let text = config_error(&meta, &path, "tokenizer.ggml.scores");
    assert!(text.contains("too long in all to derive merges"), "{text}");
}

/// `tokenizer.chat_template` becomes the tokenizer's chat template, with the file's BOS / EOS as
/// `bos_token` / `eos_token`; a template that does not compile is reported when a conversation
/// needs it, not when the tokenizer loads.
#[test]
fn the_chat_template_comes_from_the_metadata() {
    use adapters_runtime::chat::Message;
    let (path, mut meta) = metadata("spm_llama");
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
    assert!(tok.chat_template().expect("no error").is_none());
    let source = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}";
    meta.insert(
        "tokenizer.chat_template".into(),
        Value::String(source.into()),
    );
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
    let template = tok.chat_template().expect("compiles").expect("present");
    let text = template
        .render(&[Message::new("user", "Hi")], false)
        .expect("renders");
    assert_eq!(text, "<s>[user] Hi</s>");
    meta.insert(
        "tokenizer.chat_template".into(),
        Value::String("{% for %}".into()),
    );
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("loads anyway");
    let e = tok
        .chat_template()
        .expect_err("reported on use")
        .to_string();
    assert!(e.contains("chat template"), "{e}");
}

/// Generation over a GGUF file ends at its EOS and at its EOT / EOM ids (out-of-vocabulary ones
/// ignored), as llama.cpp ends it.
#[test]
fn gguf_end_of_generation_ids() {
    use adapters_runtime::generate::gguf_eos_ids;
    let (path, mut meta) = metadata("spm_llama");
    let tok = Tokenizer::from_gguf_metadata(&meta, &path).expect("builds");
    let eos = tok.eos_id().expect("eos");
    assert_eq!(gguf_eos_ids(&meta, &tok), vec![eos]);
    meta.insert("tokenizer.ggml.eot_token_id".into(), Value::U32(5));
    meta.insert("tokenizer.ggml.eom_token_id".into(), Value::U32(1 << 30));
    assert_eq!(gguf_eos_ids(&meta, &tok), vec![eos, 5]);
}
