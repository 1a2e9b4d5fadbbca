//! Crash durability: the real binary is killed with SIGKILL at random moments while 16
//! clients provision, repeat, change plans, log in by SSO and deprovision distinct apps, and
//! it is restarted on the same data folder, several times. Each cycle must acknowledge a
//! minimum of operations (a server that hangs fails here, and a request left unanswered for
//! 10 s while the server is up fails as a hang, not as a kill). Afterwards every acknowledged
//! operation must have survived: provisions replay their exact reply, plan changes and
//! deprovisions hold, used SSO tokens stay used, and records and the plugin's KV agree.
//!
//! `ADDON_CRASH_CYCLES` (default 4) runs a longer soak.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_host::service::{Record, Status};

use crate::process::{credentials_on_bitrise, spawn, try_exchange};
use crate::support::{now, sso_token};

const TOKEN: &str = "crash-shared-token";
const SSO: &str = "crash-sso";
const CLIENTS: usize = 16;
/// Operations each cycle must acknowledge before its kill.
const MIN_ACKS_PER_CYCLE: usize = 16;
/// Longer than any answer takes while the server is up.
const HANG: Duration = Duration::from_secs(10);

fn config() -> String {
    credentials_on_bitrise(TOKEN, SSO)
}

/// The last acknowledged state of one app. Each client drives its apps through provision,
/// (plan change), (SSO login), (deprovision), so a later state may exist unacknowledged.
#[derive(Debug, Clone)]
enum Acked {
    Provisioned { body: String, reply: String },
    Changed,
    Gone,
}

#[derive(Default)]
struct Ledger {
    apps: BTreeMap<String, Acked>,
    /// (app, timestamp, token) of every login answered 200.
    logins: Vec<(String, i64, String)>,
}

/// Which later operations app number `i` goes through.
fn changes(i: usize) -> bool {
    i.is_multiple_of(2)
}
fn logs_in(i: usize) -> bool {
    i.is_multiple_of(3)
}
fn deprovisions(i: usize) -> bool {
    i.is_multiple_of(4)
}

/// One exchange; `None` when the server is gone (`killed` was set before the kill). No answer
/// within [`HANG`] while the connection stays open is a hang, and a failed connection while
/// the server is up is a failure of the server: both fail the test.
async fn send(
    killed: &AtomicBool,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    match tokio::time::timeout(HANG, try_exchange(addr, method, path, headers, body)).await {
        Err(_) => panic!("{method} {path}: no answer within {HANG:?}: the server hung"),
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(_)) if killed.load(Ordering::SeqCst) => None,
        Ok(Err(e)) => panic!("{method} {path}: the connection failed while the server was up: {e}"),
    }
}

