//! Reading GGUF metadata values: any integer width as one integer, and bounded descriptions of
//! values for error messages.

use candle_core::quantized::gguf_file::Value;

/// An integer value of any width as an `i64` (`None` for other types, or a u64 past `i64::MAX`).
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

/// A value's type, and the value when short, for error messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string `{}`", clip(s)),
        Value::Array(a) => match a.first() {
            Some(first) => format!("an array of {} ({} first)", a.len(), type_name(first)),
            None => "an empty array".to_string(),
        },
        Value::F32(x) => format!("the f32 {x}"),
        Value::F64(x) => format!("the f64 {x}"),
        Value::Bool(b) => format!("the bool {b}"),
        v => match as_int(v) {
            Some(i) => format!("the {} {i}", type_name(v)),
            None => format!("a {}", type_name(v)),
        },
    }
}

/// The GGUF type of a value.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::U8(_) => "u8",
        Value::I8(_) => "i8",
        Value::U16(_) => "u16",
        Value::I16(_) => "i16",
        Value::U32(_) => "u32",
        Value::I32(_) => "i32",
        Value::U64(_) => "u64",
        Value::I64(_) => "i64",
        Value::F32(_) => "f32",
        Value::F64(_) => "f64",
        Value::Bool(_) => "bool",
        Value::String(_) => "string",
        Value::Array(_) => "array",
    }
}

/// At most 64 characters of `s`, for error messages.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}
