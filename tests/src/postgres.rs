//! A real PostgreSQL server for the tests and benchmarks: one cluster per test process, in a
//! temp dir, reached over a Unix socket in that dir, with a fresh database per host under
//! test.
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
    /// Names the socket file (`.s.PGSQL.{port}`) in the cluster's folder; no TCP port is
    /// opened, so nothing else on the machine can take the cluster's address.
    pub port: u16,
    bin: PathBuf,
    root: PathBuf,
    as_root: bool,
    /// The shell holding the server; its stdin is the pipe that stops it.
    guard: Mutex<Child>,
}

/// True when the suite should run on PostgreSQL (`ADDON_TEST_STORAGE=postgres`).
pub fn selected() -> bool {
    std::env::var("ADDON_TEST_STORAGE").is_ok_and(|v| v.eq_ignore_ascii_case("postgres"))
}

/// The test process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start().unwrap_or_else(|e| panic!("could not start PostgreSQL for the tests: {e}")))
}

/// A new, empty database on the shared cluster; its URL.
pub fn fresh_database() -> String {
    cluster().fresh_database()
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
    /// A cluster of the calling test's own (one it may crash); stopped when the test process
    /// ends.
    pub fn start() -> Result<Cluster, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let bin = bin_dir()?;
        remove_stale();
        let parent = std::env::temp_dir().join(format!("addon-host-pg-{}", std::process::id()));
        let root = parent.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        if as_root {
            for dir in [&parent, &root] {
                std::os::unix::fs::chown(dir, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).map_err(|e| e.to_string())?;
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(root.join("data")).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        initdb.current_dir(&root);
        unprivileged(&mut initdb, as_root);
        let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = 5432;
        let guard = Mutex::new(serve(&bin, &root, port, as_root)?);
        let cluster = Cluster { port, bin, root, as_root, guard };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// A new, empty database; its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new(self.bin.join("createdb"))
            .arg("-h")
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-U", "postgres", &name])
            .output()
            .expect("createdb runs");
        assert!(out.status.success(), "createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        self.url(&name)
    }

    /// Stop the server as a crash would (`immediate`: no checkpoint, unwritten WAL buffers
    /// lost), then start it again on the same port; it replays its WAL.
    pub fn crash_and_restart(&self) -> Result<(), String> {
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.arg("-D").arg(self.root.join("data")).args(["stop", "-m", "immediate", "-w"]);
        unprivileged(&mut stop, self.as_root);
        let out = stop.output().map_err(|e| format!("pg_ctl: {e}"))?;
        if !out.status.success() {
            return Err(format!("pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let mut guard = self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = guard.wait();
        *guard = serve(&self.bin, &self.root, self.port, self.as_root)?;
        drop(guard);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.root)
                .args(["-q", "-U", "postgres", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                return Err(format!("postgres did not become ready in 60 s; its log:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URL of `database`, over the cluster's Unix socket.
    pub fn url(&self, database: &str) -> String {
        format!("postgres:///{database}?user=postgres&host={}&port={}", self.root.display(), self.port)
    }
}

fn unprivileged(cmd: &mut Command, as_root: bool) {
    if as_root {
        use std::os::unix::process::CommandExt;
        cmd.uid(UNPRIVILEGED).gid(UNPRIVILEGED);
    }
}

/// Start the server under a shell that stops it when this process's end closes its stdin
/// (and ends by itself when the server stops first).
fn serve(bin: &Path, root: &Path, port: u16, as_root: bool) -> Result<Child, String> {
    let mut server = Command::new("sh");
    server
        .arg("-c")
        .arg(
            r#""$1/postgres" -D "$2" -p "$3" -k "$4" -c listen_addresses= -c max_connections=500 \
               -c shared_buffers=64MB >>"$4/server.log" 2>&1 &
             pg=$!
             (read _; kill -INT $pg 2>/dev/null) &
             wait $pg"#,
        )
        .arg("sh")
        .arg(bin)
        .arg(root.join("data"))
        .arg(port.to_string())
        .arg(root)
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unprivileged(&mut server, as_root);
    server.spawn().map_err(|e| format!("starting postgres: {e}"))
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

/// Clusters of test processes that have ended.
fn remove_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("addon-host-pg-")) else { continue };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}
