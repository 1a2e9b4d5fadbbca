//! The kit against a plugin file: an in-process host on 127.0.0.1 and a temporary data
//! directory, serving that one plugin with the add-on's settings from a config file, or with
//! fresh credentials when there is none. Without a config, the Xervo manifest is unknown, so
//! a first host answers one probe provision and the manifest declares the variables the
//! plugin returned there (and the kit says it cannot check them against a declaration).
//! The plugin's outbound requests are answered by a stub (see `OutboundStub`) unless the
//! partner passes `--allow-net`: a kit run provisions dozens of apps, and each may start jobs
//! that call the partner's real API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{BitriseTarget, Declared, Report, Target, XervoTarget};
use crate::config::{AddonConfig, AdminConfig, HostConfig, OutboundStub, WebOrigin, XervoConfig};
use crate::service::Service;
use crate::xervo::manifest::XervoSettings;

/// What `addon-host test PLUGIN.wasm` was asked.
pub struct Plugin {
    pub wasm: PathBuf,
    pub config: Option<PathBuf>,
    pub addon: Option<String>,
    pub plans: Vec<String>,
    pub timed_calls: usize,
    /// Let a provision that returns no variables pass (`--allow-empty`).
    pub allow_empty: bool,
    /// Send the plugin's outbound requests to its allowed origins (`--allow-net`); by default
    /// a stub answers them, so a kit run never reaches a partner's real API.
    pub allow_net: bool,
}

/// Serve the plugin and run the kit against it; the base URL it was served at.
pub async fn run(plugin: Plugin, report: &mut Report) -> anyhow::Result<String> {
    let wasm = std::fs::canonicalize(&plugin.wasm).with_context(|| format!("plugin {}", plugin.wasm.display()))?;
    let scratch = tempfile::tempdir().context("a temporary directory")?;
    let (mut cfg, from_file) = match &plugin.config {
        Some(path) => (chosen(HostConfig::load(path)?, &wasm, plugin.addon.as_deref())?, true),
        None => (fresh(&wasm, plugin.addon.as_deref())?, false),
    };
    cfg.server.listen = ([127, 0, 0, 1], 0).into();
    let stub = (!plugin.allow_net).then(|| Arc::new(OutboundStub::default()));
    cfg.server.outbound_stub = stub.clone();
    cfg.server.metrics_listen = None;
    // A cache the config names explicitly is used (repeat runs start faster); the default
    // one would be inside the add-on's real data directory, which the kit never touches.
    if cfg.server.compile_cache.is_none() {
        cfg.server.compile_cache = Some(scratch.path().join("compiled"));
    }
    // Configured, so that no admin token is generated and announced: the kit never uses it.
    cfg.server.admins = vec![AdminConfig { name: "kit".into(), token: super::random_hex(16).into() }];
    let mut addon = cfg.addons[0].clone();
    addon.plugin = wasm;
    let mut learned = false;
    if !from_file && addon.xervo.is_none() && !addon.id.contains('-') {
        cfg.server.data_dir = scratch.path().join("probe");
        cfg.addons = vec![addon.clone()];
        let served = Served::start(&cfg).await?;
        let vars = probe(&served.base(&addon.id), &addon).await;
        served.stop().await?;
        let prefix = addon.id.to_ascii_uppercase();
        let declared: Vec<String> = vars.into_iter().filter(|v| v.starts_with(&prefix)).collect();
        if !declared.is_empty() {
            learned = true;
            addon.xervo = Some(XervoConfig {
                password: Some(super::random_hex(16).into()),
                sso_salt: Some(super::random_hex(16).into()),
                config_vars: declared,
                ..XervoConfig::default()
            });
        }
    }
    cfg.server.data_dir = scratch.path().join("data");
    cfg.addons = vec![addon.clone()];
    cfg.validate().context("the add-on's settings")?;
    let served = Served::start(&cfg).await?;
    let base = served.base(&addon.id);
    let mut target = target(&addon, &base, &plugin.plans, plugin.timed_calls, Some(&served.origin))?;
    target.allow_empty = plugin.allow_empty;
    if addon.web.build_api {
        let public = served.public.clone().unwrap_or_else(|| base.clone());
        // Any path of the build API: the plugin's own answer (a 404 too) shows the token let the
        // request through to it.
        let url = format!("{public}/api/kit");
        target.build_api = Some(super::BuildApi { url, token_var: addon.web.token_var(&addon.id) });
    }
    if let (Some(x), true) = (target.xervo.as_mut(), learned) {
        x.declared = Declared::LearnedFromPlugin;
    }
    super::run_blocking(target, report).await?;
    served.stop().await?;
    if let Some(stub) = stub {
        report.stubbed(stub.seen());
    }
    Ok(base)
}

/// A plan no add-on has.
const UNKNOWN_PLAN: &str = "kit-no-such-plan";

