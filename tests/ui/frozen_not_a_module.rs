//! A `#[frozen]` field must be a module the runtime can count; the error points at its type.
use adapters_runtime::adapter;

pub struct MyNorm;

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[frozen(params = 64)]
    pub norm: MyNorm,
}

fn main() {}
