//! The `#[adapter]` UI suite: every `tests/ui/*.rs` must fail to compile with exactly the
//! `.stderr` next to it, and every `tests/ui_pass/*.rs` must compile and run.
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test --test macro_ui`, then
//! review each `.stderr`: the error must be ours, worded for the user, at the right token.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui_pass/*.rs");
}
