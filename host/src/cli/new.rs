//! `addon-host new NAME`: a complete plugin project outside this repository — a crate on the
//! SDK with a working provider and its native tests, a dev config for `addon-host serve` with
//! fresh credentials, and a README. Two commands build and serve it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::new_scripts::Script;

pub(crate) struct New {
    pub name: String,
    pub dir: Option<PathBuf>,
    pub sdk_path: Option<PathBuf>,
    pub lang: Lang,
    pub template: Template,
}

/// What the plugin starts as: a provider, a provider whose job calls an API after the reply,
/// or a provider with a dashboard and a build API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Template {
    Provider,
    Jobs,
    Web,
}

/// The language of the plugin project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    Rust,
    Js,
    Python,
}

fn random_token(prefix: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

pub(crate) fn run(new: New) -> anyhow::Result<()> {
    let name = new.name;
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!("`{name}` cannot be an add-on id: use 1-63 characters of a-z, 0-9 and '-', starting with a letter");
    }
    let dir = new.dir.unwrap_or_else(|| PathBuf::from(&name));
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty", dir.display());
    }
    let prefix = name.to_ascii_uppercase().replace('-', "_");
    let (files, next) = match new.lang {
        Lang::Rust if new.template != Template::Provider => bail!(
            "--template jobs|web is for --lang js and python so far; for Rust, start from the provider and see \
             the webhooks (jobs) and credentials (pages) examples in plugins/ of the addon-host repository"
        ),
        Lang::Rust => rust(&name, &prefix, new.sdk_path.as_deref())?,
        Lang::Js => super::new_scripts::files(Script::Js, new.template, &name, &prefix)?,
        Lang::Python => super::new_scripts::files(Script::Python, new.template, &name, &prefix)?,
    };
    for (file, text) in files {
        write(&dir.join(file), &text)?;
    }
    super::print(&format!("created add-on `{name}` in {}", dir.display()))?;
    super::print(&format!("next: cd {} && {next}", dir.display()))
}

