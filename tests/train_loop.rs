//! The training loop on a tiny adapted model: exact resume from a checkpoint after a crash
//! (bit-identical parameters and losses), the NaN guard, checkpoint contents and errors, metrics,
//! and that training lowers the loss. On `ADAPTERS_TEST_DEVICE` (default `cpu`).

mod train_support;

use adapters_runtime::train::metrics::read_metrics;
use adapters_runtime::train::train_state::{
    dropout_steps, list_checkpoints, ADAPTER_DIR, OPTIMIZER_FILE, STATE_FILE, TRAINABLE_FILE,
};
use adapters_runtime::train::{
    evaluate, prepare, BatchLoader, Example, LrSchedule, PackMode, PackOptions, Tokenizer,
    TrainConfig, TrainSummary, Trainer,
};
use adapters_runtime::{AdapterError, Adapters, Result};
use std::cell::Cell;
use std::path::Path;
use train_support::{param_bits, scratch, test_device, TinyLm};

fn texts() -> Vec<Example> {
    let words = ["abc", "bcd", "cde", "xyz", "hello", "world", "rust", "dora"];
    (0..24)
        .map(|i| {
            Example::Text(format!(
                "{} {} {}",
                words[i % 8],
                words[(i * 3 + 1) % 8],
                words[(i * 5 + 2) % 8]
            ))
        })
        .collect()
}

fn loader(seed: u64) -> BatchLoader {
    let tok = Tokenizer::byte_level();
    let p = prepare(
        &texts(),
        &tok,
        PackOptions {
            seq_len: 16,
            mode: PackMode::Pad,
        },
    )
    .unwrap();
    BatchLoader::new(p.sequences, 4, tok.pad_id(), &test_device(), seed, true).unwrap()
}

fn config(dir: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        grad_accum: 2,
        schedule: LrSchedule::cosine(2e-2, 2, steps),
        max_grad_norm: Some(1.0),
        eval_every: Some(3),
        checkpoint_every: Some(4),
        checkpoint_dir: Some(dir.join("ckpt")),
        keep_checkpoints: 2,
        metrics_path: Some(dir.join("metrics.jsonl")),
        progress: false,
        seed: 9,
        ..TrainConfig::new(steps, 2e-2)
    }
}

