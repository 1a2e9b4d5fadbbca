//! One `[[addon]]` table of a host config file, written by the tests and benchmarks that
//! start the real binary. Each of them used to spell the TOML out by hand; a builder keeps
//! the keys in one place so a renamed setting is renamed once.

use std::fmt::Write;

/// An add-on as the config file declares it. Strings are quoted with Rust's `Debug`, which
/// TOML reads back as the same basic string for the paths and tokens used here.
#[derive(Clone, Debug, Default)]
pub struct AddonToml {
    id: String,
    plugin: String,
    plans: Vec<String>,
    bitrise: Option<(String, String)>,
    xervo: Option<Xervo>,
    config: Vec<(String, String)>,
    secrets: Vec<(String, String)>,
    build_api: bool,
    allowed_outbound: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Xervo {
    password: String,
    sso_salt: String,
    config_vars: Vec<String>,
    regions: Vec<String>,
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl AddonToml {
    pub fn new(id: &str, plugin: &str) -> Self {
        Self { id: id.into(), plugin: plugin.into(), ..Self::default() }
    }

    pub fn plans(mut self, plans: &[&str]) -> Self {
        self.plans = strings(plans);
        self
    }

    /// Served to Bitrise with this shared token and SSO secret.
    pub fn bitrise(mut self, shared_token: &str, sso_secret: &str) -> Self {
        self.bitrise = Some((shared_token.into(), sso_secret.into()));
        self
    }

    /// Served to Xervo with this password, SSO salt and declared config vars.
    pub fn xervo(mut self, password: &str, sso_salt: &str, config_vars: &[&str]) -> Self {
        let regions = self.xervo.take().map(|x| x.regions).unwrap_or_default();
        self.xervo = Some(Xervo {
            password: password.into(),
            sso_salt: sso_salt.into(),
            config_vars: strings(config_vars),
            regions,
        });
        self
    }

    /// Xervo regions (call after [`AddonToml::xervo`]).
    pub fn regions(mut self, regions: &[&str]) -> Self {
        self.xervo.get_or_insert_with(Xervo::default).regions = strings(regions);
        self
    }

    /// A key of the plugin's `[addon.config]`.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// A key of the plugin's `[addon.secrets]`.
    pub fn secret(mut self, key: &str, value: &str) -> Self {
        self.secrets.push((key.into(), value.into()));
        self
    }

    /// Issue build API tokens and serve `/addons/{id}/api/...` (`[addon.web] build_api`).
    pub fn allowed_outbound(mut self, origins: &[&str]) -> Self {
        self.allowed_outbound = strings(origins);
        self
    }

    pub fn build_api(mut self) -> Self {
        self.build_api = true;
        self
    }

    /// The `[[addon]]` table and its sub-tables.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "\n[[addon]]\nid = {:?}\nplugin = {:?}", self.id, self.plugin)?;
        if !self.plans.is_empty() {
            writeln!(out, "plans = {:?}", self.plans)?;
        }
        if !self.allowed_outbound.is_empty() {
            writeln!(out, "allowed_outbound = {:?}", self.allowed_outbound)?;
        }
        if let Some((token, sso)) = &self.bitrise {
            writeln!(out, "[addon.bitrise]\nshared_token = {token:?}\nsso_secret = {sso:?}")?;
        }
        if let Some(x) = &self.xervo {
            writeln!(out, "[addon.xervo]\npassword = {:?}\nsso_salt = {:?}", x.password, x.sso_salt)?;
            if !x.config_vars.is_empty() {
                writeln!(out, "config_vars = {:?}", x.config_vars)?;
            }
            if !x.regions.is_empty() {
                writeln!(out, "regions = {:?}", x.regions)?;
            }
        }
        if self.build_api {
            writeln!(out, "[addon.web]\nbuild_api = true")?;
        }
        for (table, pairs) in [("config", &self.config), ("secrets", &self.secrets)] {
            if !pairs.is_empty() {
                writeln!(out, "[addon.{table}]")?;
                for (k, v) in pairs {
                    writeln!(out, "{k} = {v:?}")?;
                }
            }
        }
        Ok(())
    }
}

/// Several add-ons as one config file.
pub fn addons_toml(addons: &[AddonToml]) -> String {
    addons.iter().map(AddonToml::to_toml).collect()
}
