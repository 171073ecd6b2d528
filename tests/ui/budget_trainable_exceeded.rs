//! A trainable-parameter budget that the model exceeds fails the build at the budget argument,
//! showing the computed value and the limit.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

const H: usize = 4096;

#[adapter(lora, rank = 16, alpha = 32.0)]
pub struct Attention {
    #[adapt(in = H, out = H)]
    pub q_proj: Linear,
    #[adapt(in = H, out = H)]
    pub k_proj: Linear,
    #[adapt(in = H, out = H)]
    pub v_proj: Linear,
    #[adapt(in = H, out = H)]
    pub o_proj: Linear,
}

#[adapter(lora, rank = 16, alpha = 32.0, max_trainable_params = 10_000_000)]
pub struct Model {
    #[nested(count = 32)]
    pub layers: Vec<Attention>,
}

fn main() {}
