//! PEFT adapter checkpoints both ways (`save_adapter` / `load_adapter`), on models written by hand
//! as `AdapterModel`s: PEFT's own files load and reproduce PEFT's outputs (≤ 1e-6 relative in f64),
//! round trips are bit-exact, and bad input fails with every offending key named.

mod peft_support;

use adapters_runtime::candle_core::{DType, Tensor};
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::peft::save::save_adapter_with;
use adapters_runtime::peft::{self, LoadOptions, SaveOptions};
use adapters_runtime::{AdapterConfig, AdapterError, Adapters, BaseDType};
use peft_support::*;
use std::collections::HashMap;
use std::path::Path;

const CASES: [&str; 4] = ["lora_r4", "dora_r4", "dora_rslora_r8", "dora_embedding_r4"];
const F64_TOL: f64 = 1e-6;

fn adapter_dir(case: &str) -> std::path::PathBuf {
    fixture(case).join("adapter")
}

/// The bare fixture model with PEFT's adapter loaded (strict).
fn loaded(case: &str, dt: DType) -> CaseModel {
    let mut m = CaseModel::bare(case, dt, case_config(case));
    let report = peft::load_adapter(&mut m, adapter_dir(case), &LoadOptions::default()).unwrap();
    assert_eq!(report.loaded.len(), 2, "{case}: {report:?}");
    assert!(report.unexpected.is_empty() && report.missing.is_empty());
    m
}

fn y_of(case: &str) -> Tensor {
    load(&fixture(case).join("io.safetensors"))["y"].clone()
}

#[test]
fn peft_fixtures_load_and_reproduce_y() {
    for case in CASES {
        let m = loaded(case, DType::F64);
        assert_close(
            &format!("{case} y (f64)"),
            &m.forward(&CaseModel::input(case)),
            &y_of(case),
            F64_TOL,
        );
        let m = loaded(case, DType::F32);
        assert_close(
            &format!("{case} y (f32)"),
            &m.forward(&CaseModel::input(case)),
            &y_of(case),
            5e-6,
        );
    }
}

#[test]
fn tiny_llama_adapter_loads_on_all_seven_projections() {
    let mut m = Projections::tiny_llama(|_| AdapterConfig::dora(8, 16.0), None);
    let report = peft::load_adapter(
        &mut m,
        fixture("tiny_llama_dora").join("adapter"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(report.loaded.len(), 14);
    let merged = load(&fixture("tiny_llama_dora").join("merged.safetensors"));
    for (path, l, _) in &m.layers {
        let w = l.merged_weight_tensor().unwrap();
        assert_close(
            &format!("merged {path}"),
            &w,
            &merged[&format!("{path}.weight")],
            1e-5,
        );
    }
}

/// Every adapter tensor of a model by its saved name.
fn adapter_tensors<M: Adapters>(m: &M) -> HashMap<String, Tensor> {
    m.named_trainable_vars()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().clone()))
        .collect()
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    for (case, dt) in CASES
        .iter()
        .flat_map(|c| [(*c, DType::F32), (*c, DType::F64)])
    {
        let m = loaded(case, dt);
        let dir = TempDir::new("rt");
        let out = dir.join("adapter");
        peft::save_adapter(&m, &out, &SaveOptions::default()).unwrap();
        let mut back = CaseModel::bare(case, dt, case_config(case));
        peft::load_adapter(&mut back, &out, &LoadOptions::default()).unwrap();
        let (a, b) = (adapter_tensors(&m), adapter_tensors(&back));
        assert_eq!(a.len(), b.len());
        for (k, t) in &a {
            assert!(
                bit_equal(t, &b[k]),
                "{case} {dt:?}: {k} differs after the round trip"
            );
        }
        let x = CaseModel::input(case);
        assert!(
            bit_equal(&m.forward(&x), &back.forward(&x)),
            "{case} {dt:?}: outputs differ"
        );
    }
}

