//! The `adapters` command's work, run as library calls: `merge` reproduces PEFT's
//! `merge_and_unload` for every fixture (≤ 1e-6 relative in f64; `tiny_llama_dora` ≤ 1e-5 in f32),
//! single-file, HF-folder and sharded; bad input fails with nothing written. `inspect` and
//! `estimate` report the right numbers. (The built binary itself is run by
//! `adapters-runtime/tests/cli_bin.rs`.)

mod peft_support;

use adapters_runtime::candle_core::{DType, Tensor};
use adapters_runtime::estimate::{self, BaseDType, Method};
use adapters_runtime::hf::LlamaConfig;
use adapters_runtime::peft::{self, MergeOptions};
use adapters_runtime::train::{estimate_training, EstimateRequest};
use adapters_runtime::AdapterError;
use peft_support::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const OPTS: MergeOptions = MergeOptions {
    overwrite: false,
    progress: false,
    allow_non_finite: false,
};

/// Checks a merged checkpoint against PEFT's: adapted weights within `tol`, everything else
/// bit-identical to the base, same keys and dtypes.
fn check_merged(
    out: &HashMap<String, Tensor>,
    base: &HashMap<String, Tensor>,
    peft: &HashMap<String, Tensor>,
    adapted: &[String],
    tol: f64,
) {
    let mut keys: Vec<&String> = out.keys().collect();
    keys.sort();
    let mut want: Vec<&String> = base.keys().collect();
    want.sort();
    assert_eq!(keys, want, "same tensors as the base");
    for (k, t) in out {
        assert_eq!(t.dtype(), base[k].dtype(), "{k} keeps its dtype");
        if adapted.contains(k) {
            assert_close(&format!("merged {k}"), t, &peft[k], tol);
        } else {
            assert!(bit_equal(t, &base[k]), "{k} passes through unchanged");
        }
    }
}

#[test]
fn merge_reproduces_peft_for_every_small_fixture() {
    for case in ["lora_r4", "dora_r4", "dora_rslora_r8", "dora_embedding_r4"] {
        let dir = TempDir::new("merge");
        let out = dir.join("merged.safetensors");
        let base = fixture(case).join("base.safetensors");
        let r = peft::merge_checkpoint(&base, &fixture(case).join("adapter"), &out, &OPTS).unwrap();
        assert_eq!(r.files, 1);
        let expect_merged: Vec<String> = if case == "dora_embedding_r4" {
            vec!["emb.weight".into(), "fc1.weight".into()]
        } else {
            vec!["fc1.weight".into(), "fc2.weight".into()]
        };
        assert_eq!(r.merged, expect_merged);
        let got = load(&out);
        check_merged(
            &got,
            &load(&base),
            &load(&fixture(case).join("merged.safetensors")),
            &r.merged,
            1e-6,
        );
        assert_eq!(dir.entries(), ["merged.safetensors"], "no temp file left");
    }
}

#[test]
fn merge_keeps_a_bf16_base_in_bf16() {
    let dir = TempDir::new("bf16");
    let base: HashMap<String, Tensor> = load(&fixture("dora_r4").join("base.safetensors"))
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::BF16).unwrap()))
        .collect();
    save(&base, &dir.join("base.safetensors"));
    let out = dir.join("out.safetensors");
    peft::merge_checkpoint(
        &dir.join("base.safetensors"),
        &fixture("dora_r4").join("adapter"),
        &out,
        &OPTS,
    )
    .unwrap();
    let got = load(&out);
    let peft_merged = load(&fixture("dora_r4").join("merged.safetensors"));
    for (k, t) in &got {
        assert_eq!(t.dtype(), DType::BF16, "{k}");
    }
    // bf16 storage: about 3 significant digits.
    assert_close(
        "bf16 merged fc1",
        &got["fc1.weight"],
        &peft_merged["fc1.weight"],
        1e-2,
    );
    assert!(bit_equal(&got["fc1.bias"], &base["fc1.bias"]));
}

fn llama_model() -> std::path::PathBuf {
    fixture("tiny_llama_dora").join("model")
}

fn llama_adapted() -> Vec<String> {
    (0..2)
        .flat_map(|i| {
            projection_paths(i)
                .into_iter()
                .map(|p| format!("{p}.weight"))
        })
        .collect()
}

