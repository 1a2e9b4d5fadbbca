//! The host's configuration file: where data lives, and the add-ons it serves.
//!
//! One TOML file is the single source of truth for every hosted add-on: its plugin, its
//! platform credentials, its plans and its limits. It is validated completely at start-up so
//! a mistake is reported with the field that holds it, never discovered on a request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

mod deploys;
mod jobs;
mod limits;
mod origin;
mod outbound;
mod page;
mod secret;
mod storage;
mod validate;
mod web;
mod xervo;
pub use deploys::DeployLimits;
pub use jobs::JobsConfig;
pub use limits::Limits;
pub use origin::WebOrigin;
pub use outbound::{Allowed, Origins, OutboundStub};
pub use page::PageConfig;
pub use secret::Secret;
pub use storage::{StorageConfig, SyncMode};
pub use web::WebConfig;
pub use xervo::{XervoConfig, XervoSettings};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default, rename = "addon")]
    pub addons: Vec<AddonConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Every add-on's outbound requests are answered by this stub instead of being sent (the
    /// conformance kit's in-process host). Not read from the file.
    #[serde(skip)]
    pub outbound_stub: Option<std::sync::Arc<OutboundStub>>,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the sled database (relative paths are relative to the config file),
    /// and of the compile cache by default.
    pub data_dir: PathBuf,
    /// Where state is kept: sled in `data_dir` unless `postgres` is set (see
    /// [`StorageConfig`]).
    pub storage: StorageConfig,
    /// Instance allocator: "auto" (pooling when the machine allows it), "pooling" or
    /// "on-demand".
    pub allocator: Allocator,
    /// How plugins are compiled: "tiered" (default) serves a large plugin first from Winch,
    /// wasmtime's baseline compiler, and swaps in Cranelift's optimised build once it is
    /// ready; "cranelift" serves optimised code only (a large upload waits for it); "winch"
    /// serves baseline code only (fastest loads, slower calls).
    pub compiler: Compiler,
    /// In "tiered" mode, plugins at least this large (and not already in the compile cache)
    /// are served from Winch first; smaller ones compile with Cranelift in well under a second.
    pub tier_above_kib: u64,
    /// Plugin calls that may run at once across all add-ons; further calls wait.
    pub max_concurrent_calls: u32,
    /// Calls whose guest code may execute at the same instant (default: the machine's
    /// cores). Calls hand their core on at every epoch tick, to the waiting call whose
    /// add-on used the least CPU lately for its `limits.cpu_weight`.
    pub plugin_cores: Option<usize>,
    /// The niceness (0-19) of the threads of calls past their first 5 ms (the slow lane):
    /// they share the cores with the request path by weight. 0 by default: on a busy
    /// 2-core host, 10 already made legitimate long calls (JS and Python calls, big replies)
    /// miss their deadline.
    pub slow_lane_nice: i32,
    /// Run the slow lane under `SCHED_IDLE` instead: only on time the request path leaves
    /// free. A neighbour's spinning calls then cost a healthy add-on next to nothing, but on
    /// a saturated host long calls make little progress before their deadline.
    pub slow_lane_idle: bool,
    /// While other add-ons have calls, the long calls of an add-on whose recent calls mostly
    /// ran into their deadline (a spinner) run under `SCHED_IDLE`. On by default.
    pub slow_lane_yield: bool,
    /// Admin API credentials. When empty, a token is generated at first start, printed once,
    /// and only its hash is kept.
    pub admins: Vec<AdminConfig>,
    /// Largest plugin upload the admin API accepts.
    pub max_plugin_bytes: usize,
    /// Where compiled plugins are cached (default: `compiled` inside the data directory);
    /// set to an empty string to disable the cache.
    pub compile_cache: Option<PathBuf>,
    /// `/healthz` answers 503 when no durable commit has completed for this long (the
    /// storage watchdog commits a heartbeat every second).
    pub stall_after_ms: u64,
    /// sled only: below this much free space on the data directory's disk, new provisions
    /// and plugin uploads are answered 507 while plan changes, deprovisions and the host's
    /// own upkeep go on; a WARN at twice it. 0 turns the watermark off.
    pub min_free_disk_mib: u64,
    /// Connections served at once; past it a new connection is answered 503 at once and
    /// closed (instead of waiting unseen in the listen backlog). The host raises its
    /// open-file limit to make room, up to the hard limit, and warns if it cannot.
    pub max_connections: usize,
    /// Connections served at once from one client address; past it, the same 503. One
    /// client's flood of connections then leaves room for everyone else. Behind a reverse
    /// proxy every client has the proxy's address: raise it to `max_connections` there.
    pub max_connections_per_client: usize,
    /// A connection whose answer makes no progress (a client that stops reading, with
    /// pipelined requests or not) for this long is closed.
    pub write_timeout_ms: u64,
    /// Time a client has to send a request's headers, counted from when the connection is
    /// ready for them: it also closes keep-alive connections idle for this long.
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body once its headers are in.
    pub body_timeout_ms: u64,
    /// The same for plugin uploads to the admin API, which are larger.
    pub upload_timeout_ms: u64,
    /// How long one request from each platform may take in all.
    pub budgets: Budgets,
    /// A second listener serving `GET /metrics` without credentials, for a port only the
    /// monitoring network reaches. Without it, `/metrics` on the main listener takes an
    /// admin token.
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: `text` (default) or `json` (one object per line). `--log-format` wins.
    pub log_format: LogFormat,
    /// The origin of each add-on's pages and build API, as a template with `{addon}`:
    /// `https://{addon}.addons.example.com` (a wildcard DNS name and certificate pointing at
    /// this host), or `http://{addon}.localhost:8080` in development. Unset, every add-on's
    /// pages share the host's origin and only cookie paths separate them, which no browser
    /// treats as a boundary: the host warns at start.
    pub web_origin: Option<WebOrigin>,
    /// The host's public base URL as browsers and platforms reach it, e.g.
    /// `https://addons.example.com`. Each plugin sees its add-on's public base URL as config
    /// `public_url`: its own origin under `web_origin`, else this followed by `/addons/{id}`.
    pub public_url: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How long one platform request may take in all: waits for the resource's lock and a call
