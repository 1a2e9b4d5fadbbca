//! A test host: a config with the example add-ons and the misbehaving test plugin, a fresh
//! data folder, and helpers to send requests through the router.

use std::sync::Arc;

use addon_host::config::{AddonConfig, AdminConfig, HostConfig, ServerConfig, StorageConfig, XervoConfig};
use addon_host::service::Service;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub(crate) const TOKEN: &str = "test-shared-token-myaddon";
pub(crate) const SSO: &str = "test-sso-secret-myaddon";
pub(crate) const STORAGE_TOKEN: &str = "test-shared-token-storage";
pub(crate) const MISBEHAVE_TOKEN: &str = "test-shared-token-misbehave";
pub(crate) const METERED_TOKEN: &str = "test-shared-token-metered";
pub(crate) const VERSIONED_TOKEN: &str = "test-shared-token-versioned";
/// The `versioned` add-on's deploy token (`[[addon.deployers]]`, name `ci`).
pub(crate) const DEPLOY_TOKEN: &str = "test-deploy-token-versioned";
pub(crate) const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub(crate) const XERVO_PASSWORD: &str = "xervo-password-myaddon";
pub(crate) const XERVO_SALT: &str = "xervo-salt-myaddon";

pub(crate) struct TestHost {
    pub dir: tempfile::TempDir,
    pub service: Arc<Service>,
    pub router: Router,
    /// Fails the run, naming the test, if the test that started this host hangs.
    pub _watchdog: crate::watchdog::Watchdog,
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The Bitrise envs of a provision reply as (key, value) pairs.
    pub(crate) fn envs(&self) -> Vec<(String, String)> {
        self.json()["envs"]
            .as_array()
            .expect("envs array")
            .iter()
            .map(|e| (e["key"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap().to_owned()))
            .collect()
    }

    pub(crate) fn env(&self, key: &str) -> String {
        self.envs().into_iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key} in {}", self.text)).1
    }
}

fn addon(id: &str, plugin: &str, token: &str, plans: &[&str]) -> AddonConfig {
    let mut addon = AddonConfig::on_bitrise(id, plugin, token, &format!("sso-of-{id}"));
    addon.plans = plans.iter().map(|p| p.to_string()).collect();
    addon
}

pub(crate) fn xervo(password: &str, salt: &str, vars: &[&str]) -> XervoConfig {
    XervoConfig {
        password: Some(password.into()),
        sso_salt: Some(salt.into()),
        config_vars: vars.iter().map(|v| v.to_string()).collect(),
        ..XervoConfig::default()
    }
}

/// The add-ons every test host serves.
pub(crate) fn config(data_dir: &std::path::Path) -> HostConfig {
    let mut myaddon = addon("myaddon", addon_host_tests::PLUGIN_CREDENTIALS, TOKEN, &["free", "pro", "test"]);
    myaddon.xervo = Some(xervo(XERVO_PASSWORD, XERVO_SALT, &["MYADDON_HOST_URL", "MYADDON_AUTH_SECRET"]));
    myaddon.bitrise.as_mut().unwrap().sso_secret = SSO.into();
    myaddon.config.insert("host_url".into(), "https://myaddon.example.com".into());

    let mut storage = addon("storage", addon_host_tests::PLUGIN_QUOTA, STORAGE_TOKEN, &["free", "pro", "enterprise"]);
    storage.config.insert("bucket_url".into(), "https://storage.example.com/b".into());
    storage.config.insert("free_capacity".into(), "2".into());
    storage.config.insert("docs_url".into(), "https://storage.example.com/docs".into());
    storage.secrets.insert("signing_key".into(), "k3y".into());
    storage.xervo = Some(xervo("xervo-password-storage", "xervo-salt-storage", &["STORAGE_URL"]));

    let mut misbehave = addon("misbehave", addon_host_tests::PLUGIN_MISBEHAVE, MISBEHAVE_TOKEN, &[]);
    misbehave.limits.deadline_ms = 500;
    misbehave.limits.memory_mib = 32;
    misbehave.xervo = Some(xervo("xervo-password-misbehave", "xervo-salt-misbehave", &["MISBEHAVE_URL"]));

    // Two versions of this plugin exist (versioned-a / versioned-b) for hot-swap tests.
    let mut versioned = addon("versioned", addon_host_tests::PLUGIN_VERSIONED_A, VERSIONED_TOKEN, &[]);
    versioned.deployers = vec![AdminConfig { name: "ci".into(), token: DEPLOY_TOKEN.into() }];

    HostConfig {
        server: ServerConfig {
            data_dir: data_dir.to_path_buf(),
            // On PostgreSQL (ADDON_TEST_STORAGE=postgres) each test host has its own database.
            storage: StorageConfig {
                postgres: addon_host_tests::postgres::url_for(data_dir).map(Into::into),
                ..Default::default()
            },
            // Shared by every test host: each plugin is compiled once per test run.
            compile_cache: Some(std::env::temp_dir().join("addon-host-tests-compiled")),
            admins: vec![AdminConfig { name: "ops".into(), token: ADMIN_TOKEN.into() }],
            ..ServerConfig::default()
        },
        addons: vec![myaddon, storage, misbehave, versioned],
    }
}

