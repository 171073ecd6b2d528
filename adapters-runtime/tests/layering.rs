//! The runtime's modules depend one way: each `crate::X` a file names must be its own top-level
//! module or one listed before it in `ORDER` (a new arrow back up fails this test).

use std::path::{Path, PathBuf};

/// Top-level modules, lowest first; a module may use those at its own rank or below.
const ORDER: &[(&str, usize)] = &[
    ("error", 0),
    ("alloc", 0),
    ("seed", 1),
    ("estimate", 2),
    ("adapter_config", 3),
    ("device", 3),
    ("io", 4),
    ("quant", 5),
    ("ops", 6),
    ("layers", 7),
    ("adapters", 8),
    ("nn", 9),
    ("hf", 10),
    ("chat", 10),
    ("gguf", 11),
    ("peft", 12),
    ("models", 13),
    ("train", 14),
    ("generate", 15),
];

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`src/peft/save.rs` → `peft`).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every `crate::name` in `text`, outside comments.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `adapters_runtime_crate::` or similar
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

#[test]
fn dependencies_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = owner(&src, file) else {
            continue;
        };
        let Some(own) = rank(&module) else { continue }; // lib.rs, bin/
        let text = std::fs::read_to_string(file).unwrap();
        for target in crate_refs(&text) {
            // Crate-root re-exports (`crate::Result`, `crate::adapter`) and the macro's paths.
            let Some(r) = rank(&target) else { continue };
            if r > own {
                violations.push(format!(
                    "{} (in `{module}`) uses `crate::{target}`",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies must run one way ({}):\n{}",
        ORDER
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>()
            .join(" → "),
        violations.join("\n")
    );
    assert!(files.len() > 40, "scanned {} files", files.len());
}

#[test]
fn every_file_opens_with_a_one_line_comment() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let bad: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        bad.is_empty(),
        "files without a leading `//!` comment: {bad:?}"
    );
}

#[test]
fn references_are_found_outside_comments_only() {
    let refs = crate_refs("use crate::peft::x; // crate::train\nlet y = crate::io::atomic::f();");
    assert_eq!(refs, ["peft", "io"]);
    assert!(
        rank("train") > rank("peft"),
        "an upward arrow would be reported"
    );
}
