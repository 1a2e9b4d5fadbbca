//! Example add-on: issues per-app credentials.
//!
//! Provisioning an app exports `<ADDON>_HOST_URL` (where the app's builds reach the service)
//! and `<ADDON>_AUTH_SECRET` (a secret generated once per app and kept in the add-on's KV,
//! so repeats and re-provisions return the same value). Deprovisioning forgets the secret,
//! so a later provision issues a new one. The variable prefix is the add-on's id in upper
//! case, which is what Xervo requires of config var names.
//!
//! It also serves HTTP (the SDK's `web` module):
//! - a dashboard, for the app's users after the platform's SSO: the plan, the build API's
//!   use, and a form that rotates the secret (the new one is shown once);
//! - a build API: `GET /api/whoami` answers the app's identity and plan, and
//!   `POST /api/verify` (the secret as the body) answers whether it is the app's current
//!   secret. Builds call them with the `<ADDON>_API_TOKEN` the host issued at provision.
//!
//! Config: `host_url` (required) — the service's public base URL.

use addon_sdk::web::{Request, Response, Surface, Web, escape};
use addon_sdk::{
    ChangePlanReply, ChangePlanRequest, DeprovisionRequest, Error, Provider, ProvisionReply, ProvisionRequest, Result,
    config, export_provider, export_web, kv, log, random,
};

struct Credentials;

fn prefix() -> String {
    config::addon_id().to_ascii_uppercase().replace('-', "_")
}

fn secret_key(resource_id: &str) -> String {
    format!("secret/{resource_id}")
}

fn host_url(resource_id: &str) -> Result<String> {
    let base = config::get("host_url").ok_or_else(|| Error::internal("config `host_url` is not set"))?;
    Ok(format!("{}/apps/{resource_id}", base.trim_end_matches('/')))
}

impl Provider for Credentials {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let key = secret_key(&req.resource_id);
        let secret = match kv::get_string(&key)? {
            Some(existing) => existing,
            None => {
                let fresh = random::hex(24);
                // compare-and-swap so that two racing first provisions agree on one secret.
                if !kv::compare_and_swap(&key, None, Some(fresh.as_bytes()))? {
                    kv::get_string(&key)?.ok_or_else(|| Error::internal("secret vanished"))?
                } else {
                    fresh
                }
            }
        };
        log::info!("issued credentials for {} ({:?})", req.resource_id, req.platform);
        let prefix = prefix();
        Ok(ProvisionReply::new()
            .var(format!("{prefix}_HOST_URL"), host_url(&req.resource_id)?)
            .var(format!("{prefix}_AUTH_SECRET"), secret)
            .message("Credentials issued. Use them from your builds."))
    }

    fn change_plan(req: ChangePlanRequest) -> Result<ChangePlanReply> {
        log::info!("{} moves from {} to {}", req.resource_id, req.previous_plan, req.plan);
        Ok(ChangePlanReply::new().message(format!("Now on {}.", req.plan)))
    }

    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        kv::delete(&calls_key(&req.resource_id))?;
        let existed = kv::delete(&secret_key(&req.resource_id))?;
        log::info!("revoked credentials for {} (existed: {existed})", req.resource_id);
        Ok(())
    }
}

export_provider!(Credentials);

fn calls_key(resource_id: &str) -> String {
    format!("calls/{resource_id}")
}

