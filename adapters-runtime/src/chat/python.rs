//! Python semantics templates rely on: `json.dumps` (`tojson`), `str()` and `str` methods.

use minijinja::value::{from_args, Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, State, Value};
use std::fmt::Write;

/// Whether Python's `str.isspace()` holds for `c`: Unicode white space plus the ASCII
/// information separators U+001C–U+001F, which Rust does not count as white space.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Python's `repr(float)`: the shortest digits that round-trip, in positional notation for
/// magnitudes in `[1e-4, 1e16)` and in scientific notation (`1e+16`, `1.5e-05`) otherwise.
pub(crate) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.into();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-tripping digits: `-1.2345e-7`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if x < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        if exp >= 0 {
            let int_len = (exp + 1) as usize;
            if digits.len() <= int_len {
                let zeros = "0".repeat(int_len - digits.len());
                format!("{sign}{digits}{zeros}.0")
            } else {
                format!("{sign}{}.{}", &digits[..int_len], &digits[int_len..])
            }
        } else {
            let zeros = "0".repeat((-exp - 1) as usize);
            debug_assert!(n > 0);
            format!("{sign}0.{zeros}{digits}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

/// Whether Python's `str.isprintable()` holds for a non-ASCII `c` (approximated: C1 controls,
/// format characters, separators other than the space, private use and surrogates are not).
fn is_py_printable_non_ascii(c: char) -> bool {
    !matches!(c,
        '\u{80}'..='\u{a0}' | '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}'
        | '\u{70f}' | '\u{1680}' | '\u{180e}' | '\u{2000}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}' | '\u{205f}'..='\u{206f}' | '\u{3000}' | '\u{feff}'
        | '\u{e000}'..='\u{f8ff}' | '\u{fff9}'..='\u{fffb}' | '\u{f0000}'..)
}

/// Python's `repr(str)`.
pub(crate) fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_ascii() || is_py_printable_non_ascii(c) => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
}

/// Python's `repr()` of a template value (strings quoted, `None`, `True`, lists, dicts).
fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default(), out),
        _ => py_str(v, out),
    }
}

/// Python's `str()` of a template value: what `{{ value }}` prints under jinja2. Undefined
/// prints as nothing (jinja2's default `Undefined`).
pub(crate) fn py_str(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::Number if !v.is_integer() => {
            let x = f64::try_from(v.clone()).unwrap_or(f64::NAN);
            out.push_str(&py_float_repr(x));
        }
        // Lazy sequences (slices, `reverse`, `map`) print as the lists Python has there.
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(items) = v.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map if v.as_object().is_some_and(|o| o.try_iter_pairs().is_some()) => {
            out.push('{');
            if let Some(pairs) = v.as_object().and_then(|o| o.try_iter_pairs()) {
                for (i, (k, item)) in pairs.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&k, out);
                    out.push_str(": ");
                    py_repr(&item, out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// The formatter of `{{ … }}`: Python's `str()` (no HTML escaping, as transformers' jinja2
/// environment has none).
pub(crate) fn formatter(
    out: &mut minijinja::Output,
    _state: &State,
    value: &Value,
) -> Result<(), Error> {
    if let Some(s) = value.as_str() {
        return out.write_str(s).map_err(Error::from);
    }
    let mut s = String::new();
    py_str(value, &mut s);
    out.write_str(&s).map_err(Error::from)
}

/// The `string` filter: Python's `str()`.
pub(crate) fn string_filter(value: &Value) -> Value {
    if value.kind() == ValueKind::String {
        return value.clone();
    }
    let mut s = String::new();
    py_str(value, &mut s);
    Value::from(s)
}

/// The `replace` filter: Python's `str.replace(old, new, count)`.
pub(crate) fn replace_filter(value: &Value, old: &str, new: &str, count: Option<i64>) -> Value {
    let mut s = String::new();
    py_str(value, &mut s);
    Value::from(match count.and_then(|n| usize::try_from(n).ok()) {
        Some(n) => s.replacen(old, new, n),
        None => s.replace(old, new),
    })
}

/// The `wordcount` filter: jinja2 counts the matches of the regex `\w+`.
pub(crate) fn wordcount_filter(value: &Value) -> Value {
    let mut s = String::new();
    py_str(value, &mut s);
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut count = 0;
    let mut in_word = false;
    for c in s.chars() {
        if is_word(c) && !in_word {
            count += 1;
        }
        in_word = is_word(c);
    }
    Value::from(count)
}

/// The `trim` filter: Python's `str.strip(chars)`.
pub(crate) fn trim_filter(value: &Value, chars: Option<Value>) -> Result<Value, Error> {
    let mut s = String::new();
    py_str(value, &mut s);
    Ok(Value::from(py_strip(&s, chars.as_ref(), true, true)?))
}

fn py_strip<'a>(
    s: &'a str,
    chars: Option<&Value>,
    left: bool,
    right: bool,
) -> Result<&'a str, Error> {
    let set: Option<Vec<char>> = match chars {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| invalid("strip arg must be None or str"))?
                .chars()
                .collect(),
        ),
    };
    let matches = |c: char| match &set {
        None => is_py_space(c),
        Some(set) => set.contains(&c),
    };
    let mut out = s;
    if left {
        out = out.trim_start_matches(matches);
    }
    if right {
        out = out.trim_end_matches(matches);
    }
    Ok(out)
}

