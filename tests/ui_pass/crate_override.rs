//! `crate = path` points the generated code at a re-export of the runtime.
#![deny(warnings)]

extern crate adapters_runtime as rt;

pub mod reexport {
    pub use ::adapters_runtime as runtime;
}

use rt::adapter;
use rt::candle_nn::Linear;

#[adapter(lora, rank = 4, alpha = 8.0, crate = ::rt)]
pub struct ViaExternCrate {
    #[adapt(in = 8, out = 8)]
    pub q: Linear,
}

#[adapter(lora, rank = 4, alpha = 8.0, crate = crate::reexport::runtime, max_trainable_params = 64)]
pub struct ViaModulePath {
    #[adapt(in = 8, out = 8)]
    pub q: Linear,
}

fn main() {
    assert_eq!(ViaExternCrate::TRAINABLE_PARAMS, 64);
    assert_eq!(ViaModulePath::TRAINABLE_PARAMS, 64);
}
