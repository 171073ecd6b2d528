//! One mistake, one error: after an error in `#[adapter(...)]`, the struct's constants and the
//! `Adapters` methods still resolve (to placeholders), so their uses report nothing more.
use adapters_runtime::candle_nn::{Linear, VarMap};
use adapters_runtime::{adapter, Adapters};

#[adapter(lora, rank = 8, alpha = 16.0, dropuot = 0.1)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
}

const _: usize = Model::TRAINABLE_PARAMS;
const _: () = assert!(Model::VRAM_BYTES < 1 << 30);

fn count(model: &mut Model) -> usize {
    model.attach_adapters(&VarMap::new(), 0).unwrap();
    model.trainable_params().unwrap() + model.q_proj.frozen_params()
}

fn main() {
    let _ = count;
}
