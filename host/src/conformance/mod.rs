//! `addon-host test`: the conformance kit, built in. It drives a provider over HTTP the way
//! the platforms' own kits do (Bitrise's `bitrise-addon-test`, Xervo's `dia`), adds the
//! negative cases neither kit sends (bad, missing and cross-protocol credentials; stale,
//! forged and replayed SSO tokens; unknown plans; malformed and oversized bodies; unknown
//! resources) and checks the plugin's hygiene (variable names, prefixes, values, URLs, call
//! time against the deadline), and an add-on's build API with the token a provision issued,
//! before and after deprovision. The provider is either a plugin served by an in-process host
//! on a temporary data directory ([`local`]) or any running provider given by URL.

mod bitrise;
mod client;
mod hygiene;
pub mod local;
mod report;
mod xervo;

use std::time::Duration;

pub use report::{Outcome, Report};

use client::{Answer, Http};

/// What the kit tests: a provider's base URL (`…/addons/ID`) and what it needs to talk to it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of the add-on, without a trailing slash.
    pub base: String,
    /// The upper-cased id every variable name must start with.
    pub prefix: String,
    /// The plan to provision, and the plan to change to.
    pub plans: (String, String),
    /// A plan no add-on has, and who refuses it: the host when the add-on lists its plans,
    /// else the plugin, which may also accept any plan.
    pub unknown_plan: UnknownPlan,
    pub bitrise: Option<BitriseTarget>,
    pub xervo: Option<XervoTarget>,
    /// The time one call may take: the add-on's deadline, or the platform's.
    pub deadline: Duration,
    /// The size of a body the provider must refuse as too large.
    pub oversized: usize,
    /// Calls timed for the deadline check.
    pub timed_calls: usize,
    /// Whether a provision that returns no variables passes (`--allow-empty`): by default it
    /// fails, since the platform's app then gets nothing from the add-on.
    pub allow_empty: bool,
    /// The add-on's build API, when it has one and the kit knows where it is served.
    pub build_api: Option<BuildApi>,
}

/// Who must refuse a plan the add-on does not have.
#[derive(Debug, Clone)]
pub enum UnknownPlan {
    /// The add-on lists its plans: the host refuses any other (422), before the plugin runs.
    Listed(String),
    /// The add-on lists none (or the kit knows no list, `--url`), so the plugin decides: its
    /// refusal passes, and its acceptance is a SKIP that says so (nothing requires a plugin
    /// to refuse). Probed on a resource of its own, deprovisioned again if it was made.
    PluginDecides(String),
}

/// An unknown plan offered where the plugin decides (see [`UnknownPlan::PluginDecides`]):
/// whether it was accepted.
fn plugin_decides(report: &mut Report, name: &str, plan: &str, answer: Result<Answer, String>) -> bool {
    match answer {
        Ok(a) if (200..300).contains(&a.status) => {
            let why = format!(
                "no plan list, and the provider accepted `{plan}` ({}): list the plans in `plans` to have the host refuse others",
                a.status
            );
            report.skip(name, why);
            true
        }
        other => {
            let own = refused(other, &[400, 422]).map(|d| format!("{d}: no plan list, so the provider's own refusal"));
            report.check(name, own);
            false
        }
    }
}

/// Where the build API is and which variable carries an app's token for it.
#[derive(Debug, Clone)]
pub struct BuildApi {
    /// A URL of the build API (`…/api/kit`, on the add-on's origin when it has one).
    pub url: String,
    pub token_var: String,
}

#[derive(Debug, Clone)]
pub struct BitriseTarget {
    pub shared_token: String,
    pub sso_secret: String,
}

#[derive(Debug, Clone)]
pub struct XervoTarget {
    /// The manifest's `id`: the Basic user name.
    pub id: String,
    pub password: String,
    pub sso_salt: String,
    /// The config vars the manifest declares: each provision must return them, non-empty.
    pub config_vars: Vec<String>,
    /// Where `config_vars` come from, which says what checking them proves.
    pub declared: Declared,
    /// The manifest the host would publish, checked as dia checks it (when known).
    pub manifest: Option<serde_json::Value>,
    /// Whether `manifest` is the one this config would publish rather than one read from the
    /// provider (`--url`: the kit cannot read what was submitted to Xervo).
    pub manifest_from_config: bool,
}

/// Where the kit's list of a Xervo add-on's declared config vars comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// The add-on's config (or its manifest file): what Xervo will hold the provider to.
    Config,
    /// The plugin's own first reply, for a plugin tested with no config: checking the
    /// provider against them would compare it with itself.
    LearnedFromPlugin,
    /// Nowhere (`--url` without a config or `--xervo-vars`).
    Unknown,
}

/// Run every check against `target`, blocking; each outcome goes to `report` as it is known.
pub fn run(target: &Target, report: &mut Report) {
    let http = Http::new();
    let mut timed = false;
    match &target.bitrise {
        Some(b) => {
            let vars = bitrise::run(&http, target, b, report);
            hygiene::vars(report, "bitrise", target, vars.as_deref());
            hygiene::timing(&http, target, report, hygiene::Protocol::Bitrise(b));
            timed = true;
        }
        None => report.skip("bitrise", "the add-on is not offered on Bitrise"),
    }
    match &target.xervo {
        Some(x) => {
            let vars = xervo::run(&http, target, x, report);
            hygiene::vars(report, "xervo", target, vars.as_deref());
            if !timed {
                hygiene::timing(&http, target, report, hygiene::Protocol::Xervo(x));
            }
        }
        None => report.skip("xervo", "the add-on is not offered on Xervo"),
    }
}

/// [`run`] on the blocking pool, so an in-process host can answer on the runtime meanwhile.
pub async fn run_blocking(target: Target, report: &mut Report) -> anyhow::Result<()> {
    let mut taken = std::mem::take(report);
    *report = tokio::task::spawn_blocking(move || {
        run(&target, &mut taken);
        taken
    })
    .await
    .map_err(|e| anyhow::anyhow!("the kit stopped: {e}"))?;
    Ok(())
}

/// A fresh 16-hex-digit id, as the platforms' kits make them.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // Without randomness the ids are still distinct per run (time), which is all they need.
    if getrandom::fill(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        buf.iter_mut().zip(nanos.as_nanos().to_le_bytes().iter().cycle()).for_each(|(b, n)| *b = *n);
    }
    hex::encode(buf)
}

fn unix_now() -> i64 {
    crate::clock::unix_secs()
}

/// `hex(sha1(subject:secret:timestamp))`: both platforms' SSO token.
fn sso_token(subject: &str, secret: &str, timestamp: i64) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(format!("{subject}:{secret}:{timestamp}").as_bytes()))
}

/// The answer, if its status is one of `allowed`; otherwise why not.
fn expect(answer: Result<Answer, String>, allowed: &[u16]) -> Result<Answer, String> {
    let answer = answer?;
    if allowed.contains(&answer.status) {
        return Ok(answer);
    }
    let wanted = allowed.iter().map(u16::to_string).collect::<Vec<_>>().join(" or ");
    Err(format!("expected {wanted}, got {}", answer.brief()))
}

/// A refusal: one of `allowed`, and never a 5xx or 2xx.
fn refused(answer: Result<Answer, String>, allowed: &[u16]) -> Result<String, String> {
    expect(answer, allowed).map(|a| format!("{} in {} ms", a.status, a.elapsed.as_millis()))
}
