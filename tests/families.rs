//! Model families beyond Llama — Qwen2 (tied and untied), Qwen3, Mistral with a sliding window,
//! Gemma 2 (soft-capping, (1 + w) norms, GeGLU, alternating sliding layers), Gemma 3 text (q/k
//! norms, a second RoPE base for the sliding layers) —
//! against transformers and PEFT goldens (`scripts/make_family_fixtures.py`,
//! `tests/fixtures/families/`): base and adapted logits, adapter gradients, PEFT's trainable
//! count, merged weights; and families this model does not implement refused by name.

mod common;

use adapters_runtime::candle_core::{DType, Device, Tensor};
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::hf::{Family, LlamaConfig};
use adapters_runtime::models::llama::{load_pretrained, BaseMode, Llama};
use adapters_runtime::{load_adapter, merge_checkpoint, Adapters, LoadOptions, MergeOptions};
use common::{assert_close, fixtures_root, test_device};
use std::collections::HashMap;
use std::path::PathBuf;

const CASES: [(&str, Family); 7] = [
    ("qwen2_tied", Family::Qwen2),
    ("qwen2_untied", Family::Qwen2),
    ("qwen3", Family::Qwen3),
    ("mistral", Family::Mistral),
    ("gemma2", Family::Gemma2),
    ("gemma3", Family::Gemma3),
    ("phi3", Family::Phi3),
];

fn case_dir(case: &str) -> PathBuf {
    fixtures_root().join("families").join(case)
}