#[test]
fn saved_files_follow_peft() {
    let m = loaded("dora_embedding_r4", DType::F32);
    let dir = TempDir::new("files");
    let out = dir.join("adapter");
    peft::save_adapter(&m, &out, &SaveOptions::default()).unwrap();
    assert_eq!(
        entries(&out),
        ["adapter_config.json", "adapter_model.safetensors"]
    );
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let mut keys: Vec<String> = meta.tensors().into_keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "base_model.model.emb.lora_embedding_A",
            "base_model.model.emb.lora_embedding_B",
            "base_model.model.emb.lora_magnitude_vector",
            "base_model.model.fc1.lora_A.weight",
            "base_model.model.fc1.lora_B.weight",
            "base_model.model.fc1.lora_magnitude_vector",
        ]
    );
    let t = load(&out.join("adapter_model.safetensors"));
    assert_eq!(t["base_model.model.emb.lora_embedding_A"].dims(), [4, 50]);
    assert_eq!(t["base_model.model.emb.lora_embedding_B"].dims(), [16, 4]);
    assert_eq!(t["base_model.model.fc1.lora_B.weight"].dims(), [8, 4]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8);
    assert_eq!(cfg["use_dora"], true);
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["init_lora_weights"], true);
    assert_eq!(cfg["target_modules"], serde_json::json!(["emb", "fc1"]));
    assert_eq!(cfg["rank_pattern"], serde_json::json!({}));
    assert_eq!(cfg["alpha_pattern"], serde_json::json!({}));
}

#[test]
fn save_in_bf16_and_f16() {
    let m = loaded("dora_r4", DType::F32);
    for (d, st) in [
        (BaseDType::BF16, safetensors::Dtype::BF16),
        (BaseDType::F16, safetensors::Dtype::F16),
    ] {
        let dir = TempDir::new("half");
        let out = dir.join("a");
        peft::save_adapter(
            &m,
            &out,
            &SaveOptions {
                dtype: Some(d),
                ..Default::default()
            },
        )
        .unwrap();
        let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        let st_file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st_file.iter().all(|(_, v)| v.dtype() == st));
        let mut back = CaseModel::bare("dora_r4", DType::F32, case_config("dora_r4"));
        peft::load_adapter(&mut back, &out, &LoadOptions::default()).unwrap();
        let (a, b) = (adapter_tensors(&m), adapter_tensors(&back));
        for (k, t) in &a {
            let rounded = t
                .to_dtype(d.to_candle())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert!(
                bit_equal(&rounded, &b[k]),
                "{d:?}: {k} is not the rounded value"
            );
        }
    }
}

/// `fc1` r=4 α=8 and `fc2` r=2 α=3 (DoRA, rsLoRA), random values.
fn patterned_mlp() -> CaseModel {
    let c1 = AdapterConfig::dora(4, 8.0).with_rslora(true);
    let c2 = AdapterConfig::dora(2, 3.0).with_rslora(true);
    let mut m = CaseModel::bare("dora_rslora_r8", DType::F64, c1);
    if let CaseModel::Mlp(mlp) = &mut m {
        mlp.cfg2 = c2;
    }
    m.attach_adapters(&VarMap::new(), 7).unwrap();
    perturb(&m, 11, 0.3);
    m
}

