//! GGUF bases: llama.cpp-converted files (made by `scripts/make_gguf_fixtures.py` with gguf-py,
//! their goldens by transformers' own GGUF loading) load as the HF model, train DoRA over the
//! quantized projections, save HF-layout adapters, and merge back to GGUF or to HF checkpoints.

mod common;

use adapters_runtime::candle_core::{DType, Device, Tensor};
use adapters_runtime::candle_nn::VarMap;
use adapters_runtime::gguf::{inspect_gguf, GgufFile};
use adapters_runtime::hf::model_folder::save_model_folder;
use adapters_runtime::models::llama::{load_gguf, load_model, load_pretrained, BaseMode, Llama};
use adapters_runtime::train::Batch;
use adapters_runtime::{
    load_adapter, merge_checkpoint, save_adapter, Adapters, LoadOptions, MergeOptions, SaveOptions,
};
use common::{assert_close, fixtures_root, rel_err, train_four_steps};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `(tag, file)` of every fixture file.
const FILES: [(&str, &str); 6] = [
    ("f32", "tiny_llama_f32.gguf"),
    ("f16", "tiny_llama_f16.gguf"),
    ("q8_0", "tiny_llama_q8_0.gguf"),
    ("q4_0", "tiny_llama_q4_0.gguf"),
    ("q4_1", "tiny_llama_q4_1.gguf"),
    ("k", "tiny_llama_k.gguf"),
];

fn dir() -> PathBuf {
    fixtures_root().join("gguf")
}

fn expected() -> HashMap<String, Tensor> {
    let p = dir().join("expected.safetensors");
    adapters_runtime::candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

fn ids() -> Tensor {
    expected()["input_ids"].to_dtype(DType::U32).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adapters-gguf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load(file: &str) -> Llama {
    load_gguf(&dir().join(file), DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .model
}

/// The projection weight `hf` of a model, dense (dequantized when quantized).
fn weight(m: &Llama, hf: &str) -> Tensor {
    m.base_tensors(false)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == hf)
        .unwrap_or_else(|| panic!("no {hf}"))
        .1
}

/// Every file: the logits equal transformers' GGUF loading of the same file (same dequantized
/// weights, same un-permutation), and the dequantized projections equal gguf-py's, in HF layout.
#[test]
fn logits_and_weights_equal_transformers_gguf_loading() {
    let exp = expected();
    let ids = ids();
    for (tag, file) in FILES {
        let m = load(file);
        let logits = m.forward(&ids).unwrap();
        assert_close(
            &format!("{file}: logits vs transformers"),
            &logits,
            &exp[&format!("{tag}.logits")],
            2e-5,
        );
        let mut checked = 0;
        for (key, want) in &exp {
            let Some(hf) = key.strip_prefix(&format!("{tag}.")) else {
                continue;
            };
            if !hf.ends_with(".weight") {
                continue;
            }
            assert_close(&format!("{file}: {hf}"), &weight(&m, hf), want, 1e-6);
            checked += 1;
        }
        assert!(checked >= 2, "{file}: {checked} weight goldens");
    }
    // The F32 file is the HF original: our logits equal the HF checkpoint's.
    let f32_logits = load("tiny_llama_f32.gguf").forward(&ids).unwrap();
    assert_close("f32 vs HF", &f32_logits, &exp["reference.logits"], 1e-5);
}

/// Quantized projections stay quantized (the base is the file's bytes), the rest is dense; the
/// configuration comes from the metadata.
#[test]
fn quantized_projections_stay_quantized() {
    let m = load("tiny_llama_k.gguf");
    let cfg = m.config();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers
        ),
        (256, 512, 2)
    );
    assert_eq!(
        (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim()),
        (4, 2, 64)
    );
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(cfg.rope_theta(), 50_000.0);
    let mut quantized = 0;
    m.for_each_layer(&mut |path, layer| {
        if !layer.is_embedding() {
            assert!(layer.base_is_quantized(), "{path} is not quantized");
            quantized += 1;
        }
    })
    .unwrap();
    assert_eq!(quantized, 14);
    let ins = inspect_gguf(&dir().join("tiny_llama_k.gguf")).unwrap();
    assert_eq!(ins.rows.len(), 21);
    let text = ins.to_string();
    for want in [
        "Q4K",
        "Q6K",
        "blk.0.attn_q.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "gpt2, 96 tokens",
    ] {
        assert!(text.contains(want), "inspect output lacks {want}:\n{text}");
    }
}

fn train_batch() -> Batch {
    common::next_token_batch(&ids())
}

/// Trains DoRA on every projection and the embedding over `file` for 4 steps: every adapter
/// tensor gets a gradient at step 1 and a non-zero one at step 2, and the loss falls.
fn train(file: &str) -> Llama {
    let mut m = load(file);
    let varmap = VarMap::new();
    m.attach_adapters(&varmap, 9).unwrap();
    train_four_steps(&m, &train_batch(), 2e-2, file);
    m
}