#[test]
fn merge_tiny_llama_folder() {
    let dir = TempDir::new("llama");
    let out = dir.join("merged");
    let r = peft::merge_checkpoint(
        &llama_model(),
        &fixture("tiny_llama_dora").join("adapter"),
        &out,
        &OPTS,
    )
    .unwrap();
    assert_eq!(r.merged.len(), 14);
    assert_eq!(r.copied, ["config.json"]);
    assert_eq!(entries(&out), ["config.json", "model.safetensors"]);
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(llama_model().join("config.json")).unwrap()
    );
    let peft_merged = load(&fixture("tiny_llama_dora").join("merged.safetensors"));
    check_merged(
        &load(&out.join("model.safetensors")),
        &load(&llama_model().join("model.safetensors")),
        &peft_merged,
        &llama_adapted(),
        1e-5,
    );
    assert_eq!(dir.entries(), ["merged"], "no staging folder left");
}

/// A sharded copy of the tiny Llama (three shards, an index), plus files to copy or skip.
fn sharded_llama(dir: &Path) -> BTreeMap<String, String> {
    std::fs::create_dir_all(dir.join("original")).unwrap();
    std::fs::write(dir.join("original/consolidated.pth"), "x").unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), "unmerged").unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    std::fs::copy(llama_model().join("config.json"), dir.join("config.json")).unwrap();
    let all = load(&llama_model().join("model.safetensors"));
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    let mut map = BTreeMap::new();
    let mut shards: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); 3];
    for (i, k) in keys.iter().enumerate() {
        let s = i * 3 / keys.len();
        shards[s].insert((*k).clone(), all[*k].clone());
        map.insert(
            (*k).clone(),
            format!("model-0000{}-of-00003.safetensors", s + 1),
        );
    }
    for (s, t) in shards.iter().enumerate() {
        save(
            t,
            &dir.join(format!("model-0000{}-of-00003.safetensors", s + 1)),
        );
    }
    let total: usize = all.values().map(|t| t.elem_count() * 4).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
    map
}

#[test]
fn merge_sharded_folder_writes_the_same_shards() {
    let dir = TempDir::new("sharded");
    let base = dir.join("base");
    let map = sharded_llama(&base);
    let out = dir.join("merged");
    let r = peft::merge_checkpoint(
        &base,
        &fixture("tiny_llama_dora").join("adapter"),
        &out,
        &OPTS,
    )
    .unwrap();
    assert_eq!(r.files, 3);
    assert_eq!(
        r.copied,
        [
            "config.json",
            "model.safetensors.index.json",
            "tokenizer.json"
        ]
    );
    assert_eq!(r.skipped, ["original", "pytorch_model.bin"]);
    let mut expect = vec![
        "config.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
    ];
    expect.sort();
    assert_eq!(entries(&out), expect);
    let mut merged = HashMap::new();
    for shard in [
        "model-00001-of-00003",
        "model-00002-of-00003",
        "model-00003-of-00003",
    ] {
        for (k, t) in load(&out.join(format!("{shard}.safetensors"))) {
            assert_eq!(
                map[&k],
                format!("{shard}.safetensors"),
                "{k} stays in its shard"
            );
            merged.insert(k, t);
        }
    }
    let peft_merged = load(&fixture("tiny_llama_dora").join("merged.safetensors"));
    check_merged(
        &merged,
        &load(&llama_model().join("model.safetensors")),
        &peft_merged,
        &llama_adapted(),
        1e-5,
    );
}

/// The tiny Llama without `lm_head.weight` (tied to the embeddings).
fn tied_llama(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut t = load(&llama_model().join("model.safetensors"));
    t.remove("lm_head.weight").unwrap();
    save(&t, &dir.join("model.safetensors"));
    let cfg = std::fs::read_to_string(llama_model().join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace(
            "\"tie_word_embeddings\": false",
            "\"tie_word_embeddings\": true",
        ),
    )
    .unwrap();
}

