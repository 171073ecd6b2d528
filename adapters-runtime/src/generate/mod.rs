//! Text generation with a key / value cache: greedy decoding or transformers-style sampling
//! (temperature, top-k, top-p, repetition penalty, a seed), EOS and stop strings, text streamed
//! as it becomes final; defaults from a model's `generation_config.json`.

mod chat_session;
mod decode;
mod generation_config;
mod sampling;
mod text_stream;

pub use chat_session::ChatSession;
pub use decode::{generate, greedy_batch, Generation, GenerationConfig, StopReason};
pub use generation_config::{
    eos_ids, gguf_eos_ids, sampling_defaults, EOG_TOKENS, TRANSFORMERS_TOP_K,
};
pub use sampling::{argmax, Sampler, Sampling};
pub use text_stream::TextStream;