#[test]
fn rank_and_alpha_patterns_round_trip() {
    let m = patterned_mlp();
    let dir = TempDir::new("pattern");
    let out = dir.join("a");
    peft::save_adapter(&m, &out, &SaveOptions::default()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    // Ties go to the first layer: r = 4, alpha = 8; fc2 differs in both.
    assert_eq!(
        (cfg["r"].clone(), cfg["lora_alpha"].clone()),
        (4.into(), 8.into())
    );
    assert_eq!(cfg["rank_pattern"], serde_json::json!({"fc2": 2}));
    assert_eq!(cfg["alpha_pattern"], serde_json::json!({"fc2": 3}));
    assert_eq!(cfg["use_rslora"], true);
    let c2 = AdapterConfig::dora(2, 3.0).with_rslora(true);
    let mut back = CaseModel::bare(
        "dora_rslora_r8",
        DType::F64,
        AdapterConfig::dora(4, 8.0).with_rslora(true),
    );
    if let CaseModel::Mlp(mlp) = &mut back {
        mlp.cfg2 = c2;
    }
    peft::load_adapter(&mut back, &out, &LoadOptions::default()).unwrap();
    let got: Vec<(usize, f64)> = back
        .adapter_layers()
        .unwrap()
        .iter()
        .map(|l| (l.rank, l.alpha))
        .collect();
    assert_eq!(got, [(4, 8.0), (2, 3.0)]);
    let x = CaseModel::input("dora_rslora_r8");
    assert!(bit_equal(&m.forward(&x), &back.forward(&x)));
}

/// Rewrites a fixture adapter with `rename` applied to every key.
fn renamed_adapter(case: &str, dir: &Path, rename: impl Fn(&str) -> String) {
    copy_dir(&adapter_dir(case), dir);
    let t = load(&adapter_dir(case).join("adapter_model.safetensors"));
    let renamed: HashMap<String, Tensor> = t.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    save(&renamed, &dir.join("adapter_model.safetensors"));
}

#[test]
fn default_infix_and_weight_suffixed_magnitude_are_accepted() {
    for case in ["dora_r4", "dora_embedding_r4"] {
        let dir = TempDir::new("infix");
        renamed_adapter(case, dir.path(), |k| {
            let k = k
                .replace(".lora_A.weight", ".lora_A.default.weight")
                .replace(".lora_B.weight", ".lora_B.default.weight");
            let k = k.replace(".lora_embedding_A", ".lora_embedding_A.default");
            if k.ends_with("lora_magnitude_vector") {
                format!("{k}.weight")
            } else {
                k
            }
        });
        let mut m = CaseModel::bare(case, DType::F64, case_config(case));
        peft::load_adapter(&mut m, dir.path(), &LoadOptions::default()).unwrap();
        assert_close(
            &format!("{case} y with .default names"),
            &m.forward(&CaseModel::input(case)),
            &y_of(case),
            F64_TOL,
        );
    }
}

fn keys_error(e: AdapterError) -> Vec<String> {
    let msg = e.to_string();
    match e {
        AdapterError::Keys { issues, .. } => issues.into_iter().map(|i| i.key).collect(),
        other => panic!("expected a Keys error, got {other:?}: {msg}"),
    }
}

#[test]
fn strict_load_lists_every_offending_key() {
    let dir = TempDir::new("strict");
    copy_dir(&adapter_dir("dora_r4"), dir.path());
    let mut t = load(&adapter_dir("dora_r4").join("adapter_model.safetensors"));
    t.insert(
        "base_model.model.fc1.lora_A.weight".into(),
        Tensor::zeros(
            (4, 15),
            DType::F64,
            &adapters_runtime::candle_core::Device::Cpu,
        )
        .unwrap(),
    );
    t.remove("base_model.model.fc2.lora_B.weight");
    t.insert(
        "base_model.model.fc9.lora_A.weight".into(),
        t["base_model.model.fc2.lora_A.weight"].clone(),
    );
    t.insert(
        "base_model.model.fc9.lora_B.weight".into(),
        t["base_model.model.fc1.lora_B.weight"].clone(),
    );
    t.insert(
        "base_model.model.fc9.lora_magnitude_vector".into(),
        t["base_model.model.fc1.lora_magnitude_vector"].clone(),
    );
    t.insert(
        "base_model.model.fc1.something".into(),
        t["base_model.model.fc1.lora_magnitude_vector"].clone(),
    );
    save(&t, &dir.join("adapter_model.safetensors"));
    let mut m = CaseModel::bare("dora_r4", DType::F64, case_config("dora_r4"));
    let err = peft::load_adapter(&mut m, dir.path(), &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("adapter_model.safetensors") && msg.contains("3 key(s)"),
        "{msg}"
    );
    assert!(
        msg.contains("`base_model.model.fc2.lora_B.weight`: expected present, found missing"),
        "{msg}"
    );
    let keys = keys_error(err);
    assert!(
        keys.contains(&"base_model.model.fc1.something".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"base_model.model.fc9.lora_A.weight".to_string()),
        "{keys:?} (not in target_modules)"
    );
    // Reading stops at the file's own problems; fix them and the model-level ones show.
    let cfg = std::fs::read_to_string(dir.join("adapter_config.json"))
        .unwrap()
        .replace("\"fc2\"", "\"fc2\", \"fc9\"");
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    t.remove("base_model.model.fc1.something");
    t.insert(
        "base_model.model.fc2.lora_B.weight".into(),
        load(&adapter_dir("dora_r4").join("adapter_model.safetensors"))
            ["base_model.model.fc2.lora_B.weight"]
            .clone(),
    );
    save(&t, &dir.join("adapter_model.safetensors"));
    let err = peft::load_adapter(&mut m, dir.path(), &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "`base_model.model.fc1.lora_A.weight`: expected shape [4, 16], found shape [4, 15]"
        ),
        "{msg}"
    );
    assert!(msg.contains("no adapted layer `fc9` in the model"), "{msg}");
    let keys = keys_error(err);
    assert!(
        keys.contains(&"base_model.model.fc1.lora_A.weight".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"base_model.model.fc9.lora_A.weight".to_string()),
        "{keys:?}"
    );
    assert_eq!(
        m.adapter_layers().unwrap().len(),
        0,
        "nothing attached after a failed load"
    );
}