/// Python's `str.split(sep, maxsplit)` (`rsplit` when `from_right`).
fn py_split(
    s: &str,
    sep: Option<&str>,
    maxsplit: i64,
    from_right: bool,
) -> Result<Vec<String>, Error> {
    let limit = usize::try_from(maxsplit).ok();
    match sep {
        Some("") => Err(invalid("empty separator")),
        Some(sep) => Ok(match (limit, from_right) {
            (None, _) => s.split(sep).map(String::from).collect(),
            (Some(n), false) => s.splitn(n + 1, sep).map(String::from).collect(),
            (Some(n), true) => {
                let mut parts: Vec<String> = s.rsplitn(n + 1, sep).map(String::from).collect();
                parts.reverse();
                parts
            }
        }),
        None => {
            // Runs of white space separate; none at either end gives an empty piece. Once
            // `maxsplit` pieces are split off, the rest (stripped on its split side) is the last.
            let chars: Vec<char> = if from_right {
                s.chars().rev().collect()
            } else {
                s.chars().collect()
            };
            let mut parts: Vec<String> = Vec::new();
            let mut i = 0;
            loop {
                while i < chars.len() && is_py_space(chars[i]) {
                    i += 1;
                }
                if i == chars.len() {
                    break;
                }
                if limit.is_some_and(|n| parts.len() == n) {
                    parts.push(chars[i..].iter().collect());
                    break;
                }
                let start = i;
                while i < chars.len() && !is_py_space(chars[i]) {
                    i += 1;
                }
                parts.push(chars[start..i].iter().collect());
            }
            if from_right {
                parts = parts
                    .into_iter()
                    .rev()
                    .map(|p| p.chars().rev().collect())
                    .collect();
            }
            Ok(parts)
        }
    }
}

/// Python's `str.splitlines(keepends)`.
fn py_splitlines(s: &str, keepends: bool) -> Vec<String> {
    let is_break = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(pos) = rest.find(is_break) {
        let c = rest[pos..].chars().next().unwrap_or('\n');
        let mut end = pos + c.len_utf8();
        if c == '\r' && rest[end..].starts_with('\n') {
            end += 1;
        }
        out.push(rest[..if keepends { end } else { pos }].to_string());
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

fn opt_str<'a>(args: &'a [Value], i: usize, what: &str) -> Result<Option<&'a str>, Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| invalid(format!("{what} must be None or str, not {}", v.kind()))),
    }
}

fn opt_int(args: &[Value], i: usize, default: i64) -> Result<i64, Error> {
    match args.get(i) {
        None => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid(format!("expected an integer, got {}", v.kind()))),
    }
}

