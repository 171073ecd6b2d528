//! `examples/annotate.rs` — the README's migration example — trains for real: every adapter tensor
//! of every layer has a gradient at step 1 and a non-zero one by step 2, and the loss falls.

#[path = "../examples/annotate.rs"]
#[allow(dead_code)]
mod annotate;

#[test]
fn the_migration_example_trains_every_adapter() {
    let report = annotate::train(4).unwrap();
    assert_eq!(
        report.tensors,
        3 * 7 * 4,
        "A, B and m of 7 projections in 4 layers"
    );
    assert!(
        report.missing[0].is_empty(),
        "no gradient at step 1: {:?}",
        report.missing[0]
    );
    assert!(
        report.missing[1].is_empty(),
        "no gradient at step 2: {:?}",
        report.missing[1]
    );
    assert!(
        report.zero[1].is_empty(),
        "zero gradient at step 2: {:?}",
        report.zero[1]
    );
    let (first, last) = (report.losses[0], report.losses[3]);
    assert!(last < 0.5 * first, "the loss falls: {:?}", report.losses);
}
