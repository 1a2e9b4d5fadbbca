//! `addon-host test`: the conformance kit from the command line, against a plugin file (served
//! by an in-process host) or against any running provider (`--url`). One line per check,
//! or one JSON document with `--json`; the exit status is non-zero when a check failed.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::DEFAULT_CONFIG;
use crate::config::{AddonConfig, BitriseConfig, HostConfig, XervoConfig};
use crate::conformance::{self, Outcome, Report, local};

#[derive(Args)]
pub(crate) struct TestArgs {
    /// The plugin to test (a .wasm component); not with --url.
    #[arg(required_unless_present = "url", conflicts_with = "url")]
    plugin: Option<PathBuf>,
    /// Test a running provider instead: the add-on's base URL, e.g.
    /// http://127.0.0.1:8080/addons/myaddon (Bitrise paths are appended to it, Xervo's are
    /// `/resources` and `/sso/login` under it).
    #[arg(long)]
    url: Option<String>,
    /// A host config: the add-on's credentials, plans, limits and settings come from it.
    /// With a plugin file, `./addon-host.toml` is read when it exists (as `serve` does).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The add-on of the config to test (default: the one using PLUGIN, the last segment of
    /// --url, or the only one).
    #[arg(long)]
    addon: Option<String>,
    /// Plans: the first is provisioned, the second is changed to (default: the add-on's
    /// plans, else free,pro).
    #[arg(long, value_delimiter = ',')]
    plans: Vec<String>,
    /// Bitrise's shared token, for --url without a config.
    #[arg(long, env = "ADDON_TEST_BITRISE_TOKEN")]
    bitrise_token: Option<String>,
    /// Bitrise's SSO secret, for --url without a config.
    #[arg(long, env = "ADDON_TEST_BITRISE_SSO_SECRET")]
    sso_secret: Option<String>,
    /// Xervo's Basic password, for --url without a config.
    #[arg(long, env = "ADDON_TEST_XERVO_PASSWORD")]
    xervo_password: Option<String>,
    /// Xervo's SSO salt, for --url without a config.
    #[arg(long, env = "ADDON_TEST_XERVO_SSO_SALT")]
    xervo_salt: Option<String>,
    /// Xervo's declared config vars, for --url without a config.
    #[arg(long, value_delimiter = ',')]
    xervo_vars: Vec<String>,
    /// Provisions timed against the deadline.
    #[arg(long, default_value_t = 40)]
    timed_calls: usize,
    /// The deadline a call is measured against with --url (default: the config's, else
    /// Bitrise's 10 s).
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    json: bool,
    /// Pass a provider whose provisions return no variables (by default that fails: the app
    /// would get nothing from the add-on).
    #[arg(long)]
    allow_empty: bool,
    /// Send the plugin's outbound requests to its allowed origins; by default a stub answers
    /// each with 200 and `{}` and the report lists them, so the kit never reaches a real API.
    #[arg(long, conflicts_with = "url")]
    allow_net: bool,
}

pub(crate) async fn run(args: TestArgs) -> anyhow::Result<()> {
    let mut report = Report::new(!args.json);
    let target = match (&args.url, &args.plugin) {
        (Some(url), _) => {
            let target = remote(&args, url)?;
            let base = target.base.clone();
            conformance::run_blocking(target, &mut report).await?;
            base
        }
        (None, Some(wasm)) => {
            let plugin = local::Plugin {
                wasm: wasm.clone(),
                config: args.config.clone().or_else(default_config),
                addon: args.addon.clone(),
                plans: args.plans.clone(),
                timed_calls: args.timed_calls,
                allow_empty: args.allow_empty,
                allow_net: args.allow_net,
            };
            local::run(plugin, &mut report).await?
        }
        (None, None) => bail!("give a plugin file or --url"),
    };
    if args.json {
        super::print(&serde_json::to_string_pretty(&report.json(&target))?)?;
    } else {
        super::print(&format!("{target}: {}", report.summary()))?;
    }
    match report.count(Outcome::Fail) {
        0 => Ok(()),
        n => bail!("{n} conformance check(s) failed"),
    }
}

/// `./addon-host.toml`, when it exists: a scaffolded project's config, which `serve` reads too.
fn default_config() -> Option<PathBuf> {
    let path = PathBuf::from(DEFAULT_CONFIG);
    path.is_file().then_some(path)
}

/// The target of `--url`: settings from the config's add-on, then the flags.
fn remote(args: &TestArgs, url: &str) -> anyhow::Result<conformance::Target> {
    if !url.starts_with("http://") {
        bail!(
            "--url {url:?}: give an http:// URL (this build has no TLS client; test an https provider through a local proxy)"
        );
    }
    let url = url.trim_end_matches('/');
    let id = args.addon.clone().unwrap_or_else(|| url.rsplit('/').next().unwrap_or_default().to_owned());
    let mut addon = match &args.config {
        Some(path) => {
            let cfg = HostConfig::load(path)?;
            cfg.addons
                .into_iter()
                .find(|a| a.id == id)
                .with_context(|| format!("no add-on `{id}` in {} (name it with --addon)", path.display()))?
        }
        None => {
            let mut a = AddonConfig::on_bitrise(&id, "", "", "");
            a.bitrise = None;
            a.limits.deadline_ms = 10_000;
            // Not known for a provider elsewhere: above most servers' default limits.
            a.limits.max_body_bytes = 1 << 20;
            a
        }
    };
    if let Some(token) = &args.bitrise_token {
        let sso = args.sso_secret.clone().or_else(|| addon.bitrise.as_ref().map(|b| b.sso_secret.expose().to_owned()));
        let sso_secret = sso.context("--bitrise-token needs --sso-secret")?;
        addon.bitrise = Some(BitriseConfig { shared_token: token.as_str().into(), sso_secret: sso_secret.into() });
    }
    if let Some(password) = &args.xervo_password {
        let old = addon.xervo.take().unwrap_or_default();
        addon.xervo = Some(XervoConfig {
            manifest: None,
            password: Some(password.as_str().into()),
            sso_salt: args.xervo_salt.clone().map(Into::into).or(old.sso_salt),
            config_vars: if args.xervo_vars.is_empty() { old.config_vars } else { args.xervo_vars.clone() },
            regions: old.regions,
        });
    }
    if addon.bitrise.is_none() && addon.xervo.is_none() {
        bail!(
            "no credentials for `{id}`: give --config, or --bitrise-token/--sso-secret and/or --xervo-password/--xervo-salt/--xervo-vars"
        );
    }
    if let Some(ms) = args.deadline_ms {
        addon.limits.deadline_ms = ms;
    }
    // A provider hosted by addon-host publishes the manifest `addon-host manifest` prints.
    let hosted = url.strip_suffix(&format!("/addons/{id}"));
    let mut target = local::target(&addon, url, &args.plans, args.timed_calls, hosted)?;
    target.allow_empty = args.allow_empty;
    if let Some(x) = target.xervo.as_mut() {
        // What the local config would publish, not what the provider submitted to Xervo.
        x.manifest_from_config = true;
    }
    Ok(target)
}