#[test]
fn strict_load_checks_the_declared_config_lenient_does_not() {
    let mut m = CaseModel::bare("lora_r4", DType::F64, AdapterConfig::lora(8, 8.0));
    let err =
        peft::load_adapter(&mut m, adapter_dir("lora_r4"), &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("rank 8 (as the model declares")
            && msg.contains("rank 4 (adapter_config.json)"),
        "{msg}"
    );
    let lenient = LoadOptions {
        strict: false,
        ..Default::default()
    };
    // Keys stay strict while the configuration comes from the file.
    let from_file = LoadOptions {
        config_from_file: true,
        ..Default::default()
    };
    let mut renamed = CaseModel::bare("lora_r4", DType::F64, AdapterConfig::lora(8, 8.0));
    let dir = TempDir::new("cfg-from-file");
    renamed_adapter("lora_r4", dir.path(), |k| k.replace(".fc2.", ".other."));
    let err = peft::load_adapter(&mut renamed, dir.path(), &from_file)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("base_model.model.other.lora_A.weight"),
        "{err}"
    );
    let mut from_file_model = CaseModel::bare("lora_r4", DType::F64, AdapterConfig::lora(8, 8.0));
    peft::load_adapter(&mut from_file_model, adapter_dir("lora_r4"), &from_file).unwrap();
    assert_close(
        "lora_r4 y (config from file)",
        &from_file_model.forward(&CaseModel::input("lora_r4")),
        &y_of("lora_r4"),
        F64_TOL,
    );

    let report = peft::load_adapter(&mut m, adapter_dir("lora_r4"), &lenient).unwrap();
    assert_eq!(report.loaded, ["fc1", "fc2"]);
    assert_close(
        "lora_r4 y (lenient)",
        &m.forward(&CaseModel::input("lora_r4")),
        &y_of("lora_r4"),
        F64_TOL,
    );
}

#[test]
fn lenient_load_reports_unexpected_and_missing() {
    let dir = TempDir::new("lenient");
    renamed_adapter("lora_r4", dir.path(), |k| k.replace(".fc2.", ".other."));
    let mut m = CaseModel::bare("lora_r4", DType::F64, case_config("lora_r4"));
    let err = peft::load_adapter(&mut m, dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("base_model.model.other.lora_A.weight"),
        "{err}"
    );
    let report = peft::load_adapter(
        &mut m,
        dir.path(),
        &LoadOptions {
            strict: false,
            ..Default::default()
        },
    );
    // `other` is not a target of the config (fc1, fc2): the file itself is inconsistent.
    let msg = report.unwrap_err().to_string();
    assert!(msg.contains("target_modules"), "{msg}");
    // With the config naming it, lenient loading reports it and the missing fc2.
    let cfg = std::fs::read_to_string(dir.join("adapter_config.json"))
        .unwrap()
        .replace("\"fc2\"", "\"other\"");
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    let mut m = CaseModel::bare("lora_r4", DType::F64, case_config("lora_r4"));
    let report = peft::load_adapter(
        &mut m,
        dir.path(),
        &LoadOptions {
            strict: false,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (report.loaded, report.unexpected),
        (vec!["fc1".to_string()], vec!["other".to_string()])
    );
}

#[test]
fn loaded_tensors_are_registered_in_the_varmap() {
    let varmap = VarMap::new();
    let mut m = CaseModel::bare("dora_r4", DType::F32, case_config("dora_r4"));
    peft::load_adapter(
        &mut m,
        adapter_dir("dora_r4"),
        &LoadOptions {
            varmap: Some(&varmap),
            ..Default::default()
        },
    )
    .unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "fc1.lora_A.weight",
            "fc1.lora_B.weight",
            "fc1.lora_magnitude_vector",
            "fc2.lora_A.weight",
            "fc2.lora_B.weight",
            "fc2.lora_magnitude_vector"
        ]
    );
    let model_vars = m.named_trainable_vars().unwrap();
    for (k, v) in &model_vars {
        assert_eq!(
            data[k].as_tensor().id(),
            v.as_tensor().id(),
            "{k} is the model's own Var"
        );
    }
}

