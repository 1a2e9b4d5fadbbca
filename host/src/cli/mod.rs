//! The `addon-host` command line: `serve` and `check`. Lives in the library so the end-to-end
//! tests can build and spawn exactly this entry point.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{HostConfig, LogFormat};
use crate::service::Service;

mod new;
mod new_scripts;
mod plugin;
mod test;
use crate::xervo::manifest::XervoSettings;

/// The config a command reads when none is named: the one `addon-host new` writes.
pub(crate) const DEFAULT_CONFIG: &str = "addon-host.toml";

#[derive(Parser)]
#[command(name = "addon-host", version, about = "Serve add-on provisioning APIs from sandboxed Wasm plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: text (default) or json, one object per line (default: the
    /// config's `server.log_format`).
    #[arg(long, global = true, env = "ADDON_HOST_LOG_FORMAT")]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every add-on of the config file.
    Serve {
        /// The host's TOML configuration.
        #[arg(long, short, env = "ADDON_HOST_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Listen address (overrides `server.listen`).
        #[arg(long, env = "ADDON_HOST_LISTEN")]
        listen: Option<std::net::SocketAddr>,
        /// Data directory (overrides `server.data_dir`).
        #[arg(long, env = "ADDON_HOST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Development mode: build each add-on with `[addon.build]` and rebuild it when its
        /// sources change, swapping in each good build; reload other add-ons' plugins when
        /// their .wasm file changes on disk.
        #[arg(long)]
        watch: bool,
    },
    /// Manage plugin versions on a running host (admin API client).
    Plugin(plugin::PluginArgs),
    /// List, retry and drop an add-on's jobs on a running host (admin API client).
    Jobs(plugin::JobsArgs),
    /// Print the Xervo `addon-manifest.json` of a hosted add-on, pointing at this host.
    Manifest {
        /// The add-on's id.
        addon: String,
        /// Public base URL of this host (production URLs), e.g. https://addons.example.com
        #[arg(long)]
        base_url: String,
        /// Base URL for the manifest's `test` block (default: --base-url).
        #[arg(long)]
        test_base_url: Option<String>,
        #[arg(long, short, env = "ADDON_HOST_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create a plugin project: a crate on the SDK with a provider and its tests, a dev
    /// config with fresh credentials, and a README.
    New {
        /// The add-on's id (and crate name).
        name: String,
        /// Where to create it (default: ./NAME); it must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on a local SDK checkout instead of the published version (Rust).
        #[arg(long)]
        sdk_path: Option<PathBuf>,
        /// The plugin's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: new::Lang,
        /// What the plugin starts as: a provider; one whose job calls an API after the reply
        /// (the `worker` world); or one with a dashboard and a build API (the `web` world).
        #[arg(long, value_enum, default_value = "provider")]
        template: new::Template,
    },
    /// The conformance kit: the platforms' sequences, the negative cases they lack and plugin
    /// hygiene, against a plugin file or a running provider (--url).
    Test(test::TestArgs),
    /// Copy a sled data directory into the PostgreSQL database the config names
    /// (`[server.storage] postgres`), then count it again there. Stop the host first.
    Migrate {
        #[arg(long, short, env = "ADDON_HOST_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The sled data directory to copy (default: the config's `server.data_dir`).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Merge into a database that already holds data.
        #[arg(long)]
        overwrite: bool,
    },
    /// Validate the config file and compile every plugin, then exit.
    Check {
        #[arg(long, short, env = "ADDON_HOST_CONFIG", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

pub fn main() -> anyhow::Result<()> {
    // wasmtime errors capture a host backtrace when RUST_BACKTRACE is set, on every trap;
    // plugin failures are expected events here, so keep them cheap unless asked otherwise.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        #[allow(unsafe_code, reason = "set_var before any thread starts")]
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", "0")
        };
    }
    let cli = Cli::parse();
    // The flag, else the config `serve` will read (a config that does not load fails below).
    let format = cli.log_format.unwrap_or_else(|| match &cli.command {
        Command::Serve { config, .. } => HostConfig::load(config).map_or(LogFormat::Text, |c| c.server.log_format),
        _ => LogFormat::Text,
    });
    // Logs go to stderr; stdout carries only what scripts read (the listen line, the admin
    // token shown once, command output).
    // The kit's in-process host speaks only when something is wrong: its report is the output.
    let quiet = matches!(cli.command, Command::Test(_));
    let default_filter = if quiet { "off" } else { "info,cranelift=warn,wasmtime=warn" };
    // Colours only on a terminal (and never under NO_COLOR): a log file or journal gets plain
    // lines, and formatting each request's span without escape codes is cheaper too.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let filter = || tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt().with_ansi(colour);
    match format {
        // One event, one line, whatever text partners and callers put in it.
        LogFormat::Text => {
            logs.with_writer(crate::logs::EscapedStderr { colour }).with_env_filter(filter()).init();
        }
        LogFormat::Json => logs.json().with_writer(std::io::stderr).with_env_filter(filter()).init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve { config, listen, data_dir, watch } => serve(config, listen, data_dir, watch).await,
            Command::Plugin(args) => tokio::task::spawn_blocking(move || plugin::run(args)).await?,
            Command::Migrate { config, from, overwrite } => {
                tokio::task::spawn_blocking(move || migrate(&config, from, overwrite)).await?
            }
            Command::Jobs(args) => tokio::task::spawn_blocking(move || plugin::run_jobs(args)).await?,
            Command::Manifest { addon, base_url, test_base_url, config } => {
                let cfg = HostConfig::load(&config)?;
                let entry = cfg
                    .addons
                    .iter()
                    .find(|a| a.id == addon)
                    .ok_or_else(|| anyhow::anyhow!("no add-on `{addon}` in {}", config.display()))?;
                let xervo = entry
                    .xervo
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("add-on `{addon}` has no [addon.xervo] settings"))?;
                let settings = XervoSettings::resolve(&addon, xervo).with_context(|| format!("add-on `{addon}`"))?;
                for url in [Some(&base_url), test_base_url.as_ref()].into_iter().flatten() {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        anyhow::bail!("base URL {url:?} must start with http:// or https://");
                    }
                }
                let manifest = settings.manifest(&base_url, test_base_url.as_deref().unwrap_or(&base_url));
                print(&serde_json::to_string_pretty(&manifest)?)
            }
            Command::Check { config } => check(&config),
            Command::New { name, dir, sdk_path, lang, template } => {
                new::run(new::New { name, dir, sdk_path, lang, template })
            }
            Command::Test(args) => test::run(args).await,
        }
    })
}