fn io(case: &str) -> HashMap<String, Tensor> {
    let p = case_dir(case).join("io.safetensors");
    adapters_runtime::candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

fn case_json(case: &str) -> serde_json::Value {
    let p = case_dir(case).join("case.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn model(case: &str) -> Llama {
    load_pretrained(
        &case_dir(case).join("model"),
        DType::F32,
        &test_device(),
        BaseMode::Frozen,
    )
    .unwrap_or_else(|e| panic!("{case}: {e}"))
    .model
}

fn ids(io: &HashMap<String, Tensor>) -> Tensor {
    io["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_device(&test_device())
        .unwrap()
}

/// Each family's logits equal transformers' (eager attention) on the tiny random checkpoint.
#[test]
fn logits_equal_transformers() {
    for (case, family) in CASES {
        let m = model(case);
        assert_eq!(m.config().family(), family, "{case}");
        let io = io(case);
        assert_close(
            &format!("{case}: logits"),
            &m.forward(&ids(&io)).unwrap(),
            &io["logits_base"],
            1e-5,
        );
    }
}

/// A PEFT-saved DoRA adapter (all-linear) loads strictly and gives PEFT's logits and gradients;
/// attached by us to the same modules, the trainable count equals PEFT's.
#[test]
fn peft_adapters_load_and_match() {
    for (case, _) in CASES {
        let io = io(case);
        let ids = ids(&io);
        let mut m = model(case);
        // Keys and shapes strict; r = 4, alpha = 8 from the file (the model declares 8 / 16).
        let opts = LoadOptions {
            config_from_file: true,
            ..LoadOptions::default()
        };
        load_adapter(&mut m, case_dir(case).join("adapter"), &opts)
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let logits = m.forward(&ids).unwrap();
        assert_close(
            &format!("{case}: adapted logits"),
            &logits,
            &io["logits_adapter"],
            1e-5,
        );
        // d(sum(logits · g)) / d(adapter tensor) against PEFT's.
        let g = io["g"].to_device(&test_device()).unwrap();
        let grads = (&logits * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut checked = 0;
        for (name, v) in m.named_trainable_vars().unwrap() {
            let key = format!("grad.base_model.model.{name}");
            let want = io
                .get(&key)
                .or_else(|| io.get(&format!("grad.{name}")))
                .unwrap_or_else(|| panic!("{case}: no golden {key}"));
            let got = grads.get(v.as_tensor()).unwrap();
            assert_close(&format!("{case}: {name}"), got, want, 1e-4);
            checked += 1;
        }
        let goldens = io.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(checked, goldens, "{case}: every adapter tensor (A, B, m)");
        // Our own attach on the same modules: PEFT's trainable count.
        let mut fresh = model(case);
        let varmap = VarMap::new();
        let targets = adapters_runtime::Targets::parse_list(
            "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,qkv_proj,gate_up_proj",
        );
        let cfg = adapters_runtime::AdapterConfig {
            method: adapters_runtime::Method::Dora,
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            rslora: false,
            init: adapters_runtime::Init::Kaiming,
        };
        fresh
            .attach_adapters_with(&varmap, 1, &mut |path, _| {
                targets.matches(path).then_some(cfg)
            })
            .unwrap();
        let want = case_json(case)["adapter"]["trainable_params"].as_u64();
        let want = want.unwrap_or_else(|| panic!("{case}: no trainable count"));
        assert_eq!(fresh.trainable_params().unwrap() as u64, want, "{case}");
    }
}

/// `merge_checkpoint` equals PEFT's `merge_and_unload`; the merged folder loads as the same
/// family and computes the adapted logits.
#[test]
fn merge_equals_peft() {
    let tmp = std::env::temp_dir().join(format!("adapters-families-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let opts = MergeOptions::default();
    for (case, family) in CASES {
        let dir = case_dir(case);
        let out = tmp.join(case);
        merge_checkpoint(&dir.join("model"), &dir.join("adapter"), &out, &opts).unwrap();
        let ours = adapters_runtime::candle_core::safetensors::load(
            out.join("model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let peft = adapters_runtime::candle_core::safetensors::load(
            dir.join("merged.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(ours.len(), peft.len(), "{case}: same keys");
        for (k, want) in &peft {
            assert_close(&format!("{case}: merged {k}"), &ours[k], want, 1e-6);
        }
        let m = load_pretrained(&out, DType::F32, &test_device(), BaseMode::Frozen)
            .unwrap()
            .model;
        assert_eq!(m.config().family(), family);
        let io = io(case);
        assert_close(
            &format!("{case}: merged model"),
            &m.forward(&ids(&io)).unwrap(),
            &io["logits_adapter"],
            1e-5,
        );
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// Every adapter tensor of every layer trains in each family (gradient at step 1, non-zero at
/// step 2), and the loss falls.
#[test]
fn every_family_trains() {
    for (case, _) in CASES {
        let io = io(case);
        let all = ids(&io);
        let batch = common::next_token_batch(&all);
        let mut m = model(case);
        let varmap = VarMap::new();
        m.attach_adapters(&varmap, 4).unwrap();
        common::train_four_steps(&m, &batch, 1e-2, case);
    }
}

/// Families and settings the model does not implement are refused, naming the field and what
/// is supported — never loaded as a Llama.
#[test]
fn unsupported_configs_are_refused() {
    let dir = fixtures_root().join("families/unsupported");
    for (name, field) in [
        ("llama_yarn_rope_scaling", "rope_type"),
        ("llama_yarn_rope_parameters", "rope_type"),
        ("qwen2_use_sliding_window", "use_sliding_window"),
    ] {
        let err = LlamaConfig::from_file(&dir.join(name).join("config.json"))
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"))
            .to_string();
        assert!(err.contains(field), "{name}: {err}");
    }
    // A family this model does not implement, by `model_type` and by `architectures`.
    let tmp = std::env::temp_dir().join(format!("adapters-family-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for (i, extra) in [
        r#""model_type": "gpt_neox""#,
        r#""architectures": ["GPTNeoXForCausalLM"]"#,
        r#""model_type": "mistral", "attention_bias": true"#,
        r#""model_type": "qwen2", "mlp_bias": true"#,
    ]
    .iter()
    .enumerate()
    {
        let p = tmp.join(format!("config{i}.json"));
        std::fs::write(
            &p,
            format!(
                r#"{{"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "vocab_size": 96, {extra}}}"#
            ),
        )
        .unwrap();
        let err = LlamaConfig::from_file(&p).err().unwrap().to_string();
        match i {
            0 | 1 => {
                assert!(err.contains("gpt_neox") || err.contains("GPTNeoX"), "{err}");
                assert!(
                    err.contains("qwen3") || err.contains("Qwen3ForCausalLM"),
                    "{err}"
                );
            }
            2 => assert!(err.contains("attention_bias"), "{err}"),
            _ => assert!(err.contains("mlp_bias"), "{err}"),
        }
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// With `FAMILIES_ROUNDTRIP_OUT=DIR` set, writes for each family an adapter we trained (4 DoRA
/// steps on every projection), our adapted logits and our merged checkpoint, for
/// `scripts/families_roundtrip.py` to load with transformers + PEFT (not run by CI).
#[test]
fn export_for_python_peft() {
    let Some(out) = std::env::var_os("FAMILIES_ROUNDTRIP_OUT") else {
        return;
    };
    let out = PathBuf::from(out);
    for (case, _) in CASES {
        let io = io(case);
        let all = ids(&io);
        let batch = common::next_token_batch(&all);
        let mut m = model(case);
        let varmap = VarMap::new();
        let spec = adapters_runtime::TargetSpec::new(
            adapters_runtime::AdapterConfig {
                method: adapters_runtime::Method::Dora,
                rank: 4,
                alpha: 8.0,
                dropout: 0.0,
                rslora: false,
                init: adapters_runtime::Init::Kaiming,
            },
            "all-linear",
        );
        m.attach_adapters_matching(&varmap, 7, &spec).unwrap();
        common::train_four_steps(&m, &batch, 5e-2, case);
        let dir = out.join(case);
        adapters_runtime::save_adapter(&m, dir.join("adapter"), &Default::default()).unwrap();
        let logits = m.forward(&all).unwrap();
        adapters_runtime::candle_core::safetensors::save(
            &HashMap::from([
                ("input_ids".to_string(), io["input_ids"].clone()),
                ("logits".to_string(), logits),
            ]),
            dir.join("ours.safetensors"),
        )
        .unwrap();
        adapters_runtime::hf::save_model_folder(
            &dir.join("merged"),
            m.config(),
            &m.base_tensors(true).unwrap(),
            &[],
        )
        .unwrap();
        std::fs::write(
            dir.join("model_dir"),
            case_dir(case).join("model").to_str().unwrap(),
        )
        .unwrap();
    }
}
