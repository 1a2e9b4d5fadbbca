//! Durable jobs (`tests/guests/jobs`): a provision answers before its job runs, and the job
//! then runs with the call's resource; a job asking to be retried backs off and succeeds; a
//! job that fails for good lands on the dead-letter list, where operators retry or drop it
//! through the admin API; a deprovision cancels the resource's pending jobs but runs the
//! cleanup it enqueues itself; a refused call leaves no job; a job enqueued by a job runs;
//! jobs survive a SIGKILL between the acknowledgement and their run; and a plugin built
//! against the first version of the contract (0.1.0, no jobs) still loads and serves.

use std::time::{Duration, Instant};

use addon_host::config::AddonConfig;
use addon_host_tests::AddonToml;
use axum::http::Method;

use crate::process::{exchange, spawn};
use crate::support::*;

const JOBS_TOKEN: &str = "jobs-shared-token-0123";

fn jobs_addon() -> AddonConfig {
    let mut addon = AddonConfig::on_bitrise("jobs", addon_host_tests::PLUGIN_JOBS, JOBS_TOKEN, "jobs-sso-secret-0123");
    addon.jobs.backoff_ms = 50;
    addon.jobs.max_backoff_ms = 200;
    addon.jobs.max_attempts = 4;
    addon
}

fn host() -> TestHost {
    TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| cfg.addons.push(jobs_addon()))
}

