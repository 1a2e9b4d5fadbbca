//! `[addon.web]`: the add-on's own HTTP surfaces, served by its plugin's HTTP handler (the
//! `web` world): the dashboard sessions opened by the platforms' SSO, and the build-facing
//! API with its per-app token.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Issue each provisioned app a token for `/addons/{id}/api/...`, exported as
    /// `api_token_var`. Off by default: it adds a variable to every provision's reply.
    pub build_api: bool,
    /// The variable carrying the token (default `<ID>_API_TOKEN`, the id upper-cased).
    pub api_token_var: Option<String>,
    /// Build API requests one app may make per minute (a token bucket refilled at this rate).
    pub api_rate_per_minute: u32,
    /// Requests one app may make at once above the rate before being answered 429.
    pub api_burst: u32,
    /// How long a dashboard session opened by an SSO login lasts, in seconds.
    pub session_secs: u64,
    /// Largest request body forwarded to the handler (dashboard and API).
    pub max_request_bytes: usize,
    /// Largest response body the handler may answer.
    pub max_response_bytes: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            build_api: false,
            api_token_var: None,
            api_rate_per_minute: 600,
            api_burst: 60,
            session_secs: 3_600,
            max_request_bytes: 1 << 20,
            max_response_bytes: 4 << 20,
        }
    }
}

impl WebConfig {
    /// The variable name of the build API token for add-on `id`.
    pub fn token_var(&self, id: &str) -> String {
        self.api_token_var.clone().unwrap_or_else(|| format!("{}_API_TOKEN", id.to_ascii_uppercase().replace('-', "_")))
    }

    pub(super) fn validate(&self, at: &str, id: &str, xervo_vars: Option<&[String]>) -> anyhow::Result<()> {
        for (name, value) in [
            ("api_rate_per_minute", u64::from(self.api_rate_per_minute)),
            ("api_burst", u64::from(self.api_burst)),
            ("session_secs", self.session_secs),
            ("max_request_bytes", self.max_request_bytes as u64),
            ("max_response_bytes", self.max_response_bytes as u64),
        ] {
            if value == 0 {
                anyhow::bail!("{at}: `web.{name}` must be greater than 0");
            }
        }
        let var = self.token_var(id);
        let valid = var.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && var.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            anyhow::bail!("{at}: `web.api_token_var` must be upper-case letters, digits and '_' (got `{var}`)");
        }
        if let (true, Some(vars)) = (self.build_api, xervo_vars)
            && !vars.contains(&var)
        {
            anyhow::bail!("{at}: `web.build_api` exports `{var}`: declare it in the Xervo manifest's `config_vars`");
        }
        Ok(())
    }
}
