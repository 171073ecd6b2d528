//! `merge` never loses data: a failed `--force` merge leaves the previous output intact, an output
//! that is, contains or is inside an input is refused, adapter tensors of 8-, 6- or 4-bit float
//! dtypes are refused up front (candle's F8 → f64 conversion does not terminate), and a failed
//! write leaves no temporary file behind.

mod peft_support;

use adapters_runtime::peft::{self, AdapterCheckpoint, MergeOptions};
use adapters_runtime::AdapterError;
use peft_support::*;
use safetensors::tensor::TensorView;
use std::path::Path;

const FORCE: MergeOptions = MergeOptions {
    overwrite: true,
    progress: false,
    allow_non_finite: false,
};

/// A copy of fixture `case`'s adapter in `to`, with `key`'s tensor stored as `dtype` (raw bytes of
/// the right length, as a hostile or exotic writer would produce).
fn adapter_with_dtype(case: &str, to: &Path, key: &str, dtype: safetensors::Dtype) {
    copy_dir(&fixture(case).join("adapter"), to);
    let path = to.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        if name == key {
            let n: usize = shape.iter().product();
            let len = (n * dtype.bitsize()).div_ceil(8);
            owned.push((name, dtype, shape, vec![0x3c; len]));
        } else {
            owned.push((name, view.dtype(), shape, view.data().to_vec()));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

#[test]
fn adapter_tensors_of_sub_16_bit_float_dtypes_are_refused() {
    let dir = TempDir::new("f8");
    let key = "base_model.model.fc1.lora_A.weight";
    for dtype in [
        safetensors::Dtype::F8_E4M3,
        safetensors::Dtype::F8_E5M2,
        safetensors::Dtype::F4,
    ] {
        let ad = dir.join(&format!("ad-{dtype:?}"));
        adapter_with_dtype("dora_r4", &ad, key, dtype);
        let err = AdapterCheckpoint::read(&ad).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains("f16, bf16, f32 or f64"),
            "{dtype:?}: {err}"
        );
        // inspect reads the same way, and merge refuses before writing anything.
        assert!(peft::inspect_adapter(&ad).is_err());
    }
}

#[test]
fn a_failed_forced_merge_keeps_the_previous_output() {
    let dir = TempDir::new("keepprev");
    let base = fixture("dora_r4").join("base.safetensors");
    let prev = dir.join("prev.safetensors");
    peft::merge_checkpoint(&base, &fixture("dora_r4").join("adapter"), &prev, &FORCE).unwrap();
    let before = std::fs::read(&prev).unwrap();
    let bad = dir.join("bad-adapter");
    adapter_with_dtype(
        "dora_r4",
        &bad,
        "base_model.model.fc1.lora_A.weight",
        safetensors::Dtype::F4,
    );
    assert!(peft::merge_checkpoint(&base, &bad, &prev, &FORCE).is_err());
    assert_eq!(
        std::fs::read(&prev).unwrap(),
        before,
        "previous output intact"
    );
    assert_eq!(
        dir.entries(),
        ["bad-adapter", "prev.safetensors"],
        "no temporary file left"
    );
}

#[test]
fn outputs_that_are_contain_or_are_inside_an_input_are_refused() {
    let dir = TempDir::new("contain");
    let proj = dir.join("proj");
    std::fs::create_dir(&proj).unwrap();
    copy_dir(
        &fixture("tiny_llama_dora").join("model"),
        &proj.join("model"),
    );
    copy_dir(
        &fixture("tiny_llama_dora").join("adapter"),
        &proj.join("adapter"),
    );
    std::fs::write(proj.join("NOTES.md"), "mine").unwrap();
    let (base, ad) = (proj.join("model"), proj.join("adapter"));
    let before = entries(&proj);
    for (out, why) in [
        (proj.clone(), "contains the base model"),
        (dir.path().to_path_buf(), "contains the base model"),
        (ad.clone(), "is the adapter itself"),
        (base.clone(), "is the base model itself"),
        (base.join("sub"), "is inside the base model"),
        (ad.join("merged"), "is inside the adapter"),
        (proj.join("model/../model"), "is the base model itself"),
    ] {
        let err = peft::merge_checkpoint(&base, &ad, &out, &FORCE).unwrap_err();
        assert!(
            matches!(&err, AdapterError::Output { .. }) && err.to_string().contains(why),
            "{}: {err}",
            out.display()
        );
    }
    assert_eq!(entries(&proj), before, "nothing touched");
    assert_eq!(
        std::fs::read_to_string(proj.join("NOTES.md")).unwrap(),
        "mine"
    );
    // A sibling folder is fine, and `--force` over it keeps files the merge does not write.
    let out = dir.join("merged");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("NOTES.md"), "keep").unwrap();
    peft::merge_checkpoint(&base, &ad, &out, &FORCE).unwrap();
    assert_eq!(
        entries(&out),
        ["NOTES.md", "config.json", "model.safetensors"]
    );
}

#[cfg(unix)]
#[test]
fn a_dangling_symlink_output_needs_force() {
    let dir = TempDir::new("dangling");
    let out = dir.join("out.safetensors");
    std::os::unix::fs::symlink(dir.join("nowhere"), &out).unwrap();
    let base = fixture("lora_r4").join("base.safetensors");
    let ad = fixture("lora_r4").join("adapter");
    let keep = MergeOptions {
        overwrite: false,
        progress: false,
        allow_non_finite: false,
    };
    let err = peft::merge_checkpoint(&base, &ad, &out, &keep).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn the_next_merge_removes_what_a_killed_merge_left() {
    let dir = TempDir::new("stale");
    let out = dir.join("out.safetensors");
    // What a `kill -9` during a merge leaves: the hidden partial named after its target.
    std::fs::write(dir.join(".out.safetensors.Xy12ab.partial"), vec![0u8; 4096]).unwrap();
    std::fs::create_dir(dir.join("merged")).unwrap();
    std::fs::write(
        dir.join(".merged.Qw34cd.partial"),
        "a folder merge's staging, as a file",
    )
    .unwrap();
    let base = fixture("lora_r4").join("base.safetensors");
    let ad = fixture("lora_r4").join("adapter");
    peft::merge_checkpoint(&base, &ad, &out, &FORCE).unwrap();
    assert_eq!(
        dir.entries(),
        [".merged.Qw34cd.partial", "merged", "out.safetensors"],
        "the stale partial of `out.safetensors` is gone, nothing else touched, no `.tmp*` file"
    );
}
