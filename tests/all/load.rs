//! Sustained concurrent traffic against the real binary: 64 clients, each on its own apps,
//! across two add-ons (the credentials and quota examples) and both protocols, mixing
//! provision, identical repeat, SSO login, plan change and deprovision for several seconds.
//! The credentials example also serves HTTP: its SSO login answers with the page its handler
//! renders, and its clients call its build API with the token their provision returned.
//!
//! It fails on any unexpected status, on any request that takes longer than Bitrise's 10 s
//! budget, and when `/healthz` takes longer than 1 s at any moment; afterwards every
//! provision that was acknowledged and left in place must replay its exact reply. This is
//! the test that caught the storage deadlock (the host stopped answering everything after a
//! few hundred concurrent commits).
//!
//! `ADDON_SOAK_SECS` runs the same traffic for longer (a soak); the default is 4 seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use addon_host_tests::{AddonToml, addons_toml};
use tokio::sync::Mutex;

use crate::process::{spawn, try_exchange};
use crate::support::{basic, now, sso_token};

const CLIENTS: usize = 64;
const REQUEST_BUDGET: Duration = Duration::from_secs(10);
const HEALTH_BUDGET: Duration = Duration::from_secs(1);

const CRED_TOKEN: &str = "load-token-credentials";
const CRED_SSO: &str = "load-sso-credentials";
const CRED_PASSWORD: &str = "load-xervo-credentials";
const CRED_SALT: &str = "load-salt-credentials";
const QUOTA_TOKEN: &str = "load-token-quota";
const QUOTA_SSO: &str = "load-sso-quota";
const QUOTA_PASSWORD: &str = "load-xervo-quota";
const QUOTA_SALT: &str = "load-salt-quota";

/// The credentials and quota examples, each on both protocols with its own secrets.
fn config() -> String {
    let creds = AddonToml::new("creds", addon_host_tests::PLUGIN_CREDENTIALS)
        .plans(&["free", "pro"])
        .bitrise(CRED_TOKEN, CRED_SSO)
        .xervo(CRED_PASSWORD, CRED_SALT, &["CREDS_HOST_URL", "CREDS_AUTH_SECRET", "CREDS_API_TOKEN"])
        .config("host_url", "https://creds.example.com")
        .build_api();
    let quota = AddonToml::new("quota", addon_host_tests::PLUGIN_QUOTA)
        .plans(&["free", "pro", "enterprise"])
        .bitrise(QUOTA_TOKEN, QUOTA_SSO)
        .xervo(QUOTA_PASSWORD, QUOTA_SALT, &["QUOTA_URL", "QUOTA_QUOTA_MB"])
        .config("bucket_url", "https://quota.example.com/b")
        .config("docs_url", "https://quota.example.com/docs")
        .secret("signing_key", "load-signing-key");
    addons_toml(&[creds, quota])
}

#[derive(Clone, Copy, Debug)]
enum Protocol {
    Bitrise,
    Xervo,
}

/// One client's add-on and protocol, with the credentials it needs.
#[derive(Clone, Copy, Debug)]
struct Role {
    addon: &'static str,
    protocol: Protocol,
    token: &'static str,
    sso: &'static str,
    password: &'static str,
    /// The plan change this add-on is asked for, and the status it must answer: the
    /// credentials example accepts any move; the quota example refuses `enterprise` as
    /// not instant (503), which must commit nothing.
    change_to: &'static str,
    change_status: u16,
}

const ROLES: [Role; 2] = [
    Role {
        addon: "creds",
        protocol: Protocol::Bitrise,
        token: CRED_TOKEN,
        sso: CRED_SSO,
        password: CRED_PASSWORD,
        change_to: "pro",
        change_status: 200,
    },
    Role {
        addon: "quota",
        protocol: Protocol::Bitrise,
        token: QUOTA_TOKEN,
        sso: QUOTA_SSO,
        password: QUOTA_PASSWORD,
        change_to: "enterprise",
        change_status: 503,
    },
];

fn role(client: usize) -> Role {
    let mut role = ROLES[client % 2];
    if (client / 2) % 2 == 1 {
        role.protocol = Protocol::Xervo;
        role.sso = if role.addon == "creds" { CRED_SALT } else { QUOTA_SALT };
    }
    role
}

/// A provision that was acknowledged and left in place: replayed at the end.
struct Kept {
    role: Role,
    body: String,
    reply: String,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failures: Mutex<Vec<String>>,
    kept: Mutex<Vec<Kept>>,
}

struct Http {
    addr: String,
}

