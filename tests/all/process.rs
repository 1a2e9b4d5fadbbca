//! The real `addon-host` binary as a child process, and a raw HTTP/1.1 client that sends
//! exactly the bytes a platform's tool sends.

use std::process::Stdio;
use std::time::Duration;

use addon_host_tests::AddonToml;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub(crate) struct Server {
    pub child: Child,
    pub addr: String,
    pub config: std::path::PathBuf,
    /// What the binary printed on stdout before it listened.
    pub banner: Vec<String>,
    /// Every line the binary has logged on stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Fails the run, naming the test, if the test that spawned this server hangs.
    pub _watchdog: crate::watchdog::Watchdog,
}

impl Server {
    /// Wait until the binary logs a line containing `needle`; false after `within`.
    pub(crate) async fn logged(&self, needle: &str, within: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < within {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// The `credentials` example add-on as `myaddon`, on Bitrise with `token` and `sso_secret`,
/// as the config file of a spawned host.
pub(crate) fn credentials_on_bitrise(token: &str, sso_secret: &str) -> String {
    AddonToml::new("myaddon", addon_host_tests::PLUGIN_CREDENTIALS)
        .plans(&["free", "pro"])
        .bitrise(token, sso_secret)
        .config("host_url", "https://myaddon.example.com")
        .to_toml()
}

/// Start the real binary on 127.0.0.1 (any port) with `addons` as its add-on config, data
/// under `dir`, and wait until it listens.
pub(crate) async fn spawn(dir: &std::path::Path, addons: &str) -> Server {
    spawn_with(dir, addons, &[]).await
}

/// [`spawn`] with extra `serve` arguments (e.g. `--watch`).
pub(crate) async fn spawn_with(dir: &std::path::Path, addons: &str, extra: &[&str]) -> Server {
    let config = write_config(dir, addons);
    let mut command = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"));
    command.args(["serve", "--config"]).arg(&config).args(extra);
    start(command, config).await
}

/// Serve an existing config file (on any port: `--listen 127.0.0.1:0`) with extra `serve`
/// arguments. Builds the server runs (`--watch`) use their own target folder, not the one
/// the tests were built in.
pub(crate) async fn spawn_config_with(config: &std::path::Path, extra: &[&str]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config).args(extra);
    command.env_remove("CARGO_TARGET_DIR");
    start(command, config.to_path_buf()).await
}

/// Start `command` (which runs `addon-host serve` in the end, e.g. through `sh -c`), reading
/// `config`; wait until it listens.
pub(crate) async fn spawn_command(command: Command, config: std::path::PathBuf) -> Server {
    start(command, config).await
}

/// [`spawn`] with the process's address space limited to `kib` KiB (`ulimit -v`).
pub(crate) async fn spawn_limited(dir: &std::path::Path, addons: &str, kib: u64) -> Server {
    let config = write_config(dir, addons);
    start(limited(kib, &config), config).await
}

/// `addon-host serve --config CONFIG` under `ulimit -v KIB`, not started.
pub(crate) fn limited(kib: u64, config: &std::path::Path) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"ulimit -v "$1" && exec "$0" serve --config "$2""#, env!("CARGO_BIN_EXE_addon-host-e2e")])
        .arg(kib.to_string())
        .arg(config);
    command
}

impl Server {
    /// Kill the process and wait until it is gone (its storage lock with it), so that the
    /// next host on the same data can start.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// The process's resident memory, in bytes.
    pub(crate) fn rss(&self) -> u64 {
        let pid = self.child.id().expect("the host is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).map(|v| v.trim().trim_end_matches(" kB"));
        kib.and_then(|v| v.parse::<u64>().ok()).expect("VmRSS in /proc") << 10
    }

    /// `GET path` with the admin token the host showed at its first start.
    pub(crate) async fn as_admin(&self, path: &str) -> (u16, String) {
        let token = self.banner.iter().find_map(|l| l.split("stored): ").nth(1)).expect("admin token line");
        exchange(&self.addr, "GET", path, &[("authorization", &format!("Bearer {token}"))], "").await
    }
}

/// Write a config file for a spawned host: `extra` goes under `[server]` up to its first table.
pub(crate) fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("addon-host.toml");
    // On PostgreSQL (ADDON_TEST_STORAGE=postgres) the host gets its own database.
    let storage =
        if extra.contains("[server.storage]") { String::new() } else { addon_host_tests::postgres::config_lines(dir) };
    std::fs::write(&config, format!("[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n{extra}\n{storage}"))
        .unwrap();
    config
}

async fn start(mut command: Command, config: std::path::PathBuf) -> Server {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn addon-host");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = errors.next_line().await {
            eprintln!("{line}");
            kept.lock().unwrap().push(line);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (addr, banner) = tokio::time::timeout(Duration::from_secs(60), async {
        let mut banner = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("addon-host listening on http://") {
                return (url.to_owned(), banner);
            }
            banner.push(line);
        }
        panic!("addon-host exited before listening");
    })
    .await
    .expect("addon-host did not start in time");
    Server { child, addr, config, banner, log, _watchdog: crate::watchdog::start() }
}

/// One HTTP/1.1 exchange with the headers Go's client sends.
pub(crate) async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    try_exchange(addr, method, path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`exchange`], reporting transport failures (a killed server) instead of panicking.
pub(crate) async fn try_exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    exchange_bytes(addr, method, path, headers, body.as_bytes()).await
}

/// [`try_exchange`] with a body of any bytes (a plugin upload).
pub(crate) async fn exchange_bytes(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    exchange_with_head(addr, method, path, headers, body).await.map(|(status, _, body)| (status, body))
}

/// The value of header `name` in a response `head` (status line and headers).
pub(crate) fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)))
        .map(|(_, v)| v.trim())
}

/// [`exchange_bytes`], with the response's head (status line and headers) too.
pub(crate) async fn exchange_with_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Accept-Encoding: gzip\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    // A server may answer (a 429, say) and close before taking the whole body: its answer is
    // what counts, so a failed write is not the end.
    let sent = stream.write_all(body).await;
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw).await;
    if raw.is_empty() {
        sent?;
        read?;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("incomplete response: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((status, head.to_owned(), body.to_owned()))
}
