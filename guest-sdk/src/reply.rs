//! Builders for the replies a plugin returns.

use crate::bindings;
use crate::bindings::addon::provider::types::EnvVar;

/// The variables a provision exports to the app, and an optional message for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionReply {
    pub config: Vec<EnvVar>,
    pub message: Option<String>,
}

impl ProvisionReply {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a variable (`KEY`, value).
    pub fn var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push(EnvVar {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> bindings::ProvisionReply {
        bindings::ProvisionReply {
            config: self.config,
            message: self.message,
        }
    }
}

/// The outcome of a plan change: variables that change with the plan (none keeps the
/// provisioned ones) and an optional message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangePlanReply {
    pub config: Vec<EnvVar>,
    pub message: Option<String>,
}

impl ChangePlanReply {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push(EnvVar {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    #[doc(hidden)]
    pub fn into_wit(self) -> bindings::ChangePlanReply {
        bindings::ChangePlanReply {
            config: self.config,
            message: self.message,
        }
    }
}
