//! Start-up validation: a bad config or manifest is refused with a message naming the field,
//! and the manifest the host prints is one it accepts back.

use addon_host::config::XervoSettings;
use addon_host::config::{HostConfig, XervoConfig};
use addon_host::service::Service;
use serde_json::json;

use crate::support::config;

fn start_error(mutate: impl FnOnce(&mut HostConfig)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    mutate(&mut cfg);
    let result = cfg.validate().and_then(|()| Service::start(&cfg).map(|_| ()));
    format!("{:#}", result.expect_err("the config must be refused"))
}

fn with_manifest(doc: serde_json::Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("addon-manifest.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    start_error(|cfg| cfg.addons[0].xervo = Some(XervoConfig { manifest: Some(path), ..XervoConfig::default() }))
}

fn good_manifest() -> serde_json::Value {
    json!({"id": "myaddon", "api": {
        "config_vars": ["MYADDON_HOST_URL", "MYADDON_AUTH_SECRET"], "regions": ["us"],
        "password": "p4ss", "sso_salt": "s4lt",
        "production": {"base_url": "https://h/addons/myaddon/resources", "sso_url": "https://h/addons/myaddon/sso/login"},
        "test": {"base_url": "http://127.0.0.1:1/addons/myaddon/resources", "sso_url": "http://127.0.0.1:1/addons/myaddon/sso/login"}}})
}

/// A change that breaks the good manifest.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn bad_manifests_name_the_field() {
    let cases: Vec<(&str, Edit)> = vec![
        ("`id` is `other`", Box::new(|m| m["id"] = json!("other"))),
        ("`id` must be a string", Box::new(|m| m["id"] = json!(5))),
        (
            "`api.password` is missing",
            Box::new(|m| m["api"].as_object_mut().unwrap().remove("password").map(drop).unwrap_or(())),
        ),
        ("`api.sso_salt` must not be empty", Box::new(|m| m["api"]["sso_salt"] = json!(""))),
        ("`api.config_vars` must be an array", Box::new(|m| m["api"]["config_vars"] = json!("MYADDON_URL"))),
        ("`api.config_vars[1]` must be a string", Box::new(|m| m["api"]["config_vars"] = json!(["MYADDON_URL", 3]))),
        (
            "config_vars[0]` (OTHER_URL) must start with MYADDON",
            Box::new(|m| m["api"]["config_vars"] = json!(["OTHER_URL"])),
        ),
        ("`api.test.sso_url` is missing", Box::new(|m| m["api"]["test"] = json!({"base_url": "http://x"}))),
        (
            "`api.production.base_url` must be an http(s) URL",
            Box::new(|m| m["api"]["production"]["base_url"] = json!("ftp://x")),
        ),
    ];
    for (needle, mutate) in cases {
        let mut doc = good_manifest();
        mutate(&mut doc);
        let error = with_manifest(doc);
        assert!(error.contains(needle), "expected {needle:?} in: {error}");
        assert!(error.contains("myaddon"), "the add-on is named: {error}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.json");
    std::fs::write(&path, "{not json").unwrap();
    let error =
        start_error(|cfg| cfg.addons[0].xervo = Some(XervoConfig { manifest: Some(path), ..XervoConfig::default() }));
    assert!(error.contains("invalid JSON"), "{error}");
}

#[test]
fn bad_config_names_the_field() {
    assert!(start_error(|c| c.addons[1].id = "myaddon".into()).contains("is used by another add-on"));
    assert!(start_error(|c| c.addons[0].id = "My Addon".into()).contains("`id` must be"));
    assert!(start_error(|c| c.addons[0].limits.deadline_ms = 0).contains("limits.deadline_ms"));
    assert!(
        start_error(|c| c.addons[0].bitrise.as_mut().unwrap().shared_token = " ".into())
            .contains("bitrise.shared_token")
    );
    assert!(start_error(|c| c.addons[0].plugin = "/nonexistent.wasm".into()).contains("/nonexistent.wasm"));
    let both = start_error(|c| c.addons[0].xervo.as_mut().unwrap().manifest = Some("m.json".into()));
    assert!(both.contains("not both"), "{both}");
    let no_salt = start_error(|c| c.addons[0].xervo.as_mut().unwrap().sso_salt = None);
    assert!(no_salt.contains("xervo.sso_salt"), "{no_salt}");
}

#[test]
fn not_a_component_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0garbage").unwrap();
    let error = start_error(|c| c.addons[0].plugin = junk.clone());
    assert!(error.contains("not a valid component"), "{error}");
}

