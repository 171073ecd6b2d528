//! `#[nested]` needs a type that is itself `#[adapter]`-annotated; the error points at it.
use adapters_runtime::adapter;

pub struct Plain {
    pub x: u32,
}

#[adapter(lora, rank = 8, alpha = 16.0)]
pub struct Model {
    #[nested]
    pub block: Plain,
}

fn main() {}
