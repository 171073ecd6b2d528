//! JSONL training data: one example per line, as `{"text": …}`, `{"prompt": …, "completion": …}`
//! or `{"messages": [{"role": …, "content": …}, …]}`. Other keys are ignored; blank lines are
//! skipped. A bad line is an error naming the file and its 1-based line, or, with
//! [`JsonlOptions::skip_bad_lines`], is skipped and reported in [`Dataset::skipped`].

use crate::error::{AdapterError, Result};
use crate::seed::mix_seed;
use crate::train::chat::{Message, ROLES};
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// One training example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Example {
    /// Plain text; the loss covers all of it.
    Text(String),
    /// The loss covers the completion only.
    PromptCompletion {
        /// The prompt (context, not trained on).
        prompt: String,
        /// The completion (trained on).
        completion: String,
    },
    /// A conversation; the loss covers the assistant messages only.
    Chat(Vec<Message>),
}

/// The default bound on one JSONL line: 16 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

/// How [`load_jsonl`] treats bad lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonlOptions {
    /// Skip (and count) bad lines instead of failing on the first one.
    pub skip_bad_lines: bool,
    /// The longest line accepted, in bytes (without its newline); a longer line is a bad line,
    /// found without holding more than this many bytes of it. Default
    /// [`DEFAULT_MAX_LINE_BYTES`].
    pub max_line_bytes: usize,
}