#[test]
fn tied_embeddings_stay_tied() {
    let dir = TempDir::new("tied");
    tied_llama(&dir.join("base"));
    let out = dir.join("merged");
    peft::merge_checkpoint(
        &dir.join("base"),
        &fixture("tiny_llama_dora").join("adapter"),
        &out,
        &OPTS,
    )
    .unwrap();
    let got = load(&out.join("model.safetensors"));
    assert!(
        !got.contains_key("lm_head.weight"),
        "no lm_head.weight appears"
    );
    assert!(std::fs::read_to_string(out.join("config.json"))
        .unwrap()
        .contains("\"tie_word_embeddings\": true"));
    // An adapter on lm_head cannot be merged into a tied base.
    let ad = dir.join("adapter");
    copy_dir(&fixture("tiny_llama_dora").join("adapter"), &ad);
    let mut t = load(&ad.join("adapter_model.safetensors"));
    t.insert(
        "base_model.model.lm_head.lora_A.weight".into(),
        rand_tensor(1, &[8, 64], 0.1, DType::F32),
    );
    t.insert(
        "base_model.model.lm_head.lora_B.weight".into(),
        rand_tensor(2, &[96, 8], 0.1, DType::F32),
    );
    t.insert(
        "base_model.model.lm_head.lora_magnitude_vector".into(),
        rand_tensor(3, &[96], 0.1, DType::F32),
    );
    save(&t, &ad.join("adapter_model.safetensors"));
    let cfg = std::fs::read_to_string(ad.join("adapter_config.json"))
        .unwrap()
        .replace("\"q_proj\"", "\"q_proj\", \"lm_head\"");
    std::fs::write(ad.join("adapter_config.json"), cfg).unwrap();
    let out2 = dir.join("merged2");
    let err = peft::merge_checkpoint(&dir.join("base"), &ad, &out2, &OPTS)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`lm_head.weight`") && err.contains("tied"),
        "{err}"
    );
    assert!(!out2.exists());
    // The untied base merges it.
    peft::merge_checkpoint(&llama_model(), &ad, &out2, &OPTS).unwrap();
    assert!(load(&out2.join("model.safetensors")).contains_key("lm_head.weight"));
}

/// Asserts the merge fails with `expect` in the message and leaves nothing but `keep` in `dir`.
#[track_caller]
fn assert_fails(
    dir: &TempDir,
    base: &Path,
    adapter: &Path,
    out: &Path,
    opts: &MergeOptions,
    expect: &[&str],
    keep: &[&str],
) -> AdapterError {
    let err = peft::merge_checkpoint(base, adapter, out, opts).unwrap_err();
    let msg = err.to_string();
    for e in expect {
        assert!(msg.contains(e), "expected {e:?} in: {msg}");
    }
    assert_eq!(dir.entries(), keep, "no partial output");
    err
}