/// Trains a fresh model; `fail_at_call` makes the loss closure fail at that micro-batch call
/// (1-based), simulating a crash; `resume` resumes from a checkpoint first.
fn run(
    dir: &Path,
    fail_at_call: Option<usize>,
    resume: Option<&Path>,
) -> (TinyLm, Result<TrainSummary>) {
    let (mut model, _vars) = TinyLm::new(259, 1234);
    let mut data = loader(5);
    let eval_batches = loader(0).batches_in_order().unwrap();
    let calls = Cell::new(0usize);
    let result = {
        let mut trainer = Trainer::new(&model, config(dir, 8))
            .unwrap()
            .with_eval(|m: &TinyLm| {
                evaluate(m, &eval_batches, |m, b| m.forward(&b.input_ids, false))
            })
            .with_adapter_saver(|m: &TinyLm, d: &Path| {
                std::fs::create_dir_all(d).unwrap();
                std::fs::write(
                    d.join("names.txt"),
                    m.named_trainable_vars()
                        .unwrap()
                        .iter()
                        .map(|(n, _)| n.clone())
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
                .unwrap();
                Ok(())
            });
        if let Some(ckpt) = resume {
            trainer.resume(&model, &mut data, ckpt).unwrap();
            assert_eq!(trainer.step(), 4);
        }
        trainer.train(&mut model, &mut data, |m, b, train| {
            calls.set(calls.get() + 1);
            if Some(calls.get()) == fail_at_call {
                return Err(AdapterError::InvalidArgument {
                    name: "crash".into(),
                    expected: "-".into(),
                    actual: "simulated".into(),
                });
            }
            assert!(train);
            m.loss(b, train)
        })
    };
    (model, result)
}

#[test]
fn resume_after_a_crash_continues_exactly_as_the_uninterrupted_run() {
    let straight_dir = scratch("straight");
    let (straight_model, straight) = run(&straight_dir, None, None);
    let straight = straight.unwrap();
    assert_eq!(straight.steps, 8);
    assert_eq!(straight.loss_history.len(), 8);
    assert_eq!(
        straight.evals.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 6, 8]
    );

    // Crash during step 5 (micro-batch calls 9 and 10), after the step-4 checkpoint.
    let crash_dir = scratch("crash");
    let (crashed_model, crashed) = run(&crash_dir, Some(9), None);
    assert!(crashed.unwrap_err().to_string().contains("simulated"));
    let ckpts = list_checkpoints(&crash_dir.join("ckpt")).unwrap();
    assert_eq!(ckpts.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4]);
    let ckpt = ckpts[0].1.clone();
    for f in [TRAINABLE_FILE, OPTIMIZER_FILE, STATE_FILE] {
        assert!(ckpt.join(f).is_file(), "{f}");
    }
    assert!(
        ckpt.join(ADAPTER_DIR).join("names.txt").is_file(),
        "the adapter saver wrote into adapter/"
    );
    let saved_dropout = dropout_steps(&crashed_model).unwrap();
    assert!(
        saved_dropout["fc1"] > 0,
        "fc1 uses dropout: {saved_dropout:?}"
    );
    drop(crashed_model);

    // A fresh model, loader and trainer resume from step 4 and run to 8.
    let (resumed_model, resumed) = run(&crash_dir, None, Some(&ckpt));
    let resumed = resumed.unwrap();
    assert_eq!(
        resumed.loss_history, straight.loss_history,
        "identical losses"
    );
    assert_eq!(resumed.evals, straight.evals, "identical evaluations");
    assert_eq!(
        param_bits(&resumed_model),
        param_bits(&straight_model),
        "bit-identical parameters"
    );
    assert_eq!(
        dropout_steps(&resumed_model).unwrap(),
        dropout_steps(&straight_model).unwrap()
    );

    // Metrics hold each step once, the crashed run's partial step 5 never logged.
    let m = read_metrics(crash_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        m.iter().map(|r| r.step).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(m[2].eval_loss, Some(straight.evals[0].1.loss));
    assert!(m
        .iter()
        .all(|r| r.lr.is_some() && r.grad_norm.is_some() && r.tokens_per_sec.is_some()));
    assert_eq!(m[0].lr, Some(0.0), "warmup starts at 0 like transformers");
    // keep_checkpoints = 2: steps 4 and 8 remain.
    let kept: Vec<u64> = list_checkpoints(&crash_dir.join("ckpt"))
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, vec![4, 8]);
    // No temporary folder is left behind.
    let names: Vec<String> = std::fs::read_dir(crash_dir.join("ckpt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("step-")), "{names:?}");
    std::fs::remove_dir_all(straight_dir).unwrap();
    std::fs::remove_dir_all(crash_dir).unwrap();
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let dir = scratch("nan");
    let (mut model, _vars) = TinyLm::new(259, 1);
    let mut data = loader(1);
    let cfg = TrainConfig {
        grad_accum: 1,
        checkpoint_every: Some(2),
        eval_every: None,
        metrics_path: None,
        ..config(&dir, 10)
    };
    let mut trainer = Trainer::new(&model, cfg).unwrap();
    let calls = Cell::new(0);
    let mut before = None;
    let err = trainer
        .train(&mut model, &mut data, |m, b, train| {
            calls.set(calls.get() + 1);
            let loss = m.loss(b, train)?;
            if calls.get() == 3 {
                before = Some(param_bits(m));
                return Ok((loss * f64::NAN)?);
            }
            Ok(loss)
        })
        .unwrap_err();
    match &err {
        AdapterError::NonFinite {
            step,
            what,
            value,
            last_checkpoint,
        } => {
            assert_eq!((*step, *what), (3, "loss"));
            assert!(value.is_nan());
            assert_eq!(
                last_checkpoint.as_deref(),
                Some(dir.join("ckpt/step-00000002").as_path())
            );
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "step 3: loss is NaN, not finite; training stopped (last good checkpoint: "
        ),
        "{msg}"
    );
    assert_eq!(
        param_bits(&model),
        before.unwrap(),
        "no update from the bad step"
    );
    assert_eq!(list_checkpoints(&dir.join("ckpt")).unwrap().len(), 1);
    assert_eq!(trainer.step(), 2);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn training_lowers_the_loss() {
    let (mut model, _vars) = TinyLm::new(259, 3);
    let mut data = loader(2);
    let eval = loader(0).batches_in_order().unwrap();
    let before = evaluate(&model, &eval, |m, b| m.forward(&b.input_ids, false)).unwrap();
    let cfg = TrainConfig {
        progress: false,
        grad_accum: 1,
        ..TrainConfig::new(40, 3e-2)
    };
    let mut trainer = Trainer::new(&model, cfg).unwrap();
    let summary = trainer
        .train(&mut model, &mut data, |m, b, t| m.loss(b, t))
        .unwrap();
    let after = evaluate(&model, &eval, |m, b| m.forward(&b.input_ids, false)).unwrap();
    assert!(
        after.loss < before.loss * 0.8,
        "eval loss {} → {}",
        before.loss,
        after.loss
    );
    assert!(summary.final_loss().unwrap() < summary.loss_history[0]);
    assert!(summary.tokens_seen > 0 && summary.tokens_per_sec > 0.0);
    assert!(after.accuracy.unwrap() > before.accuracy.unwrap());
}

#[test]
fn bad_configs_and_mismatched_checkpoints_are_typed_errors() {
    let (model, _vars) = TinyLm::new(259, 1);
    let bad = TrainConfig {
        grad_accum: 0,
        ..TrainConfig::new(4, 1e-3)
    };
    assert!(matches!(
        Trainer::new(&model, bad),
        Err(AdapterError::InvalidArgument { .. })
    ));
    let bad = TrainConfig {
        max_grad_norm: Some(f64::NAN),
        ..TrainConfig::new(4, 1e-3)
    };
    assert!(matches!(
        Trainer::new(&model, bad),
        Err(AdapterError::InvalidArgument { .. })
    ));

    // A checkpoint from a model with another vocabulary does not load, and says which keys.
    let dir = scratch("mismatch");
    let (mut small, _v) = TinyLm::new(100, 1);
    let cfg = TrainConfig {
        progress: false,
        checkpoint_dir: Some(dir.clone()),
        ..TrainConfig::new(1, 1e-3)
    };
    let tok_pad = 0;
    let seqs = vec![adapters_runtime::train::Sequence {
        ids: vec![1, 2, 3],
        mask: vec![false, true, true],
    }];
    let mut data = BatchLoader::new(seqs, 1, tok_pad, &test_device(), 0, false).unwrap();
    Trainer::new(&small, cfg.clone())
        .unwrap()
        .train(&mut small, &mut data, |m, b, t| m.loss(b, t))
        .unwrap();
    let mut trainer = Trainer::new(&model, cfg).unwrap();
    let e = trainer
        .resume(&model, &mut data, &dir.join("step-00000001"))
        .unwrap_err();
    assert!(matches!(e, AdapterError::Keys { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("fc2.lora_B.weight: expected F32 [259, 4], found F32 [100, 4]")
            || e.to_string()
                .contains("`fc2.lora_B.weight`: expected F32 [259, 4], found F32 [100, 4]"),
        "{e}"
    );
    // A corrupt trainer_state.json names the file.
    std::fs::write(dir.join("step-00000001").join(STATE_FILE), "{").unwrap();
    let e = trainer
        .resume(&model, &mut data, &dir.join("step-00000001"))
        .unwrap_err();
    assert!(
        matches!(e, AdapterError::Json { .. }) && e.to_string().contains("trainer_state.json"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