type Files = Vec<(&'static str, String)>;

/// A crate on the Rust SDK; the next command to run.
fn rust(name: &str, prefix: &str, sdk_path: Option<&Path>) -> anyhow::Result<(Files, String)> {
    let sdk = match sdk_path {
        Some(path) => {
            let path = std::fs::canonicalize(path).with_context(|| format!("--sdk-path {}", path.display()))?;
            format!("addon-sdk = {{ path = {:?} }}", path.display().to_string())
        }
        None => format!("addon-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    let wasm = name.replace('-', "_");
    let build = Build {
        plugin: format!("target/wasm32-wasip2/release/{wasm}.wasm"),
        command: "cargo build --release --target wasm32-wasip2 --target-dir target",
        watch: r#"["src", "Cargo.toml"]"#,
        template: Template::Provider,
    };
    let files = vec![
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", LIB_RS.replace("{PREFIX}", prefix)),
        ("addon-host.toml", config(name, prefix, &build)?),
        ("README.md", README.replace("{NAME}", name).replace("{WASM}", &wasm)),
        (".gitignore", "/target\n/data\n".to_owned()),
    ];
    Ok((files, "addon-host serve --watch".into()))
}

/// Where a project's build puts the plugin, and how `serve --watch` runs it.
pub(super) struct Build {
    pub plugin: String,
    pub command: &'static str,
    pub watch: &'static str,
    pub template: Template,
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn cargo_toml(name: &str, sdk: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
{sdk}

[profile.release]
# Function names in traps' backtraces.
strip = "debuginfo"

# Its own workspace, wherever it is put.
[workspace]
"#
    )
}

/// The dev config: fresh credentials for both platforms (Xervo when the id allows it), the
/// build for `serve --watch`, and the settings the template provider reads.
pub(super) fn config(name: &str, prefix: &str, build: &Build) -> anyhow::Result<String> {
    // Xervo's config vars start with the upper-cased id, so an id with '-' cannot be offered there.
    let xervo = if name.contains('-') {
        "\n# Xervo needs an add-on id without '-' (its config vars start with the upper-cased id).\n".to_owned()
    } else {
        format!(
            r#"
# Xervo: `addon-host manifest {name} --base-url http://127.0.0.1:8080` prints the manifest.
[addon.xervo]
password = "{password}"
sso_salt = "{salt}"
config_vars = ["{prefix}_URL", "{prefix}_SECRET"{token}]
"#,
            token = if build.template == Template::Web { format!(", \"{prefix}_API_TOKEN\"") } else { String::new() },
            password = random_token("xvp")?,
            salt = random_token("xvs")?,
        )
    };
    Ok(format!(
        r#"# Development config for `addon-host serve` (run in this folder). The credentials below
# were generated for this project; keep them out of version control if it is shared.
[server]
listen = "127.0.0.1:8080"
data_dir = "data"
# The add-on's pages and build API on its own origin (browsers resolve *.localhost here).
web_origin = "http://{{addon}}.localhost:8080"

[[addon]]
id = "{name}"
plugin = "{plugin}"
plans = ["free", "pro"]
{outbound}
[addon.bitrise]
shared_token = "{shared}"
sso_secret = "{sso}"
{xervo}
{web}# `addon-host serve --watch` runs this at start and whenever a file under `watch` changes, and
# swaps in each build that succeeds (a failed build is shown; the last good one keeps serving).
[addon.build]
command = "{command}"
watch = {watch}

[addon.config]
host_url = "https://{name}.example.com"
{api_base}# The plugin also sees `public_url`, set by the host: this add-on's public base URL (its
# web_origin here), for links to its pages and build API.
"#,
        outbound = match build.template {
            Template::Jobs => {
                "# Origins the plugin may call over HTTP (denied by default): its job calls `api_base`.\n\
                 # `addon-host test` answers them from a stub; `serve` sends them.\n\
                 allowed_outbound = [\"https://api.example.com\"]\n"
            }
            _ => {
                "# Origins the plugin may call over HTTP (denied by default), e.g. the platform's API from a job:\n\
                 # allowed_outbound = [\"https://api.bitrise.io\"]\n"
            }
        },
        web = if build.template == Template::Web {
            format!(
                "[addon.web]\n# The build API (/api/ on the add-on's origin): each provision also returns a token\n\
                 # for it, in the variable {prefix}_API_TOKEN.\nbuild_api = true\n\n"
            )
        } else {
            String::new()
        },
        api_base = if build.template == Template::Jobs {
            "# Where the job announces each new app (an allowed origin, above).\napi_base = \"https://api.example.com\"\n"
        } else {
            ""
        },
        plugin = build.plugin,
        command = build.command,
        watch = build.watch,
        shared = random_token("bst")?,
        sso = random_token("sso")?,
    ))
}

const LIB_RS: &str = r#"//! An add-on provider: each provisioned app gets a URL and a secret, made once and kept in
//! the add-on's key-value store; a deprovision forgets the secret.

use addon_sdk::{
    DeprovisionRequest, Error, Provider, ProvisionReply, ProvisionRequest, Result, config, export_provider, kv, log, random,
};

struct Addon;

impl Provider for Addon {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let base = config::get("host_url").ok_or_else(|| Error::internal("config `host_url` is not set"))?;
        let key = format!("secret/{}", req.resource_id);
        let secret = match kv::get_string(&key)? {
            Some(existing) => existing,
            None => {
                let fresh = random::hex(24);
                kv::set_string(&key, &fresh)?;
                fresh
            }
        };
        log::info!("provisioned {} on {}", req.resource_id, req.plan);
        Ok(ProvisionReply::new()
            .var("{PREFIX}_URL", format!("{}/apps/{}", base.trim_end_matches('/'), req.resource_id))
            .var("{PREFIX}_SECRET", secret))
    }

    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        kv::delete(&format!("secret/{}", req.resource_id))?;
        Ok(())
    }
}

export_provider!(Addon);

#[cfg(test)]
mod tests {
    use addon_sdk::testing::{TestHost, deprovision_request, provision_request};

    use super::*;

    #[test]
    fn a_secret_per_app_kept_until_deprovision() {
        let host = TestHost::new().config("host_url", "https://example.com");
        let first = host.call(|| Addon::provision(provision_request("app-1", "free"))).unwrap();
        let again = host.call(|| Addon::provision(provision_request("app-1", "free"))).unwrap();
        assert_eq!(first, again);
        assert_eq!(first.vars()[0].1, "https://example.com/apps/app-1");
        host.call(|| Addon::deprovision(deprovision_request("app-1", "free"))).unwrap();
        assert!(host.kv_keys().is_empty());
    }
}
"#;

const README: &str = r#"# {NAME}

An add-on provider for addon-host: it answers Bitrise's provisioning
calls (and Xervo's, for an id without '-') from a sandboxed WebAssembly plugin.

```sh
cargo build --release --target wasm32-wasip2   # the plugin: target/wasm32-wasip2/release/{WASM}.wasm
addon-host serve                               # serves it with addon-host.toml on 127.0.0.1:8080
addon-host test target/wasm32-wasip2/release/{WASM}.wasm  # the conformance kit (reads addon-host.toml too)
```

`addon-host test` is the conformance kit: it serves the plugin on a temporary host and runs
the Bitrise and Xervo platforms' own test sequences, the refusals they never try (bad
credentials, forged, stale and replayed SSO tokens, unknown plans, bad bodies) and hygiene
checks on the variables and the call time, one PASS/FAIL line each.

- `src/lib.rs` is the provider; `cargo test` runs its logic natively against the SDK's host
  double (`addon_sdk::testing`).
- `addon-host.toml` holds the dev credentials generated for this project
  (`[addon.bitrise] shared_token`, `sso_secret`).
- `addon-host serve --watch` builds the plugin, serves it, and rebuilds and swaps it in
  each time you save a change under `src/` (`[addon.build]` in `addon-host.toml`); a build
  error is shown and the last good build keeps serving.
"#;
