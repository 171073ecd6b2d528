//! The generated code only uses absolute paths: it compiles next to user items named `Result`,
//! `Option`, `Ok`, `core`, `adapters_runtime`, `usize`, `str`, `Iterator`, `panic!`...
#![allow(dead_code, non_camel_case_types, unused_macros)]

mod user {
    use ::adapters_runtime::adapter;
    use ::adapters_runtime::candle_nn::{Embedding, Linear};

    pub type Result<T> = ::core::result::Result<T, ()>;
    pub struct Option;
    pub struct Ok;
    pub struct Err;
    pub struct Some;
    mod core {}
    mod std {}
    mod adapters_runtime {}
    type usize = u8;
    type str = u16;
    type bool = u32;
    trait Iterator {}
    trait IntoIterator {}
    trait AdapterModel {}
    struct PhantomData;
    macro_rules! panic {
        ($($t:tt)*) => {
            compile_error!("the user's panic! was used")
        };
    }
    fn join_path() {}

    #[adapter(
        dora,
        rank = 4,
        alpha = 8.0,
        max_trainable_params = 100_000,
        max_vram = "1 MiB"
    )]
    pub struct Model {
        #[adapt(in = 16, out = 32)]
        pub r#in: Linear,
        #[adapt(in = 100, out = 16)]
        pub embed: Embedding,
        #[frozen(in = 32, out = 16, bias = true)]
        pub out: Linear,
        #[nested(count = 2)]
        pub blocks: Vec<Block>,
        #[nested]
        pub pair: [Block; 2],
    }

    #[adapter(lora, rank = 2, alpha = 4.0)]
    pub struct Block {
        #[adapt(in = 8, out = 8)]
        pub f: Linear,
    }
}

fn main() {
    assert_eq!(user::Block::TRAINABLE_PARAMS, 32);
    // r#in: 4·48 + 32 = 224; embed: 4·116 + 16 = 480; blocks: 4 · 32.
    assert_eq!(user::Model::TRAINABLE_PARAMS, 224 + 480 + 128);
}
