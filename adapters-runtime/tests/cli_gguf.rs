//! The built `adapters` binary on GGUF files: `inspect FILE.gguf`, and `merge --base FILE.gguf`
//! to HF (equal to PEFT's `merge_and_unload` over the same weights) and to GGUF (`--quant`).

mod cli_support;

use cli_support::{adapters, fixtures, scratch, text};
use safetensors::SafeTensors;
use std::path::Path;

/// `adapters merge --base BASE --adapter (the PEFT fixture) --out OUT` plus `extra`.
fn merge(base: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let adapter = fixtures().join("peft/tiny_llama_dora/adapter");
    let mut args = vec![
        "merge".to_string(),
        "--base".into(),
        base.display().to_string(),
        "--adapter".into(),
        adapter.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    adapters(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn f32s(st: &SafeTensors, key: &str) -> Vec<f32> {
    let v = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(v.dtype(), safetensors::Dtype::F32, "{key}");
    v.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn inspect_a_gguf_file() {
    let f = fixtures().join("gguf/tiny_llama_k.gguf");
    let o = adapters(&["inspect", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for s in [
        "architecture llama",
        "hidden 256, intermediate 512, 2 layers, 4 heads (2 kv, head dim 64), vocab 96, untied head",
        "tokenizer: gpt2, 96 tokens",
        "blk.1.ffn_down.weight",
        "model.layers.1.mlp.down_proj.weight",
        "Q6K",
        "total Q4K",
        "total (21 tensors)",
    ] {
        assert!(out.contains(s), "{s} in:\n{out}");
    }
}

/// The F32 GGUF holds the HF checkpoint's weights (q/k rows permuted as llama.cpp does): merging
/// PEFT's fixture adapter into it and writing HF gives PEFT's merged weights.
#[test]
fn merge_gguf_to_hf_equals_peft() {
    let tmp = scratch("hf");
    let base = fixtures().join("gguf/tiny_llama_f32.gguf");
    let out = tmp.join("merged.safetensors");
    let o = merge(&base, &out, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("merged 14 weight(s)"),
        "{}",
        text(&o.stdout)
    );
    let ours = std::fs::read(&out).unwrap();
    let ours = SafeTensors::deserialize(&ours).unwrap();
    let peft = std::fs::read(fixtures().join("peft/tiny_llama_dora/merged.safetensors")).unwrap();
    let peft = SafeTensors::deserialize(&peft).unwrap();
    let mut n = 0;
    for key in peft.names() {
        let want: Vec<f64> = {
            let v = peft.tensor(key).unwrap();
            match v.dtype() {
                safetensors::Dtype::F64 => v
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                _ => f32s(&peft, key).into_iter().map(f64::from).collect(),
            }
        };
        let got = f32s(&ours, key);
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
        assert!(err <= 1e-6 * scale, "{key}: {err} vs scale {scale}");
        n += 1;
    }
    assert_eq!(n, ours.names().len());
    let _ = std::fs::remove_dir_all(tmp);
}

/// `--quant` re-quantizes the merged weights of a GGUF output; with an HF base it is refused.
#[test]
fn merge_gguf_to_gguf_with_quant() {
    let tmp = scratch("gguf");
    let base = fixtures().join("gguf/tiny_llama_q8_0.gguf");
    let out = tmp.join("merged.gguf");
    let o = merge(&base, &out, &["--quant", "q4_0"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = adapters(&["inspect", out.to_str().unwrap()]);
    let listing = text(&o.stdout);
    assert!(
        listing.contains("total Q4_0") && listing.contains("total Q8_0"),
        "{listing}"
    );
    // Exists now: refused without --force, and the file is unchanged.
    let before = std::fs::read(&out).unwrap();
    let o = merge(&base, &out, &["--quant", "q4_0"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--force"), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // --quant with an HF base.
    let hf = fixtures().join("peft/tiny_llama_dora/model");
    let o = merge(&hf, &tmp.join("x"), &["--quant", "q4_0"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--quant"), "{}", text(&o.stderr));
    // An unknown format.
    let o = merge(&base, &tmp.join("y.gguf"), &["--quant", "q7"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("q4_0"), "{}", text(&o.stderr));
    let _ = std::fs::remove_dir_all(tmp);
}

/// A GGUF merged to an HF folder is a complete HF model: config.json from the metadata, the
/// weights, and the file's tokenizer as tokenizer.json (giving transformers' ids, as recorded by
/// the fixture script) and tokenizer_config.json.
#[test]
fn merge_gguf_to_an_hf_folder_carries_the_tokenizer() {
    let tmp = scratch("folder");
    let base = fixtures().join("gguf/tiny_llama_q8_0.gguf");
    let out = tmp.join("merged");
    let o = merge(&base, &out, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report = text(&o.stdout);
    assert!(
        report.contains("tokenizer.json (from the GGUF metadata)"),
        "{report}"
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let tok = adapters_runtime::train::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = tok
        .hf()
        .unwrap()
        .encode("hello there, in the winter!", true)
        .unwrap();
    assert_eq!(
        ids.get_ids(),
        [1, 92, 76, 76, 79, 93, 82, 69, 15, 3, 94, 93, 3, 87, 94, 84, 95, 4]
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["bos_token"], "<s>", "{cfg}");
    // θ under both spellings (transformers 4 reads `rope_theta`, 5 `rope_parameters`).
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(model["rope_theta"], 10000.0, "{model}");
    assert_eq!(model["rope_parameters"]["rope_theta"], 10000.0, "{model}");
    // --force replaces what the merge writes and keeps the folder's other files.
    std::fs::write(out.join("NOTES.md"), "mine").unwrap();
    let o = merge(&base, &out, &["--force"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("NOTES.md")).unwrap(),
        "mine"
    );
    let _ = std::fs::remove_dir_all(tmp);
}
