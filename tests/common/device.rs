//! Where the integration tests run and where they find their fixtures, from the environment, so
//! that the same test binaries run on the CPU (default) and, carried to a GPU machine, on CUDA:
//!
//! * `ADAPTERS_TEST_DEVICE`: `cpu` (default), `cuda` or `cuda:N`.
//! * `ADAPTERS_FIXTURES`: the `tests/fixtures` folder (default: this checkout's, an absolute path
//!   of the build machine).
#![allow(dead_code)]

use adapters_runtime::candle_core::Device;
use std::path::PathBuf;

/// The device named by `ADAPTERS_TEST_DEVICE` (default `cpu`); panics with the typed error's
/// message when it cannot be opened, so a misconfigured GPU run fails loudly instead of testing
/// the CPU.
pub fn test_device() -> Device {
    let name = std::env::var("ADAPTERS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    adapters_runtime::device(&name).unwrap_or_else(|e| panic!("ADAPTERS_TEST_DEVICE={name}: {e}"))
}

/// The `tests/fixtures` folder: `ADAPTERS_FIXTURES` when set, else this checkout's.
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("ADAPTERS_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}
