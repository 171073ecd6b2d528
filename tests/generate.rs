//! Generation with the key / value cache: for every bundled family (sliding windows, soft-capping,
//! fused projections, biases), with an adapter unmerged and merged, each step's logits equal the
//! full forward pass's at that position, and greedy tokens equal recomputing the whole prefix
//! each step; batches, truncation and the cache's errors; greedy tokens equal transformers'
//! `generate` (`tests/fixtures/generate`, `scripts/make_generate_fixtures.py`).

mod common;

use adapters_runtime::candle_core::{DType, Tensor, D};
use adapters_runtime::generate::{generate, greedy_batch, GenerationConfig, StopReason};
use adapters_runtime::models::llama::{load_pretrained, BaseMode, Llama};
use adapters_runtime::train::Tokenizer;
use adapters_runtime::{load_adapter, Adapters, LoadOptions};
use common::{fixtures_root, rel_err, test_device};
use std::path::Path;

const FAMILIES: [&str; 7] = [
    "qwen2_tied",
    "qwen2_untied",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3",
    "phi3",
];

fn load(model_dir: &Path, adapter: Option<&Path>) -> Llama {
    let mut m = load_pretrained(model_dir, DType::F32, &test_device(), BaseMode::Frozen)
        .unwrap_or_else(|e| panic!("{}: {e}", model_dir.display()))
        .model;
    if let Some(a) = adapter {
        let opts = LoadOptions {
            config_from_file: true,
            ..LoadOptions::default()
        };
        load_adapter(&mut m, a, &opts).unwrap();
    }
    m
}

fn family(case: &str, adapter: bool) -> Llama {
    let dir = fixtures_root().join("families").join(case);
    load(
        &dir.join("model"),
        adapter.then(|| dir.join("adapter")).as_deref(),
    )
}

/// Greedy tokens by running the whole sequence each step (no cache).
fn greedy_uncached(m: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let t = Tensor::new(ids.as_slice(), &test_device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let next = m
            .forward(&t)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .get(ids.len() - 1)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        ids.push(next);
    }
    ids[prompt.len()..].to_vec()
}

fn greedy_cached(m: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let config = GenerationConfig {
        max_new_tokens: n,
        ..GenerationConfig::default()
    };
    let tok = Tokenizer::byte_level();
    let mut cache = m.new_cache();
    let g = generate(m, &tok, prompt, &config, &mut cache, &mut |_| Ok(())).unwrap();
    assert_eq!(g.stop, StopReason::MaxTokens);
    assert_eq!(cache.len(), prompt.len() + n - 1);
    g.ids
}

/// Each cached step's logits equal the full pass's logits at that position (prompt of 5, then
/// 20 single tokens: well past the windows of 4), base, adapted unmerged and merged.
#[test]
fn cached_steps_equal_the_full_forward_pass() {
    let seq: Vec<u32> = (0..25).map(|i| (i * 37 + 11) % 96).collect();
    for case in FAMILIES {
        for variant in ["base", "unmerged", "merged"] {
            let mut m = family(case, variant != "base");
            if variant == "merged" {
                m.merge_adapters().unwrap();
            }
            let all = Tensor::new(seq.as_slice(), &test_device())
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let full = m.forward(&all).unwrap().squeeze(0).unwrap();
            let mut cache = m.new_cache();
            let prompt = all.narrow(1, 0, 5).unwrap();
            let mut got = vec![m.forward_cached(&prompt, &mut cache).unwrap()];
            for p in 5..seq.len() {
                let step = all.narrow(1, p, 1).unwrap();
                got.push(m.forward_cached(&step, &mut cache).unwrap());
            }
            for (k, logits) in got.iter().enumerate() {
                let pos = 4 + k;
                let want = full.get(pos).unwrap().unsqueeze(0).unwrap();
                let err = rel_err(logits, &want);
                assert!(
                    err < 1e-5,
                    "{case} {variant}: position {pos}: relative error {err:e}"
                );
            }
            assert_eq!(cache.len(), seq.len());
        }
    }
}

/// Greedy decoding through the cache gives the tokens of recomputing the prefix every step.
#[test]
fn greedy_tokens_equal_recomputing_the_prefix() {
    for case in FAMILIES {
        let m = family(case, true);
        let prompt = [3u32, 50, 7, 81, 20, 9];
        assert_eq!(
            greedy_cached(&m, &prompt, 16),
            greedy_uncached(&m, &prompt, 16),
            "{case}"
        );
    }
}

