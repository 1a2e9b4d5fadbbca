//! Several hosts on one PostgreSQL database, as an operator runs them behind a load balancer:
//! the real binary three times, one test cluster, traffic spread round-robin. Identical
//! requests arriving at different hosts make one plugin call, a swap made through one host
//! serves from every host, and a host killed mid-traffic loses nothing it acknowledged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use addon_host_tests::AddonToml;

use crate::process::{
    Server, exchange, exchange_with_head, header_of, spawn, spawn_config_with, try_exchange, write_config,
};

const TOKEN: &str = "shared-hosts-token-0123456789";
const VERSIONED_TOKEN: &str = "shared-hosts-versioned-token-0123";
const ADMIN: &str = "shared-hosts-admin-token-0123456789";

/// The config of every host: the same add-ons and admin, one database.
fn config(database: &str) -> String {
    with_storage(&format!("[server.storage]\npostgres = \"{database}\"\n"))
}

/// The same add-ons and admin with `storage` as the `[server.storage]` table.
fn with_storage(storage: &str) -> String {
    let myaddon = AddonToml::new("myaddon", addon_host_tests::PLUGIN_CREDENTIALS)
        .plans(&["free", "pro"])
        .bitrise(TOKEN, "shared-hosts-sso-secret-0123")
        .config("host_url", "https://myaddon.example.com")
        .build_api();
    let versioned = AddonToml::new("versioned", addon_host_tests::PLUGIN_VERSIONED_A)
        .bitrise(VERSIONED_TOKEN, "versioned-sso-0123");
    format!(
        "{storage}[[server.admins]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\n{}{}",
        myaddon.to_toml(),
        versioned.to_toml()
    )
}