#[test]
fn interrupted_save_leaves_the_previous_adapter() {
    let dir = TempDir::new("atomic");
    let out = dir.join("adapter");
    let first = loaded("lora_r4", DType::F64);
    peft::save_adapter(&first, &out, &SaveOptions::default()).unwrap();
    std::fs::write(out.join("README.md"), "notes").unwrap();
    let before = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let config_before = std::fs::read(out.join("adapter_config.json")).unwrap();
    let second = patterned_mlp();
    let err = save_adapter_with(&second, &out, &SaveOptions::default(), |staged| {
        assert!(staged.join("adapter_model.safetensors").is_file());
        Err(AdapterError::InvalidState {
            layer: "test".into(),
            op: "save",
            reason: "interrupted".into(),
        })
    })
    .unwrap_err();
    assert!(err.to_string().contains("interrupted"));
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read(out.join("adapter_config.json")).unwrap(),
        config_before
    );
    assert_eq!(dir.entries(), ["adapter"], "no staging folder remains");
    // A completed save replaces the adapter and keeps the user's other files.
    peft::save_adapter(&second, &out, &SaveOptions::default()).unwrap();
    assert_ne!(
        std::fs::read(out.join("adapter_model.safetensors")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "notes"
    );
    assert_eq!(dir.entries(), ["adapter"]);
}

#[test]
fn unrepresentable_or_empty_models_are_refused() {
    let dir = TempDir::new("unrep");
    let mut m = CaseModel::bare("dora_r4", DType::F64, AdapterConfig::dora(4, 8.0));
    if let CaseModel::Mlp(mlp) = &mut m {
        mlp.cfg2 = AdapterConfig::lora(4, 8.0);
    }
    let bare_err = peft::save_adapter(&m, dir.join("a"), &SaveOptions::default()).unwrap_err();
    assert!(
        matches!(bare_err, AdapterError::NoAdapters { .. }),
        "{bare_err}"
    );
    m.attach_adapters(&VarMap::new(), 1).unwrap();
    let err = peft::save_adapter(&m, dir.join("a"), &SaveOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("fc2") && err.contains("use_dora"), "{err}");
    assert!(
        dir.entries().is_empty(),
        "nothing written: {:?}",
        dir.entries()
    );
}

/// Damages a copied adapter folder.
type Damage = Box<dyn Fn(&Path)>;

#[test]
fn bad_files_fail_clearly_and_attach_nothing() {
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "missing config",
            Box::new(|d: &Path| std::fs::remove_file(d.join("adapter_config.json")).unwrap()),
            "adapter_config.json",
        ),
        (
            "missing weights",
            Box::new(|d: &Path| std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap()),
            "adapter_model.safetensors",
        ),
        (
            "bad JSON",
            Box::new(|d: &Path| {
                std::fs::write(d.join("adapter_config.json"), "{\"peft_type\": \"LORA\",").unwrap()
            }),
            "invalid JSON",
        ),
        (
            "wrong peft_type",
            Box::new(|d: &Path| {
                let c = std::fs::read_to_string(d.join("adapter_config.json"))
                    .unwrap()
                    .replace("\"LORA\"", "\"IA3\"");
                std::fs::write(d.join("adapter_config.json"), c).unwrap()
            }),
            "`peft_type` is \"IA3\", expected \"LORA\"",
        ),
        (
            "truncated weights",
            Box::new(|d: &Path| {
                let b = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
                std::fs::write(d.join("adapter_model.safetensors"), &b[..b.len() - 10]).unwrap()
            }),
            "not a valid safetensors file",
        ),
        (
            "corrupt header",
            Box::new(|d: &Path| {
                let mut b = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
                b[10] = b'#';
                std::fs::write(d.join("adapter_model.safetensors"), &b).unwrap()
            }),
            "not a valid safetensors file",
        ),
        (
            "empty weights file",
            Box::new(|d: &Path| std::fs::write(d.join("adapter_model.safetensors"), b"").unwrap()),
            "not a valid safetensors file",
        ),
    ];
    for (what, damage, expect) in cases {
        let dir = TempDir::new("bad");
        copy_dir(&adapter_dir("dora_r4"), dir.path());
        damage(dir.path());
        let mut m = CaseModel::bare("dora_r4", DType::F64, case_config("dora_r4"));
        let err = peft::load_adapter(&mut m, dir.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert!(
            err.contains(&dir.path().display().to_string()),
            "{what}: names the file: {err}"
        );
        assert_eq!(
            m.adapter_layers().unwrap().len(),
            0,
            "{what}: nothing attached"
        );
    }
    let err = peft::load_adapter(
        &mut loaded("lora_r4", DType::F64),
        adapter_dir("lora_r4"),
        &LoadOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("already has an adapter"), "{err}");
}

