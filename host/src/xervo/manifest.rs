//! Xervo's `addon-manifest.json` as this host prints it for an add-on, pointing at this
//! host's routes. (Reading one is part of loading the config: [`XervoSettings::resolve`].)

use serde_json::{Value, json};

pub(crate) use crate::config::XervoSettings;

impl XervoSettings {
    /// The manifest for this add-on on a host reachable at `base_url` (and `test_base_url`
    /// for the `test` block, which dia uses).
    pub fn manifest(&self, base_url: &str, test_base_url: &str) -> Value {
        let urls = |base: &str| {
            let base = base.trim_end_matches('/');
            json!({
                "base_url": format!("{base}/addons/{}/resources", self.id),
                "sso_url": format!("{base}/addons/{}/sso/login", self.id),
            })
        };
        let regions = if self.regions.is_empty() { vec!["us-east-1".to_owned()] } else { self.regions.clone() };
        json!({
            "id": self.id,
            "api": {
                "config_vars": self.config_vars,
                "regions": regions,
                "password": self.password,
                "sso_salt": self.sso_salt,
                "production": urls(base_url),
                "test": urls(test_base_url),
            }
        })
    }
}
