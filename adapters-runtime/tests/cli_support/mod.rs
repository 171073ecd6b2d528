//! Helpers shared by the tests of the built `adapters` binary: running it, its output as text,
//! the workspace's fixtures, scratch folders.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// `tests/fixtures` of the workspace.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// `tests/fixtures/peft/<case>`.
pub fn fixture(case: &str) -> PathBuf {
    fixtures().join("peft").join(case)
}

/// Runs the binary with `args`.
pub fn adapters(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adapters"))
        .args(args)
        .output()
        .expect("running adapters")
}

/// Runs the binary with `args` and its stdout closed before it writes (a reader that went away,
/// as in `adapters … | head`).
pub fn adapters_with_closed_stdout(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_adapters"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running adapters");
    drop(child.stdout.take());
    child.wait_with_output().expect("waiting for adapters")
}

/// Output bytes as text.
pub fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// A fresh scratch folder for this process.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("adapters-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
