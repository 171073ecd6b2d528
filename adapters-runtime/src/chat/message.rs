//! Chat messages: a role and a text, as in `{"messages": [{"role": …, "content": …}]}` data.

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the message.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// Whether the message is the model's (trained on).
    pub fn is_assistant(&self) -> bool {
        self.role == "assistant"
    }
}

/// The roles a message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];