impl Http {
    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, String), String> {
        let started = Instant::now();
        match tokio::time::timeout(REQUEST_BUDGET, try_exchange(&self.addr, method, path, headers, body)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(format!("{method} {path}: transport error {e}")),
            Err(_) => Err(format!("{method} {path}: no answer within {:?}", started.elapsed())),
        }
    }
}

fn expect(what: &str, got: (u16, String), status: u16) -> Result<String, String> {
    if got.0 == status { Ok(got.1) } else { Err(format!("{what}: expected {status}, got {} {}", got.0, got.1)) }
}

/// Provision, repeat, log in, then either keep the resource or change its plan and
/// deprovision it.
async fn lifecycle(http: &Http, role: Role, app: &str, keep: bool, tally: &Tally) -> Result<(), String> {
    let plan = if role.addon == "creds" { "free" } else { "pro" };
    let ts = now();
    let (auth, json) = match role.protocol {
        Protocol::Bitrise => (role.token.to_owned(), "application/json"),
        Protocol::Xervo => (basic(role.addon, role.password), "application/json"),
    };
    let base = format!("/addons/{}", role.addon);
    let (provision_path, body, created, auth_header) = match role.protocol {
        Protocol::Bitrise => (
            format!("{base}/provision"),
            format!(r#"{{"app_slug":"{app}","api_token":"tok-{app}","plan":"{plan}"}}"#),
            201,
            "Authentication",
        ),
        Protocol::Xervo => (
            format!("{base}/resources"),
            format!(r#"{{"modulus_id":"{app}","plan":"{plan}","email":"{app}@example.com","options":{{}}}}"#),
            200,
            "Authorization",
        ),
    };
    let headers = [(auth_header, auth.as_str()), ("Content-Type", json)];
    let reply = expect("provision", http.call("POST", &provision_path, &headers, &body).await?, created)?;
    let again = expect("identical repeat", http.call("POST", &provision_path, &headers, &body).await?, 200)?;
    if again != reply {
        return Err(format!("repeat of {app} answered differently:\n{reply}\n{again}"));
    }
    let resource = match role.protocol {
        Protocol::Bitrise => app.to_owned(),
        Protocol::Xervo => serde_json::from_str::<serde_json::Value>(&reply)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("no id in {reply}"))?,
    };
    let token = sso_token(&resource, role.sso, ts);
    match role.protocol {
        Protocol::Bitrise => {
            let form = format!("app_slug={resource}&timestamp={ts}&token={token}");
            let headers = [("Content-Type", "application/x-www-form-urlencoded")];
            let page = expect("SSO login", http.call("POST", &format!("{base}/login"), &headers, &form).await?, 200)?;
            // The app's own dashboard: the plugin's page (its plan) or the host's (the app).
            let own = if role.addon == "creds" {
                page.contains("Credentials for") && page.contains(&format!("id=\"plan\">{plan}<"))
            } else {
                page.contains(&format!("\"{resource}\""))
            };
            if !own {
                return Err(format!("SSO login of {resource}: not its dashboard: {page}"));
            }
        }
        Protocol::Xervo => {
            let sso = format!(r#"{{"id":"{resource}","timestamp":"{ts}","token":"{token}","email":"u@example.com"}}"#);
            let headers = [("Content-Type", "application/json")];
            expect("SSO login", http.call("POST", &format!("{base}/sso/login"), &headers, &sso).await?, 302)?;
        }
    }
    tally.requests.fetch_add(3, Ordering::Relaxed);
    if role.addon == "creds" {
        // The build API, with the token from the provision's reply: it reaches the plugin
        // as this app.
        let vars: serde_json::Value = serde_json::from_str(&reply).map_err(|e| format!("{e}: {reply}"))?;
        let api_token = match role.protocol {
            Protocol::Bitrise => vars["envs"]
                .as_array()
                .and_then(|envs| envs.iter().find(|e| e["key"] == "CREDS_API_TOKEN"))
                .and_then(|e| e["value"].as_str()),
            Protocol::Xervo => vars["config"]["CREDS_API_TOKEN"].as_str(),
        }
        .ok_or_else(|| format!("no CREDS_API_TOKEN in {reply}"))?
        .to_owned();
        let bearer = format!("Bearer {api_token}");
        let got = http.call("GET", &format!("{base}/api/whoami"), &[("Authorization", &bearer)], "").await?;
        let whoami = expect("build API call", got, 200)?;
        if !whoami.contains(&format!("\"resource_id\":\"{resource}\"")) {
            return Err(format!("build API call of {resource} answered for another app: {whoami}"));
        }
        tally.requests.fetch_add(1, Ordering::Relaxed);
    }
    if keep {
        tally.kept.lock().await.push(Kept { role, body, reply });
        return Ok(());
    }
    let item = match role.protocol {
        Protocol::Bitrise => format!("{base}/provision/{resource}"),
        Protocol::Xervo => format!("{base}/resources/{resource}"),
    };
    let change = format!(r#"{{"plan":"{}"}}"#, role.change_to);
    expect("plan change", http.call("PUT", &item, &headers, &change).await?, role.change_status)?;
    let gone = expect("deprovision", http.call("DELETE", &item, &headers, "null").await?, 200)?;
    if !gone.contains("\"deprovisioned\"") {
        return Err(format!("deprovision of {resource}: {gone}"));
    }
    tally.requests.fetch_add(2, Ordering::Relaxed);
    Ok(())
}

async fn client(http: Arc<Http>, id: usize, until: Instant, tally: Arc<Tally>) {
    let role = role(id);
    let mut n = 0;
    while Instant::now() < until {
        if let Err(e) = lifecycle(&http, role, &format!("c{id}-{n}"), n % 2 == 0, &tally).await {
            tally.failures.lock().await.push(format!("client {id} ({} on {:?}): {e}", role.addon, role.protocol));
            return;
        }
        n += 1;
    }
}

/// Polls `/healthz` until `done`; returns the slowest answer and every failure.
async fn watch_health(http: Arc<Http>, done: Arc<AtomicBool>) -> (Duration, Vec<String>) {
    let (mut slowest, mut failures) = (Duration::ZERO, Vec::new());
    while !done.load(Ordering::Relaxed) {
        let started = Instant::now();
        match tokio::time::timeout(HEALTH_BUDGET, try_exchange(&http.addr, "GET", "/healthz", &[], "")).await {
            Ok(Ok((200, _))) => {}
            Ok(Ok((status, body))) => failures.push(format!("/healthz answered {status}: {body}")),
            Ok(Err(e)) => failures.push(format!("/healthz transport error: {e}")),
            Err(_) => failures.push(format!("/healthz gave no answer within {HEALTH_BUDGET:?}")),
        }
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (slowest, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_mixed_traffic_on_distinct_apps() {
    let secs: u64 = std::env::var("ADDON_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn(dir.path(), &config()).await;
    let http = Arc::new(Http { addr: server.addr.clone() });
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn(watch_health(http.clone(), done.clone()));
    let until = Instant::now() + Duration::from_secs(secs);
    let clients: Vec<_> = (0..CLIENTS).map(|id| tokio::spawn(client(http.clone(), id, until, tally.clone()))).collect();
    for c in clients {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let (slowest, health_failures) = health.await.unwrap();
    let failures = tally.failures.lock().await;
    let requests = tally.requests.load(Ordering::Relaxed);
    println!("{CLIENTS} clients, {secs} s: {requests} requests answered, slowest /healthz {slowest:?}");
    assert!(failures.is_empty(), "{} of {CLIENTS} clients failed:\n{}", failures.len(), failures.join("\n"));
    assert!(health_failures.is_empty(), "the host stopped answering /healthz:\n{}", health_failures.join("\n"));
    // A floor that a host serving only a handful of requests per second cannot reach.
    assert!(requests >= 50 * secs, "only {requests} requests in {secs} s");

    // Every acknowledged provision left in place replays exactly what was sent.
    let kept = std::mem::take(&mut *tally.kept.lock().await);
    assert!(!kept.is_empty());
    let kept = Arc::new(kept);
    let next = Arc::new(AtomicU64::new(0));
    let replays: Vec<_> = (0..16)
        .map(|_| {
            let (http, kept, next) = (http.clone(), kept.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(k) = kept.get(i) else { return Ok(()) };
                    let (path, auth, header) = match k.role.protocol {
                        Protocol::Bitrise => {
                            (format!("/addons/{}/provision", k.role.addon), k.role.token.to_owned(), "Authentication")
                        }
                        Protocol::Xervo => (
                            format!("/addons/{}/resources", k.role.addon),
                            basic(k.role.addon, k.role.password),
                            "Authorization",
                        ),
                    };
                    let headers = [(header, auth.as_str()), ("Content-Type", "application/json")];
                    let again = http.call("POST", &path, &headers, &k.body).await?;
                    if again != (200, k.reply.clone()) {
                        return Err(format!("acknowledged provision {} changed: {:?} vs {}", k.body, again, k.reply));
                    }
                }
            })
        })
        .collect();
    for r in replays {
        r.await.unwrap().unwrap();
    }
    println!("{} kept provisions replayed exactly", kept.len());
    server.child.kill().await.unwrap();
}
