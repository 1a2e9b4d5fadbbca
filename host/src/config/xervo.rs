//! Xervo's settings for one add-on, from its TOML entry: inline, or read from the
//! `addon-manifest.json` it names, validated with errors that name the field. (Printing the
//! manifest the platform needs is the Xervo adapter's job: [`crate::xervo::manifest`].)

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use super::Secret;

/// Xervo's settings for one add-on: either the path of its `addon-manifest.json` or the same
/// fields inline. Never both, so every secret has exactly one home.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XervoConfig {
    /// An `addon-manifest.json` to read `password`, `sso_salt`, `config_vars` and `regions` from.
    pub manifest: Option<PathBuf>,
    /// HTTP Basic password (user is the add-on id).
    pub password: Option<Secret>,
    /// Signs SSO logins: `token = sha1(id:sso_salt:timestamp)`.
    pub sso_salt: Option<Secret>,
    /// Variables every provision must return.
    #[serde(default)]
    pub config_vars: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
}

/// An add-on's Xervo settings, validated.
#[derive(Debug, Clone)]
pub struct XervoSettings {
    pub id: String,
    pub password: Secret,
    pub sso_salt: Secret,
    pub config_vars: Vec<String>,
    pub regions: Vec<String>,
}

impl XervoSettings {
    /// The prefix every config var must carry: the id in upper case.
    pub fn var_prefix(&self) -> String {
        self.id.to_ascii_uppercase()
    }

    /// Resolve and validate the settings of add-on `id`.
    pub fn resolve(id: &str, cfg: &XervoConfig) -> anyhow::Result<XervoSettings> {
        if id.contains('-') {
            bail!(
                "`id`: Xervo config var names must start with the upper-cased add-on id, so `{id}` may not contain '-'"
            );
        }
        let settings = match &cfg.manifest {
            Some(path) => {
                if cfg.password.is_some() || cfg.sso_salt.is_some() || !cfg.config_vars.is_empty() {
                    bail!(
                        "`xervo`: give either `manifest` or the inline fields (password, sso_salt, config_vars), not both"
                    );
                }
                from_manifest_file(id, path)?
            }
            None => XervoSettings {
                id: id.to_owned(),
                password: cfg.password.clone().unwrap_or_default(),
                sso_salt: cfg.sso_salt.clone().unwrap_or_default(),
                config_vars: cfg.config_vars.clone(),
                regions: cfg.regions.clone(),
            },
        };
        settings.validate().map_err(|e| anyhow::anyhow!("`xervo.{e}"))?;
        Ok(settings)
    }

    /// Checks shared by both sources; errors start with the field name.
    fn validate(&self) -> Result<(), String> {
        if self.password.trim().is_empty() {
            return Err("password` must be a non-empty string".into());
        }
        if self.sso_salt.trim().is_empty() {
            return Err("sso_salt` must be a non-empty string".into());
        }
        if self.config_vars.is_empty() {
            return Err("config_vars` must list at least one variable".into());
        }
        let prefix = self.var_prefix();
        for (i, var) in self.config_vars.iter().enumerate() {
            if !var.starts_with(&prefix) {
                return Err(format!("config_vars[{i}]` ({var}) must start with {prefix}"));
            }
            let valid = var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                return Err(format!("config_vars[{i}]` ({var}) may contain only A-Z, 0-9 and '_'"));
            }
        }
        if let Some((i, r)) = self.regions.iter().enumerate().find(|(_, r)| r.trim().is_empty()) {
            return Err(format!("regions[{i}]` ({r:?}) must not be empty"));
        }
        Ok(())
    }
}

fn from_manifest_file(id: &str, path: &Path) -> anyhow::Result<XervoSettings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading manifest {}", path.display()))?;
    let at = |field: &str, problem: &str| anyhow::anyhow!("manifest {}: `{field}` {problem}", path.display());
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("manifest {}: invalid JSON: {e}", path.display()))?;
    let string = |v: &Value, field: &str| -> anyhow::Result<String> {
        match v.pointer(&format!("/{}", field.replace('.', "/"))) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(at(field, "must not be empty")),
            Some(_) => Err(at(field, "must be a string")),
            None => Err(at(field, "is missing")),
        }
    };
    let manifest_id = string(&doc, "id")?;
    if manifest_id != id {
        return Err(at("id", &format!("is `{manifest_id}` but the add-on's id is `{id}`")));
    }
    let strings = |field: &str, required: bool| -> anyhow::Result<Vec<String>> {
        match doc.pointer(&format!("/{}", field.replace('.', "/"))) {
            None if !required => Ok(Vec::new()),
            None => Err(at(field, "is missing")),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_owned).ok_or_else(|| at(&format!("{field}[{i}]"), "must be a string"))
                })
                .collect(),
            Some(_) => Err(at(field, "must be an array of strings")),
        }
    };
    for block in ["api.production", "api.test"] {
        for url in ["base_url", "sso_url"] {
            let field = format!("{block}.{url}");
            let value = string(&doc, &field)?;
            if !(value.starts_with("http://") || value.starts_with("https://")) {
                return Err(at(&field, "must be an http(s) URL"));
            }
        }
    }
    Ok(XervoSettings {
        id: id.to_owned(),
        password: string(&doc, "api.password")?.into(),
        sso_salt: string(&doc, "api.sso_salt")?.into(),
        config_vars: strings("api.config_vars", true)?,
        regions: strings("api.regions", false)?,
    })
}
