//! A secret from the configuration (a token, a password, an SSO secret, a database URL): it
//! reads like a string where the host uses it, and never prints. `{:?}` shows `Secret(..)`,
//! so a config, an error or a log line that formats its surroundings cannot leak it.

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it (a comparison, a signature).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Secret {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_reads_as_its_value_and_never_prints() {
        let secret: Secret = serde_json::from_str("\"hunter2\"").expect("a string");
        assert_eq!(&*secret, "hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(Secret(..))");
        assert_eq!(serde_json::to_string(&secret).expect("serialises"), "\"hunter2\"");
    }
}
