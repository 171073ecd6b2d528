//! Training checkpoints are never half-taken for good: pruning retires a checkpoint atomically
//! (a half-deleted `step-*` folder is not listed), a resume from a step beyond the run's `steps`
//! is refused, and a corrupt data position is reported as such, not as changed data.

mod train_support;

use adapters_runtime::train::train_state::{
    list_checkpoints, prune_checkpoints, OPTIMIZER_FILE, STATE_FILE, TRAINABLE_FILE,
};
use adapters_runtime::train::{
    prepare, BatchLoader, BatchSource, Example, PackMode, PackOptions, Tokenizer, TrainConfig,
    Trainer,
};
use adapters_runtime::AdapterError;
use std::path::Path;
use train_support::{scratch, test_device, TinyLm};

fn loader() -> BatchLoader {
    let tok = Tokenizer::byte_level();
    let texts: Vec<Example> = (0..8)
        .map(|i| Example::Text(format!("text number {i}")))
        .collect();
    let pack = PackOptions {
        seq_len: 16,
        mode: PackMode::Pad,
    };
    let p = prepare(&texts, &tok, pack).unwrap();
    BatchLoader::new(p.sequences, 4, tok.pad_id(), &test_device(), 1, true).unwrap()
}

/// Trains `steps` steps with a checkpoint every step under `dir/ckpt`.
fn train(dir: &Path, steps: u64, keep: usize) {
    let (mut m, _) = TinyLm::new(260, 3);
    let mut tc = TrainConfig::new(steps, 1e-2);
    tc.progress = false;
    tc.checkpoint_every = Some(1);
    tc.checkpoint_dir = Some(dir.join("ckpt"));
    tc.keep_checkpoints = keep;
    let mut trainer = Trainer::new(&m, tc).unwrap();
    trainer
        .train(&mut m, &mut loader(), |m, b, t| m.loss(b, t))
        .unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn half_deleted_checkpoints_are_not_listed_and_pruning_cleans_up() {
    let dir = scratch("prune");
    train(&dir, 3, 0);
    let ckpt = dir.join("ckpt");
    assert_eq!(list_checkpoints(&ckpt).unwrap().len(), 3);
    // A `step-*` folder that lost its tensors (a prune killed half-way, before this fix) still has
    // `trainer_state.json`: it is not a checkpoint.
    std::fs::remove_file(ckpt.join("step-00000002").join(TRAINABLE_FILE)).unwrap();
    let listed: Vec<u64> = list_checkpoints(&ckpt)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(listed, [1, 3]);
    // What an interrupted prune leaves now: a hidden `.step-*.deleting`, removed by the next prune.
    std::fs::create_dir(ckpt.join(".step-00000000.deleting")).unwrap();
    prune_checkpoints(&ckpt, 1).unwrap();
    assert_eq!(names(&ckpt), ["step-00000002", "step-00000003"]);
    let listed: Vec<u64> = list_checkpoints(&ckpt)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(listed, [3]);
    for f in [STATE_FILE, TRAINABLE_FILE, OPTIMIZER_FILE] {
        assert!(ckpt.join("step-00000003").join(f).is_file());
    }
}

#[test]
fn a_resume_beyond_the_runs_steps_is_refused() {
    let dir = scratch("beyond");
    train(&dir, 3, 0);
    let (m, _) = TinyLm::new(260, 3);
    let mut tc = TrainConfig::new(2, 1e-2);
    tc.progress = false;
    let mut trainer = Trainer::new(&m, tc).unwrap();
    let err = trainer
        .resume(&m, &mut loader(), &dir.join("ckpt/step-00000003"))
        .unwrap_err();
    assert!(
        matches!(&err, AdapterError::Resume { what, .. } if what == "step"),
        "{err}"
    );
    assert!(err.to_string().contains("at most 2"), "{err}");
}

#[test]
fn a_corrupt_data_index_is_not_reported_as_changed_data() {
    let mut l = loader();
    let mut pos = l.position();
    pos.index = pos.sequences + 5;
    let err = l.restore(&pos).unwrap_err().to_string();
    assert!(err.contains("corrupt") && !err.contains("changed"), "{err}");
    let mut other = l.position();
    other.fingerprint ^= 1;
    let err = l.restore(&other).unwrap_err().to_string();
    assert!(err.contains("the training data changed"), "{err}");
}
