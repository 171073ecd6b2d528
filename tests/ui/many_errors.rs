//! Every mistake is reported at once, each at its token.
use adapters_runtime::adapter;
use adapters_runtime::candle_nn::Linear;

#[adapter(lroa, rank = 0, alpha = -2.0, dropout = 2.0, max_vram = "lots")]
pub struct Model {
    #[adapt(in = 64)]
    pub q_proj: Linear,
    #[adapt(in = 64, out = 64, rnak = 4)]
    pub v_proj: Linear,
    #[adapt]
    pub norm: adapters_runtime::candle_nn::LayerNorm,
    #[nested(count = 2)]
    pub one: Linear,
}

fn main() {}