/// Python's `str` methods on template strings where Python and `minijinja_contrib::pycompat`
/// differ (white space, character indices, `rsplit`, `splitlines`); the others come from
/// `pycompat`.
pub(crate) fn unknown_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let Some(s) = value.as_str() else {
        return minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args);
    };
    let too_many = |n: usize| {
        if args.len() > n {
            Err(Error::from(ErrorKind::TooManyArguments))
        } else {
            Ok(())
        }
    };
    match method {
        "strip" | "lstrip" | "rstrip" => {
            too_many(1)?;
            let left = method != "rstrip";
            let right = method != "lstrip";
            Ok(Value::from(py_strip(s, args.first(), left, right)?))
        }
        "split" | "rsplit" => {
            let (pos, kw): (&[Value], Kwargs) = from_args(args)?;
            let sep = match kw.get::<Option<Value>>("sep")? {
                Some(v) if v.is_none() => None,
                Some(v) => Some(
                    v.as_str()
                        .ok_or_else(|| invalid("sep must be None or str"))?
                        .to_string(),
                ),
                None => opt_str(pos, 0, "sep")?.map(String::from),
            };
            let maxsplit = match kw.get::<Option<i64>>("maxsplit")? {
                Some(n) => n,
                None => opt_int(pos, 1, -1)?,
            };
            kw.assert_all_used()?;
            let parts = py_split(s, sep.as_deref(), maxsplit, method == "rsplit")?;
            Ok(Value::from(parts))
        }
        "splitlines" => {
            too_many(1)?;
            let keepends = args.first().is_some_and(|v| v.is_true());
            Ok(Value::from(py_splitlines(s, keepends)))
        }
        "isspace" => {
            too_many(0)?;
            Ok(Value::from(!s.is_empty() && s.chars().all(is_py_space)))
        }
        "find" | "rfind" | "index" | "rindex" if args.len() == 1 => {
            let sub = args[0]
                .as_str()
                .ok_or_else(|| invalid("must be str, not {}"))?;
            let found = if method.starts_with('r') {
                s.rfind(sub)
            } else {
                s.find(sub)
            };
            match found {
                Some(byte) => Ok(Value::from(s[..byte].chars().count())),
                None if method.ends_with("find") => Ok(Value::from(-1)),
                None => Err(invalid("substring not found")),
            }
        }
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

/// Options of `json.dumps` that transformers' `tojson` filter passes on.
struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, its arguments given by position or by name. Unlike
/// minijinja's own `tojson` it escapes no HTML character and keeps non-ASCII text.
pub(crate) fn tojson(value: &Value, pos: &[Value], kw: Kwargs) -> Result<Value, Error> {
    if pos.len() > 4 {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    let names = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut given: [Option<Value>; 4] = Default::default();
    for (i, v) in pos.iter().enumerate() {
        given[i] = Some(v.clone());
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(v) = kw.get::<Option<Value>>(name)? {
            if given[i].is_some() {
                return Err(invalid(format!(
                    "tojson() got multiple values for argument '{name}'"
                )));
            }
            given[i] = Some(v);
        }
    }
    kw.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = given;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => {
            Some(v.as_str().unwrap_or_default().to_string())
        }
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                invalid(format!(
                    "tojson: indent must be an int or a str, not {}",
                    v.kind()
                ))
            })?;
            Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
        }
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => (
                    a.as_str().unwrap_or_default().to_string(),
                    b.as_str().unwrap_or_default().to_string(),
                ),
                _ => return Err(invalid("tojson: separators must be a pair of strings")),
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    dump(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline_indent(opts: &JsonOptions, level: usize, out: &mut String) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

/// A map key as `json.dumps` writes it: strings as they are; numbers, booleans and None as
/// their JSON text.
fn json_key(k: &Value) -> Result<String, Error> {
    match k.kind() {
        ValueKind::String => Ok(k.as_str().unwrap_or_default().to_string()),
        ValueKind::Bool => Ok(if k.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::None => Ok("null".to_string()),
        ValueKind::Number if k.is_integer() => Ok(k.to_string()),
        ValueKind::Number => Ok(json_float(f64::try_from(k.clone()).unwrap_or(f64::NAN))),
        kind => Err(invalid(format!(
            "keys must be str, int, float, bool or None, not {kind}"
        ))),
    }
}

fn json_float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x < 0.0 { "-Infinity" } else { "Infinity" }.into()
    } else {
        py_float_repr(x)
    }
}