/// Count one build API call for the app; the count so far.
fn count_call(resource_id: &str) -> Result<u64> {
    let key = calls_key(resource_id);
    let calls = kv::get_string(&key)?.and_then(|c| c.parse::<u64>().ok()).unwrap_or(0) + 1;
    kv::set_string(&key, &calls.to_string())?;
    Ok(calls)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn page(req: &Request, rotated: Option<&str>) -> Result<Response> {
    let who = req.identity();
    let secret = kv::get_string(&secret_key(&who.resource_id))?.unwrap_or_default();
    let calls = kv::get_string(&calls_key(&who.resource_id))?.unwrap_or_else(|| "0".into());
    let title = escape(who.app_title.as_deref().unwrap_or(&who.resource_id));
    let shown = match rotated {
        Some(fresh) => format!(
            "<p class=\"notice\" id=\"rotated\">New secret: <code id=\"secret\">{}</code>. Copy it into your app's secrets now; it is not shown again.</p>",
            escape(fresh)
        ),
        None => {
            format!("<p>Secret: <code id=\"secret\">…{}</code></p>", escape(&secret[secret.len().saturating_sub(4)..]))
        }
    };
    let user = who
        .unverified_email
        .as_deref()
        .map(|e| format!("<p class=\"muted\">Signed in as {}.</p>", escape(e)))
        .unwrap_or_default();
    Ok(Response::html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>Credentials for {title}</title>{beam}\
<style>body {{ font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #f6f7fb; color: #1d1d1f; }} main {{ max-width: 640px; margin: 40px auto; background: #fff; padding: 28px 32px; border-radius: 12px; border: 1px solid #dcdfe6; }} .plan {{ background: #5b2ea6; color: #fff; border-radius: 999px; padding: 1px 10px; }} .muted {{ color: #6e6e73; }} .notice {{ background: #eef8ee; padding: 8px 12px; border-radius: 8px; }} button {{ font: inherit; padding: 6px 14px; border-radius: 8px; border: 1px solid #5b2ea6; background: #5b2ea6; color: #fff; cursor: pointer; }}</style>\
</head><body><main><h1 id=\"title\">Credentials for {title}</h1>\
<p>Plan: <span class=\"plan\" id=\"plan\">{plan}</span></p>{user}{shown}\
<p>Build API calls: <strong id=\"calls\">{calls}</strong></p>\
<form method=\"post\" action=\"{action}\">{csrf}<button type=\"submit\" id=\"rotate\">Rotate the secret</button></form>\
</main></body></html>",
        beam = who.beam(),
        plan = escape(&who.plan),
        calls = escape(&calls),
        action = escape(&who.link("/dashboard/rotate")),
        csrf = who.csrf_field(),
    )))
}

fn rotate(req: &Request) -> Result<Response> {
    let fresh = random::hex(24);
    kv::set_string(&secret_key(&req.identity().resource_id), &fresh)?;
    log::info!("rotated the secret of {}", req.identity().resource_id);
    page(req, Some(&fresh))
}

fn serve(req: &Request) -> Result<Response> {
    let who = req.identity();
    Ok(match (who.surface, req.method(), req.path()) {
        (Surface::Dashboard, "GET", "/dashboard/" | "/dashboard") => page(req, None)?,
        (Surface::Dashboard, "POST", "/dashboard/rotate") => rotate(req)?,
        (Surface::Api, "GET", "/api/whoami") => {
            let calls = count_call(&who.resource_id)?;
            Response::json(format!(
                "{{\"resource_id\":{},\"app_id\":{},\"platform\":\"{}\",\"plan\":{},\"calls\":{calls}}}",
                json_string(&who.resource_id),
                json_string(&who.app_id),
                if who.platform == addon_sdk::Platform::Xervo { "xervo" } else { "bitrise" },
                json_string(&who.plan),
            ))
        }
        (Surface::Api, "POST", "/api/verify") => {
            count_call(&who.resource_id)?;
            let secret = kv::get_string(&secret_key(&who.resource_id))?.unwrap_or_default();
            let valid = !secret.is_empty() && req.body() == secret.as_bytes();
            Response::json(format!("{{\"valid\":{valid}}}"))
        }
        _ => Response::not_found(),
    })
}

impl Web for Credentials {
    fn handle(req: Request) -> Response {
        serve(&req).unwrap_or_else(|e| {
            log::warn!("{} {} failed: {e:?}", req.method(), req.path());
            Response::new(500).header("content-type", "text/plain; charset=utf-8").body("the add-on failed; try again")
        })
    }
}

export_web!(Credentials);

/// The provider's logic, natively, against `addon_sdk::testing`'s host double.
#[cfg(test)]
mod tests {
    use addon_sdk::testing::{TestHost, deprovision_request, provision_request};

    use super::*;

    fn host() -> TestHost {
        TestHost::new().addon_id("my-addon").config("host_url", "https://svc.example.com/")
    }

    #[test]
    fn the_secret_is_made_once_and_forgotten_on_deprovision() {
        let host = host();
        let first = host.call(|| Credentials::provision(provision_request("app-1", "free"))).unwrap();
        let vars = first.vars();
        assert_eq!(vars[0], ("MY_ADDON_HOST_URL".to_owned(), "https://svc.example.com/apps/app-1".to_owned()));
        assert_eq!(vars[1].0, "MY_ADDON_AUTH_SECRET");
        assert_eq!(vars[1].1.len(), 48);
        let again = host.call(|| Credentials::provision(provision_request("app-1", "pro"))).unwrap();
        assert_eq!(again.vars()[1], vars[1], "a repeat keeps the secret");
        assert_eq!(host.kv_string("secret/app-1").as_deref(), Some(vars[1].1.as_str()));

        host.call(|| Credentials::deprovision(deprovision_request("app-1", "pro"))).unwrap();
        assert!(host.kv_keys().is_empty());
        assert!(host.logs().iter().any(|(_, line)| line.contains("revoked credentials for app-1 (existed: true)")));
        let renewed = host.call(|| Credentials::provision(provision_request("app-1", "free"))).unwrap();
        assert_ne!(renewed.vars()[1], vars[1], "a new provision after deprovision gets a new secret");
    }

    /// The dashboard shows the plan and a CSRF-protected rotation form; rotating replaces
    /// the secret and shows the new one; the build API counts calls and checks secrets.
    #[test]
    fn the_dashboard_rotates_the_secret_and_the_api_counts_and_verifies() {
        use addon_sdk::testing::identity;
        let host = host();
        host.call(|| Credentials::provision(provision_request("app-1", "pro"))).unwrap();
        let old = host.kv_string("secret/app-1").unwrap();
        let serve = |req: Request| host.call(|| Ok::<_, ()>(Credentials::handle(req))).unwrap();

        let page = serve(Request::new("GET", "/dashboard/", identity(Surface::Dashboard, "app-1", "pro")));
        assert_eq!(page.status, 200);
        let text = page.body_text();
        assert!(text.contains("id=\"plan\">pro<") && text.contains("value=\"test-csrf-token\""), "{text}");
        assert!(text.contains("action=\"/addons/test/dashboard/rotate\""), "{text}");
        assert!(!text.contains(&old), "the secret is not shown in full");

        let rotated = serve(Request::new("POST", "/dashboard/rotate", identity(Surface::Dashboard, "app-1", "pro")));
        let new = host.kv_string("secret/app-1").unwrap();
        assert_ne!(new, old);
        assert!(rotated.body_text().contains(&new), "the new secret is shown once");

        let api = |method: &str, path: &str, body: &str| {
            serve(Request::new(method, path, identity(Surface::Api, "app-1", "pro")).with_body(body.as_bytes()))
        };
        assert!(api("GET", "/api/whoami", "").body_text().contains("\"calls\":1"));
        assert_eq!(api("POST", "/api/verify", &new).body_text(), "{\"valid\":true}");
        assert_eq!(api("POST", "/api/verify", &old).body_text(), "{\"valid\":false}");
        assert_eq!(host.kv_string("calls/app-1").as_deref(), Some("3"));
        // The dashboard's routes are not the API's, and the other way round.
        assert_eq!(api("POST", "/dashboard/rotate", "").status, 404);
        assert_eq!(serve(Request::new("GET", "/api/whoami", identity(Surface::Dashboard, "app-1", "pro"))).status, 404);
    }

    #[test]
    fn without_host_url_it_fails_and_keeps_nothing() {
        let host = TestHost::new();
        let failed = host.call(|| Credentials::provision(provision_request("app-2", "free")));
        assert!(failed.is_err());
        assert!(host.kv_keys().is_empty(), "a failed call's secret was kept");
    }
}
