//! The built `adapters` binary: `inspect`, `merge` and `estimate` on the workspace's PEFT fixtures,
//! and a failing run's exit status and message.

mod cli_support;

use cli_support::{adapters, adapters_with_closed_stdout, fixture, text};
use std::process::Command;

#[test]
fn inspect_prints_the_table() {
    let dir = fixture("tiny_llama_dora").join("adapter");
    let o = adapters(&["inspect", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for s in [
        "model.layers.1.mlp.down_proj",
        "DoRA",
        "[8, 160]",
        "total (14 modules)",
        "19,072",
        "74.50 KiB",
    ] {
        assert!(out.contains(s), "{s} in:\n{out}");
    }
}

#[test]
fn merge_writes_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged");
    let (base, adapter) = (
        fixture("tiny_llama_dora").join("model"),
        fixture("tiny_llama_dora").join("adapter"),
    );
    let args = [
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = adapters(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("merged 14 weight(s)"),
        "{}",
        text(&o.stdout)
    );
    assert!(out.join("model.safetensors").is_file() && out.join("config.json").is_file());
    // Again without --force: refused, exit status 1, the output untouched.
    let o = adapters(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("exists; pass --force"),
        "{}",
        text(&o.stderr)
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(adapters(&forced).status.success());
}

#[test]
fn estimate_prints_the_breakdown() {
    let cfg = fixture("tiny_llama_dora").join("model/config.json");
    let o = adapters(&[
        "estimate",
        "--config",
        cfg.to_str().unwrap(),
        "--method",
        "dora",
        "--rank",
        "16",
        "--targets",
        "q_proj,v_proj",
        "--dtype",
        "bf16",
        "--batch-tokens",
        "4096",
        "--seq-len",
        "128",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    // 21,286,528 B for the weights, adapter state and the projections' activations, plus per
    // token the decoder's own activations (hidden 64, MLP 160, 4 heads / 2 kv heads of 16,
    // bf16): per layer (5·64 + 3·32)·2 + 2·160·2 + 2·64·2 = 1728 B and 3·4·128·4 = 6144 B of
    // attention scores, two layers, and 64·(2 + 4) = 384 B after the last: 16,128 B × 4096.
    for s in [
        "base weights",
        "98,624",
        "optimizer state",
        "activations",
        "total",
        "87,346,816 B",
    ] {
        assert!(out.contains(s), "{s} in:\n{out}");
    }
}

#[test]
fn bad_input_fails_with_a_message() {
    let o = adapters(&["inspect", "/nonexistent/adapter"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).starts_with("error: reading adapter folder `/nonexistent/adapter`"),
        "{}",
        text(&o.stderr)
    );
    let o = adapters(&[
        "estimate",
        "--config",
        "x.json",
        "--method",
        "qlora",
        "--rank",
        "4",
        "--targets",
        "q_proj",
    ]);
    assert_eq!(o.status.code(), Some(2), "clap rejects the method");
    assert!(text(&o.stderr).contains("qlora"));
}

/// A closed pipe ends the command quietly (the merge's file is written); a full stdout is an
/// error naming stdout — never a panic (exit 101).
#[cfg(unix)]
#[test]
fn closed_or_full_stdout_is_handled() {
    let dir = fixture("tiny_llama_dora").join("adapter");
    // Closed pipe: the reader is gone before the command writes.
    let o = adapters_with_closed_stdout(&["inspect", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("panicked"), "{}", text(&o.stderr));
    // Full device.
    if std::path::Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_adapters"))
            .args(["inspect", dir.to_str().unwrap()])
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = text(&o.stderr);
        assert!(err.contains("stdout") && !err.contains("panicked"), "{err}");
    }
}

#[test]
fn estimate_overflow_fails_with_a_message() {
    let cfg = fixture("tiny_llama_dora").join("model/config.json");
    for (rank, batch_tokens) in [
        ("4611686018427387904", "4096"),
        ("16", "18446744073709551615"),
    ] {
        let o = adapters(&[
            "estimate",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "dora",
            "--rank",
            rank,
            "--targets",
            "q_proj,v_proj",
            "--batch-tokens",
            batch_tokens,
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "rank {rank}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("overflow") && err.contains(rank),
            "rank {rank}, batch_tokens {batch_tokens}: {err}"
        );
        assert!(o.stdout.is_empty(), "nothing printed on failure");
    }
}

#[test]
fn merge_refuses_a_nan_adapter_unless_allowed() {
    use adapters_runtime::candle_core::{safetensors, DType, Device, Tensor};
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let src = fixture("dora_r4").join("adapter");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), adapter.join(f)).unwrap();
    }
    // One NaN in fc1's lora_A.
    let file = adapter.join("adapter_model.safetensors");
    let mut t = safetensors::load(&file, &Device::Cpu).unwrap();
    let key = "base_model.model.fc1.lora_A.weight";
    let a = &t[key];
    let flat = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let mut x = flat.to_vec1::<f64>().unwrap();
    x[0] = f64::NAN;
    let p = Tensor::from_vec(x, a.dims(), &Device::Cpu).unwrap();
    t.insert(key.into(), p.to_dtype(a.dtype()).unwrap());
    safetensors::save(&t, &file).unwrap();

    let base = fixture("dora_r4").join("base.safetensors");
    let out = tmp.path().join("merged.safetensors");
    let args = [
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let o = adapters(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains(key) && err.contains("non-finite") && err.contains("--allow-non-finite"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written");
    let mut allowed = args.to_vec();
    allowed.push("--allow-non-finite");
    let o = adapters(&allowed);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.is_file());
}

/// `estimate --quant`: every projection's weight counted quantized (adapted or not, as
/// `load_model` stores them), everything else as without it. The fixture: hidden 64,
/// intermediate 160, 2 layers, q/o [64, 64], k/v [32, 64], gate/up [160, 64], down [64, 160],
/// 98,624 frozen parameters; the run of `estimate_prints_the_breakdown` totals 87,346,816 B with
/// a bf16 base of 2 · 98,624 = 197,248 B.
#[test]
fn estimate_counts_quantized_projection_weights() {
    use adapters_runtime::estimate::QuantFormat;
    use adapters_runtime::hf::LlamaConfig;
    use adapters_runtime::train::memory::estimate_training_quantized;
    use adapters_runtime::train::EstimateRequest;

    let cfg = fixture("tiny_llama_dora").join("model/config.json");
    let run = |quant: &str| {
        adapters(&[
            "estimate",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "dora",
            "--rank",
            "16",
            "--targets",
            "q_proj,v_proj",
            "--dtype",
            "bf16",
            "--batch-tokens",
            "4096",
            "--seq-len",
            "128",
            "--quant",
            quant,
        ])
    };
    // Per layer 4,096 (q) + 2,048 (k) + 2,048 (v) + 4,096 (o) + 3 · 10,240 (gate, up, down) =
    // 43,008 weights; two layers 86,016 quantized; the other 98,624 − 86,016 = 12,608 frozen
    // parameters stay bf16: 25,216 B.
    // NF4 (n/2 + ⌈n/64⌉ + 4·⌈⌈n/64⌉/256⌉ + 4): 4,096 → 2,120; 2,048 → 1,064; 10,240 → 5,288;
    //      per layer 2·2,120 + 2·1,064 + 3·5,288 = 22,232; base 25,216 + 2·22,232 = 69,680.
    // Q4_0 (rows · in/32 · 18): q, o 64·2·18 = 2,304; k, v 1,152; gate, up 160·2·18 = 5,760;
    //      down 64·5·18 = 5,760; per layer 24,192; base 25,216 + 2·24,192 = 73,600.
    let dense_total = 87_346_816usize;
    let dense_base = 2 * 98_624;
    let nf4_base = 25_216 + 2 * (2 * 2_120 + 2 * 1_064 + 3 * 5_288);
    let q4_0_base = 25_216 + 2 * (2 * 2_304 + 2 * 1_152 + 3 * 5_760);
    assert_eq!((nf4_base, q4_0_base), (69_680, 73_600));
    for (quant, base, total, total_text, base_text) in [
        ("nf4", nf4_base, 87_219_248, "87,219,248 B", "68.05 KiB"),
        ("q4_0", q4_0_base, 87_223_168, "87,223,168 B", "71.88 KiB"),
    ] {
        // Only the base changes.
        assert_eq!(dense_total - dense_base + base, total);
        let o = run(quant);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        for s in [
            format!("projection weights {quant}"),
            format!("86,016 projection weights in {quant}, the rest × 2 B"),
            "98,624".to_string(),
            base_text.to_string(),
            total_text.to_string(),
        ] {
            assert!(out.contains(&s), "{s} in:\n{out}");
        }
        // The library gives the same figures, exactly.
        let request = EstimateRequest {
            method: adapters_runtime::Method::Dora,
            rank: 16,
            targets: vec!["q_proj".into(), "v_proj".into()],
            dtype: adapters_runtime::BaseDType::BF16,
            batch_tokens: 4096,
            seq_len: 128,
        };
        let config = LlamaConfig::from_file(&cfg).unwrap();
        let e = estimate_training_quantized(&config, &request, QuantFormat::parse(quant)).unwrap();
        assert_eq!(e.base_bytes, base);
        assert_eq!(e.quantized_params, 86_016);
        assert_eq!(e.frozen_params, 98_624);
        assert_eq!(e.total_bytes, total);
    }
    // llama.cpp's spelling is accepted.
    assert!(run("Q4_0").status.success());
}

#[test]
fn estimate_quant_errors_name_the_formats_and_the_block() {
    let cfg = fixture("tiny_llama_dora").join("model/config.json");
    let run = |quant: &str| {
        adapters(&[
            "estimate",
            "--config",
            cfg.to_str().unwrap(),
            "--method",
            "lora",
            "--rank",
            "8",
            "--targets",
            "q_proj",
            "--quant",
            quant,
        ])
    };
    let o = run("int4");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: argument `quant`")
            && err.contains("\"int4\"")
            && err.contains("nf4, q4_0, q4_1, q5_0, q5_1, q8_0, q2k, q3k, q4k, q5k, q6k, q8k"),
        "{err}"
    );
    // Q4_K's 256-element blocks do not divide q_proj's 64 input features.
    let o = run("q4k");
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("q_proj with 64 input features") && err.contains("256"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}