/// The storage of a stopped host whose files were in `dir` (a spawned host's config dir):
/// its database when the suite runs on PostgreSQL, else sled in `dir/data`.
pub(crate) fn storage_of(dir: &std::path::Path) -> addon_host::storage::Storage {
    let server = ServerConfig {
        data_dir: dir.join("data"),
        storage: StorageConfig {
            postgres: addon_host_tests::postgres::url_for(dir).map(Into::into),
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    addon_host::storage::Storage::open_config(&server).expect("the stopped host's storage opens")
}

/// The misbehaving test plugin with an instruction budget and a small key-value quota. Only
/// hosts that need it add it ([`TestHost::start_metered`]): it turns on fuel metering for the
/// whole engine, which is not the default set-up the rest of the suite should run on.
pub(crate) fn metered() -> AddonConfig {
    let mut metered = addon("metered", addon_host_tests::PLUGIN_MISBEHAVE, METERED_TOKEN, &[]);
    metered.limits.deadline_ms = 5_000;
    metered.limits.fuel = Some(20_000_000);
    metered.limits.max_kv_keys = 10;
    metered.limits.max_kv_bytes = 4096;
    metered
}

impl TestHost {
    pub(crate) fn start() -> TestHost {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir)
    }

    /// A host that also serves the fuel-metered add-on `metered` (a metering engine).
    pub(crate) fn start_metered() -> TestHost {
        Self::start_with(tempfile::tempdir().expect("tempdir"), |cfg| cfg.addons.push(metered()))
    }

    pub(crate) fn start_in(dir: tempfile::TempDir) -> TestHost {
        Self::start_with(dir, |_| {})
    }

    /// Start with a changed test config.
    pub(crate) fn start_with(dir: tempfile::TempDir, change: impl FnOnce(&mut HostConfig)) -> TestHost {
        let mut cfg = config(dir.path());
        change(&mut cfg);
        cfg.validate().expect("valid test config");
        let service = Arc::new(Service::start(&cfg).expect("service starts"));
        let backend = if addon_host_tests::postgres::selected() { "postgres" } else { "sled" };
        assert_eq!(service.storage().kind(), backend, "the suite runs on the selected storage");
        let router = addon_host::app(service.clone());
        TestHost { dir, service, router, _watchdog: crate::watchdog::start() }
    }

    /// Stop and start again on the same data folder.
    pub(crate) fn restart(self) -> TestHost {
        self.restart_with(|_| {})
    }

    /// Stop and start again on the same data folder, with a changed test config.
    pub(crate) fn restart_with(self, change: impl FnOnce(&mut HostConfig)) -> TestHost {
        let TestHost { dir, service, router, _watchdog } = self;
        drop(router);
        drop(service);
        Self::start_with(dir, change)
    }

    /// A call to the admin API with the test admin token.
    pub(crate) async fn admin(&self, method: Method, path: &str, body: impl Into<Body>) -> Reply {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        self.send(method, path, &[("authorization", auth.as_str()), ("content-type", "application/wasm")], body).await
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = self.router.clone().oneshot(req.body(body.into()).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// Bitrise provision as the kit sends it.
    pub(crate) async fn provision(&self, addon: &str, token: &str, slug: &str, plan: &str) -> Reply {
        self.provision_titled(addon, token, slug, plan, &format!("Title of app #{slug}")).await
    }

    /// Bitrise provision with a chosen app title (the misbehaving plugin reads parameters there).
    pub(crate) async fn provision_titled(
        &self,
        addon: &str,
        token: &str,
        slug: &str,
        plan: &str,
        title: &str,
    ) -> Reply {
        let body =
            serde_json::json!({ "app_slug": slug, "app_title": title, "api_token": "43ebf21edc9e4525", "plan": plan });
        self.send(
            Method::POST,
            &format!("/addons/{addon}/provision"),
            &[("authentication", token), ("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }

    pub(crate) async fn change_plan(&self, addon: &str, token: &str, slug: &str, plan: &str) -> Reply {
        self.send(
            Method::PUT,
            &format!("/addons/{addon}/provision/{slug}"),
            &[("authentication", token), ("content-type", "application/json")],
            serde_json::json!({ "plan": plan }).to_string(),
        )
        .await
    }

    pub(crate) async fn deprovision(&self, addon: &str, token: &str, slug: &str) -> Reply {
        self.send(
            Method::DELETE,
            &format!("/addons/{addon}/provision/{slug}"),
            &[("authentication", token), ("content-type", "application/json")],
            "null",
        )
        .await
    }

    /// The add-on's key-value data as text.
    pub(crate) fn kv(&self, addon: &str) -> std::collections::BTreeMap<String, String> {
        let addon = self.service.addon(addon).unwrap();
        addon
            .store()
            .kv_dump()
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect()
    }

    pub(crate) fn record(&self, addon: &str, id: &str) -> Option<addon_host::service::Record> {
        self.service.addon(addon).unwrap().record(id).unwrap()
    }
}

/// Assert a JSON error reply: status, `error` kind, and a message containing `needle`.
#[track_caller]
pub(crate) fn assert_error(reply: &Reply, status: u16, kind: &str, needle: &str) {
    assert_eq!(reply.status.as_u16(), status, "status of {}", reply.text);
    let body = reply.json();
    assert_eq!(body["error"], kind, "kind in {}", reply.text);
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "message {message:?} lacks {needle:?}");
}

/// `Authorization: Basic` for Xervo calls.
pub(crate) fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

pub(crate) fn sso_token(slug: &str, secret: &str, ts: i64) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(format!("{slug}:{secret}:{ts}").as_bytes()))
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Poll `check` until it holds; fail naming `what` after 20 s.
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{what}: not after 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An add-on's jobs as the admin API lists them (`query`: e.g. `?state=dead`).
pub(crate) async fn jobs_of(host: &TestHost, addon: &str, query: &str) -> Vec<serde_json::Value> {
    let reply = host.admin(Method::GET, &format!("/admin/addons/{addon}/jobs{query}"), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["jobs"].as_array().unwrap().clone()
}