impl Default for JsonlOptions {
    fn default() -> Self {
        Self {
            skip_bad_lines: false,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// A line that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// The examples of a JSONL file.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The file read.
    pub path: PathBuf,
    /// The valid examples, in file order.
    pub examples: Vec<Example>,
    /// The 1-based line of each example.
    pub lines: Vec<usize>,
    /// Bad lines skipped (empty unless `skip_bad_lines`).
    pub skipped: Vec<SkippedLine>,
}

/// Reads a JSONL file of examples (see the module docs for the accepted forms), line by line:
/// memory holds the examples and at most [`JsonlOptions::max_line_bytes`] of the current line.
pub fn load_jsonl(path: impl AsRef<Path>, options: &JsonlOptions) -> Result<Dataset> {
    let path = path.as_ref();
    let file = std::fs::File::open(path)
        .map_err(|e| AdapterError::io("reading training data", path, e))?;
    parse_lines(std::io::BufReader::new(file), path, options)
}

/// Parses JSONL content; `path` names the source in errors.
pub fn parse_jsonl(bytes: &[u8], path: &Path, options: &JsonlOptions) -> Result<Dataset> {
    parse_lines(bytes, path, options)
}

/// What [`next_line`] found.
enum Line {
    /// End of input.
    Eof,
    /// A line, now in the buffer (without its newline).
    Read,
    /// A line longer than the bound: the number of bytes seen (all of it when `skip`, else the
    /// bound plus one).
    TooLong(usize),
}

/// Reads the next line into `buf`, holding at most `max` bytes of it. A longer line is consumed
/// to its end (without being kept) only when `skip`: an error stops reading at once.
fn next_line<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    skip: bool,
) -> std::io::Result<Line> {
    buf.clear();
    let (mut seen, mut any, mut too_long) = (0usize, false, false);
    loop {
        let avail = reader.fill_buf()?;
        if avail.is_empty() {
            break;
        }
        any = true;
        let newline = avail.iter().position(|&b| b == b'\n');
        let piece = &avail[..newline.unwrap_or(avail.len())];
        let used = newline.map_or(avail.len(), |p| p + 1);
        seen = seen.saturating_add(piece.len());
        if !too_long {
            if seen > max {
                too_long = true;
                buf.clear();
                if !skip {
                    return Ok(Line::TooLong(seen));
                }
            } else {
                buf.extend_from_slice(piece);
            }
        }
        reader.consume(used);
        if newline.is_some() {
            break;
        }
    }
    Ok(match (any, too_long) {
        (false, _) => Line::Eof,
        (true, false) => Line::Read,
        (true, true) => Line::TooLong(seen),
    })
}

/// Parses JSONL lines from `reader`; `path` names the source in errors.
fn parse_lines<R: BufRead>(mut reader: R, path: &Path, options: &JsonlOptions) -> Result<Dataset> {
    let mut ds = Dataset {
        path: path.to_path_buf(),
        examples: Vec::new(),
        lines: Vec::new(),
        skipped: Vec::new(),
    };
    let max = options.max_line_bytes;
    let mut buf = Vec::new();
    for line in 1.. {
        let read = next_line(&mut reader, &mut buf, max, options.skip_bad_lines)
            .map_err(|e| AdapterError::io("reading training data", path, e))?;
        let parsed = match read {
            Line::Eof => break,
            Line::TooLong(seen) => Err(format!(
                "the line is longer than max_line_bytes = {max} bytes ({} bytes{})",
                seen,
                if options.skip_bad_lines {
                    ""
                } else {
                    " read so far"
                }
            )),
            Line::Read => std::str::from_utf8(&buf)
                .map_err(|e| format!("not valid UTF-8 ({e})"))
                .map(|s| s.trim_end_matches('\r')),
        };
        let parsed = match parsed {
            Ok(s) if s.trim().is_empty() => continue,
            Ok(s) => parse_example(s),
            Err(e) => Err(e),
        };
        match parsed {
            Ok(ex) => {
                ds.examples.push(ex);
                ds.lines.push(line);
            }
            Err(reason) if options.skip_bad_lines => ds.skipped.push(SkippedLine { line, reason }),
            Err(reason) => {
                return Err(AdapterError::DataLine {
                    path: path.to_path_buf(),
                    line,
                    reason,
                })
            }
        }
    }
    if ds.examples.is_empty() {
        return Err(AdapterError::InvalidArgument {
            name: "training data".into(),
            expected: "at least one valid example".into(),
            actual: format!(
                "none in `{}` ({} bad line(s) skipped)",
                path.display(),
                ds.skipped.len()
            ),
        });
    }
    Ok(ds)
}

/// Parses one JSONL line; the error says what was expected and what was found.
pub fn parse_example(line: &str) -> std::result::Result<Example, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, found {}", kind(&value)));
    };
    let has = |k: &str| obj.contains_key(k);
    let forms: Vec<&str> = [
        has("text").then_some("`text`"),
        (has("prompt") || has("completion")).then_some("`prompt`/`completion`"),
        has("messages").then_some("`messages`"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match forms.as_slice() {
        [] => Err(format!(
            "expected a `text`, `prompt`+`completion` or `messages` key, found keys [{}]",
            obj.keys()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        [_] if has("text") => Ok(Example::Text(non_empty(&obj, "text")?)),
        [_] if has("messages") => parse_messages(&obj["messages"]).map(Example::Chat),
        [_] => {
            let prompt = string(&obj, "prompt")?;
            let completion = non_empty(&obj, "completion")?;
            Ok(Example::PromptCompletion { prompt, completion })
        }
        _ => Err(format!(
            "ambiguous example: has both {}",
            forms.join(" and ")
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(obj: &Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    match obj.get(key) {
        None => Err(format!("`{key}` is missing")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!("`{key}` must be a string, found {}", kind(v))),
    }
}

fn non_empty(obj: &Map<String, Value>, key: &str) -> std::result::Result<String, String> {
    let s = string(obj, key)?;
    if s.is_empty() {
        return Err(format!("`{key}` is empty: nothing to train on"));
    }
    Ok(s)
}

fn parse_messages(v: &Value) -> std::result::Result<Vec<Message>, String> {
    let Value::Array(items) = v else {
        return Err(format!("`messages` must be an array, found {}", kind(v)));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(format!(
                "messages[{i}] must be an object, found {}",
                kind(item)
            ));
        };
        let role = string(m, "role").map_err(|e| format!("messages[{i}]: {e}"))?;
        if !ROLES.contains(&role.as_str()) {
            return Err(format!(
                "messages[{i}]: `role` is {role:?}, expected one of {}",
                ROLES.join(", ")
            ));
        }
        let content = string(m, "content").map_err(|e| format!("messages[{i}]: {e}"))?;
        out.push(Message { role, content });
    }
    if !out
        .iter()
        .any(|m| m.is_assistant() && !m.content.is_empty())
    {
        return Err("`messages` has no non-empty assistant message: nothing to train on".into());
    }
    Ok(out)
}

/// Splits `items` into `(train, eval)`: a seeded random `eval_fraction` of them goes to eval (at
/// least one item each when there are two or more items and the fraction is > 0; a single item
/// stays in train); both keep their original order.
pub fn split_train_eval<T>(items: Vec<T>, eval_fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = items.len();
    let fraction = if eval_fraction.is_finite() {
        eval_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let k = match n {
        0 | 1 => 0,
        _ if fraction > 0.0 => ((n as f64 * fraction).round() as usize).clamp(1, n - 1),
        _ => 0,
    };
    let order = permutation(n, mix_seed(seed, 0x5EED_E7A1));
    let mut is_eval = vec![false; n];
    for &i in &order[..k] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (item, e) in items.into_iter().zip(is_eval) {
        if e {
            eval.push(item)
        } else {
            train.push(item)
        }
    }
    (train, eval)
}

/// A seeded Fisher–Yates permutation of `0..n`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}
