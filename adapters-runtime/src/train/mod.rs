//! Fine-tuning of an adapted model: data, tokenizer, loss, optimizer, schedule, checkpoints,
//! metrics and the [`Trainer`] loop that ties them together.
//!
//! * [`data`]: JSONL examples (`{"text"}`, `{"prompt","completion"}`, `{"messages":[…]}`), with
//!   bad lines reported by line number; a seeded train / eval split.
//! * [`tokenizer`], [`chat`]: an HF `tokenizer.json` or a byte-level tokenizer; the chat format.
//! * [`pack`]: examples → token ids with a loss mask → sequences of at most `seq_len + 1` tokens
//!   (padded or packed; truncation counted).
//! * [`batch`]: padded [`Batch`]es and a seeded shuffling [`BatchLoader`] whose position is saved
//!   with checkpoints.
//! * [`loss`]: masked causal-LM cross entropy that records gradients, and token accuracy.
//! * [`optim`], [`grads`]: PyTorch's AdamW with f32 state that can be checkpointed; gradient
//!   accumulation and global-norm clipping.
//! * [`schedule`]: linear warmup then cosine decay (transformers' semantics).
//! * [`train_state`]: atomic training checkpoints; resuming continues exactly as if never stopped.
//! * [`memory`]: the training-memory estimate of adapting an HF model (the `estimate` report).
//! * [`metrics`]: JSONL metrics.
//! * [`trainer`]: the [`Trainer`] loop.

pub mod batch;
pub mod chat;
pub mod data;
pub mod grads;
pub mod loss;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod pack;
pub mod schedule;
pub mod tokenizer;
mod tokenizer_gguf;
pub mod train_state;
pub mod trainer;

pub use batch::{Batch, BatchLoader, BatchSource, DataPosition};
pub use chat::Message;

pub use crate::gguf::tokenizer::{gguf_tokenizer_json, GgufTokenizerJson};
pub use data::{load_jsonl, split_train_eval, Dataset, Example, JsonlOptions};
pub use grads::{clip_grad_norm, GradAccumulator, Grads};
pub use loss::{
    causal_lm_loss, causal_lm_loss_sum, llama_loss, masked_cross_entropy, masked_cross_entropy_sum,
    token_accuracy,
};
pub use memory::{estimate_training, EstimateRequest, TrainingEstimate};
pub use metrics::{EvalMetrics, MetricRecord, MetricsWriter};
pub use optim::{AdamW, AdamWConfig};
pub use pack::{
    encode_chat_prompt, encode_example, encode_example_bounded, encode_prompt, prepare, PackMode,
    PackOptions, Prepared, Sequence,
};
pub use schedule::LrSchedule;
pub use tokenizer::{Encoded, Tokenizer};
pub use train_state::{latest_checkpoint, TrainerState};
pub use trainer::{evaluate, TrainConfig, TrainSummary, Trainer};