/// Rows decoded together (one batch, one cache) get the tokens each gets alone; prompts of
/// different lengths are grouped; EOS ends a row.
#[test]
fn batched_greedy_equals_one_at_a_time() {
    let m = family("mistral", true);
    let prompts = vec![
        vec![1u32, 2, 3, 4],
        vec![9, 8, 7, 6],
        vec![40, 41],
        vec![5, 5, 5, 5],
    ];
    let got = greedy_batch(&m, &prompts, 12, &[]).unwrap();
    for (p, g) in prompts.iter().zip(&got) {
        assert_eq!(g, &greedy_uncached(&m, p, 12), "prompt {p:?}");
    }
    // The first row's 3rd token as EOS: each row stops at its first EOS (kept), the others
    // go on.
    let eos = got[0][2];
    let stopped = greedy_batch(&m, &prompts, 12, &[eos]).unwrap();
    assert!(stopped[0].len() <= 3);
    for (s, g) in stopped.iter().zip(&got) {
        let end = g.iter().position(|&t| t == eos).map_or(g.len(), |i| i + 1);
        assert_eq!(s, &g[..end].to_vec());
    }
    assert!(stopped.iter().any(|s| s.len() == 12), "{stopped:?}");
}

/// A truncated cache continues as if only the kept positions had ever been run.
#[test]
fn truncation_forgets_the_positions_after() {
    let m = family("gemma2", true);
    let a = Tensor::new(&[[4u32, 8, 15, 16, 23, 42, 7, 7]], &test_device()).unwrap();
    let b = Tensor::new(&[[60u32, 61, 62]], &test_device()).unwrap();
    let mut cache = m.new_cache();
    m.forward_cached(&a, &mut cache).unwrap();
    cache.truncate(5);
    assert_eq!(cache.len(), 5);
    let continued = m.forward_cached(&b, &mut cache).unwrap();
    let mut fresh = m.new_cache();
    m.forward_cached(&a.narrow(1, 0, 5).unwrap(), &mut fresh)
        .unwrap();
    let direct = m.forward_cached(&b, &mut fresh).unwrap();
    assert!(rel_err(&continued, &direct) < 1e-6);
}

/// Misuse is a typed error, and the context limit ends generation cleanly.
#[test]
fn cache_misuse_is_an_error_and_the_context_limit_stops() {
    let m = family("qwen3", false);
    let other = family("gemma3", false); // 3 layers, qwen3 has 2
    let one = Tensor::new(&[[1u32, 2]], &test_device()).unwrap();
    let two = Tensor::new(&[[1u32, 2], [3, 4]], &test_device()).unwrap();
    let mut cache = m.new_cache();
    m.forward_cached(&one, &mut cache).unwrap();
    let e = m.forward_cached(&two, &mut cache).unwrap_err().to_string();
    assert!(e.contains("1 row(s)") && e.contains("has 2"), "{e}");
    // The failed call cleared the cache: a new sequence can start.
    assert!(cache.is_empty());
    let e = other
        .forward_cached(&one, &mut m.new_cache())
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 layers") && e.contains("has 3"), "{e}");
    // max_position_embeddings is 64: a 60-token prompt leaves room for 4 positions, so 5 tokens
    // come out (the last from the 64th position's logits).
    let prompt: Vec<u32> = (0..60).map(|i| i % 96).collect();
    let config = GenerationConfig {
        max_new_tokens: 100,
        ..GenerationConfig::default()
    };
    let tok = Tokenizer::byte_level();
    let g = generate(&m, &tok, &prompt, &config, &mut m.new_cache(), &mut |_| {
        Ok(())
    })
    .unwrap();
    assert_eq!(g.stop, StopReason::ContextFull);
    assert_eq!(g.ids.len(), 5);
    let too_long: Vec<u32> = (0..65).map(|i| i % 96).collect();
    let e = generate(
        &m,
        &tok,
        &too_long,
        &config,
        &mut m.new_cache(),
        &mut |_| Ok(()),
    );
    assert_eq!(e.unwrap().ids.len(), 0);
}

