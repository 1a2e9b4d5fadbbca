//! `addon-host plugin ...` and `addon-host jobs ...`: clients of the admin API, for pushing
//! and rolling back plugin versions and for looking after an add-on's jobs on a running host.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

/// Which host, and whose credentials.
#[derive(Args)]
struct Remote {
    /// Base URL of the running host.
    #[arg(long, env = "ADDON_HOST_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// Admin token (printed once at the host's first start, or from `[[server.admins]]`), or the
    /// add-on's deploy token (`[[addon.deployers]]`) for its own versions and jobs.
    #[arg(long, env = "ADDON_HOST_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl Remote {
    fn auth(&self) -> anyhow::Result<(&str, String)> {
        let token = self.token.as_deref().context("an admin token is needed: --token or ADDON_HOST_ADMIN_TOKEN")?;
        Ok((self.url.trim_end_matches('/'), format!("Bearer {token}")))
    }
}

#[derive(Args)]
pub(crate) struct PluginArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Args)]
pub(crate) struct JobsArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// An add-on's jobs, oldest first.
    List {
        addon: String,
        /// Only jobs in this state: pending, running, retrying or dead.
        #[arg(long)]
        state: Option<String>,
    },
    /// Run a job again now, its attempts counted afresh (a dead job leaves the dead-letter list).
    Retry { addon: String, id: String },
    /// Remove a job for good.
    Drop { addon: String, id: String },
}

pub(crate) fn run_jobs(args: JobsArgs) -> anyhow::Result<()> {
    let (base, auth) = args.remote.auth()?;
    let (method, path) = match &args.command {
        JobsCommand::List { addon, state: Some(state) } => ("GET", format!("/admin/addons/{addon}/jobs?state={state}")),
        JobsCommand::List { addon, state: None } => ("GET", format!("/admin/addons/{addon}/jobs")),
        JobsCommand::Retry { addon, id } => ("POST", format!("/admin/addons/{addon}/jobs/{id}/retry")),
        JobsCommand::Drop { addon, id } => ("DELETE", format!("/admin/addons/{addon}/jobs/{id}")),
    };
    call(base, &auth, method, &path, None)
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Upload a new version of an add-on's plugin (validated, then activated).
    Push {
        addon: String,
        file: PathBuf,
        /// Store and validate only; keep the current version serving.
        #[arg(long)]
        no_activate: bool,
    },
    /// List an add-on's versions.
    List { addon: String },
    /// Activate an earlier version: the previous one, or VERSION (number or sha256 prefix).
    Rollback { addon: String, version: Option<String> },
    /// Activate a stored version (number or sha256 prefix).
    Activate { addon: String, version: String },
    /// Delete a stored version (number or sha256 prefix) that is not the active one: its
    /// bytes, its compiled code and its place in the add-on's quota.
    Delete { addon: String, version: String },
    /// What every add-on is serving.
    Status,
    /// The add-on's recent plugin log lines; `--follow` keeps printing new ones.
    Logs {
        addon: String,
        #[arg(long, short)]
        follow: bool,
    },
}

pub(crate) fn run(args: PluginArgs) -> anyhow::Result<()> {
    let (base, auth) = args.remote.auth()?;
    let (method, path, body) = match &args.command {
        PluginCommand::Push { addon, file, no_activate } => {
            let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            ("POST", format!("/admin/addons/{addon}/plugins?activate={}", !no_activate), Some(bytes))
        }
        PluginCommand::List { addon } => ("GET", format!("/admin/addons/{addon}/plugins"), None),
        PluginCommand::Rollback { addon, version: Some(v) } => {
            ("POST", format!("/admin/addons/{addon}/rollback?version={v}"), None)
        }
        PluginCommand::Rollback { addon, version: None } => ("POST", format!("/admin/addons/{addon}/rollback"), None),
        PluginCommand::Activate { addon, version } => {
            ("POST", format!("/admin/addons/{addon}/plugins/{version}/activate"), None)
        }
        PluginCommand::Delete { addon, version } => {
            ("DELETE", format!("/admin/addons/{addon}/plugins/{version}"), None)
        }
        PluginCommand::Status => ("GET", "/admin/status".to_owned(), None),
        PluginCommand::Logs { addon, follow } => return logs(base, &auth, addon, *follow),
    };
    call(base, &auth, method, &path, body)
}

/// One admin request; prints the JSON answer pretty, or fails with it.
fn call(base: &str, auth: &str, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<()> {
    let request = ureq::request(method, &format!("{base}{path}")).set("Authorization", auth);
    let result = match body {
        Some(bytes) => request.set("Content-Type", "application/wasm").send_bytes(&bytes),
        None => request.call(),
    };
    let (status, text) = match result {
        Ok(response) => (response.status(), response.into_string()?),
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap_or_default()),
        Err(e) => bail!("cannot reach {base}: {e}"),
    };
    let pretty =
        serde_json::from_str::<Value>(&text).ok().and_then(|v| serde_json::to_string_pretty(&v).ok()).unwrap_or(text);
    if (200..300).contains(&status) {
        super::print(&pretty)
    } else {
        bail!("{method} {path} failed with {status}: {pretty}")
    }
}

/// Print the add-on's recent plugin log lines, one per line; with `follow`, ask for newer
/// ones every second until interrupted.
fn logs(base: &str, auth: &str, addon: &str, follow: bool) -> anyhow::Result<()> {
    let mut since = 0u64;
    loop {
        let path = format!("/admin/addons/{addon}/logs?since={since}");
        let page: Value = match ureq::get(&format!("{base}{path}")).set("Authorization", auth).call() {
            Ok(response) => serde_json::from_str(&response.into_string()?)?,
            Err(ureq::Error::Status(code, response)) => {
                bail!("GET {path} failed with {code}: {}", response.into_string().unwrap_or_default())
            }
            Err(e) => bail!("cannot reach {base}: {e}"),
        };
        for line in page["lines"].as_array().into_iter().flatten() {
            let text = format!(
                "{} {:>5} {}: {}",
                line["at_ms"],
                line["level"].as_str().unwrap_or_default().to_uppercase(),
                line["call"].as_str().unwrap_or_default(),
                line["message"].as_str().unwrap_or_default()
            );
            super::print(&text)?;
        }
        since = page["next"].as_u64().unwrap_or(since);
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