async fn client(
    addr: String,
    prefix: String,
    ledger: Arc<Mutex<Ledger>>,
    acks: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
) {
    let send = async |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        send(&killed, &addr, method, path, headers, body).await
    };
    let json = [("Authentication", TOKEN), ("Content-Type", "application/json")];
    let ack = |app: &str, state: Acked| {
        ledger.lock().unwrap().apps.insert(app.to_owned(), state);
        acks.fetch_add(1, Ordering::Relaxed);
    };
    for i in 0.. {
        let app = format!("{prefix}-{i}");
        let body = format!(r#"{{"app_slug":"{app}","api_token":"t{i}","plan":"free"}}"#);
        let Some((status, reply)) = send("POST", "/addons/myaddon/provision", &json, &body).await else {
            return;
        };
        assert_eq!(status, 201, "provision {app} refused while healthy: {reply}");
        ack(&app, Acked::Provisioned { body: body.clone(), reply: reply.clone() });
        let Some(again) = send("POST", "/addons/myaddon/provision", &json, &body).await else { return };
        assert_eq!(again, (200, reply), "repeat of {app}");
        let path = format!("/addons/myaddon/provision/{app}");
        if changes(i) {
            let Some((status, text)) = send("PUT", &path, &json, r#"{"plan":"pro"}"#).await else { return };
            assert_eq!(status, 200, "plan change of {app}: {text}");
            ack(&app, Acked::Changed);
        }
        if logs_in(i) {
            let ts = now();
            let token = sso_token(&app, SSO, ts);
            let form = format!("app_slug={app}&timestamp={ts}&token={token}");
            let headers = [("Content-Type", "application/x-www-form-urlencoded")];
            let Some((status, text)) = send("POST", "/addons/myaddon/login", &headers, &form).await else {
                return;
            };
            assert_eq!(status, 200, "login to {app}: {text}");
            ledger.lock().unwrap().logins.push((app.clone(), ts, token));
            acks.fetch_add(1, Ordering::Relaxed);
        }
        if deprovisions(i) {
            let Some((status, text)) = send("DELETE", &path, &json, "").await else { return };
            assert_eq!(status, 200, "deprovision of {app}: {text}");
            ack(&app, Acked::Gone);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_operations_survive_repeated_sigkill() {
    let cycles: usize = std::env::var("ADDON_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    println!("crash test seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let mut replays = 0;
    for cycle in 0..cycles {
        let mut server = spawn(dir.path(), &config()).await;
        let acks = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let prefix = format!("c{cycle}x{c}");
                tokio::spawn(client(server.addr.clone(), prefix, ledger.clone(), acks.clone(), killed.clone()))
            })
            .collect();
        // A live server acknowledges operations: wait for the first few (a server that hangs
        // fails here), then kill at a random moment 0–600 ms later.
        let started = std::time::Instant::now();
        while acks.load(Ordering::Relaxed) < MIN_ACKS_PER_CYCLE {
            let waited = started.elapsed();
            assert!(
                waited < HANG,
                "cycle {cycle}: only {} operations acknowledged in {waited:?}",
                acks.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delay = seed.wrapping_mul(2654435761).wrapping_add(cycle as u64 * 7919) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        replays += server.log.lock().unwrap().iter().filter(|l| l.contains("from the write-ahead log")).count();
        killed.store(true, Ordering::SeqCst);
        server.child.kill().await.unwrap();
        for c in clients {
            c.await.unwrap();
        }
    }
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    // On sled, which is flushed only at checkpoints, a killed host's last commits are in its
    // write-ahead log alone, and the restarts had to replay them. (PostgreSQL has its own.)
    let on_sled = !addon_host_tests::postgres::selected();
    assert!(cycles < 2 || !on_sled || replays > 0, "no restart replayed the write-ahead log");

    // Every acknowledged provision whose resource was not changed since replays its exact
    // reply; every used SSO token stays used.
    let mut server = spawn(dir.path(), &config()).await;
    let json = [("Authentication", TOKEN), ("Content-Type", "application/json")];
    let mut replayed = 0;
    for (app, state) in &ledger.apps {
        if let Acked::Provisioned { body, reply } = state {
            let i: usize = app.rsplit('-').next().unwrap().parse().unwrap();
            let (status, again) =
                try_exchange(&server.addr, "POST", "/addons/myaddon/provision", &json, body).await.unwrap();
            // A later operation may have been applied without being acknowledged: a plan
            // change (the repeat then answers the changed record: the same variables, so the
            // same reply) or a deprovision (the repeat provisions again, 201). Otherwise the
            // reply is exactly the one acknowledged.
            let later = deprovisions(i);
            assert!(
                status == 200 || status == 201 && deprovisions(i),
                "acknowledged provision lost: {body} -> {status} {again}"
            );
            assert!(later || (status, &again) == (200, reply), "acknowledged provision changed: {body} -> {again}");
            replayed += usize::from(&again == reply);
        }
    }
    for (app, ts, token) in &ledger.logins {
        let form = format!("app_slug={app}&timestamp={ts}&token={token}");
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let (status, text) =
            try_exchange(&server.addr, "POST", "/addons/myaddon/login", &headers, &form).await.unwrap();
        assert_eq!(status, 403, "a used SSO token of {app} was accepted again after a crash: {text}");
        // Refused as used, not as stale (a long soak outlives the five-minute window).
        let used = text.contains("already used") || now() - ts > 4 * 60;
        assert!(used, "the token of {app} was refused, but not as used: {text}");
    }
    server.child.kill().await.unwrap();
    drop(server);

    // The stored state is at least what was acknowledged, and nothing is half-written.
    let storage = crate::support::storage_of(dir.path());
    let store = storage.addon("myaddon").unwrap();
    let kv = store.kv_dump().unwrap();
    let records: BTreeMap<String, Record> = store
        .records()
        .unwrap()
        .into_iter()
        .map(|(id, b)| (id, Record::from_bytes(&b).expect("a complete record")))
        .collect();
    for (app, state) in &ledger.apps {
        let i: usize = app.rsplit('-').next().unwrap().parse().unwrap();
        let record = records.get(app).unwrap_or_else(|| panic!("acknowledged app {app} has no record"));
        let gone = record.status == Status::Deprovisioned;
        match state {
            Acked::Provisioned { .. } => {
                assert!(!gone || deprovisions(i), "{app} was deprovisioned though it never was asked to be");
                assert!(record.plan == "free" || changes(i), "{app} is on {} without a plan change", record.plan);
            }
            Acked::Changed => {
                assert!(gone && deprovisions(i) || record.plan == "pro", "acknowledged plan change of {app} lost")
            }
            Acked::Gone => assert!(gone, "acknowledged deprovision of {app} lost"),
        }
    }
    for (id, record) in &records {
        let secret = kv.get(&format!("secret/{id}"));
        if record.status == Status::Active {
            let var = &record.config.iter().find(|(k, _)| k == "MYADDON_AUTH_SECRET").expect("secret var").1;
            assert_eq!(secret.map(|v| v.as_slice()), Some(var.as_bytes()), "record {id} and its secret disagree");
        } else {
            assert!(secret.is_none(), "deprovisioned {id} kept its secret");
        }
    }
    let secrets = kv.keys().filter(|k| k.starts_with("secret/")).count();
    let active = records.values().filter(|r| r.status == Status::Active).count();
    assert_eq!(secrets, active, "a secret without an active record, or the reverse");
    println!(
        "{} apps acknowledged ({replayed} replayed exactly), {} logins, {} records after {cycles} kills",
        ledger.apps.len(),
        ledger.logins.len(),
        records.len()
    );
}

/// A login answered 200 has marked its token used durably: killed right after the answer
/// (before any other write or sled's own periodic flush could carry the mark to disk), the
/// restarted host still refuses the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_sso_token_stays_used_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let json = [("Authentication", TOKEN), ("Content-Type", "application/json")];
    let form_headers = [("Content-Type", "application/x-www-form-urlencoded")];
    let mut server = spawn(dir.path(), &config()).await;
    let body = r#"{"app_slug":"sso-app","api_token":"t","plan":"free"}"#;
    let (status, _) = try_exchange(&server.addr, "POST", "/addons/myaddon/provision", &json, body).await.unwrap();
    assert_eq!(status, 201);
    let start = now();
    for round in 0..5 {
        // A distinct timestamp per round: each login has its own token.
        let ts = start - round;
        let form = format!("app_slug=sso-app&timestamp={ts}&token={}", sso_token("sso-app", SSO, ts));
        let (status, text) =
            try_exchange(&server.addr, "POST", "/addons/myaddon/login", &form_headers, &form).await.unwrap();
        assert_eq!(status, 200, "{text}");
        server.child.kill().await.unwrap();
        server = spawn(dir.path(), &config()).await;
        let (status, text) =
            try_exchange(&server.addr, "POST", "/addons/myaddon/login", &form_headers, &form).await.unwrap();
        assert_eq!(status, 403, "round {round}: a used token was accepted after a crash: {text}");
        assert!(text.contains("already used"), "round {round}: refused, but not as used: {text}");
    }
}