async fn serve(
    config: PathBuf,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<PathBuf>,
    watch: bool,
) -> anyhow::Result<()> {
    let mut cfg = HostConfig::load(&config)?;
    if let Some(addr) = listen {
        cfg.server.listen = addr;
    }
    if let Some(dir) = data_dir {
        cfg.server.data_dir = dir;
    }
    if watch {
        crate::watch::build_all(&cfg).await?;
    }
    let service = Arc::new(Service::start(&cfg)?);
    if let Some(token) = service.admins().take_generated() {
        println!("addon-host admin token (shown once; only its hash is stored): {token}");
    }
    let listener =
        crate::http::server::bind(cfg.server.listen).with_context(|| format!("binding {}", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(engine = ?service.runtime().info(), "engine ready");
    for addon in service.addons() {
        tracing::info!("serving {} at http://{addr}/addons/{}", addon.id(), addon.id());
    }
    if watch {
        crate::watch::spawn(service.clone(), &cfg)?;
    }
    if let Some(at) = cfg.server.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(at).await.with_context(|| format!("binding metrics {at}"))?;
        println!("addon-host metrics on http://{}/metrics", metrics.local_addr()?);
        let app = crate::app::metrics_app(service.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, app).await {
                tracing::error!("the metrics listener stopped: {e}");
            }
        });
    }
    // A line tests and scripts can wait for.
    println!("addon-host listening on http://{addr}");
    crate::serve(listener, service, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Validate everything `serve` would, without opening the data directory: the config, each
/// add-on's Xervo settings, and each plugin compiled and linked against the contract.
fn check(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = HostConfig::load(config)?;
    let mut server = cfg.server.clone();
    server.compile_cache = Some(PathBuf::new());
    let runtime = crate::runtime::Runtime::new(&server, cfg.max_memory_bytes(), cfg.uses_fuel(), None)?;
    for addon in &cfg.addons {
        let at = || format!("add-on `{}`", addon.id);
        if let Some(x) = &addon.xervo {
            XervoSettings::resolve(&addon.id, x).with_context(at)?;
        }
        let bytes =
            std::fs::read(&addon.plugin).with_context(|| format!("{}: reading {}", at(), addon.plugin.display()))?;
        let plugin = runtime.load(&bytes, None).with_context(at)?;
        print(&format!("ok: {} plugin {} ({} bytes)", addon.id, plugin.short_version(), plugin.size))?;
    }
    print(&format!("ok: {} add-on(s), engine {:?}", cfg.addons.len(), runtime.info()))
}

/// Print a result on stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `addon-host migrate`: sled (the data directory) into PostgreSQL.
fn migrate(config: &std::path::Path, from: Option<PathBuf>, overwrite: bool) -> anyhow::Result<()> {
    let cfg = HostConfig::load(config)?;
    if cfg.server.storage.postgres.is_none() {
        anyhow::bail!("{} names no target: set `postgres` under [server.storage]", config.display());
    }
    let from = from.unwrap_or_else(|| cfg.server.data_dir.clone());
    if !from.exists() {
        anyhow::bail!("no data directory at {}", from.display());
    }
    let source = crate::storage::Storage::open(&from)
        .with_context(|| format!("opening {} (is a host still running on it?)", from.display()))?;
    let target = crate::storage::Storage::open_config(&cfg.server).context("opening the PostgreSQL storage")?;
    let copied = source.copy_into(&target, overwrite)?;
    // Plugin components kept as files beside sled go into the database's tables.
    let components =
        crate::versions::Registry::open(&source)?.copy_files_into(&crate::versions::Registry::open(&target)?)?;
    let report = serde_json::json!({ "from": from, "copied": copied, "plugin_components": components });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