/// The dequantized HF checkpoint of a GGUF file (what transformers loads from it).
fn dequantized_hf(file: &str, out: &Path) {
    let m = load(file);
    save_model_folder(out, m.config(), &m.base_tensors(false).unwrap(), &[]).unwrap();
}

/// An adapter trained over a quantized GGUF base is an HF-layout adapter: loaded into the
/// dequantized HF checkpoint it gives the same logits as the model it was trained in.
#[test]
fn adapters_trained_over_gguf_apply_to_the_hf_checkpoint() {
    let tmp = scratch("hf-layout");
    for file in ["tiny_llama_q4_0.gguf", "tiny_llama_k.gguf"] {
        let m = train(file);
        let adapter = tmp.join(format!("{file}.adapter"));
        save_adapter(&m, &adapter, &SaveOptions::default()).unwrap();
        let hf = tmp.join(format!("{file}.hf"));
        dequantized_hf(file, &hf);
        let mut dense = load_pretrained(&hf, DType::F32, &Device::Cpu, BaseMode::Frozen)
            .unwrap()
            .model;
        load_adapter(&mut dense, &adapter, &LoadOptions::default()).unwrap();
        let ids = ids();
        assert_close(
            &format!("{file}: adapter over HF vs over GGUF"),
            &dense.forward(&ids).unwrap(),
            &m.forward(&ids).unwrap(),
            1e-5,
        );
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// `merge` with a GGUF base: to GGUF (re-quantized to each tensor's own type: only the merged
/// tensors change, the merged model reloads and computes the adapted model within the
/// re-quantization error) and to an HF folder (dequantized: equal to the adapted model).
#[test]
fn merging_into_gguf_and_hf() {
    let tmp = scratch("merge");
    let opts = MergeOptions {
        overwrite: false,
        progress: false,
        allow_non_finite: false,
    };
    for (file, tol) in [("tiny_llama_q8_0.gguf", 0.03), ("tiny_llama_k.gguf", 0.2)] {
        let m = train(file);
        let adapter = tmp.join(format!("{file}.adapter"));
        save_adapter(&m, &adapter, &SaveOptions::default()).unwrap();
        let base = dir().join(file);
        let ids = ids();
        let adapted = m.forward(&ids).unwrap();

        let out = tmp.join(format!("merged-{file}"));
        let report = merge_checkpoint(&base, &adapter, &out, &opts).unwrap();
        assert_eq!(
            report.merged.len(),
            15,
            "{file}: embedding + 14 projections"
        );
        let merged = load_gguf(&out, DType::F32, &Device::Cpu).unwrap().model;
        let err = rel_err(&merged.forward(&ids).unwrap(), &adapted);
        assert!(err < tol, "{file}: merged GGUF vs adapted model {err}");
        // Same types, same metadata, untouched tensors byte-identical.
        let (a, b) = (
            GgufFile::open(&base).unwrap(),
            GgufFile::open(&out).unwrap(),
        );
        assert_eq!(a.tensor_names(), b.tensor_names());
        for (name, info) in a.tensor_infos() {
            assert_eq!(info.ggml_dtype, b.tensor_infos()[name].ggml_dtype, "{name}");
        }
        for key in a.metadata().keys() {
            assert!(
                b.metadata().contains_key(key),
                "{file}: metadata {key} lost"
            );
        }
        let (mut a, mut b) = (a, b);
        for name in [
            "blk.0.attn_norm.weight",
            "output.weight",
            "output_norm.weight",
        ] {
            let (x, y) = (
                a.tensor(name, &Device::Cpu).unwrap(),
                b.tensor(name, &Device::Cpu).unwrap(),
            );
            assert_eq!(x.data().unwrap(), y.data().unwrap(), "{name} changed");
        }

        let out_hf = tmp.join(format!("merged-{file}-hf"));
        merge_checkpoint(&base, &adapter, &out_hf, &opts).unwrap();
        let hf = load_pretrained(&out_hf, DType::F32, &Device::Cpu, BaseMode::Frozen)
            .unwrap()
            .model;
        assert_close(
            &format!("{file}: merged HF folder vs adapted model"),
            &hf.forward(&ids).unwrap(),
            &adapted,
            1e-5,
        );
        // An existing output needs --force.
        assert!(merge_checkpoint(&base, &adapter, &out, &opts).is_err());
    }
    let _ = std::fs::remove_dir_all(tmp);
}

/// `load_model` dispatches on the path; a GGUF file is not re-quantized.
#[test]
fn load_model_dispatch() {
    let f = dir().join("tiny_llama_q8_0.gguf");
    assert!(load_model(&f, DType::F32, &Device::Cpu, None).is_ok());
    let err = load_model(
        &f,
        DType::F32,
        &Device::Cpu,
        Some(adapters_runtime::estimate::QuantFormat::Nf4),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("already quantized"), "{err}");
}

/// Hostile files: a typed error naming the file, never a panic or a huge allocation.
#[test]
fn hostile_gguf_files_are_errors() {
    let tmp = scratch("hostile");
    let good = std::fs::read(dir().join("tiny_llama_q4_0.gguf")).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        (
            "bad magic",
            b"GGUX"
                .iter()
                .copied()
                .chain(good[4..].iter().copied())
                .collect(),
        ),
        ("truncated header", good[..100].to_vec()),
        ("truncated data", good[..good.len() - 10].to_vec()),
    ];
    let mut huge_count = good.clone();
    huge_count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("huge tensor count", huge_count));
    let mut huge_meta = good.clone();
    huge_meta[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    cases.push(("huge metadata count", huge_meta));
    // Found by the `gguf_file` fuzz target: a tensor with a zero dimension (candle read it
    // through a dangling, misaligned pointer: undefined behaviour, a panic with debug assertions).
    let empty = std::fs::read(fixtures_root().join("fuzz/gguf_empty_tensor.gguf")).unwrap();
    cases.push(("empty tensor", empty));
    let mut bad_version = good.clone();
    bad_version[4..8].copy_from_slice(&99u32.to_le_bytes());
    cases.push(("version 99", bad_version));
    // Every single-byte corruption of the first KiB (the header) must be an error or load.
    for i in (0..1024.min(good.len())).step_by(7) {
        let mut c = good.clone();
        c[i] ^= 0xff;
        cases.push(("byte flip", c));
    }
    let mut errors = 0;
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let p = tmp.join(format!("case{i}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        match load_gguf(&p, DType::F32, &Device::Cpu) {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&p.display().to_string()) || msg.contains("case"),
                    "{what}: {msg}"
                );
                errors += 1;
            }
            Ok(_) => assert_eq!(*what, "byte flip", "{what} loaded"),
        }
    }
    assert!(errors >= 7);
    let _ = std::fs::remove_dir_all(tmp);
}