async fn jobs(host: &TestHost, query: &str) -> Vec<serde_json::Value> {
    jobs_of(host, "jobs", query).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provision_answers_before_its_job_and_the_job_runs_after() {
    let host = host();
    let reply = host.provision("jobs", JOBS_TOKEN, "slow-app", "slow").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    // The job busy-waits 1.5 s before it records its run: the reply did not wait for it.
    assert_eq!(host.kv("jobs").get("ran/slow-app"), None, "the reply waited for the job");
    assert!(!reply.env("JOBS_ENQUEUED").is_empty(), "enqueue returned the job's id");
    eventually("the slow job ran", async || host.kv("jobs").contains_key("ran/slow-app")).await;
    assert_eq!(host.kv("jobs")["ran/slow-app"], "1", "one attempt");
    assert_eq!(host.kv("jobs")["runs/slow-app"], "1", "run once");

    // A job a job enqueues runs too, with the same resource.
    let chained = host.provision("jobs", JOBS_TOKEN, "chain-app", "chain").await;
    assert_eq!(chained.status, 201, "{}", chained.text);
    eventually("the chained job ran", async || host.kv("jobs").contains_key("ran/chain-app")).await;
    eventually("no job left", async || jobs(&host, "").await.is_empty()).await;
    let lines = host.admin(Method::GET, "/admin/addons/jobs/logs", "").await.json();
    assert!(lines.to_string().contains("ran for slow-app, attempt 1"), "the job's own log line: {lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_asking_to_be_retried_backs_off_then_succeeds() {
    let host = host();
    let reply = host.provision("jobs", JOBS_TOKEN, "flaky-app", "flaky").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    eventually("the flaky job succeeded", async || host.kv("jobs").contains_key("ran/flaky-app")).await;
    assert_eq!(host.kv("jobs")["ran/flaky-app"], "3", "it succeeded on its third attempt");
    assert!(jobs(&host, "").await.is_empty(), "a job that succeeded is gone");
    // Counted once the run is committed (a moment after its writes are visible).
    let lines = [
        r#"addon_job_runs_total{addon="jobs",outcome="retry"} 2"#,
        r#"addon_job_runs_total{addon="jobs",outcome="done"} 1"#,
    ];
    eventually("/metrics counts the runs", async || {
        let metrics = host.admin(Method::GET, "/metrics", "").await.text;
        lines.iter().all(|line| metrics.contains(line))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_goes_to_the_dead_letter_list_where_operators_retry_or_drop_it() {
    let host = host();
    let reply = host.provision("jobs", JOBS_TOKEN, "doomed-app", "doomed").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    eventually("the job is dead", async || jobs(&host, "?state=dead").await.len() == 1).await;
    let dead = &jobs(&host, "?state=dead").await[0];
    assert_eq!((dead["kind"].as_str(), dead["attempts"].as_u64()), (Some("doomed"), Some(1)), "{dead}");
    assert_eq!(dead["resource_id"], "doomed-app");
    assert_eq!(dead["enqueued_by"], "provision");
    assert!(dead["last_error"].as_str().unwrap().contains("can never succeed"), "{dead}");
    let id = dead["id"].as_str().unwrap().to_owned();
    assert!(jobs(&host, "?state=pending").await.is_empty());
    let status = host.admin(Method::GET, "/admin/status", "").await.json();
    let counts = &status["addons"].as_array().unwrap().iter().find(|a| a["id"] == "jobs").unwrap()["jobs"];
    assert_eq!(counts, &serde_json::json!({"dead": 1, "pending": 0, "retrying": 0, "running": 0}));

    // Retried: it runs again (and fails again, for good).
    let retried = host.admin(Method::POST, &format!("/admin/addons/jobs/jobs/{id}/retry"), "").await;
    assert_eq!(retried.status, 200, "{}", retried.text);
    eventually("the retried job ran and died again", async || {
        jobs(&host, "?state=dead").await.first().is_some_and(|j| j["due_ms"] != dead["due_ms"])
    })
    .await;

    // Dropped: gone for good; a second drop finds nothing.
    let dropped = host.admin(Method::DELETE, &format!("/admin/addons/jobs/jobs/{id}"), "").await;
    assert_eq!(dropped.status, 200, "{}", dropped.text);
    assert!(jobs(&host, "").await.is_empty());
    let again = host.admin(Method::DELETE, &format!("/admin/addons/jobs/jobs/{id}"), "").await;
    assert_error(&again, 404, "not_found", "no job");
    let unknown = host.admin(Method::GET, "/admin/addons/jobs/jobs?state=stuck", "").await;
    assert_error(&unknown, 400, "bad_request", "pending, running, retrying, dead");
    let anonymous = host.send(Method::GET, "/admin/addons/jobs/jobs", &[], axum::body::Body::empty()).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprovision_cancels_pending_jobs_but_runs_its_own_cleanup() {
    let host = host();
    let reply = host.provision("jobs", JOBS_TOKEN, "gone-app", "later").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(jobs(&host, "?state=pending").await.len(), 1, "the delayed job waits");
    let gone = host.deprovision("jobs", JOBS_TOKEN, "gone-app").await;
    assert_eq!(gone.status, 200, "{}", gone.text);
    eventually("the cleanup ran", async || host.kv("jobs").contains_key("cleaned/gone-app")).await;
    // Past the cancelled job's due time, it has not run.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(host.kv("jobs").get("ran/gone-app"), None, "a cancelled job ran");
    assert!(jobs(&host, "").await.is_empty());
}

/// One add-on's backlog of 40 one-second jobs (two at a time: 20 s of work) does not hold
/// back another add-on's job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_add_ons_backlog_does_not_hold_back_anothers_jobs() {
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.addons.push(jobs_addon());
        let mut other = jobs_addon();
        other.id = "jobs-b".into();
        other.bitrise.as_mut().unwrap().shared_token = format!("b-{JOBS_TOKEN}").into();
        cfg.addons.push(other);
    });
    for i in 0..40 {
        let reply = host.provision("jobs", JOBS_TOKEN, &format!("nap-{i}"), "nap").await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let reply = host.provision("jobs-b", &format!("b-{JOBS_TOKEN}"), "b-app", "once").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    eventually("the other add-on's job ran", async || host.kv("jobs-b").contains_key("ran/b-app")).await;
    let backlog = jobs(&host, "").await.len();
    assert!(backlog >= 20, "the other add-on's job waited for most of the backlog ({backlog} jobs left)");
    assert!(jobs(&host, "?state=running").await.len() <= 2, "more than max_concurrent ran at once");
}

/// A job that enqueues sixteen of itself: the add-on's stored jobs stay within
/// `limits.max_stored_jobs`, a call that would pass it fails, and other add-ons are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_enqueue_jobs_cannot_pass_the_stored_jobs_limit() {
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        let mut bomb = jobs_addon();
        bomb.limits.max_stored_jobs = 40;
        bomb.jobs.max_starts_per_second = 100;
        bomb.jobs.max_concurrent = 4;
        cfg.addons.push(bomb);
    });
    let reply = host.provision("jobs", JOBS_TOKEN, "bomb-app", "bomb").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let store = host.service.addon("jobs").unwrap().store().clone();
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(3) {
        // As often as the runtime lets it: the limit is checked in each commit, not sampled.
        peak = peak.max(store.job_count().unwrap());
        assert!(peak <= 40, "{peak} jobs stored, over the limit of 40");
        tokio::task::yield_now().await;
    }
    // Each bomb run adds fifteen; once fifteen more no longer fit (26 or more stored), every
    // run is refused by the limit, and says so.
    assert!(peak >= 26, "the bomb went off ({peak} jobs at most)");
    let refused =
        jobs(&host, "").await.iter().any(|j| j["last_error"].as_str().is_some_and(|e| e.contains("max_stored_jobs")));
    assert!(refused, "no bomb run was refused by the limit: {:?}", jobs(&host, "").await);
    assert_eq!(store.job_count().unwrap() as usize, jobs(&host, "").await.len(), "the count matches the jobs");
    // Sixteen more never fit now: the provision fails, names the limit, and stores nothing.
    let full = host.provision("jobs", JOBS_TOKEN, "late-app", "burst").await;
    assert_eq!(full.status, 507, "{}", full.text);
    assert!(full.text.contains("max_stored_jobs"), "{}", full.text);
    assert!(host.record("jobs", "late-app").is_none());
    let other = host.provision("myaddon", TOKEN, "unaffected", "free").await;
    assert_eq!(other.status, 201, "{}", other.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_leaves_no_job() {
    let host = host();
    let reply = host.provision("jobs", JOBS_TOKEN, "refused-app", "refuse").await;
    assert_error(&reply, 422, "refused", "refused after enqueueing");
    assert!(jobs(&host, "").await.is_empty(), "the refused call's job was stored");
    assert!(host.service.jobs().queued() == 0, "the refused call's job was queued");
}

/// SIGKILL right after the provision's 201: its job, due 2 s later, runs after the restart.
/// Then `addon-host jobs` lists a dead job and drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_a_sigkill_between_the_reply_and_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "[[server.admins]]\nname = \"ops\"\ntoken = \"jobs-admin-token-0123456789\"\n";
    let addon = AddonToml::new("jobs", addon_host_tests::PLUGIN_JOBS).bitrise(JOBS_TOKEN, "jobs-sso-secret-0123");
    let config = format!("{admin}{}[addon.jobs]\nbackoff_ms = 50\n", addon.to_toml());
    let mut server = spawn(dir.path(), &config).await;
    let json = [("Authentication", JOBS_TOKEN), ("Content-Type", "application/json")];
    let body = r#"{"app_slug":"killed-app","api_token":"t","plan":"later"}"#;
    let (status, reply) = exchange(&server.addr, "POST", "/addons/jobs/provision", &json, body).await;
    assert_eq!(status, 201, "{reply}");
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();

    let mut server = spawn(dir.path(), &config).await;
    let bearer = [("Authorization", "Bearer jobs-admin-token-0123456789")];
    let (status, listed) = exchange(&server.addr, "GET", "/admin/addons/jobs/jobs", &bearer, "").await;
    assert_eq!(status, 200, "{listed}");
    assert!(listed.contains("killed-app"), "the job survived the kill: {listed}");
    let started = Instant::now();
    loop {
        let (_, listed) = exchange(&server.addr, "GET", "/admin/addons/jobs/jobs", &bearer, "").await;
        if !listed.contains("killed-app") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the job never ran after the restart: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Operators see and drop jobs with the CLI: a doomed job lands on the dead-letter list.
    let doomed = r#"{"app_slug":"doomed-app","api_token":"t","plan":"doomed"}"#;
    let (status, reply) = exchange(&server.addr, "POST", "/addons/jobs/provision", &json, doomed).await;
    assert_eq!(status, 201, "{reply}");
    let cli = |args: &[&str]| {
        let url = format!("http://{}", server.addr);
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"));
        command.args(["jobs"]).args(args).args(["--url", &url, "--token", "jobs-admin-token-0123456789"]);
        let out = command.output().unwrap();
        assert!(out.status.success(), "jobs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let started = Instant::now();
    let dead = loop {
        let listed = cli(&["list", "jobs", "--state", "dead"]);
        if let Some(job) = listed["jobs"].as_array().unwrap().first() {
            break job.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the doomed job never died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead["resource_id"], "doomed-app");
    cli(&["drop", "jobs", dead["id"].as_str().unwrap()]);
    assert_eq!(cli(&["list", "jobs"])["jobs"], serde_json::json!([]));

    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();
    let storage = crate::support::storage_of(dir.path());
    let ran = storage.addon("jobs").unwrap().kv_get("ran/killed-app").unwrap();
    assert_eq!(ran.as_deref(), Some(&b"1"[..]), "the job ran once, after the restart");
    let runs = storage.addon("jobs").unwrap().kv_get("runs/killed-app").unwrap();
    assert_eq!(runs.as_deref(), Some(&b"1"[..]), "one run in all");
}

/// A plugin built against `addon:provider@0.1.0` loads on a host of 0.1.1 and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_the_first_contract_still_serves() {
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.addons[0].plugin = addon_host_tests::PLUGIN_LEGACY_WIT.into();
    });
    let reply = host.provision("myaddon", TOKEN, "old-app", "free").await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.env("LEGACY_URL"), "https://legacy.example.com/old-app");
    assert_eq!(host.kv("myaddon")["seen/old-app"], "1");
}
