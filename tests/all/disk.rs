//! A full data disk (sled): below the watermark new provisions and uploads are refused while
//! what needs no room goes on; at the wall every answer is 507 with a message a platform's
//! operator can read, the host says on `/livez` that it must restart (sled cannot go on after
//! a failed write), nothing acknowledged is lost, and the restart serves again.
//!
//! The wall is a small tmpfs, which needs root (CI runs as root and sets
//! `ADDON_REQUIRE_TMPFS=1`); elsewhere that test says why it is skipped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;

use crate::process::{credentials_on_bitrise, spawn, try_exchange};
use crate::support::*;

/// What a platform is told while the disk is full.
const FULL: &str = "the host's data disk is full; nothing was changed";

#[tokio::test]
async fn below_the_disk_watermark_new_provisions_are_refused_and_deprovisions_go_on() {
    if addon_host_tests::postgres::selected() {
        return; // The watermark watches the data directory's disk: sled only.
    }
    let host = TestHost::start();
    assert_eq!(host.provision("myaddon", TOKEN, "early", "free").await.status, 201);
    // More room than any disk has: the watermark is crossed from the first sample.
    let host = host.restart_with(|c| c.server.min_free_disk_mib = 1 << 40);

    let refused = host.provision("myaddon", TOKEN, "late", "free").await;
    assert_error(&refused, 507, "disk_full", FULL);
    assert_eq!(refused.json()["message"], FULL, "no path, no engine words: {}", refused.text);
    assert!(host.record("myaddon", "late").is_none(), "a refused provision stores nothing");
    let upload = host.admin(Method::POST, "/admin/addons/myaddon/plugins", b"\0asm".to_vec()).await;
    assert_error(&upload, 507, "disk_full", FULL);

    // What frees space or needs little goes on.
    assert_eq!(host.provision("myaddon", TOKEN, "early", "free").await.status, 200, "a replay");
    assert_eq!(host.change_plan("myaddon", TOKEN, "early", "pro").await.status, 200);
    assert_eq!(host.deprovision("myaddon", TOKEN, "early").await.status, 200);
    assert!(!host.record("myaddon", "early").expect("the record stays").is_active());

    let metrics = host.admin(Method::GET, "/metrics", "").await.text;
    let free = metrics.lines().find(|l| l.starts_with("addon_host_data_disk_free_bytes ")).expect(&metrics);
    assert!(free.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()).is_some_and(|v| v > 0), "{free}");
}

/// A tmpfs of `mib` MiB mounted at `dir`, unmounted when dropped; `None` when this machine
/// cannot mount one (not root).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the disk at `dir` with 1 MiB files until it is full, then give `room` of them back.
fn fill(dir: &std::path::Path, room: usize) -> Vec<std::path::PathBuf> {
    let chunk = vec![7u8; 1 << 20];
    let mut files = Vec::new();
    loop {
        let path = dir.join(format!("filler-{}", files.len()));
        let written = std::fs::write(&path, &chunk);
        files.push(path);
        if written.is_err() {
            break;
        }
    }
    for path in files.drain(files.len().saturating_sub(room + 1)..) {
        std::fs::remove_file(path).unwrap();
    }
    files
}

fn provision_body(app: &str) -> String {
    // A long title, so that each provision takes room.
    format!(r#"{{"app_slug":"{app}","app_title":"{}","api_token":"t","plan":"free"}}"#, "t".repeat(2000))
}

#[tokio::test]
async fn a_full_disk_is_answered_507_loses_nothing_acknowledged_and_the_restart_serves_again() {
    if addon_host_tests::postgres::selected() {
        return; // PostgreSQL's own disk is the database's concern: its failures are 503s.
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_tmpfs) = Tmpfs::mount(&data, 48) else {
        let required = std::env::var("ADDON_REQUIRE_TMPFS").is_ok_and(|v| v == "1");
        assert!(!required, "ADDON_REQUIRE_TMPFS=1 but a tmpfs could not be mounted (not root?)");
        eprintln!("SKIPPED: mounting a tmpfs needs root; set ADDON_REQUIRE_TMPFS=1 where it must run");
        return;
    };
    let config = format!("min_free_disk_mib = 0\n{}", credentials_on_bitrise(TOKEN, "disk-sso"));
    let server = spawn(dir.path(), &config).await;
    let fillers = fill(&data, 3);

    // Eight clients provision distinct apps until each has been refused a few times.
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let refusals: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let clients = (0..8).map(|c| {
        let (addr, acked, refusals) = (server.addr.clone(), acked.clone(), refusals.clone());
        tokio::spawn(async move {
            let (started, mut refused) = (Instant::now(), 0);
            for i in 0.. {
                if refused >= 5 || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let app = format!("app-{c}-{i}");
                let headers = [("authentication", TOKEN), ("content-type", "application/json")];
                let body = provision_body(&app);
                let (status, reply) = try_exchange(&addr, "POST", "/addons/myaddon/provision", &headers, &body)
                    .await
                    .unwrap_or_else(|e| panic!("the host stopped answering: {e}"));
                if status == 201 {
                    acked.lock().unwrap().insert(app, reply);
                } else {
                    refused += 1;
                    refusals.lock().unwrap().push((status, reply));
                }
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client.unwrap();
    }
    let refusals = refusals.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    eprintln!("disk full: {} provisions acknowledged, {} refused", acked.len(), refusals.len());
    assert!(refusals.len() >= 8, "the disk never filled: {} acknowledged", acked.len());
    assert!(!acked.is_empty(), "nothing was acknowledged before the disk filled");
    for (status, reply) in &refusals {
        let body: serde_json::Value = serde_json::from_str(reply).unwrap_or_default();
        assert_eq!(*status, 507, "{reply}");
        assert_eq!(body["error"], "disk_full", "{reply}");
        assert_eq!(body["message"], FULL, "{reply}");
    }
    assert!(server.logged("STORAGE FAILED in", Duration::from_secs(5)).await, "one clear ERROR");
    assert!(server.logged(&data.display().to_string(), Duration::from_secs(1)).await, "naming the data directory");

    // The promise: the host does not go on after a failed write, and says so to its
    // supervisor, even once there is room again.
    for path in fillers {
        std::fs::remove_file(path).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, live) = try_exchange(&server.addr, "GET", "/livez", &[], "").await.unwrap();
    assert_eq!(status, 503, "{live}");
    assert!(live.contains("\"broken\"") && live.contains("data disk is full"), "{live}");
    let headers = [("authentication", TOKEN), ("content-type", "application/json")];
    let body = provision_body("after-room");
    let (status, reply) =
        try_exchange(&server.addr, "POST", "/addons/myaddon/provision", &headers, &body).await.unwrap();
    assert_eq!(status, 507, "answers stay consistent until the restart: {reply}");

    // The supervisor's restart replays the log: every acknowledged provision is there, with
    // its reply, and the host serves again.
    server.stop().await;
    let server = spawn(dir.path(), &config).await;
    let (status, live) = try_exchange(&server.addr, "GET", "/livez", &[], "").await.unwrap();
    assert_eq!(status, 200, "{live}");
    for (app, reply) in &acked {
        let body = provision_body(app);
        let (status, again) =
            try_exchange(&server.addr, "POST", "/addons/myaddon/provision", &headers, &body).await.unwrap();
        assert_eq!((status, &again), (200, reply), "acknowledged provision of {app} after the restart");
    }
    let body = provision_body("after-restart");
    let (status, reply) =
        try_exchange(&server.addr, "POST", "/addons/myaddon/provision", &headers, &body).await.unwrap();
    assert_eq!(status, 201, "{reply}");
    server.stop().await;
}
