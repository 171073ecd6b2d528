//! Choosing the device by name (`cpu`, `cuda`, `cuda:N`), as the command-line tools spell it.
//!
//! A CUDA device is opened once per ordinal and shared: candle treats tensors of two separately
//! opened `Device::new_cuda(0)` handles as living on different devices, so every caller asking
//! for `cuda:0` gets the same handle.

use crate::error::{AdapterError, Result};
use candle_core::Device;

/// Parses a device name: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`. `None` when it is none of these.
pub fn parse(name: &str) -> Option<DeviceName> {
    match name.trim() {
        "cpu" => Some(DeviceName::Cpu),
        "cuda" => Some(DeviceName::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceName::Cuda),
    }
}

/// A parsed device name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceName {
    /// The host.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

/// The device called `name` (`cpu`, `cuda`, `cuda:N`).
///
/// Errors: [`AdapterError::InvalidArgument`] for another name, [`AdapterError::CudaNotBuilt`]
/// when this binary was built without the `cuda` feature, [`AdapterError::CudaUnavailable`] when
/// the driver reports no usable device (no GPU, wrong ordinal, driver too old).
pub fn device(name: &str) -> Result<Device> {
    match parse(name) {
        Some(DeviceName::Cpu) => Ok(Device::Cpu),
        Some(DeviceName::Cuda(ordinal)) => cuda(name, ordinal),
        None => Err(AdapterError::InvalidArgument {
            name: "device".into(),
            expected: "cpu, cuda or cuda:N".into(),
            actual: format!("`{name}`"),
        }),
    }
}

/// Whether this build can use CUDA devices (candle was built with its `cuda` feature).
pub fn cuda_built() -> bool {
    candle_core::utils::cuda_is_available()
}

fn cuda(name: &str, ordinal: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();

    if !cuda_built() {
        return Err(AdapterError::CudaNotBuilt {
            device: name.into(),
        });
    }
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(d) = open.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(ordinal).map_err(|e| AdapterError::CudaUnavailable {
        device: name.into(),
        source: without_backtrace(e),
    })?;
    open.insert(ordinal, d.clone());
    Ok(d)
}

/// The error without the backtrace candle attaches when `RUST_BACKTRACE` is set (its `Display`
/// would print it into the message).
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse("cpu"), Some(DeviceName::Cpu));
        assert_eq!(parse("cuda"), Some(DeviceName::Cuda(0)));
        assert_eq!(parse("cuda:3"), Some(DeviceName::Cuda(3)));
        assert_eq!(parse("cuda:x"), None);
        assert_eq!(parse("metal"), None);
        assert!(matches!(device("cpu"), Ok(Device::Cpu)));
        let e = device("tpu").unwrap_err();
        assert_eq!(
            e.to_string(),
            "argument `device`: expected cpu, cuda or cuda:N, got `tpu`"
        );
    }

    #[test]
    fn cuda_is_a_shared_device_or_a_typed_error() {
        match device("cuda:0") {
            Ok(d) => {
                assert!(d.is_cuda());
                let again = device("cuda").unwrap();
                assert!(again.same_device(&d), "one handle per ordinal");
            }
            Err(AdapterError::CudaNotBuilt { .. }) => assert!(!cuda_built()),
            Err(AdapterError::CudaUnavailable { .. }) => assert!(cuda_built()),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn cuda_without_the_feature_is_a_typed_error() {
        if cuda_built() {
            return;
        }
        let e = device("cuda:1").unwrap_err();
        assert!(matches!(e, AdapterError::CudaNotBuilt { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "device `cuda:1`: this binary was built without the `cuda` feature: rebuild with `--features cuda`"
        );
    }
}