/// Greedy tokens equal transformers' `generate` (eager attention, its own cache; 24 new tokens,
/// past every window) for every family and a plain Llama, base and with a PEFT adapter — both
/// unmerged and merged. Every case's smallest top-1 / top-2 logit gap is ≥ 1e-3, so float
/// rounding cannot flip a token.
#[test]
fn greedy_tokens_equal_transformers_generate() {
    let root = fixtures_root();
    let text = std::fs::read_to_string(root.join("generate/cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 32);
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let adapter = case["adapter"].as_str().map(|a| root.join(a));
        let mut m = load(
            &root.join(case["model"].as_str().unwrap()),
            adapter.as_deref(),
        );
        let prompt = ids(&case["prompt"]);
        let want = ids(&case["new_tokens"]);
        assert_eq!(greedy_cached(&m, &prompt, want.len()), want, "{name}");
        if adapter.is_some() {
            m.merge_adapters().unwrap();
            assert_eq!(
                greedy_cached(&m, &prompt, want.len()),
                want,
                "{name} (merged)"
            );
        }
    }
}

fn chatml_tokenizer() -> Tokenizer {
    Tokenizer::from_file(fixtures_root().join("generate/chatml_tokenizer/tokenizer.json")).unwrap()
}

/// A `{"messages"}` example is the chat template's text tokenized as transformers'
/// `apply_chat_template(tokenize=True)` tokenizes it (ids from transformers 5.24, no BOS added),
/// and the loss covers exactly each answer and its `<|im_end|>`.
#[test]
fn chat_examples_use_the_template_as_transformers_does() {
    use adapters_runtime::train::{encode_chat_prompt, encode_example, Example, Message};
    let tok = chatml_tokenizer();
    assert!(tok.chat_template().unwrap().is_some());
    let chat = vec![
        Message::new("user", "Hi there"),
        Message::new("assistant", "Hello!"),
    ];
    let seq = encode_example(&tok, &Example::Chat(chat.clone())).unwrap();
    // transformers: tok.apply_chat_template(messages, tokenize=True)
    let want: Vec<u32> = vec![
        94, 86, 84, 70, 83, 0, 41, 74, 1, 85, 73, 70, 83, 70, 95, 0, 94, 66, 84, 84, 74, 84, 85,
        66, 79, 85, 0, 41, 70, 77, 77, 80, 2, 95, 0,
    ];
    assert_eq!(seq.ids, want);
    let trained: Vec<u32> = seq
        .ids
        .iter()
        .zip(&seq.mask)
        .filter(|(_, m)| **m)
        .map(|(i, _)| *i)
        .collect();
    // "Hello!<|im_end|>"
    assert_eq!(trained, vec![41, 70, 77, 77, 80, 2, 95]);
    // The generation prompt: the user turn, then "<|im_start|>assistant\n".
    let prompt = encode_chat_prompt(&tok, &chat[..1]).unwrap();
    assert_eq!(prompt, want[..27].to_vec());
    // A template that refuses the conversation is a typed error carrying its message.
    let strict = tok.clone().with_chat_template(Some(
        adapters_runtime::chat::ChatTemplate::new(
            "{{ raise_exception('no system messages') }}",
            Default::default(),
            "strict",
        )
        .unwrap(),
    ));
    let e = encode_example(&strict, &Example::Chat(chat))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no system messages"), "{e}");
}

/// A chat session keeps the conversation in the cache: the second turn runs only the tokens
/// after what the cache holds, and answers as a fresh session given the whole conversation.
#[test]
fn a_chat_session_reuses_the_cache() {
    use adapters_runtime::generate::ChatSession;
    let dir = fixtures_root().join("generate/llama");
    let m = load(&dir.join("model"), Some(&dir.join("adapter")));
    let tok = chatml_tokenizer();
    let config = GenerationConfig {
        max_new_tokens: 8,
        eos: vec![95],
        ..GenerationConfig::default()
    };
    let mut s = ChatSession::new(&m, Some("Be brief".into()));
    let first = s.reply(&m, &tok, "Hi", &config, &mut |_| Ok(())).unwrap();
    let second = s
        .reply(&m, &tok, "More?", &config, &mut |_| Ok(()))
        .unwrap();
    assert_eq!(s.messages().len(), 5);
    let full = adapters_runtime::train::encode_chat_prompt(&tok, &s.messages()[..4]).unwrap();
    assert!(
        second.prompt_tokens < full.len() / 2,
        "second turn ran {} of {} prompt tokens",
        second.prompt_tokens,
        full.len()
    );
    // "<|im_start|>system\nBe brief<|im_end|>\n" (18) + the user turn (10) + the generation
    // prompt (11).
    assert_eq!(first.prompt_tokens, 18 + 10 + 11);
    let mut cache = m.new_cache();
    let fresh = generate(&m, &tok, &full, &config, &mut cache, &mut |_| Ok(())).unwrap();
    assert_eq!(fresh.ids, second.ids);
}

/// Over a GGUF base, inference through GGML's quantized kernels (`Llama::set_ggml_kernels`, what
/// `adapters generate` uses) stays within a few % of the exact dequantized logits — base Q4_K /
/// Q6_K, and Q8_0 with a PEFT DoRA adapter unmerged (its norm through the kernels too) — and
/// the cache is exact under the kernels: each step equals the full pass, greedy tokens equal
/// recomputing the prefix.
#[test]
fn ggml_kernels_for_inference_over_gguf_bases() {
    use adapters_runtime::models::llama::load_gguf;
    let gguf = fixtures_root().join("gguf");
    let adapter = fixtures_root().join("peft/tiny_llama_dora/adapter");
    for (file, with_adapter) in [("tiny_llama_k.gguf", false), ("tiny_llama_q8_0.gguf", true)] {
        let mut m = load_gguf(&gguf.join(file), DType::F32, &test_device())
            .unwrap()
            .model;
        if with_adapter {
            let opts = LoadOptions {
                config_from_file: true,
                ..LoadOptions::default()
            };
            load_adapter(&mut m, &adapter, &opts).unwrap();
        }
        let seq: Vec<u32> = (0..20).map(|i| (i * 29 + 5) % 96).collect();
        let all = Tensor::new(seq.as_slice(), &test_device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let exact = m.forward(&all).unwrap();
        assert_eq!(m.set_ggml_kernels(true), 14, "{file}");
        let fast = m.forward(&all).unwrap();
        let err = rel_err(&fast, &exact);
        assert!(err > 0.0 && err < 3e-2, "{file}: kernels vs exact: {err:e}");
        if test_device().is_cpu() {
            let full = fast.squeeze(0).unwrap();
            let mut cache = m.new_cache();
            m.forward_cached(&all.narrow(1, 0, 4).unwrap(), &mut cache)
                .unwrap();
            for p in 4..seq.len() {
                let step = m
                    .forward_cached(&all.narrow(1, p, 1).unwrap(), &mut cache)
                    .unwrap();
                let want = full.get(p).unwrap().unsqueeze(0).unwrap();
                assert!(rel_err(&step, &want) < 1e-5, "{file}: position {p}");
            }
            let prompt = &seq[..6];
            assert_eq!(
                greedy_cached(&m, prompt, 10),
                greedy_uncached(&m, prompt, 10),
                "{file}"
            );
        }
        m.set_ggml_kernels(false);
        assert!(
            rel_err(&m.forward(&all).unwrap(), &exact) == 0.0,
            "{file}: back to exact"
        );
    }
}

/// DoRA norm caching (PEFT's `DoraCaching`): the cached norm gives the same logits bit for bit;
/// it is really reused (a changed `B` is not seen while caching is on); and `generate` turns it
/// on only for its own duration.
#[test]
fn dora_norms_are_cached_only_while_generating() {
    let m = family("qwen3", true);
    let ids = Tensor::new(&[[5u32, 17, 33, 2, 71, 9]], &test_device()).unwrap();
    let exact = m.forward(&ids).unwrap();
    m.set_dora_norm_caching(true).unwrap();
    for _ in 0..2 {
        assert_eq!(rel_err(&m.forward(&ids).unwrap(), &exact), 0.0);
    }
    let double_b = || {
        for (name, v) in m.named_trainable_vars().unwrap() {
            if name.contains("lora_B") {
                v.set(&(v.as_tensor() * 2.0).unwrap()).unwrap();
            }
        }
    };
    double_b();
    let stale = m.forward(&ids).unwrap();
    m.set_dora_norm_caching(false).unwrap();
    let fresh = m.forward(&ids).unwrap();
    assert!(
        rel_err(&stale, &fresh) > 1e-4,
        "the cached norm was not used"
    );
    // After `generate`, caching is off again: a change of B is seen at once.
    let tok = Tokenizer::byte_level();
    let config = GenerationConfig {
        max_new_tokens: 3,
        ..GenerationConfig::default()
    };
    generate(
        &m,
        &tok,
        &[5, 17, 33],
        &config,
        &mut m.new_cache(),
        &mut |_| Ok(()),
    )
    .unwrap();
    double_b();
    let after = m.forward(&ids).unwrap();
    m.set_dora_norm_caching(false).unwrap();
    assert_eq!(rel_err(&after, &m.forward(&ids).unwrap()), 0.0);
    assert!(rel_err(&after, &fresh) > 1e-4);
}