#[test]
fn printed_manifest_is_accepted_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let xervo = cfg.addons[0].xervo.as_ref().unwrap();
    let settings = XervoSettings::resolve("myaddon", xervo).unwrap();
    let manifest = settings.manifest("https://addons.example.com/", "http://127.0.0.1:9");
    assert_eq!(manifest["api"]["production"]["base_url"], "https://addons.example.com/addons/myaddon/resources");
    assert_eq!(manifest["api"]["test"]["sso_url"], "http://127.0.0.1:9/addons/myaddon/sso/login");
    let path = dir.path().join("addon-manifest.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    let back =
        XervoSettings::resolve("myaddon", &XervoConfig { manifest: Some(path), ..XervoConfig::default() }).unwrap();
    assert_eq!(
        (back.password, back.sso_salt, back.config_vars),
        (settings.password, settings.sso_salt, settings.config_vars)
    );
}

#[test]
fn an_admin_token_must_not_be_a_partner_credential() {
    let shared =
        start_error(|cfg| cfg.server.admins[0].token = cfg.addons[0].bitrise.as_ref().unwrap().shared_token.clone());
    assert!(shared.contains("must not be a partner's credential"), "{shared}");
    let xervo = start_error(|cfg| {
        cfg.server.admins[0].token = cfg.addons[0].xervo.as_ref().unwrap().password.clone().unwrap();
    });
    assert!(xervo.contains("must not be a partner's credential"), "{xervo}");
}

/// A deploy token must be long, and must not open anything else: no partner credential, no
/// admin's token, no other deployer's.
#[test]
fn a_deploy_token_must_be_its_own() {
    let deployer = |token: &str| addon_host::config::AdminConfig { name: "ci".into(), token: token.into() };
    let short = start_error(|cfg| cfg.addons[0].deployers = vec![deployer("short")]);
    assert!(short.contains("deployers[0] (`ci`): `token` must be at least 16 characters"), "{short}");
    let partner = start_error(|cfg| {
        let token = cfg.addons[1].bitrise.as_ref().unwrap().shared_token.clone();
        cfg.addons[0].deployers = vec![deployer(&token)];
    });
    assert!(partner.contains("must not be a partner's credential"), "{partner}");
    let admin = start_error(|cfg| {
        let token = cfg.server.admins[0].token.clone();
        cfg.addons[0].deployers = vec![deployer(&token)];
    });
    assert!(admin.contains("already an admin's or another deployer's token"), "{admin}");
    let twice = start_error(|cfg| {
        cfg.addons[0].deployers = vec![deployer("deploy-token-0123456789")];
        cfg.addons[1].deployers = vec![deployer("deploy-token-0123456789")];
    });
    assert!(twice.contains("already an admin's or another deployer's token"), "{twice}");
}

/// A plugin learns its add-on's public base URL as config `public_url`: its own origin under
/// `server.web_origin`, else `server.public_url` followed by `/addons/{id}`; the add-on's own
/// `public_url` setting wins; with neither, it is unset. Red if the host stops providing it,
/// builds it wrong, or overrides what the operator set for the add-on.
#[tokio::test]
async fn a_plugin_sees_its_public_base_url() {
    use crate::support::{MISBEHAVE_TOKEN, TestHost};
    async fn seen(change: impl FnOnce(&mut HostConfig)) -> String {
        let host = TestHost::start_with(tempfile::tempdir().unwrap(), change);
        let reply = host.provision("misbehave", MISBEHAVE_TOKEN, "app", "public-url").await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        reply.env("MISBEHAVE_PUBLIC_URL")
    }
    let origin = || addon_host::config::WebOrigin::parse("https://{addon}.addons.example.com").unwrap();
    assert_eq!(seen(|_| {}).await, "unset");
    assert_eq!(
        seen(|cfg| cfg.server.public_url = Some("https://host.example.com/".into())).await,
        "https://host.example.com/addons/misbehave"
    );
    assert_eq!(
        seen(|cfg| {
            cfg.server.public_url = Some("https://host.example.com".into());
            cfg.server.web_origin = Some(origin());
        })
        .await,
        "https://misbehave.addons.example.com"
    );
    assert_eq!(
        seen(|cfg| {
            cfg.server.web_origin = Some(origin());
            let misbehave = cfg.addons.iter_mut().find(|a| a.id == "misbehave").unwrap();
            misbehave.config.insert("public_url".into(), "https://misbehave.partner.example".into());
        })
        .await,
        "https://misbehave.partner.example"
    );
}

#[test]
fn a_public_url_that_is_not_an_http_base_is_refused() {
    for bad in ["addons.example.com", "ftp://addons.example.com", "https://addons.example.com/?x=1"] {
        let error = start_error(|cfg| cfg.server.public_url = Some(bad.into()));
        assert!(error.contains("server.public_url"), "{bad}: {error}");
    }
}