/// slot, plugin calls (re-runs after conflicts included) and the commit. A wait that would
/// pass it is answered 503 `busy` with `Retry-After`, and a plugin call never starts with
/// more deadline than the budget has left.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budgets {
    /// Bitrise abandons a request after 10 s; 9 s leaves a second for the body and the network.
    pub bitrise_ms: u64,
    /// Heroku-style platforms (Xervo) wait 30 s.
    pub xervo_ms: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets { bitrise_ms: 9_000, xervo_ms: 25_000 }
    }
}

impl ServerConfig {
    pub fn cache_dir(&self) -> Option<PathBuf> {
        match &self.compile_cache {
            None => Some(self.data_dir.join("compiled")),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            outbound_stub: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            storage: StorageConfig::default(),
            allocator: Allocator::Auto,
            compiler: Compiler::Tiered,
            tier_above_kib: 1024,
            max_concurrent_calls: 64,
            plugin_cores: None,
            slow_lane_nice: 0,
            slow_lane_idle: false,
            slow_lane_yield: true,
            compile_cache: None,
            admins: Vec::new(),
            max_plugin_bytes: 64 << 20,
            stall_after_ms: 5_000,
            min_free_disk_mib: 128,
            max_connections: 4_096,
            max_connections_per_client: 256,
            write_timeout_ms: 10_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            upload_timeout_ms: 120_000,
            budgets: Budgets::default(),
            metrics_listen: None,
            log_format: LogFormat::Text,
            web_origin: None,
            public_url: None,
        }
    }
}

/// One admin identity and its bearer token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Recorded as the uploader of the versions this admin pushes.
    pub name: String,
    pub token: Secret,
}

/// Which of wasmtime's compilers make the code a plugin runs on.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compiler {
    Tiered,
    Cranelift,
    Winch,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    Auto,
    Pooling,
    OnDemand,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonConfig {
    /// The add-on's id: its URL segment (`/addons/{id}/...`) and the prefix of its variables.
    pub id: String,
    /// Path of the plugin component (relative paths are relative to the config file).
    pub plugin: PathBuf,
    /// Plans the add-on accepts; empty accepts any plan and leaves the decision to the plugin.
    #[serde(default)]
    pub plans: Vec<String>,
    pub bitrise: Option<BitriseConfig>,
    /// Xervo (Heroku v1-style) settings; see [`XervoSettings`].
    pub xervo: Option<XervoConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// What its deploys may store, load and how often (`[addon.deploys]`).
    #[serde(default)]
    pub deploys: DeployLimits,
    /// Plain settings the plugin reads with `config::get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Secrets the plugin reads with `config::secret`; never logged.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Deploy tokens: bearer tokens that may list, push, activate and roll back this
    /// add-on's plugin versions, and nothing else (`[[addon.deployers]] name, token`).
    #[serde(default)]
    pub deployers: Vec<AdminConfig>,
    /// How the plugin is built from source, for `serve --watch` (development).
    pub build: Option<BuildConfig>,
    /// How its jobs run (`[addon.jobs]`).
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Origins its plugin may call over HTTP (`["https://api.bitrise.io"]`); none by default.
    #[serde(default)]
    pub allowed_outbound: Vec<String>,
    /// How the host's dashboard page presents it (`[addon.page]`).
    #[serde(default)]
    pub page: PageConfig,
    /// Its dashboard sessions and build API (`[addon.web]`).
    #[serde(default)]
    pub web: WebConfig,
}

impl AddonConfig {
    /// The name users know the add-on by.
    pub fn display_name(&self) -> &str {
        self.page.name.as_deref().unwrap_or(&self.id)
    }

    /// The partner's documentation URL, if any.
    pub fn docs_url(&self) -> Option<&str> {
        self.page.docs_url.as_deref().or_else(|| self.config.get("docs_url").map(String::as_str))
    }
}