/// Writes what `scripts/peft_roundtrip.py` checks with Python PEFT into `$PEFT_ROUNDTRIP_OUT`
/// (into a temp folder otherwise, as a smoke test): the fixture adapters re-saved by us, random
/// adapters with rank / alpha patterns and our outputs for them, and a merged tiny Llama.
#[test]
fn export_for_python_peft() {
    let tmp = TempDir::new("export");
    let root =
        std::env::var_os("PEFT_ROUNDTRIP_OUT").map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let opts = SaveOptions::default();
    for case in CASES {
        let m = loaded(case, DType::F64);
        let dir = root.join("resaved").join(case);
        peft::save_adapter(&m, dir.join("adapter"), &opts).unwrap();
        let y = m.forward(&CaseModel::input(case));
        save(
            &[("y".to_string(), y)].into_iter().collect(),
            &dir.join("y.safetensors"),
        );
    }
    // Random DoRA + rsLoRA MLP with per-layer rank and alpha.
    let m = patterned_mlp();
    let dir = root.join("random").join("mlp");
    peft::save_adapter(&m, dir.join("adapter"), &opts).unwrap();
    let x = CaseModel::input("dora_rslora_r8");
    save(
        &[
            ("x".to_string(), x.clone()),
            ("y".to_string(), m.forward(&x)),
        ]
        .into_iter()
        .collect(),
        &dir.join("io.safetensors"),
    );
    // Random LoRA on an embedding + linear, per-layer ranks.
    let mut e = CaseModel::bare("dora_embedding_r4", DType::F64, AdapterConfig::lora(3, 5.0));
    if let CaseModel::Emb(em) = &mut e {
        em.cfg_fc1 = AdapterConfig::lora(4, 8.0);
    }
    e.attach_adapters(&VarMap::new(), 3).unwrap();
    perturb(&e, 21, 0.3);
    let dir = root.join("random").join("emb");
    peft::save_adapter(&e, dir.join("adapter"), &opts).unwrap();
    let x = CaseModel::input("dora_embedding_r4");
    save(
        &[
            ("x".to_string(), x.clone()),
            ("y".to_string(), e.forward(&x)),
        ]
        .into_iter()
        .collect(),
        &dir.join("io.safetensors"),
    );
    // tiny Llama: PEFT's adapter re-saved by us, and a random one (embedding too) merged by us.
    let mut t = Projections::tiny_llama(|_| AdapterConfig::dora(8, 16.0), None);
    peft::load_adapter(
        &mut t,
        fixture("tiny_llama_dora").join("adapter"),
        &LoadOptions::default(),
    )
    .unwrap();
    peft::save_adapter(&t, root.join("llama_resaved/adapter"), &opts).unwrap();
    let cfg = |p: &str| match p {
        p if p.ends_with("q_proj") => AdapterConfig::dora(4, 8.0),
        p if p.ends_with("v_proj") => AdapterConfig::dora(2, 4.0),
        "model.layers.1.mlp.down_proj" => AdapterConfig::dora(8, 5.0),
        _ => AdapterConfig::dora(8, 16.0),
    };
    let mut r = Projections::tiny_llama(cfg, Some(AdapterConfig::dora(4, 8.0)));
    r.attach_adapters(&VarMap::new(), 5).unwrap();
    perturb(&r, 31, 0.05);
    let adapter = root.join("llama_random/adapter");
    peft::save_adapter(&r, &adapter, &opts).unwrap();
    let merged = root.join("llama_random/merged");
    let mo = peft::MergeOptions {
        overwrite: true,
        progress: false,
        allow_non_finite: false,
    };
    peft::merge_checkpoint(
        &fixture("tiny_llama_dora").join("model"),
        &adapter,
        &merged,
        &mo,
    )
    .unwrap();
    let saved = load(&merged.join("model.safetensors"));
    for (path, l, _) in &r.layers {
        assert!(
            bit_equal(
                &l.merged_weight_tensor().unwrap(),
                &saved[&format!("{path}.weight")]
            ),
            "{path}"
        );
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["rank_pattern"]["model.layers.0.self_attn.v_proj"], 2);
    assert_eq!(cfg["rank_pattern"]["model.embed_tokens"], 4);
    assert_eq!(cfg["alpha_pattern"]["model.layers.1.mlp.down_proj"], 5);
}