/// The kit's target for an add-on served at `base`, from its settings. `plans` overrides the
/// add-on's plans when not empty; `origin`, when the add-on is served by addon-host there,
/// gives the Xervo manifest it publishes, to check.
pub fn target(
    addon: &AddonConfig,
    base: &str,
    plans: &[String],
    timed_calls: usize,
    origin: Option<&str>,
) -> anyhow::Result<Target> {
    let xervo = match &addon.xervo {
        Some(x) => {
            let s = XervoSettings::resolve(&addon.id, x).with_context(|| format!("add-on `{}`", addon.id))?;
            Some(XervoTarget {
                manifest: origin.map(|o| s.manifest(o, o)),
                manifest_from_config: false,
                id: s.id,
                password: s.password.expose().to_owned(),
                sso_salt: s.sso_salt.expose().to_owned(),
                declared: if s.config_vars.is_empty() { Declared::Unknown } else { Declared::Config },
                config_vars: s.config_vars,
            })
        }
        None => None,
    };
    let chosen = match (plans.is_empty(), addon.plans.is_empty()) {
        (false, _) => plans.to_vec(),
        (true, false) => addon.plans.clone(),
        (true, true) => vec!["free".to_owned(), "pro".to_owned()],
    };
    let first = chosen[0].clone();
    Ok(Target {
        base: base.trim_end_matches('/').to_owned(),
        prefix: addon.id.to_ascii_uppercase().replace('-', "_"),
        plans: (first.clone(), chosen.get(1).cloned().unwrap_or(first)),
        unknown_plan: if addon.plans.is_empty() {
            super::UnknownPlan::PluginDecides(UNKNOWN_PLAN.to_owned())
        } else {
            super::UnknownPlan::Listed(UNKNOWN_PLAN.to_owned())
        },
        bitrise: addon.bitrise.as_ref().map(|b| BitriseTarget {
            shared_token: b.shared_token.expose().to_owned(),
            sso_secret: b.sso_secret.expose().to_owned(),
        }),
        xervo,
        deadline: Duration::from_millis(addon.limits.deadline_ms),
        oversized: addon.limits.max_body_bytes + 1,
        timed_calls,
        allow_empty: false,
        build_api: None,
    })
}

/// The add-on of the config file to test: `--addon`, else the one whose plugin is this file,
/// else the only one.
fn chosen(mut cfg: HostConfig, wasm: &Path, addon: Option<&str>) -> anyhow::Result<HostConfig> {
    let index = match addon {
        Some(id) => {
            cfg.addons.iter().position(|a| a.id == id).with_context(|| format!("no add-on `{id}` in the config"))?
        }
        None => {
            let same = |a: &AddonConfig| std::fs::canonicalize(&a.plugin).is_ok_and(|p| p == wasm);
            match (cfg.addons.iter().position(same), cfg.addons.len()) {
                (Some(i), _) => i,
                (None, 1) => 0,
                (None, 0) => bail!("the config has no add-on"),
                (None, _) => bail!("the config has several add-ons and none uses this plugin: name one with --addon"),
            }
        }
    };
    cfg.addons = vec![cfg.addons.swap_remove(index)];
    Ok(cfg)
}

/// A config for a plugin with nothing but its file: Bitrise with fresh credentials.
fn fresh(wasm: &Path, addon: Option<&str>) -> anyhow::Result<HostConfig> {
    let id = match addon {
        Some(id) => id.to_owned(),
        None => {
            let stem = wasm.file_stem().and_then(|s| s.to_str()).context("the plugin's file name")?;
            stem.to_ascii_lowercase().replace('_', "-")
        }
    };
    let addon = AddonConfig::on_bitrise(&id, wasm, &super::random_hex(16), &super::random_hex(16));
    Ok(HostConfig { server: crate::config::ServerConfig::default(), addons: vec![addon] })
}

/// The variable names one provision returns on Bitrise (none if it fails).
async fn probe(base: &str, addon: &AddonConfig) -> Vec<String> {
    let Some(token) = addon.bitrise.as_ref().map(|b| b.shared_token.expose().to_owned()) else {
        return Vec::new();
    };
    let url = format!("{base}/provision");
    let answer = tokio::task::spawn_blocking(move || {
        let body = serde_json::json!({ "app_slug": "kit-probe", "api_token": "t", "plan": "free" }).to_string();
        let headers = [("Authentication", token.as_str()), ("Content-Type", "application/json")];
        super::client::Http::new().send("POST", &url, &headers, Some(body.as_bytes()))
    })
    .await;
    let Ok(Ok(answer)) = answer else {
        return Vec::new();
    };
    let envs = answer.json().and_then(|v| v.get("envs").and_then(|e| e.as_array()).cloned()).unwrap_or_default();
    envs.iter().filter_map(|e| e.get("key").and_then(|k| k.as_str()).map(str::to_owned)).collect()
}

/// An in-process host serving on 127.0.0.1.
struct Served {
    origin: String,
    /// The add-on's own origin, when add-ons have one (`server.web_origin`).
    public: Option<String>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    async fn start(cfg: &HostConfig) -> anyhow::Result<Served> {
        let listener = tokio::net::TcpListener::bind(cfg.server.listen).await.context("binding 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let origin = format!("http://{}", listener.local_addr()?);
        // An origin per add-on, as the config has it, on this machine: `{addon}.localhost`.
        let mut cfg = cfg.clone();
        if cfg.server.web_origin.is_some() {
            let local = WebOrigin::parse("http://{addon}.localhost").map_err(anyhow::Error::msg)?;
            cfg.server.web_origin = Some(local.on_port(port));
        }
        let public = cfg.addons.first().and_then(|a| cfg.server.web_origin.as_ref().map(|o| o.of(&a.id)));
        let service = Arc::new(Service::start(&cfg)?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(listener, service, async move {
            let _ = stopped.await;
        }));
        Ok(Served { origin, public, stop, task })
    }

    fn base(&self, addon: &str) -> String {
        format!("{}/addons/{addon}", self.origin)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("the test host stopped")?
    }
}