/// Three hosts on a fresh database, each with its own folder (compile cache, logs).
async fn three_hosts() -> (Vec<tempfile::TempDir>, Vec<Server>) {
    let database = addon_host_tests::postgres::fresh_database();
    let config = config(&database);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts = Vec::new();
    for dir in &dirs {
        let host = spawn(dir.path(), &config).await;
        let bearer = format!("Bearer {ADMIN}");
        let (status, health) = exchange(&host.addr, "GET", "/admin/status", &[("authorization", &bearer)], "").await;
        assert_eq!(status, 200, "{health}");
        assert!(health.contains(r#""storage":"postgres""#), "{health}");
        hosts.push(host);
    }
    (dirs, hosts)
}

fn provision_body(slug: &str) -> String {
    serde_json::json!({ "app_slug": slug, "api_token": "43ebf21edc9e4525", "plan": "free" }).to_string()
}

async fn provision(addr: &str, addon: &str, token: &str, slug: &str) -> std::io::Result<(u16, String)> {
    let headers = [("Authentication", token), ("Content-Type", "application/json")];
    try_exchange(addr, "POST", &format!("/addons/{addon}/provision"), &headers, &provision_body(slug)).await
}

/// How many `provision` calls the host's plugin made for `addon`, from its `/metrics`.
async fn provision_calls(host: &Server, addon: &str) -> u64 {
    let bearer = format!("Bearer {ADMIN}");
    let (status, text) = exchange(&host.addr, "GET", "/metrics", &[("Authorization", &bearer)], "").await;
    assert_eq!(status, 200, "{text}");
    let wanted = format!("addon_plugin_call_seconds_count{{addon=\"{addon}\",call=\"provision\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0, |n| n.trim().parse().unwrap_or_else(|_| panic!("a count: {n}")))
}

/// The version `host` serves to a new app.
async fn served(host: &Server, slug: &str) -> String {
    let (status, body) = provision(&host.addr, "versioned", VERSIONED_TOKEN, slug).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let envs = reply["envs"].as_array().unwrap();
    let version = envs.iter().find(|e| e["key"] == "VERSIONED_VERSION").expect("a version variable");
    version["value"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_provisions_at_three_hosts_make_one_plugin_call() {
    let (_dirs, hosts) = three_hosts().await;
    let hosts = Arc::new(hosts);
    let requests: Vec<_> = (0..64)
        .map(|i| {
            let hosts = hosts.clone();
            tokio::spawn(async move {
                let host = &hosts[i % 3];
                provision(&host.addr, "myaddon", TOKEN, "one-app-three-hosts").await.unwrap()
            })
        })
        .collect();
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.unwrap());
    }
    let created = replies.iter().filter(|(status, _)| *status == 201).count();
    assert_eq!(created, 1, "one request created the resource: {replies:?}");
    assert!(replies.iter().all(|(status, _)| *status == 201 || *status == 200), "{replies:?}");
    let first = &replies[0].1;
    assert!(replies.iter().all(|(_, body)| body == first), "every request got the same reply: {replies:?}");
    let mut calls = 0;
    for host in hosts.iter() {
        calls += provision_calls(host, "myaddon").await;
    }
    assert_eq!(calls, 1, "64 identical provisions over three hosts made one plugin call");
}

/// A build API token is the same whichever host issued it (they share the key in the
/// database), works at every host, and a rotation through one host revokes it at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_api_token_works_and_is_revoked_at_every_host() {
    let (_dirs, hosts) = three_hosts().await;
    let token_of = |body: &str| {
        let reply: serde_json::Value = serde_json::from_str(body).unwrap();
        let envs = reply["envs"].as_array().unwrap();
        envs.iter().find(|e| e["key"] == "MYADDON_API_TOKEN").unwrap()["value"].as_str().unwrap().to_owned()
    };
    let (status, body) = provision(&hosts[0].addr, "myaddon", TOKEN, "api-app").await.unwrap();
    assert_eq!(status, 201, "{body}");
    let token = token_of(&body);
    for host in &hosts[1..] {
        let (status, again) = provision(&host.addr, "myaddon", TOKEN, "api-app").await.unwrap();
        assert_eq!((status, token_of(&again)), (200, token.clone()), "a replay at another host, the same token");
    }
    let whoami = async |host: &Server, token: &str| {
        let bearer = format!("Bearer {token}");
        exchange(&host.addr, "GET", "/addons/myaddon/api/whoami", &[("Authorization", &bearer)], "").await
    };
    for host in &hosts {
        let (status, body) = whoami(host, &token).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""resource_id":"api-app""#), "{body}");
    }
    let bearer = format!("Bearer {ADMIN}");
    let path = "/admin/addons/myaddon/resources/api-app/api-token";
    let (status, rotated) = exchange(&hosts[1].addr, "POST", path, &[("Authorization", &bearer)], "").await;
    assert_eq!(status, 200, "{rotated}");
    let fresh = serde_json::from_str::<serde_json::Value>(&rotated).unwrap()["token"].as_str().unwrap().to_owned();
    for host in &hosts {
        assert_eq!(whoami(host, &token).await.0, 401, "the rotated token, at every host");
        assert_eq!(whoami(host, &fresh).await.0, 200);
    }
}

/// An SSO login token works once, whichever host it reaches first: the others refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sso_token_is_single_use_across_hosts() {
    let (_dirs, hosts) = three_hosts().await;
    let (status, body) = provision(&hosts[0].addr, "myaddon", TOKEN, "sso-app").await.unwrap();
    assert_eq!(status, 201, "{body}");
    let ts = crate::support::now();
    let token = crate::support::sso_token("sso-app", "shared-hosts-sso-secret-0123", ts);
    let form = format!("app_slug=sso-app&timestamp={ts}&token={token}");
    let headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let logins: Vec<_> = hosts
        .iter()
        .map(|host| {
            let (addr, form) = (host.addr.clone(), form.clone());
            tokio::spawn(async move { exchange(&addr, "POST", "/addons/myaddon/login", &headers, &form).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for login in logins {
        statuses.push(login.await.unwrap().0);
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 403, 403], "one host logged the user in; the others refused the replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_through_one_host_serves_from_all_three_with_no_failed_request() {
    let (_dirs, hosts) = three_hosts().await;
    for (i, host) in hosts.iter().enumerate() {
        assert_eq!(served(host, &format!("before-{i}")).await, "a");
    }
    // Store version b through host 0 without activating it; the others prepare it.
    push(&hosts[0], addon_host_tests::PLUGIN_VERSIONED_B, false);

    let hosts = Arc::new(hosts);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (hosts, stop, seen) = (hosts.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let h = (c + n) % 3;
                    let version = served(&hosts[h], &format!("during-{c}-{n}")).await;
                    seen.lock().unwrap().push((h, version));
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bearer = format!("Bearer {ADMIN}");
    let (status, reply) = exchange(
        &hosts[1].addr,
        "POST",
        "/admin/addons/versioned/plugins/2/activate",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let activated = Instant::now();
    let mut everywhere = None;
    while activated.elapsed() < Duration::from_secs(10) {
        let mut all = true;
        for (i, host) in hosts.iter().enumerate() {
            all &= served(host, &format!("probe-{i}-{}", activated.elapsed().as_micros())).await == "b";
        }
        if all {
            everywhere = Some(activated.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.expect("no request failed during the swap");
    }
    let everywhere = everywhere.expect("every host serves the activated version");
    // NOTIFY carries it in milliseconds when idle; under this test's traffic on a loaded
    // 2-core CI machine it took up to 1.1 s once, so the bound is 2 s (a lost notification
    // would leave a host on `a` until the 10 s above).
    assert!(everywhere < Duration::from_secs(2), "every host served b {everywhere:?} after the activation");
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|(_, v)| v == "a") && seen.iter().any(|(_, v)| v == "b"), "traffic crossed the swap");
    for h in 0..hosts.len() {
        assert!(seen.iter().any(|(seen_at, _)| *seen_at == h), "host {h} served none of the traffic");
    }
}

/// Clients provisioning fresh apps round-robin over `addrs` until `stop`; each provision
/// answered 201 is recorded in the returned ledger with its reply. A request that fails (a
/// killed host, a database that is down) was never acknowledged.
struct Traffic {
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    /// Answers other than 201: status, `Retry-After`, body.
    refused: Arc<Mutex<Vec<Refused>>>,
    /// Transport failures, by the index of the host in `addrs`.
    broken: Arc<Mutex<Vec<(usize, String)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// An answer other than 201: status, `Retry-After`, body.
type Refused = (u16, Option<String>, String);

impl Traffic {
    fn start(addrs: Vec<String>, clients: usize, prefix: &str) -> Traffic {
        let addrs = Arc::new(addrs);
        let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let refused: Arc<Mutex<Vec<Refused>>> = Arc::default();
        let broken: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|c| {
                let (addrs, acked, stop, prefix) = (addrs.clone(), acked.clone(), stop.clone(), prefix.to_owned());
                let (refused, broken) = (refused.clone(), broken.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let slug = format!("{prefix}-{c}-{n}");
                        let at = (c + n) % addrs.len();
                        let headers = [("Authentication", TOKEN), ("Content-Type", "application/json")];
                        let body = provision_body(&slug);
                        match exchange_with_head(
                            &addrs[at],
                            "POST",
                            "/addons/myaddon/provision",
                            &headers,
                            body.as_bytes(),
                        )
                        .await
                        {
                            Ok((201, _, body)) => drop(acked.lock().unwrap().insert(slug, body)),
                            Ok((status, head, body)) => {
                                let retry_after = header_of(&head, "retry-after").map(str::to_owned);
                                refused.lock().unwrap().push((status, retry_after, body));
                            }
                            Err(e) => broken.lock().unwrap().push((at, e.to_string())),
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        Traffic { acked, refused, broken, stop, clients }
    }

    fn acknowledged(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stop the clients; what they had acknowledged, the other answers they got, and the
    /// transport failures by host.
    async fn stop(self) -> (BTreeMap<String, String>, Vec<Refused>, Vec<(usize, String)>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let refused = std::mem::take(&mut *self.refused.lock().unwrap());
        let broken = std::mem::take(&mut *self.broken.lock().unwrap());
        (std::mem::take(&mut *self.acked.lock().unwrap()), refused, broken)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_traffic_loses_nothing_it_acknowledged() {
    let (_dirs, mut hosts) = three_hosts().await;
    let addrs: Vec<String> = hosts.iter().map(|h| h.addr.clone()).collect();
    let traffic = Traffic::start(addrs.clone(), 12, "kill");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    hosts[2].child.start_kill().unwrap();
    hosts[2].child.wait().await.unwrap();
    let at_kill = traffic.acknowledged();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let after_kill = traffic.acknowledged() - at_kill;
    let (acked, refused, broken) = traffic.stop().await;
    assert_eq!(refused, Vec::new(), "the hosts left answered every request");
    let elsewhere: Vec<_> = broken.iter().filter(|(at, _)| *at != 2).collect();
    assert!(elsewhere.is_empty(), "only the killed host may fail to answer: {elsewhere:?}");
    assert!(at_kill > 30, "traffic was served before the kill: {at_kill} provisions");
    assert!(after_kill > 30, "the hosts left served traffic after the kill: {after_kill} provisions");
    // Every acknowledged provision replays its exact reply from the hosts left.
    for (i, (slug, body)) in acked.iter().enumerate() {
        let (status, again) = provision(&addrs[i % 2], "myaddon", TOKEN, slug).await.unwrap();
        assert_eq!((status, &again), (200, body), "acknowledged provision of {slug} lost or changed");
    }
}

/// `addon-host migrate` copies a sled data directory into PostgreSQL: a host started on the
/// database then replays every reply, keeps used SSO tokens used and serves the active version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_data_directory_moves_into_postgres() {
    let dir = tempfile::tempdir().unwrap();
    // An empty [server.storage] table: sled, whatever the suite runs on.
    let mut server = spawn(dir.path(), &with_storage("[server.storage]\n")).await;
    let mut replies = BTreeMap::new();
    for i in 0..10 {
        let slug = format!("moved-{i}");
        let (status, body) = provision(&server.addr, "myaddon", TOKEN, &slug).await.unwrap();
        assert_eq!(status, 201, "{body}");
        replies.insert(slug, body);
    }
    push(&server, addon_host_tests::PLUGIN_VERSIONED_B, true);
    assert_eq!(served(&server, "on-sled").await, "b");
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    // What there is to move, counted by a copy of the same data directory into a fresh sled.
    let expected = {
        let source = addon_host::storage::Storage::open(&dir.path().join("data")).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        source.copy_into(&addon_host::storage::Storage::open(scratch.path()).unwrap(), false).unwrap()
    };

    let config = write_config(dir.path(), &config(&addon_host_tests::postgres::fresh_database()));
    let migrate = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
            .args(["migrate", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = migrate(&[]);
    assert!(out.status.success(), "migrate: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["copied"]["keys"].as_u64(), Some(expected.keys), "every key moved: {report}");
    assert_eq!(report["copied"]["spaces"].as_u64(), Some(expected.spaces as u64), "{report}");
    let again = migrate(&[]);
    assert!(!again.status.success(), "a second copy into a database holding data is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"), "{again:?}");

    let server = spawn_config_with(&config, &[]).await;
    for (slug, body) in &replies {
        let (status, again) = provision(&server.addr, "myaddon", TOKEN, slug).await.unwrap();
        assert_eq!((status, &again), (200, body), "{slug} replays from PostgreSQL");
    }
    assert_eq!(served(&server, "on-postgres").await, "b", "the active version moved too");
}

/// Upload a plugin version through `host`'s admin API with the CLI.
fn push(host: &Server, plugin: &str, activate: bool) {
    let url = format!("http://{}", host.addr);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"));
    command.args(["plugin", "push", "versioned", plugin]).args(["--url", &url, "--token", ADMIN]);
    if !activate {
        command.arg("--no-activate");
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
}

const JOBS_TOKEN: &str = "shared-hosts-jobs-token-0123";

/// Two hosts on a fresh database serving the jobs test plugin (their folders, the database,
/// the hosts), the first having provisioned `app` on the `later` plan: a job due 2 s after
/// the reply, in the first host's queue.
async fn two_hosts_with_a_later_job(app: &str) -> (Vec<tempfile::TempDir>, String, Server, Server) {
    let database = addon_host_tests::postgres::fresh_database();
    let jobs = AddonToml::new("jobs", addon_host_tests::PLUGIN_JOBS).bitrise(JOBS_TOKEN, "shared-hosts-jobs-sso-01");
    let config = format!(
        "[server.storage]\npostgres = \"{database}\"\n[[server.admins]]\nname = \"ops\"\ntoken = \"{ADMIN}\"\n{}",
        jobs.to_toml()
    );
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = spawn(dirs[0].path(), &config).await;
    let second = spawn(dirs[1].path(), &config).await;
    let headers = [("Authentication", JOBS_TOKEN), ("Content-Type", "application/json")];
    let body = format!(r#"{{"app_slug":"{app}","api_token":"t","plan":"later"}}"#);
    let (status, reply) = exchange(&first.addr, "POST", "/addons/jobs/provision", &headers, &body).await;
    assert_eq!(status, 201, "{reply}");
    (dirs, database, first, second)
}

/// Wait until `host` no longer lists `app`'s job: another host adopted and ran it.
async fn until_run_elsewhere(host: &Server, app: &str) {
    let bearer = format!("Bearer {ADMIN}");
    let started = Instant::now();
    loop {
        let (status, listed) =
            exchange(&host.addr, "GET", "/admin/addons/jobs/jobs", &[("Authorization", &bearer)], "").await;
        assert_eq!(status, 200, "{listed}");
        if !listed.contains(app) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the other host never ran the job: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The jobs plugin's key `key` in `database`.
fn jobs_kv(database: &str, key: &str) -> Option<Vec<u8>> {
    let server = addon_host::config::ServerConfig {
        storage: addon_host::config::StorageConfig { postgres: Some(database.into()), ..Default::default() },
        ..Default::default()
    };
    let storage = addon_host::storage::Storage::open_config(&server).unwrap();
    storage.addon("jobs").unwrap().kv_get(key).unwrap()
}

/// A job committed by a host that is killed before its run runs on another host, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_job_runs_once_on_another_host() {
    // Its host dies before the job is due.
    let (_dirs, database, mut first, second) = two_hosts_with_a_later_job("orphan-app").await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    until_run_elsewhere(&second, "orphan-app").await;
    // The run is counted just after its commit: look until it is.
    let bearer = format!("Bearer {ADMIN}");
    let counted = Instant::now();
    let done = loop {
        let (_, metrics) = exchange(&second.addr, "GET", "/metrics", &[("Authorization", &bearer)], "").await;
        let prefix = r#"addon_job_runs_total{addon="jobs",outcome="done"} "#;
        if let Some(n) = metrics.lines().find_map(|l| l.strip_prefix(prefix)) {
            break n.trim().to_owned();
        }
        assert!(counted.elapsed() < Duration::from_secs(5), "the run was never counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done, "1", "the other host ran it once");
    assert_eq!(jobs_kv(&database, "ran/orphan-app").as_deref(), Some(&b"1"[..]), "its first attempt succeeded");
    let runs = jobs_kv(&database, "runs/orphan-app");
    assert_eq!(runs.as_deref(), Some(&b"1"[..]), "it ran once in all, on one host");
}

/// Two live hosts compete for one job: its host is paused (SIGSTOP) past the job's due time,
/// the other adopts and runs it, and the paused host, resumed with the job still in its own
/// queue, does not run it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_two_live_hosts_compete_for_runs_once() {
    let (_dirs, database, first, second) = two_hosts_with_a_later_job("contested-app").await;
    let pid = first.child.id().expect("the first host runs").to_string();
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    signal("-STOP");
    until_run_elsewhere(&second, "contested-app").await;
    // The paused host wakes with the job due in its own queue.
    signal("-CONT");
    let (status, text) = exchange(&first.addr, "GET", "/livez", &[], "").await;
    assert_eq!(status, 200, "{text}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = jobs_kv(&database, "runs/contested-app");
    assert_eq!(runs.as_deref(), Some(&b"1"[..]), "the job ran once across the two hosts");
}

/// The database crashes mid-traffic (an immediate stop: unwritten WAL is lost) and comes
/// back: every provision the host acknowledged before, during or after replays its reply,
/// and the host serves again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_provisions_survive_a_database_crash() {
    let cluster = Arc::new(addon_host_tests::postgres::Cluster::start().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let host = spawn(dir.path(), &config(&cluster.fresh_database())).await;
    // While the database is down the host answers 5xx: not acknowledged.
    let traffic = Traffic::start(vec![host.addr.clone()], 8, "crash");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = traffic.acknowledged();
    let restarted = cluster.clone();
    tokio::task::spawn_blocking(move || restarted.crash_and_restart()).await.unwrap().unwrap();
    // Serving again after the database is back, with no restart of the host.
    let back = Instant::now();
    while traffic.acknowledged() <= before + 20 {
        assert!(back.elapsed() < Duration::from_secs(30), "the host never served again after the database came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (acked, refused, broken) = traffic.stop().await;
    // While it was down: 503 storage_error with Retry-After, never another failure, and the
    // host itself kept answering.
    assert_eq!(broken, Vec::new(), "the host answered every request");
    assert!(!refused.is_empty(), "no request was refused while the database was down");
    for (status, retry_after, body) in &refused {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("storage_error"), "{body}");
        assert_eq!(retry_after.as_deref(), Some("5"), "{body}");
    }
    for (slug, body) in &acked {
        let (status, again) = provision(&host.addr, "myaddon", TOKEN, slug).await.unwrap();
        assert_eq!((status, &again), (200, body), "acknowledged provision of {slug} lost in the crash");
    }
}

/// With `sslmode=require` and the database's authority as `ca_file`, every connection of the
/// host is encrypted; a host that does not trust the database's certificate refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reaches_its_database_over_tls_and_checks_its_certificate() {
    let (cluster, ca) = addon_host_tests::postgres::Cluster::start_tls().unwrap();
    let database = cluster.fresh_database();
    let name = database.split('?').next().unwrap().rsplit('/').next().unwrap().to_owned();
    let url = cluster.tls_url(&name);
    let storage = format!("[server.storage]\npostgres = \"{url}\"\nca_file = \"{}\"\n", ca.display());
    let dir = tempfile::tempdir().unwrap();
    let host = spawn(dir.path(), &with_storage(&storage)).await;
    let (status, body) = provision(&host.addr, "myaddon", TOKEN, "tls-app").await.unwrap();
    assert_eq!(status, 201, "{body}");
    let sql = format!(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = '{name}'"
    );
    let counts = cluster.psql("postgres", &sql);
    let (encrypted, all) = counts.split_once('|').unwrap();
    assert!(all.parse::<u32>().unwrap() >= 3, "the pool, the lock session and the listener: {counts}");
    assert_eq!(encrypted, all, "every connection of the host uses TLS: {counts}");

    // Mozilla's roots do not include the test authority: the host says so and stops.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &with_storage(&format!("[server.storage]\npostgres = \"{url}\"\n")));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a host trusting other authorities must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PostgreSQL") && stderr.to_lowercase().contains("certificate"), "{stderr}");
}
