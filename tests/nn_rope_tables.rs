//! Gradients of `adapters_runtime::nn::rotary_emb` with respect to tracked cos / sin tables
//! (narrowed `[t, d/2]` and batched `[b, t, d/2]`), against central finite differences in f64.

mod nn_support;

use adapters_runtime::candle_core::{DType, Result, Tensor};
use adapters_runtime::nn::rotary_emb::{rope, rope_i, rope_thd};
use nn_support::{assert_rel, finite_diff, grads, rand};

type Rope = fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

#[test]
fn table_grads_match_finite_differences_f64() {
    let (b, h, t, d) = (2, 3, 4, 10);
    let kinds: [(&str, Rope, [usize; 4]); 3] = [
        ("rope", rope, [b, h, t, d]),
        ("rope_i", rope_i, [b, h, t, d]),
        ("rope_thd", rope_thd, [b, t, h, d]),
    ];
    let mut worst = 0f64;
    for (name, f, x_shape) in kinds {
        let x = rand(1, &x_shape, 1.0, DType::F64);
        // A [t + 3, d/2] table narrowed at offset 2 (the rows around it get zero gradient), and a
        // batched [b, t, d/2] table.
        let narrowed = move |t_: &[Tensor]| {
            let (c, s) = (t_[1].narrow(0, 2, t)?, t_[2].narrow(0, 2, t)?);
            f(&t_[0], &c, &s)
        };
        let batched = move |t_: &[Tensor]| f(&t_[0], &t_[1], &t_[2]);
        let tables = [
            (
                "narrowed",
                [t + 3, d / 2].to_vec(),
                &narrowed as &dyn Fn(&[Tensor]) -> Result<Tensor>,
            ),
            ("batched", [b, t, d / 2].to_vec(), &batched),
        ];
        for (table, shape, op) in tables {
            let cos = rand(2, &shape, 1.0, DType::F64);
            let sin = rand(3, &shape, 1.0, DType::F64);
            let inputs = [&x, &cos, &sin];
            let (_, gs) = grads(op, &inputs);
            for (k, g) in gs.iter().enumerate() {
                let fd = finite_diff(op, &inputs, k);
                let what = format!("{name} {table} table: input {k} vs finite diff");
                worst = worst.max(assert_rel(&what, g, &fd, 1e-6));
            }
        }
    }
    println!("max rel err: {worst:.3e}");
}
