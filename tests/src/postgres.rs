//! A real PostgreSQL server for the tests and benchmarks: one cluster per test process, in a
//! temp dir, on a free loopback port, with a fresh database per host under test.
//!
//! The server comes from the machine's PostgreSQL install (Debian's `postgresql` package;
//! `ADDON_PG_BIN` names another `bin` folder). PostgreSQL refuses to run as root, so when the
//! tests run as root the cluster is made and run as `nobody`. The server is started under a
//! small shell that holds a pipe from this process: when this process ends, however it
//! ends, the pipe closes and the shell stops the server.
//!
//! `ADDON_TEST_STORAGE=postgres` runs the end-to-end suite on PostgreSQL: every test host
//! gets its own database ([`url_for`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `nobody` on Debian.
const UNPRIVILEGED: u32 = 65534;

pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    /// The shell holding the server; its stdin is the pipe that stops it.
    _guard: Mutex<Child>,
}

/// True when the suite should run on PostgreSQL (`ADDON_TEST_STORAGE=postgres`).
pub fn selected() -> bool {
    std::env::var("ADDON_TEST_STORAGE").is_ok_and(|v| v.eq_ignore_ascii_case("postgres"))
}

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start().unwrap_or_else(|e| panic!("could not start PostgreSQL for the tests: {e}")))
}

/// A new, empty database on the cluster; its URL.
pub fn fresh_database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let cluster = cluster();
    let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let out = Command::new(cluster.bin.join("createdb"))
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string(), "-U", "postgres", &name])
        .output()
        .expect("createdb runs");
    assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
    cluster.url(&name)
}

/// The database of the test host whose files are in `dir`, created on first use and
/// remembered in `dir` (so a restarted host finds its data), when the suite runs on
/// PostgreSQL; `None` on sled.
pub fn url_for(dir: &Path) -> Option<String> {
    if !selected() {
        return None;
    }
    let file = dir.join(".postgres-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let url = fresh_database();
    std::fs::create_dir_all(dir).expect("test dir");
    std::fs::write(&file, &url).expect("remembering the test database");
    Some(url)
}

/// The `[server.storage]` lines for a config file in `dir` (empty on sled).
pub fn config_lines(dir: &Path) -> String {
    url_for(dir).map(|url| format!("\n[server.storage]\npostgres = \"{url}\"\n")).unwrap_or_default()
}

impl Cluster {
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Run SQL on `database` with psql; its output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database])
            .args(["-tAq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("ADDON_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL install in /usr/lib/postgresql ({e}); install Debian's `postgresql`"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| "no PostgreSQL server in /usr/lib/postgresql/*/bin".into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(55432)
}

/// Clusters of test processes that have ended.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("addon-host-pg-")) else { continue };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start() -> Result<Cluster, String> {
    let bin = bin_dir()?;
    remove_stale();
    let root = std::env::temp_dir().join(format!("addon-host-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let unprivileged = |cmd: &mut Command| {
        if as_root {
            use std::os::unix::process::CommandExt;
            cmd.uid(UNPRIVILEGED).gid(UNPRIVILEGED);
        }
    };
    if as_root {
        std::os::unix::fs::chown(&root, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).map_err(|e| e.to_string())?;
    }
    let data = root.join("data");
    let mut initdb = Command::new(bin.join("initdb"));
    initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    initdb.current_dir(&root);
    unprivileged(&mut initdb);
    let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let port = free_port();
    let mut server = Command::new("sh");
    server
        .arg("-c")
        .arg(
            r#""$1/postgres" -D "$2" -p "$3" -k "$4" -c listen_addresses=127.0.0.1 -c max_connections=500 \
               -c shared_buffers=64MB >"$4/server.log" 2>&1 &
             pg=$!
             read _
             kill -INT $pg
             wait $pg"#,
        )
        .arg("sh")
        .arg(&bin)
        .arg(&data)
        .arg(port.to_string())
        .arg(&root)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unprivileged(&mut server);
    let guard = server.spawn().map_err(|e| format!("starting postgres: {e}"))?;
    let cluster = Cluster { port, bin, _guard: Mutex::new(guard) };
    let started = Instant::now();
    loop {
        let ready = Command::new(cluster.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return Ok(cluster);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            return Err(format!("postgres did not become ready in 60 s; its log:\n{log}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
