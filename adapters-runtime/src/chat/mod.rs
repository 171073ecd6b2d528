//! HF chat templates (Jinja), rendered as transformers' `apply_chat_template` renders them.
//!
//! A model's own template (from `chat_template.jinja` or `tokenizer_config.json`) renders a
//! conversation byte for byte as transformers does, and tells which spans of the rendering the
//! training loss covers: each answer and its end-of-turn marker.
//!
//! ```
//! use adapters_runtime::chat::{ChatTemplate, Message, SpecialTokens};
//!
//! let source = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
//!               {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
//! let template = ChatTemplate::new(source, SpecialTokens::default(), "chatml")?;
//! let chat = [Message::new("user", "Hi"), Message::new("assistant", "Hello!")];
//! assert_eq!(
//!     template.render(&chat[..1], true)?,
//!     "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
//! );
//! let (text, spans) = template.render_with_assistant_spans(&chat)?;
//! assert_eq!(&text[spans[0].clone()], "Hello!<|im_end|>");
//! # Ok::<(), adapters_runtime::AdapterError>(())
//! ```
//!
//! Depends only on [`crate::error`] and [`crate::io`].

mod message;
mod python;
mod strftime;
mod template;

pub use message::{Message, ROLES};
pub use strftime::DateTime;
pub use template::{ChatTemplate, SpecialTokens, MAX_FUEL};
