//! `adapters generate` on the tiny Llama of `tests/fixtures/generate` with a character-level
//! ChatML tokenizer (`tests/fixtures/generate/chatml_tokenizer`): the continuation of a prompt
//! equals transformers' greedy `generate` (base, and with the PEFT adapter merged or not); a
//! piped chat answers every line; a closed stdout ends it quietly; bad flags are refused.

mod cli_support;

use cli_support::{adapters_with_closed_stdout, fixtures, scratch, text};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A model folder: the tiny Llama's weights and config with the ChatML tokenizer files.
fn model_dir(name: &str) -> PathBuf {
    let dir = scratch(name);
    let gen = fixtures().join("generate");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(gen.join("llama/model").join(f), dir.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(gen.join("chatml_tokenizer").join(f), dir.join(f)).unwrap();
    }
    dir
}

/// The character-level tokenizer's text of ids (id 0 is `\n`, id k in 1..=93 is `chr(31 + k)`,
/// 94 / 95 are `<|im_start|>` / `<|im_end|>`).
fn chars(ids: &[u64], skip_special: bool) -> String {
    ids.iter()
        .filter_map(|&i| match i {
            0 => Some("\n".to_string()),
            1..=93 => Some(char::from(31 + i as u8).to_string()),
            94 if !skip_special => Some("<|im_start|>".into()),
            95 if !skip_special => Some("<|im_end|>".into()),
            _ => None,
        })
        .collect()
}

fn case(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("generate/cases.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn generate(dir: &Path, extra: &[&str], prompt: &str) -> std::process::Output {
    let mut args = vec![
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "24",
    ];
    args.extend(extra);
    Command::new(env!("CARGO_BIN_EXE_adapters"))
        .args(&args)
        .output()
        .unwrap()
}

/// The greedy continuation is transformers' (no EOS among these cases' tokens), with the adapter
/// merged (the default) and unmerged; statistics go to stderr, only the text to stdout.
#[test]
fn greedy_text_equals_transformers() {
    let dir = model_dir("gen-greedy");
    let adapter = fixtures().join("generate/llama/adapter");
    let adapter = adapter.to_str().unwrap();
    for (name, extra) in [
        ("llama_base_1", vec![]),
        ("llama_adapter_1", vec!["--adapter", adapter]),
        ("llama_adapter_1", vec!["--adapter", adapter, "--unmerged"]),
    ] {
        let c = case(name);
        let new = ids(&c["new_tokens"]);
        assert!(!new.contains(&2) && !new.contains(&95), "{name}: an EOS id");
        let o = generate(&dir, &extra, &chars(&ids(&c["prompt"]), false));
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        assert_eq!(
            text(&o.stdout),
            chars(&new, true) + "\n",
            "{name} {extra:?}"
        );
        let err = text(&o.stderr);
        assert!(
            err.contains("24 new tokens") && err.contains("stop: max_new_tokens"),
            "{err}"
        );
    }
}

/// config.json's `eos_token_id` (2) ends generation as in transformers: the text is what came
/// before it.
#[test]
fn eos_from_the_config_stops() {
    let dir = model_dir("gen-eos");
    let c = case("llama_base_0");
    let new = ids(&c["new_tokens"]);
    let end = new.iter().position(|&t| t == 2 || t == 95).unwrap();
    let o = generate(&dir, &["--quiet"], &chars(&ids(&c["prompt"]), false));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), chars(&new[..end], true) + "\n");
    assert!(text(&o.stderr).is_empty());
}

/// `--chat` with piped stdin answers each line in one conversation (`--stop "\n"` keeps each
/// answer on one line; `/reset` and blank lines answer nothing); the same input gives the same
/// transcript, the first answer equals a one-shot `--chat --prompt`, and a sampled run with a
/// seed is reproducible.
#[test]
fn piped_chat_answers_every_line_reproducibly() {
    let dir = model_dir("gen-chat");
    let run = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_adapters"))
            .args(["generate", "--model", dir.to_str().unwrap(), "--chat"])
            .args(["--max-new-tokens", "6", "--quiet", "--stop", "\n"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Hi\n\n/reset\nHow are you?\nAnd then?\n")
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let greedy = run(&[]);
    assert_eq!(greedy.lines().count(), 3, "{greedy:?}");
    assert_eq!(greedy, run(&[]));
    // The first answer equals a one-shot chat on the same message.
    let one = Command::new(env!("CARGO_BIN_EXE_adapters"))
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--chat",
            "--prompt",
            "Hi",
        ])
        .args(["--max-new-tokens", "6", "--quiet", "--stop", "\n"])
        .output()
        .unwrap();
    assert_eq!(greedy.lines().next(), text(&one.stdout).lines().next());
    let sampled = ["--temperature", "1.0", "--seed", "3"];
    assert_eq!(run(&sampled), run(&sampled));
}

/// A closed stdout (`… | head -c 1`) ends generation with success; a bad setting is an error.
#[test]
fn closed_stdout_and_bad_settings() {
    let dir = model_dir("gen-pipe");
    let o = adapters_with_closed_stdout(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "abc",
        "--max-new-tokens",
        "40",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for (flag, says) in [
        ("--top-p=0", "top_p"),
        ("--temperature=-1", "temperature"),
        ("--dtype=f8", "--dtype"),
    ] {
        let o = generate(&dir, &[flag], "abc");
        assert!(!o.status.success());
        let err = text(&o.stderr);
        assert!(err.contains(says), "{flag}: {err}");
    }
    let o = generate(&dir.join("missing"), &[], "abc");
    assert!(!o.status.success());
}

/// A GGUF file generates as the HF checkpoint it was converted from (f32: the same weights once
/// the q / k rows are back in HF order); a quantized one runs and reports its statistics.
#[test]
fn gguf_models_generate_like_their_hf_original() {
    let tok = fixtures().join("generate/chatml_tokenizer/tokenizer.json");
    let run = |model: &Path| {
        Command::new(env!("CARGO_BIN_EXE_adapters"))
            .args(["generate", "--model", model.to_str().unwrap()])
            .args(["--tokenizer", tok.to_str().unwrap()])
            .args(["--prompt", "shift abc>", "--max-new-tokens", "16"])
            .output()
            .unwrap()
    };
    let hf = run(&fixtures().join("peft/tiny_llama_dora/model"));
    let gguf = run(&fixtures().join("gguf/tiny_llama_f32.gguf"));
    assert!(hf.status.success(), "{}", text(&hf.stderr));
    assert!(gguf.status.success(), "{}", text(&gguf.stderr));
    assert_eq!(text(&hf.stdout), text(&gguf.stdout));
    let q = run(&fixtures().join("gguf/tiny_llama_q8_0.gguf"));
    assert!(q.status.success(), "{}", text(&q.stderr));
    assert!(text(&q.stderr).contains("stop:"), "{}", text(&q.stderr));
}
