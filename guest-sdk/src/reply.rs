//! Builders for the replies a plugin returns.

use crate::bindings;
use crate::bindings::addon::provider::types::EnvVar;

/// Both replies are variables plus an optional message; one macro keeps their builders equal.
macro_rules! reply {
    ($(#[$doc:meta])* $name:ident => $wit:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            /// The variables the platform sets on the app.
            pub config: Vec<EnvVar>,
            /// A message the platform shows the user.
            pub message: Option<String>,
        }

        impl $name {
            /// An empty reply: no variables, no message.
            pub fn new() -> Self {
                Self::default()
            }

            /// Add a variable (`KEY`, value).
            pub fn var(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
                self.config.push(EnvVar { key: key.into(), value: value.into() });
                self
            }

            /// The variables as (key, value) pairs, in order.
            pub fn vars(&self) -> Vec<(String, String)> {
                self.config.iter().map(|v| (v.key.clone(), v.value.clone())).collect()
            }

            /// A message for the user, shown by platforms that display one.
            pub fn message(mut self, message: impl Into<String>) -> Self {
                self.message = Some(message.into());
                self
            }

            #[doc(hidden)]
            pub fn into_wit(self) -> $wit {
                use $wit as Wit;
                Wit { config: self.config, message: self.message }
            }
        }
    };
}

reply!(
    /// The variables a provision exports to the app, and an optional message for the user.
    ProvisionReply => bindings::ProvisionReply
);

reply!(
    /// The outcome of a plan change: variables that change with the plan (none keeps the
    /// provisioned ones) and an optional message.
    ChangePlanReply => bindings::ChangePlanReply
);
