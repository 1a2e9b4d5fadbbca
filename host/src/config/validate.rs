//! Validating a parsed config, section by section: the server's settings, the admin and
//! deploy tokens (long enough, unique, never a partner's credential), and each add-on (its
//! id, credentials, plans, limits and the settings of its jobs, pages, web surface and
//! outbound origins). Every message names the field, as the file spells it.

use std::collections::HashSet;

use anyhow::{Context, bail};

use super::{AddonConfig, HostConfig, Origins, XervoSettings};

impl HostConfig {
    /// Check the whole config; the first problem is the error.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.validate_server()?;
        self.validate_tokens()?;
        let mut seen = HashSet::new();
        for (i, addon) in self.addons.iter().enumerate() {
            let at = format!("addon[{i}] (id `{}`)", addon.id);
            if !valid_addon_id(&addon.id) {
                bail!("{at}: `id` must be 1-63 characters of a-z, 0-9 and '-', starting with a letter");
            }
            if !seen.insert(addon.id.as_str()) {
                bail!("{at}: `id` is used by another add-on");
            }
            validate_addon(&at, addon)?;
        }
        Ok(())
    }

    fn validate_server(&self) -> anyhow::Result<()> {
        if self.server.stall_after_ms < 1_000 {
            bail!("server.stall_after_ms must be at least 1000 (the heartbeat runs every second)");
        }
        for (name, value) in [
            ("max_connections", self.server.max_connections as u64),
            ("max_connections_per_client", self.server.max_connections_per_client as u64),
            ("write_timeout_ms", self.server.write_timeout_ms),
            ("header_timeout_ms", self.server.header_timeout_ms),
            ("body_timeout_ms", self.server.body_timeout_ms),
            ("upload_timeout_ms", self.server.upload_timeout_ms),
            ("budgets.bitrise_ms", self.server.budgets.bitrise_ms),
            ("budgets.xervo_ms", self.server.budgets.xervo_ms),
        ] {
            if value == 0 {
                bail!("server.{name} must be greater than 0");
            }
        }
        let dns_label = |id: &str| {
            id.len() <= 63
                && !id.starts_with('-')
                && !id.ends_with('-')
                && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if self.server.web_origin.is_some()
            && let Some(addon) = self.addons.iter().find(|a| !dns_label(&a.id))
        {
            bail!("add-on id `{}` cannot name an origin (server.web_origin): use a-z, 0-9 and '-'", addon.id);
        }
        if let Some(url) = &self.server.public_url {
            let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("server.public_url `{url}`: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() || parsed.fragment().is_some() {
                bail!("server.public_url `{url}` must be an http(s) URL without query or fragment");
            }
        }
        if self.server.max_concurrent_calls == 0 {
            bail!("server.max_concurrent_calls must be at least 1");
        }
        if !(0..=19).contains(&self.server.slow_lane_nice) {
            bail!("server.slow_lane_nice must be between 0 and 19");
        }
        if self.server.plugin_cores == Some(0) {
            bail!("server.plugin_cores must be at least 1");
        }
        if let Some(addon) = self.addons.iter().find(|a| !(1..=1_000).contains(&a.limits.cpu_weight)) {
            bail!("add-on `{}`: limits.cpu_weight must be between 1 and 1000", addon.id);
        }
        Ok(())
    }

    /// Admin and deploy tokens: named, long, unique, and never a partner's credential.
    fn validate_tokens(&self) -> anyhow::Result<()> {
        for (i, admin) in self.server.admins.iter().enumerate() {
            if admin.name.trim().is_empty() {
                bail!("server.admins[{i}]: `name` is empty");
            }
            if admin.token.len() < 16 {
                bail!("server.admins[{i}] (`{}`): `token` must be at least 16 characters", admin.name);
            }
            let reused = self.addons.iter().any(|a| {
                a.bitrise.as_ref().is_some_and(|b| b.shared_token == admin.token || b.sso_secret == admin.token)
                    || a.xervo.as_ref().is_some_and(|x| x.password.as_ref() == Some(&admin.token))
            });
            if reused {
                bail!("server.admins[{i}] (`{}`): `token` must not be a partner's credential", admin.name);
            }
        }
        let partner_credential = |token: &str| {
            self.addons.iter().any(|a| {
                a.bitrise.as_ref().is_some_and(|b| b.shared_token.expose() == token || b.sso_secret.expose() == token)
                    || a.xervo.as_ref().is_some_and(|x| x.password.as_deref() == Some(token))
            })
        };
        let mut tokens: HashSet<&str> = self.server.admins.iter().map(|a| a.token.expose()).collect();
        for addon in &self.addons {
            for (j, deployer) in addon.deployers.iter().enumerate() {
                let at = format!("addon `{}` deployers[{j}] (`{}`)", addon.id, deployer.name);
                if deployer.name.trim().is_empty() {
                    bail!("{at}: `name` is empty");
                }
                if deployer.token.len() < 16 {
                    bail!("{at}: `token` must be at least 16 characters");
                }
                if partner_credential(&deployer.token) {
                    bail!("{at}: `token` must not be a partner's credential");
                }
                if !tokens.insert(deployer.token.expose()) {
                    bail!("{at}: `token` is already an admin's or another deployer's token");
                }
            }
        }
        Ok(())
    }
}

/// One add-on's settings (`at` names it in messages).
fn validate_addon(at: &str, addon: &AddonConfig) -> anyhow::Result<()> {
    if let Some(b) = &addon.bitrise {
        if b.shared_token.trim().is_empty() {
            bail!("{at}: `bitrise.shared_token` is empty");
        }
        if b.sso_secret.trim().is_empty() {
            bail!("{at}: `bitrise.sso_secret` is empty");
        }
    }
    let xervo_vars = match &addon.xervo {
        Some(x) => {
            Some(XervoSettings::resolve(&addon.id, x).with_context(|| format!("add-on `{}`", addon.id))?.config_vars)
        }
        None => None,
    };
    if let Some(p) = addon.plans.iter().find(|p| p.trim().is_empty()) {
        bail!("{at}: `plans` contains an empty name ({p:?})");
    }
    addon.limits.validate(at)?;
    addon.jobs.validate(at)?;
    addon.page.validate(at)?;
    addon.web.validate(at, &addon.id, xervo_vars.as_deref())?;
    Origins::parse(&addon.allowed_outbound).map_err(|e| anyhow::anyhow!("{at}: `allowed_outbound`: {e}"))?;
    Ok(())
}

fn valid_addon_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('a'..='z')) && id.len() <= 63 && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}
