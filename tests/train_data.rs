//! Training data: JSONL parsing (each form, bad lines with line numbers, skip-and-count), the
//! byte-level and HF tokenizers, loss masks, truncation / packing, batches, the resumable shuffled
//! loader and the train / eval split.

mod train_support;

use adapters_runtime::candle_core::Device;
use adapters_runtime::train::data::parse_jsonl;
use adapters_runtime::train::tokenizer::{BYTE_BOS, BYTE_EOS, BYTE_PAD};
use adapters_runtime::train::{
    encode_chat_prompt, encode_example, load_jsonl, prepare, split_train_eval, Batch, BatchLoader,
    BatchSource, Example, JsonlOptions, Message, PackMode, PackOptions, Sequence, Tokenizer,
};
use adapters_runtime::AdapterError;
use std::path::Path;
use train_support::{scratch, vals};

const GOOD: &str = r#"{"text": "hi"}
{"prompt": "Q", "completion": "A", "id": 7}

{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "OK"}]}
"#;

#[test]
fn parses_every_form_and_skips_blank_lines() {
    let dir = scratch("parse");
    let path = dir.join("data.jsonl");
    std::fs::write(&path, GOOD).unwrap();
    let ds = load_jsonl(&path, &JsonlOptions::default()).unwrap();
    assert_eq!(ds.lines, vec![1, 2, 4]);
    assert_eq!(ds.examples[0], Example::Text("hi".into()));
    assert_eq!(
        ds.examples[1],
        Example::PromptCompletion {
            prompt: "Q".into(),
            completion: "A".into()
        }
    );
    let Example::Chat(m) = &ds.examples[2] else {
        panic!("chat expected")
    };
    assert_eq!(m[2], Message::new("assistant", "OK"));
    assert!(ds.skipped.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_lines_name_the_file_and_line() {
    let cases = [
        (
            "{\"text\": \"a\"}\n{\"text\": 3}\n",
            2,
            "`text` must be a string, found a number",
        ),
        ("{\"text\": \"a\"}\n\n{oops\n", 3, "invalid JSON"),
        ("[1, 2]\n", 1, "expected a JSON object, found an array"),
        (
            "{\"input\": \"x\"}\n",
            1,
            "expected a `text`, `prompt`+`completion` or `messages` key, found keys [`input`]",
        ),
        ("{\"prompt\": \"x\"}\n", 1, "`completion` is missing"),
        (
            "{\"prompt\": \"x\", \"completion\": \"\"}\n",
            1,
            "`completion` is empty",
        ),
        (
            "{\"text\": \"a\", \"messages\": []}\n",
            1,
            "ambiguous example: has both `text` and `messages`",
        ),
        (
            "{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n",
            1,
            "messages[0]: `role` is \"bot\", expected one of system, user, assistant",
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
            1,
            "no non-empty assistant message",
        ),
        (
            "{\"messages\": [{\"role\": \"user\"}]}\n",
            1,
            "messages[0]: `content` is missing",
        ),
    ];
    for (text, line, reason) in cases {
        match parse_jsonl(
            text.as_bytes(),
            Path::new("train.jsonl"),
            &JsonlOptions::default(),
        ) {
            Err(e @ AdapterError::DataLine { .. }) => {
                let AdapterError::DataLine {
                    path,
                    line: l,
                    reason: r,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(
                    (path.as_path(), *l),
                    (Path::new("train.jsonl"), line),
                    "{text}"
                );
                assert!(r.contains(reason), "{r:?} should contain {reason:?}");
                assert!(
                    e.to_string()
                        .starts_with(&format!("file `train.jsonl` line {line}: ")),
                    "{e}"
                );
            }
            other => panic!("{text}: expected a DataLine error, got {other:?}"),
        }
    }
    // Invalid UTF-8 is a line error too.
    let e = parse_jsonl(
        b"{\"text\": \"a\"}\n\xff\xfe\n",
        Path::new("x"),
        &JsonlOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, AdapterError::DataLine { line: 2, .. }), "{e}");
}

#[test]
fn skip_bad_lines_counts_them() {
    let text =
        "{\"text\": \"a\"}\nnope\n{\"prompt\": 1, \"completion\": \"c\"}\n{\"text\": \"b\"}\r\n";
    let ds = parse_jsonl(
        text.as_bytes(),
        Path::new("d.jsonl"),
        &JsonlOptions {
            skip_bad_lines: true,
            ..JsonlOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        ds.examples,
        vec![Example::Text("a".into()), Example::Text("b".into())]
    );
    assert_eq!(
        ds.skipped.iter().map(|s| s.line).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(ds.skipped[1].reason.contains("`prompt` must be a string"));
    // Nothing valid at all is an error even when skipping.
    let e = parse_jsonl(
        b"x\n",
        Path::new("d.jsonl"),
        &JsonlOptions {
            skip_bad_lines: true,
            ..JsonlOptions::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("1 bad line(s) skipped"), "{e}");
    // A missing file is an I/O error naming it.
    let e = load_jsonl("/nonexistent/train.jsonl", &JsonlOptions::default()).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/train.jsonl"), "{e}");
}

#[test]
fn loss_masks_cover_only_completions_and_assistant_turns() {
    let tok = Tokenizer::byte_level();
    assert_eq!(
        (tok.vocab_size(), tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (259, Some(256), Some(257), 258)
    );
    let s = encode_example(&tok, &Example::Text("ab".into())).unwrap();
    assert_eq!(s.ids, vec![BYTE_BOS, 97, 98, BYTE_EOS]);
    assert_eq!(s.mask, vec![false, true, true, true]);
    let s = encode_example(
        &tok,
        &Example::PromptCompletion {
            prompt: "Q:".into(),
            completion: "A".into(),
        },
    )
    .unwrap();
    assert_eq!(
        s.ids,
        vec![BYTE_BOS, b'Q'.into(), b':'.into(), b'A'.into(), BYTE_EOS]
    );
    assert_eq!(s.mask, vec![false, false, false, true, true]);
    assert_eq!(s.targets(), 2);

    let msgs = vec![
        Message::new("user", "hi"),
        Message::new("assistant", "yo"),
        Message::new("user", "?"),
        Message::new("assistant", "!"),
    ];
    let s = encode_example(&tok, &Example::Chat(msgs.clone())).unwrap();
    let text = String::from_utf8_lossy(
        &s.ids
            .iter()
            .map(|&i| if i < 256 { i as u8 } else { b'#' })
            .collect::<Vec<_>>(),
    )
    .into_owned();
    assert_eq!(
        text,
        "#<|user|>\nhi#\n<|assistant|>\nyo#\n<|user|>\n?#\n<|assistant|>\n!#\n"
    );
    let trained: String = s
        .ids
        .iter()
        .zip(&s.mask)
        .filter(|(_, &m)| m)
        .map(|(&i, _)| if i < 256 { i as u8 as char } else { '#' })
        .collect();
    assert_eq!(trained, "yo#!#", "assistant contents and their EOS only");
    // The generation prompt ends with the assistant header.
    let p = encode_chat_prompt(&tok, &msgs[..1]).unwrap();
    assert_eq!(tok.decode(&p).unwrap(), "<|user|>\nhi\n<|assistant|>\n");
    assert_eq!(tok.decode(&[104, 105, BYTE_EOS, BYTE_PAD]).unwrap(), "hi");
}

#[test]
fn truncation_and_dropping_are_counted_and_packing_keeps_examples_whole() {
    let tok = Tokenizer::byte_level();
    let ex = vec![
        Example::Text("abcdefghij".into()), // 12 tokens
        Example::Text("xy".into()),         // 4 tokens
        Example::PromptCompletion {
            prompt: "0123456789".into(),
            completion: "z".into(),
        }, // target beyond the cut
        Example::Text("k".into()),          // 3 tokens
    ];
    let p = prepare(
        &ex,
        &tok,
        PackOptions {
            seq_len: 7,
            mode: PackMode::Pad,
        },
    )
    .unwrap();
    assert_eq!((p.examples, p.truncated, p.dropped), (4, 2, 1));
    assert_eq!(p.truncated_tokens, (12 - 8) + (13 - 8));
    assert_eq!(
        p.sequences.iter().map(Sequence::len).collect::<Vec<_>>(),
        vec![8, 4, 3]
    );
    assert!(p.summary().contains("2 truncated"), "{}", p.summary());

    let p = prepare(
        &ex,
        &tok,
        PackOptions {
            seq_len: 7,
            mode: PackMode::Pack,
        },
    )
    .unwrap();
    // 8 | 4 + 3 = 7 (the dropped example takes no room).
    assert_eq!(
        p.sequences.iter().map(Sequence::len).collect::<Vec<_>>(),
        vec![8, 7]
    );
    assert_eq!(
        p.sequences[1].ids,
        vec![
            BYTE_BOS,
            b'x'.into(),
            b'y'.into(),
            BYTE_EOS,
            BYTE_BOS,
            b'k'.into(),
            BYTE_EOS
        ]
    );
    assert_eq!(p.targets, 7 + 3 + 2);
    assert!(prepare(
        &ex,
        &tok,
        PackOptions {
            seq_len: 0,
            mode: PackMode::Pad
        }
    )
    .is_err());
}

#[test]
fn batches_shift_targets_and_pad_with_zero_mask() {
    let a = Sequence {
        ids: vec![1, 2, 3, 4],
        mask: vec![false, false, true, true],
    };
    let b = Sequence {
        ids: vec![5, 6],
        mask: vec![false, true],
    };
    let batch = Batch::from_sequences(&[&a, &b], 9, &Device::Cpu).unwrap();
    assert_eq!(batch.dims(), (2, 3));
    assert_eq!(
        batch.input_ids.to_vec2::<u32>().unwrap(),
        vec![vec![1, 2, 3], vec![5, 9, 9]]
    );
    assert_eq!(
        batch.targets.to_vec2::<u32>().unwrap(),
        vec![vec![2, 3, 4], vec![6, 9, 9]]
    );
    assert_eq!(vals(&batch.loss_mask), vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!((batch.tokens, batch.target_tokens), (4, 3));
    let bad = Sequence {
        ids: vec![1, 2],
        mask: vec![true],
    };
    assert!(matches!(
        Batch::from_sequences(&[&bad], 0, &Device::Cpu),
        Err(AdapterError::ShapeMismatch { .. })
    ));
}

fn first_ids(b: &Batch) -> Vec<u32> {
    b.input_ids
        .to_vec2::<u32>()
        .unwrap()
        .iter()
        .map(|r| r[0])
        .collect()
}

#[test]
fn loader_position_restores_the_exact_stream() {
    let seqs: Vec<Sequence> = (0..10u32)
        .map(|i| Sequence {
            ids: vec![i, 100 + i],
            mask: vec![false, true],
        })
        .collect();
    let mut a = BatchLoader::new(seqs.clone(), 3, 0, &Device::Cpu, 42, true).unwrap();
    assert_eq!(a.batches_per_epoch(), 4);
    let epoch0: Vec<u32> = (0..4)
        .flat_map(|_| first_ids(&a.next_batch().unwrap()))
        .collect();
    let mut sorted = epoch0.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..10).collect::<Vec<_>>(),
        "an epoch serves every sequence once"
    );
    assert_ne!(epoch0, (0..10).collect::<Vec<_>>(), "shuffled");
    let _ = a.next_batch().unwrap();
    let pos = a.position();
    assert_eq!((pos.epoch, pos.index), (1, 3));
    let rest: Vec<Vec<u32>> = (0..6)
        .map(|_| first_ids(&a.next_batch().unwrap()))
        .collect();
    assert_ne!(
        a.epoch_order(0),
        a.epoch_order(1),
        "each epoch is reshuffled"
    );

    // A fresh loader (another seed even) restored to the position serves the same batches.
    let mut b = BatchLoader::new(seqs.clone(), 3, 0, &Device::Cpu, 7, true).unwrap();
    b.restore(&pos).unwrap();
    let again: Vec<Vec<u32>> = (0..6)
        .map(|_| first_ids(&b.next_batch().unwrap()))
        .collect();
    assert_eq!(rest, again);
    // Other data is refused.
    let mut other = seqs.clone();
    other[0].ids[1] = 7;
    let mut c = BatchLoader::new(other, 3, 0, &Device::Cpu, 42, true).unwrap();
    let e = c.restore(&pos).unwrap_err();
    assert!(e.to_string().contains("the training data changed"), "{e}");
    // In-order batches for evaluation.
    let eval = a.batches_in_order().unwrap();
    assert_eq!(eval.len(), 4);
    assert_eq!(first_ids(&eval[0]), vec![0, 1, 2]);
}

#[test]
fn split_is_seeded_and_keeps_order() {
    let (train, eval) = split_train_eval((0..20).collect::<Vec<_>>(), 0.25, 3);
    assert_eq!((train.len(), eval.len()), (15, 5));
    assert!(eval.windows(2).all(|w| w[0] < w[1]) && train.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        split_train_eval((0..20).collect::<Vec<_>>(), 0.25, 3).1,
        eval
    );
    assert_ne!(
        split_train_eval((0..20).collect::<Vec<_>>(), 0.25, 4).1,
        eval
    );
    assert_eq!(
        split_train_eval(vec![1, 2], 0.01, 0).1.len(),
        1,
        "at least one eval item"
    );
    assert_eq!(split_train_eval(vec![1, 2, 3], 0.0, 0).1.len(), 0);
    assert_eq!(
        split_train_eval(vec![1], 0.9, 0),
        (vec![1], vec![]),
        "a single item stays in train"
    );
    assert_eq!(
        split_train_eval(vec![1, 2, 3], 1.0, 0).0.len(),
        1,
        "train keeps at least one item"
    );
}

/// A WordLevel tokenizer.json with `<s>`, `</s>` and `<pad>` as added special tokens.
const HF_TOKENIZER: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3, "hello": 4, "world": 5, "<eot>": 6}, "unk_token": "<unk>"}
}"#;

#[test]
fn hf_tokenizer_json_loads_with_special_ids() {
    let dir = scratch("hf-tok");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, HF_TOKENIZER).unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    assert_eq!(
        (tok.vocab_size(), tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (7, Some(0), Some(1), 2)
    );
    assert_eq!(tok.encode("hello world nope").unwrap(), vec![4, 5, 3]);
    assert_eq!(tok.decode(&[0, 4, 5, 1]).unwrap(), "hello world");
    let s = encode_example(
        &tok,
        &Example::PromptCompletion {
            prompt: "hello".into(),
            completion: "world".into(),
        },
    )
    .unwrap();
    assert_eq!(
        (s.ids, s.mask),
        (vec![0, 4, 5, 1], vec![false, false, true, true])
    );

    // tokenizer_config.json beside it overrides the guesses.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "<eot>"}, "bos_token": null}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(0), Some(6)));
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<nope>"}"#,
    )
    .unwrap();
    let e = Tokenizer::from_file(&path).unwrap_err();
    assert!(
        e.to_string()
            .contains("`<nope>`, which is not in the vocabulary"),
        "{e}"
    );

    std::fs::write(&path, "{\"model\": 3}").unwrap();
    let e = Tokenizer::from_file(&path).unwrap_err();
    assert!(
        matches!(e, AdapterError::Tokenizer { .. })
            && e.to_string().contains("not a valid tokenizer.json"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
