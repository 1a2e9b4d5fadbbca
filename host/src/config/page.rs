//! `[addon.page]`: how the dashboard the host renders after SSO presents the add-on (for
//! plugins without a page of their own): the partner's name and documentation link.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PageConfig {
    /// The add-on's name as users know it (default: its id).
    pub name: Option<String>,
    /// The partner's documentation, linked from the page and handed to Bitrise's Beam header
    /// (default: the add-on's `docs_url` setting, if any).
    pub docs_url: Option<String>,
}

impl PageConfig {
    pub(super) fn validate(&self, at: &str) -> anyhow::Result<()> {
        if let Some(url) = &self.docs_url {
            let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("{at}: `page.docs_url`: {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                anyhow::bail!("{at}: `page.docs_url` must be an http or https URL");
            }
        }
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty() || n.len() > 100) {
            anyhow::bail!("{at}: `page.name` must be 1 to 100 characters");
        }
        Ok(())
    }
}