#[test]
fn merge_errors_write_nothing() {
    let dir = TempDir::new("errors");
    let small = |c: &str| fixture(c).join("base.safetensors");
    let ad = |c: &str| fixture(c).join("adapter");
    let out = dir.join("out.safetensors");
    // Keys the base lacks and shapes that differ: every one listed.
    assert_fails(
        &dir,
        &small("dora_r4"),
        &ad("dora_embedding_r4"),
        &out,
        &OPTS,
        &[
            "`emb.weight`: expected a base weight for adapter module `emb`, found missing",
            "`fc1.weight`: expected shape [8, 16]",
            "found shape [32, 16]",
        ],
        &[],
    );
    // A folder base missing one adapted weight.
    std::fs::create_dir(dir.join("base")).unwrap();
    let mut t = load(&llama_model().join("model.safetensors"));
    t.remove("model.layers.1.mlp.up_proj.weight");
    save(&t, &dir.join("base/model.safetensors"));
    let outdir = dir.join("merged");
    assert_fails(
        &dir,
        &dir.join("base"),
        &fixture("tiny_llama_dora").join("adapter"),
        &outdir,
        &OPTS,
        &["`model.layers.1.mlp.up_proj.weight`", "missing"],
        &["base"],
    );
    // Corrupt and truncated bases.
    let b = std::fs::read(small("lora_r4")).unwrap();
    std::fs::write(dir.join("trunc.safetensors"), &b[..b.len() / 2]).unwrap();
    assert_fails(
        &dir,
        &dir.join("trunc.safetensors"),
        &ad("lora_r4"),
        &out,
        &OPTS,
        &["trunc.safetensors", "not a valid safetensors file"],
        &["base", "trunc.safetensors"],
    );
    std::fs::write(
        dir.join("trunc.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}",
    )
    .unwrap();
    assert_fails(
        &dir,
        &dir.join("trunc.safetensors"),
        &ad("lora_r4"),
        &out,
        &OPTS,
        &["not a valid safetensors file"],
        &["base", "trunc.safetensors"],
    );
    std::fs::remove_file(dir.join("trunc.safetensors")).unwrap();
    // Adapter problems: missing files, bad JSON, wrong peft_type.
    let bad = dir.join("bad");
    copy_dir(&ad("lora_r4"), &bad);
    std::fs::write(
        bad.join("adapter_config.json"),
        "{\"peft_type\": \"LORA\", \"r\": ",
    )
    .unwrap();
    assert_fails(
        &dir,
        &small("lora_r4"),
        &bad,
        &out,
        &OPTS,
        &["adapter_config.json", "invalid JSON"],
        &["bad", "base"],
    );
    let cfg = std::fs::read_to_string(ad("lora_r4").join("adapter_config.json"))
        .unwrap()
        .replace("\"LORA\"", "\"PREFIX_TUNING\"");
    std::fs::write(bad.join("adapter_config.json"), cfg).unwrap();
    assert_fails(
        &dir,
        &small("lora_r4"),
        &bad,
        &out,
        &OPTS,
        &["peft_type", "PREFIX_TUNING"],
        &["bad", "base"],
    );
    std::fs::remove_file(bad.join("adapter_model.safetensors")).unwrap();
    std::fs::copy(
        ad("lora_r4").join("adapter_config.json"),
        bad.join("adapter_config.json"),
    )
    .unwrap();
    assert_fails(
        &dir,
        &small("lora_r4"),
        &bad,
        &out,
        &OPTS,
        &["adapter_model.safetensors", "No such file"],
        &["bad", "base"],
    );
    assert_fails(
        &dir,
        &dir.join("nothing"),
        &ad("lora_r4"),
        &out,
        &OPTS,
        &["nothing"],
        &["bad", "base"],
    );
    assert_fails(
        &dir,
        &dir.join("bad"),
        &ad("lora_r4"),
        &outdir,
        &OPTS,
        &["neither model.safetensors nor"],
        &["bad", "base"],
    );
}

#[test]
fn merge_output_rules() {
    let dir = TempDir::new("outrules");
    let base = dir.join("base.safetensors");
    std::fs::copy(fixture("lora_r4").join("base.safetensors"), &base).unwrap();
    let ad = fixture("lora_r4").join("adapter");
    let out = dir.join("out.safetensors");
    std::fs::write(&out, "old").unwrap();
    let keep = ["base.safetensors", "out.safetensors"];
    assert_fails(&dir, &base, &ad, &out, &OPTS, &["exists", "--force"], &keep);
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    let force = MergeOptions {
        overwrite: true,
        progress: false,
        allow_non_finite: false,
    };
    assert_fails(
        &dir,
        &base,
        &ad,
        &base,
        &force,
        &["is the base model itself"],
        &keep,
    );
    assert_fails(
        &dir,
        &base,
        &ad,
        &dir.join("missing/out.safetensors"),
        &force,
        &["parent folder does not exist"],
        &keep,
    );
    std::fs::create_dir(dir.join("d")).unwrap();
    assert_fails(
        &dir,
        &base,
        &ad,
        &dir.join("d"),
        &force,
        &["is a folder"],
        &["base.safetensors", "d", "out.safetensors"],
    );
    peft::merge_checkpoint(&base, &ad, &out, &force).unwrap();
    check_merged(
        &load(&out),
        &load(&base),
        &load(&fixture("lora_r4").join("merged.safetensors")),
        &["fc1.weight".into(), "fc2.weight".into()],
        1e-6,
    );
    // `--force` replaces what the merge writes in a folder output; other files stay.
    let outdir = dir.join("merged");
    std::fs::create_dir(&outdir).unwrap();
    std::fs::write(outdir.join("stale.txt"), "x").unwrap();
    peft::merge_checkpoint(
        &llama_model(),
        &fixture("tiny_llama_dora").join("adapter"),
        &outdir,
        &force,
    )
    .unwrap();
    assert_eq!(
        entries(&outdir),
        ["config.json", "model.safetensors", "stale.txt"]
    );
}

#[test]
fn inspect_lists_modules_and_totals() {
    let i = peft::inspect_adapter(fixture("tiny_llama_dora").join("adapter")).unwrap();
    assert_eq!(i.rows.len(), 14);
    assert_eq!(i.total_params, 19_072);
    assert_eq!(i.total_bytes, 19_072 * 4);
    let q = i
        .rows
        .iter()
        .find(|r| r.module == "model.layers.0.self_attn.k_proj")
        .unwrap();
    assert_eq!(
        (q.rank, q.alpha, q.scaling, q.method),
        (8, 16.0, 2.0, Method::Dora)
    );
    assert_eq!(
        (
            q.a_shape.clone(),
            q.b_shape.clone(),
            q.magnitude_shape.clone()
        ),
        (vec![8, 64], vec![32, 8], Some(vec![32]))
    );
    let text = i.to_string();
    assert!(
        text.contains("total (14 modules)")
            && text.contains("19,072")
            && text.contains("74.50 KiB"),
        "{text}"
    );
    let i = peft::inspect_adapter(fixture("dora_rslora_r8").join("adapter")).unwrap();
    let r = &i.rows[0];
    assert_eq!((r.rank, r.alpha), (8, 16.0));
    assert!((r.scaling - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    let i = peft::inspect_adapter(fixture("lora_r4").join("adapter")).unwrap();
    assert!(i
        .rows
        .iter()
        .all(|r| r.method == Method::Lora && r.magnitude_shape.is_none()));
    assert_eq!(i.total_params, 4 * (16 + 32) + 4 * (32 + 8));
    let i = peft::inspect_adapter(fixture("dora_embedding_r4").join("adapter")).unwrap();
    assert_eq!(i.rows[0].params, 4 * 50 + 16 * 4 + 16);
    assert!(i.to_string().contains("DoRA emb"));
}

#[test]
fn estimate_uses_the_const_formulas() {
    let cfg = LlamaConfig::from_file(&llama_model().join("config.json")).unwrap();
    assert_eq!(cfg.head_dim(), 16);
    let req = EstimateRequest {
        method: Method::Dora,
        rank: 16,
        targets: vec!["q_proj".into(), "v_proj".into()],
        dtype: BaseDType::BF16,
        batch_tokens: 4096,
        seq_len: 512,
    };
    let e = estimate_training(&cfg, &req).unwrap();
    let (h, i, v, n, kv) = (64, 160, 96, 2, 32);
    let layer = 2 * estimate::linear_params(h, h, false).unwrap()
        + 2 * estimate::linear_params(h, kv, false).unwrap()
        + 3 * estimate::linear_params(h, i, false).unwrap();
    let frozen = 2 * estimate::embedding_params(v, h).unwrap() + n * layer + (2 * n + 1) * h;
    assert_eq!(e.frozen_params, frozen);
    assert_eq!(e.frozen_params, 98_624);
    let trainable = n
        * (estimate::adapter_params(Method::Dora, h, h, 16).unwrap()
            + estimate::adapter_params(Method::Dora, h, kv, 16).unwrap());
    assert_eq!(e.trainable_params, trainable);
    let bt = BaseDType::BF16;
    let per_token = n
        * (estimate::activation_bytes_adapted_linear(Method::Dora, h, h, 16, bt).unwrap()
            + estimate::activation_bytes_adapted_linear(Method::Dora, h, kv, 16, bt).unwrap()
            + estimate::activation_bytes_frozen_linear(h, bt).unwrap() * 2
            + estimate::activation_bytes_frozen_linear(h, bt).unwrap() * 2
            + estimate::activation_bytes_frozen_linear(i, bt).unwrap())
        + estimate::activation_bytes_frozen_linear(h, bt).unwrap()
        + n * estimate::activation_bytes_llama_layer(h, i, 4, 2, 16, 512, bt).unwrap()
        + estimate::activation_bytes_lm_output(h, bt).unwrap();
    assert_eq!(e.activation_bytes_per_token, per_token);
    assert_eq!(
        e.total_bytes,
        estimate::vram_bytes(frozen, bt, trainable, 4096 * per_token).unwrap()
    );
    assert_eq!(
        e.base_bytes + e.adapter_bytes + e.gradient_bytes + e.optimizer_bytes + e.activation_bytes,
        e.total_bytes
    );
    let text = e.to_string();
    for part in [
        "base weights",
        "adapter weights",
        "gradients",
        "optimizer state",
        "activations",
        "total",
        "MiB",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    // all-linear, tied embeddings, unknown targets.
    let all = EstimateRequest {
        targets: vec!["all-linear".into()],
        method: Method::Lora,
        ..req.clone()
    };
    assert_eq!(estimate_training(&cfg, &all).unwrap().adapted_layers, 14);
    let tied = LlamaConfig {
        tie_word_embeddings: true,
        ..cfg.clone()
    };
    assert_eq!(
        estimate_training(&tied, &req).unwrap().frozen_params,
        frozen - v * h
    );
    let bad = EstimateRequest {
        targets: vec!["qproj".into()],
        ..req
    };
    let err = estimate_training(&cfg, &bad).unwrap_err().to_string();
    assert!(err.contains("\"qproj\"") && err.contains("q_proj"), "{err}");
}

#[test]
fn estimate_config_errors_name_the_file_and_field() {
    let dir = TempDir::new("hfcfg");
    let p = dir.join("config.json");
    std::fs::write(&p, r#"{"hidden_size": 64, "num_hidden_layers": 2}"#).unwrap();
    let err = LlamaConfig::from_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("intermediate_size"),
        "{err}"
    );
    std::fs::write(&p, r#"{"text_config": {"hidden_size": 60, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 7, "vocab_size": 10}}"#).unwrap();
    let err = LlamaConfig::from_file(&p).unwrap_err().to_string();
    assert!(
        err.contains("num_attention_heads") && err.contains("hidden_size = 60"),
        "{err}"
    );
}