fn dump(v: &Value, opts: &JsonOptions, level: usize, out: &mut String) -> Result<(), Error> {
    if level > 512 {
        return Err(invalid("tojson: value nested too deeply"));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number if v.is_integer() => {
            let _ = write!(out, "{v}");
        }
        ValueKind::Number => out.push_str(&json_float(f64::try_from(v.clone())?)),
        ValueKind::String => json_str(v.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(opts, level + 1, out);
                dump(item, opts, level + 1, out)?;
            }
            newline_indent(opts, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut pairs: Vec<(String, Value)> = Vec::new();
            if let Some(iter) = v.as_object().and_then(|o| o.try_iter_pairs()) {
                for (k, item) in iter {
                    pairs.push((json_key(&k)?, item));
                }
            }
            if opts.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, item)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline_indent(opts, level + 1, out);
                json_str(k, opts.ensure_ascii, out);
                out.push_str(&opts.key_sep);
                dump(item, opts, level + 1, out)?;
            }
            newline_indent(opts, level, out);
            out.push('}');
        }
        kind => {
            let name = match kind {
                ValueKind::Undefined => "Undefined",
                ValueKind::Bytes => "bytes",
                _ => "object",
            };
            return Err(invalid(format!(
                "Object of type {name} is not JSON serializable"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> minijinja::Environment<'static> {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson);
        env.add_filter("string", string_filter);
        env.add_filter("trim", trim_filter);
        env.set_formatter(formatter);
        env.set_unknown_method_callback(unknown_method);
        env
    }

    fn render(src: &str, ctx: serde_json::Value) -> String {
        env().render_str(src, ctx).unwrap()
    }

    #[test]
    fn tojson_matches_json_dumps() {
        let ctx = serde_json::json!({
            "x": {"name": "f", "b": [1, 2.5, true, null, "é\"<>&\n\u{1}"], "a": {}, "e": []}
        });
        // json.dumps(x, ensure_ascii=False)
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()),
            r#"{"name": "f", "b": [1, 2.5, true, null, "é\"<>&\n\u0001"], "a": {}, "e": []}"#
        );
        // json.dumps(x, ensure_ascii=False, indent=2)
        assert_eq!(
            render("{{ x | tojson(indent=2) }}", ctx.clone()),
            "{\n  \"name\": \"f\",\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null,\n    \"é\\\"<>&\\n\\u0001\"\n  ],\n  \"a\": {},\n  \"e\": []\n}"
        );
        // json.dumps(x, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        assert_eq!(
            render(
                "{{ x | tojson(ensure_ascii=true, sort_keys=true, separators=[',', ':']) }}",
                ctx.clone()
            ),
            r#"{"a":{},"b":[1,2.5,true,null,"\u00e9\"<>&\n\u0001"],"e":[],"name":"f"}"#
        );
        // Positional arguments follow the Python signature.
        assert_eq!(
            render("{{ 'ü😀' | tojson(true) }}", ctx.clone()),
            r#""\u00fc\ud83d\ude00""#
        );
        assert_eq!(
            render("{{ [1, [2]] | tojson(false, 0) }}", ctx.clone()),
            "[\n1,\n[\n2\n]\n]"
        );
        assert_eq!(
            render("{{ {'k': 1} | tojson(indent='\t') }}", ctx.clone()),
            "{\n\t\"k\": 1\n}"
        );
        assert_eq!(
            render(
                "{{ [1.0, 1e16, 1.5e-7, 0.0001, 123456789.125, -0.5] | tojson }}",
                ctx.clone()
            ),
            "[1.0, 1e+16, 1.5e-07, 0.0001, 123456789.125, -0.5]"
        );
        assert_eq!(
            render("{{ {1: 'a', none: 'b'} | tojson }}", ctx.clone()),
            r#"{"1": "a", "null": "b"}"#
        );
        assert!(env().render_str("{{ nothing | tojson }}", ()).is_err());
    }

    #[test]
    fn prints_like_python_str() {
        let ctx = serde_json::json!({"l": ["a", "it's", 1, 2.0, null, true], "m": {"k": "v"}});
        assert_eq!(
            render("{{ l }}|{{ m }}|{{ none }}|{{ false }}|{{ 1e20 }}|{{ undefined_var }}|{{ 3 | string }}", ctx),
            r#"['a', "it's", 1, 2.0, None, True]|{'k': 'v'}|None|False|1e+20||3"#
        );
    }

    #[test]
    fn float_repr_matches_python() {
        for (x, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.25e-5, "1.25e-05"),
            (0.00012, "0.00012"),
            (-2.5e100, "-2.5e+100"),
            (123.456, "123.456"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (-0.0, "-0.0"),
        ] {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn string_methods_follow_python() {
        let ctx =
            serde_json::json!({"s": "\u{1f} a  b\tc \n", "t": "a,b,,c", "u": "x\r\ny\u{2028}z"});
        assert_eq!(render("[{{ s.strip() }}]", ctx.clone()), "[a  b\tc]");
        assert_eq!(render("[{{ s | trim }}]", ctx.clone()), "[a  b\tc]");
        assert_eq!(
            render("[{{ s.lstrip() }}][{{ t.rstrip('c,') }}]", ctx.clone()),
            "[a  b\tc \n][a,b]"
        );
        assert_eq!(
            render("{{ s.split() | tojson }}", ctx.clone()),
            r#"["a", "b", "c"]"#
        );
        assert_eq!(
            render("{{ s.split(none, 1) | tojson }}", ctx.clone()),
            r#"["a", "b\tc \n"]"#
        );
        assert_eq!(
            render("{{ s.rsplit(maxsplit=1) | tojson }}", ctx.clone()),
            "[\"\\u001f a  b\", \"c\"]"
        );
        assert_eq!(
            render("{{ t.split(',') | tojson }}", ctx.clone()),
            r#"["a", "b", "", "c"]"#
        );
        assert_eq!(
            render("{{ t.rsplit(',', 1) | tojson }}", ctx.clone()),
            r#"["a,b,", "c"]"#
        );
        assert_eq!(
            render("{{ u.splitlines() | tojson }}", ctx.clone()),
            r#"["x", "y", "z"]"#
        );
        assert_eq!(
            render("{{ 'é-b'.find('b') }} {{ 'abc'.rfind('z') }}", ctx.clone()),
            "2 -1"
        );
        assert_eq!(
            render("{{ 'Hello'.startswith('He') }} {{ 'a b'.upper() }} {{ {'k': 1}.items() | list | length }}", ctx),
            "True A B 1"
        );
    }
}
