//! `#[adapt]` without sizes is fine until a compile-time constant is used; then the error says
//! which field lacks them.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[adapt(in = 64, out = 64)]
    pub q_proj: Linear,
    #[adapt]
    pub v_proj: Linear,
}

const _: () = assert!(Model::TRAINABLE_PARAMS < 1_000_000);

fn main() {}