/// `[addon.build]`: the partner's build, run by `serve --watch` at start and whenever a watched
/// source changes; the plugin file it writes is swapped in when the build succeeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// A shell command (`sh -c`), e.g. `cargo build --release --target wasm32-wasip2`.
    pub command: String,
    /// Files and folders whose changes start a build (relative paths: to `dir`); changes
    /// under a `target` or `.git` folder are ignored, so a build never starts itself again.
    #[serde(default = "BuildConfig::default_watch")]
    pub watch: Vec<PathBuf>,
    /// Where the command runs (default: the config file's folder).
    #[serde(default)]
    pub dir: PathBuf,
}

impl BuildConfig {
    fn default_watch() -> Vec<PathBuf> {
        vec![PathBuf::from("src"), PathBuf::from("Cargo.toml")]
    }
}

impl AddonConfig {
    /// Add-on `id` served by `plugin` on Bitrise with these credentials: no plan list, no
    /// settings or secrets, default limits (tools, tests and benchmarks build on it).
    pub fn on_bitrise(id: &str, plugin: impl Into<PathBuf>, shared_token: &str, sso_secret: &str) -> AddonConfig {
        AddonConfig {
            id: id.to_owned(),
            plugin: plugin.into(),
            plans: Vec::new(),
            bitrise: Some(BitriseConfig { shared_token: shared_token.into(), sso_secret: sso_secret.into() }),
            xervo: None,
            limits: Limits::default(),
            deploys: DeployLimits::default(),
            config: BTreeMap::new(),
            secrets: BTreeMap::new(),
            deployers: Vec::new(),
            build: None,
            jobs: JobsConfig::default(),
            allowed_outbound: Vec::new(),
            page: PageConfig::default(),
            web: WebConfig::default(),
        }
    }
}

/// Bitrise's shared configuration for one add-on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitriseConfig {
    /// Sent by Bitrise in the `Authentication` header of /provision calls.
    pub shared_token: Secret,
    /// Signs SSO logins: `token = sha1(app_slug:sso_secret:timestamp)`.
    pub sso_secret: Secret,
}

impl HostConfig {
    /// Read and validate a config file, resolving relative paths against its folder.
    pub fn load(path: &Path) -> anyhow::Result<HostConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg: HostConfig =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        // Relative paths are taken from the config's folder, made absolute first: a bare file
        // name's parent is "", which is no folder a build can run in.
        let absolute = std::path::absolute(path).with_context(|| format!("locating config {}", path.display()))?;
        cfg.resolve_paths(absolute.parent().unwrap_or(Path::new("/")));
        let invalid = || format!("invalid config {}", path.display());
        cfg.inline_manifests().with_context(invalid)?;
        cfg.validate().with_context(invalid)?;
        Ok(cfg)
    }

    /// Read each Xervo manifest once and keep its settings inline, so nothing later (the
    /// Xervo adapter's start) reads the file again or sees it changed.
    pub fn inline_manifests(&mut self) -> anyhow::Result<()> {
        for addon in &mut self.addons {
            if let Some(x) = addon.xervo.as_mut().filter(|x| x.manifest.is_some()) {
                let settings =
                    XervoSettings::resolve(&addon.id, x).with_context(|| format!("add-on `{}`", addon.id))?;
                *x = XervoConfig {
                    manifest: None,
                    password: Some(settings.password),
                    sso_salt: Some(settings.sso_salt),
                    config_vars: settings.config_vars,
                    regions: settings.regions,
                };
            }
        }
        Ok(())
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        if self.server.data_dir.is_relative() {
            self.server.data_dir = base.join(&self.server.data_dir);
        }
        if let Some(ca) = &mut self.server.storage.ca_file
            && ca.is_relative()
        {
            *ca = base.join(&*ca);
        }
        if let Some(cache) = &mut self.server.compile_cache
            && cache.is_relative()
            && !cache.as_os_str().is_empty()
        {
            *cache = base.join(&*cache);
        }
        for addon in &mut self.addons {
            if addon.plugin.is_relative() {
                addon.plugin = base.join(&addon.plugin);
            }
            if let Some(build) = &mut addon.build {
                build.dir = base.join(&build.dir);
                for path in &mut build.watch {
                    *path = build.dir.join(&*path);
                }
            }
            if let Some(manifest) = addon.xervo.as_mut().and_then(|x| x.manifest.as_mut())
                && manifest.is_relative()
            {
                *manifest = base.join(&*manifest);
            }
        }
    }

    /// Whether any add-on meters instructions, which the engine must then support.
    /// Add-on `id`'s public base URL (see `server.public_url`), if the host knows it.
    pub fn public_url_of(&self, id: &str) -> Option<String> {
        match (&self.server.web_origin, &self.server.public_url) {
            (Some(origin), _) => Some(origin.of(id)),
            (None, Some(base)) => Some(format!("{}/addons/{id}", base.trim_end_matches('/'))),
            (None, None) => None,
        }
    }

    pub fn uses_fuel(&self) -> bool {
        self.addons.iter().any(|a| a.limits.fuel.is_some())
    }

    /// The largest memory cap of any add-on, which sizes the engine's memory slots.
    pub fn max_memory_bytes(&self) -> u64 {
        self.addons.iter().map(|a| a.limits.memory_mib).max().unwrap_or(64) << 20
    }
}