/// Rewrites the Q8_0 fixture with `edit` applied to its (name, tensor) list and metadata.
fn rewritten(
    tmp: &Path,
    name: &str,
    edit: impl FnOnce(
        &mut Vec<(String, adapters_runtime::candle_core::quantized::QTensor)>,
        &mut Vec<(
            String,
            adapters_runtime::candle_core::quantized::gguf_file::Value,
        )>,
    ),
) -> PathBuf {
    let mut f = GgufFile::open(&dir().join("tiny_llama_q8_0.gguf")).unwrap();
    let mut tensors: Vec<_> = f
        .tensor_names()
        .into_iter()
        .map(|n| {
            let t = f.tensor(&n, &Device::Cpu).unwrap();
            (n, t)
        })
        .collect();
    let mut meta: Vec<_> = f
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors, &mut meta);
    let p = tmp.join(name);
    let mut w = std::fs::File::create(&p).unwrap();
    let m: Vec<(&str, &_)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t: Vec<(&str, &_)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    adapters_runtime::candle_core::quantized::gguf_file::write(&mut w, &m, &t).unwrap();
    p
}

/// Files whose header parses but whose content does not fit the model: a zero or other
/// non-power-of-two alignment in any integer type candle reads (candle divided by it), an extra
/// layer, a tensor spelled twice (`blk.01` and `blk.1`), a missing tensor — each a typed error.
#[test]
fn inconsistent_gguf_files_are_errors() {
    use adapters_runtime::candle_core::quantized::gguf_file::Value;
    let tmp = scratch("inconsistent");
    let mut cases = Vec::new();
    for (i, v) in [
        Value::U8(0),
        Value::U16(0),
        Value::I32(0),
        Value::U32(0),
        Value::U8(3),
    ]
    .into_iter()
    .enumerate()
    {
        cases.push((
            "alignment",
            rewritten(&tmp, &format!("align{i}.gguf"), |_, m| {
                m.push(("general.alignment\0".into(), v));
            }),
        ));
    }
    cases.push((
        "not part of the model",
        rewritten(&tmp, "extra.gguf", |t, _| {
            let norm = t
                .iter()
                .position(|(n, _)| n == "blk.1.attn_norm.weight")
                .unwrap();
            let data = t[norm].1.dequantize(&Device::Cpu).unwrap();
            let q = adapters_runtime::candle_core::quantized::QTensor::quantize(
                &data,
                adapters_runtime::candle_core::quantized::GgmlDType::F32,
            )
            .unwrap();
            t.push(("blk.7.attn_norm.weight".into(), q));
        }),
    ));
    cases.push((
        "not part of a Llama model",
        rewritten(&tmp, "twice.gguf", |t, _| {
            for (n, _) in t.iter_mut() {
                if n == "blk.1.ffn_up.weight" {
                    *n = "blk.01.ffn_up.weight".into();
                }
            }
        }),
    ));
    cases.push((
        "ffn_down",
        rewritten(&tmp, "missing.gguf", |t, _| {
            t.retain(|(n, _)| n != "blk.1.ffn_down.weight");
        }),
    ));
    for (want, path) in cases {
        let err = match load_gguf(&path, DType::F32, &Device::Cpu) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => e.to_string(),
        };
        let want = if want == "ffn_down" {
            "down_proj"
        } else {
            want
        };
        assert!(err.contains(want), "{}: {err}", path.display());
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    let _ = std::fs::remove_dir_all(tmp);
}
