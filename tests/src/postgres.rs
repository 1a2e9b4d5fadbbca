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
    /// The TCP port, for a cluster that also listens on 127.0.0.1 (with TLS).
    pub tcp_port: Option<u16>,
    bin: PathBuf,
    root: PathBuf,
    as_root: bool,
    /// The server's settings beyond the common ones.
    options: String,
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
        let (bin, root, as_root) = init()?;
        let cluster = Cluster {
            port: 5432,
            tcp_port: None,
            guard: Mutex::new(serve(&bin, &root, 5432, as_root, "-c listen_addresses=")?),
            bin,
            root,
            as_root,
            options: "-c listen_addresses=".into(),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// A cluster of the calling test's own that also serves TLS on a loopback TCP port, with
    /// a server certificate for 127.0.0.1 from a fresh authority; also the authority's PEM
    /// file (what a host's `ca_file` names).
    pub fn start_tls() -> Result<(Cluster, PathBuf), String> {
        let (bin, root, as_root) = init()?;
        let ca = tls_files(&root, as_root)?;
        let mut last = String::new();
        // A free port may be taken by another test's server before PostgreSQL binds it.
        for _ in 0..5 {
            let tcp = free_port();
            let options = format!(
                "-c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                root.display()
            );
            let cluster = Cluster {
                port: tcp,
                tcp_port: Some(tcp),
                guard: Mutex::new(serve(&bin, &root, tcp, as_root, &options)?),
                bin: bin.clone(),
                root: root.clone(),
                as_root,
                options,
            };
            match cluster.wait_ready() {
                Ok(()) => return Ok((cluster, ca)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The URL of `database` over TCP with TLS required (a TLS cluster's).
    pub fn tls_url(&self, database: &str) -> String {
        let port = self.tcp_port.expect("a cluster started with start_tls");
        format!("postgres://postgres@127.0.0.1:{port}/{database}?sslmode=require")
    }

    /// Run SQL on `database` with psql (over the socket); its output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.root)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", database, "-tAq", "-c", sql])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
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
        let mut last = String::new();
        // Once seen on a loaded CI machine: the restarted server never answered (and never
        // logged). Start it again then, and say what was running.
        for _ in 0..3 {
            let mut guard = self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = guard.kill();
            let _ = guard.wait();
            *guard = serve(&self.bin, &self.root, self.port, self.as_root, &self.options)?;
            drop(guard);
            match self.wait_ready_for(Duration::from_secs(20)) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let ps = Command::new("ps").args(["-eo", "pid,ppid,stat,args"]).output();
                    let ps = ps.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
                    let ours: Vec<&str> = ps.lines().filter(|l| l.contains("postgres") || l.contains(" sh ")).collect();
                    last = format!("{e}\nprocesses:\n{}", ours.join("\n"));
                    eprintln!("restarting the test database again: {last}");
                }
            }
        }
        Err(last)
    }

    fn wait_ready(&self) -> Result<(), String> {
        self.wait_ready_for(Duration::from_secs(60))
    }

    fn wait_ready_for(&self, within: Duration) -> Result<(), String> {
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
            let exited = self.guard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).try_wait();
            if let Ok(Some(status)) = exited {
                let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                return Err(format!("postgres exited ({status}); its log:\n{log}"));
            }
            if started.elapsed() > within {
                let log = std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default();
                return Err(format!("postgres did not become ready in {within:?}; its log:\n{log}"));
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
fn serve(bin: &Path, root: &Path, port: u16, as_root: bool, options: &str) -> Result<Child, String> {
    let mut server = Command::new("sh");
    server
        .arg("-c")
        .arg(
            // A background list's stdin is /dev/null unless redirected (POSIX), so the pipe
            // is kept on fd 3 for the watcher.
            r#"exec 3<&0
             "$1/postgres" -D "$2" -p "$3" -k "$4" -c max_connections=500 -c shared_buffers=64MB $5 \
               >>"$4/server.log" 2>&1 </dev/null &
             pg=$!
             (read _ <&3; kill -INT $pg 2>/dev/null) &
             wait $pg"#,
        )
        .arg("sh")
        .arg(bin)
        .arg(root.join("data"))
        .arg(port.to_string())
        .arg(root)
        .arg(options)
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unprivileged(&mut server, as_root);
    server.spawn().map_err(|e| format!("starting postgres: {e}"))
}

/// A new cluster folder with an initialised data directory: the server's binaries, the
/// folder, and whether the server must run as `nobody`.
fn init() -> Result<(PathBuf, PathBuf, bool), String> {
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
    Ok((bin, root, as_root))
}

/// A fresh authority and a server certificate it signs for 127.0.0.1, written into `root`
/// for the server (its key readable by the server's user only); the authority's PEM path.
fn tls_files(root: &Path, as_root: bool) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "addon-host test authority");
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).map_err(err)?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let server = params.signed_by(&key, &issuer).map_err(err)?;
    let write = |name: &str, text: String, mode: u32| -> Result<PathBuf, String> {
        let path = root.join(name);
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        if as_root {
            std::os::unix::fs::chown(&path, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).map_err(|e| e.to_string())?;
        }
        Ok(path)
    };
    write("server.crt", server.pem(), 0o644)?;
    write("server.key", key.serialize_pem(), 0o600)?;
    write("ca.pem", ca.pem(), 0o644)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(55432)
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
