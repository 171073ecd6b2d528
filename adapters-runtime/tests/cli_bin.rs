//! The built `adapters` binary: `inspect`, `merge` and `estimate` on the workspace's PEFT fixtures,
//! and a failing run's exit status and message.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/peft")
        .join(case)
}

fn adapters(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adapters"))
        .args(args)
        .output()
        .expect("running adapters")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

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
    use std::process::Stdio;
    let dir = fixture("tiny_llama_dora").join("adapter");
    // Closed pipe: the reader is gone before the command writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_adapters"))
        .args(["inspect", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
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
