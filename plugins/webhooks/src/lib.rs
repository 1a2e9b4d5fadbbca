//! Example add-on: registers an outgoing webhook on each Bitrise app it is provisioned for,
//! and removes it when the app is deprovisioned — the pattern for any work that uses the
//! platform's API. Bitrise gives /provision 10 seconds and asks add-ons to call its API only
//! after answering, so the provision just keeps the app's API token and enqueues a job; the
//! job registers the webhook after the reply, retrying while the API answers 429 or 5xx
//! (honouring `Retry-After`), and the deprovision enqueues the job that deletes it.
//!
//! Config: `hook_url` (required) — where Bitrise should send the app's build events;
//! `api_base` (default `https://api.bitrise.io`), which must be in the add-on's
//! `allowed_outbound`. Exports `<ADDON>_EVENTS_URL`.

use addon_sdk::http::{HttpError, Request, Response};
use addon_sdk::jobs::{self, Job, JobError};
use addon_sdk::{
    DeprovisionRequest, Error, Provider, ProvisionReply, ProvisionRequest, Result, config, export_provider, kv, log,
};

struct Webhooks;

const EVENTS: &str = r#"["build/triggered","build/finished"]"#;

fn api_base() -> String {
    config::get("api_base").unwrap_or_else(|| "https://api.bitrise.io".into()).trim_end_matches('/').to_owned()
}

fn hook_url() -> Result<String> {
    config::get("hook_url").ok_or_else(|| Error::internal("config `hook_url` is not set"))
}

/// A key-value read inside a job: a storage failure is worth another try.
fn read(key: &str) -> std::result::Result<Option<String>, JobError> {
    kv::get_string(key).map_err(|e| jobs::retry(format!("reading {key}: {e:?}")))
}

fn write(result: std::result::Result<impl Sized, addon_sdk::KvError>) -> std::result::Result<(), JobError> {
    result.map(|_| ()).map_err(|e| jobs::retry(format!("key-value: {e:?}")))
}

/// What an API answer means for the job: 2xx is done, 429 and 5xx are worth another try
/// (after `Retry-After` seconds when given), anything else is a refusal retrying will not fix.
fn judge(what: &str, answer: std::result::Result<Response, HttpError>) -> std::result::Result<Response, JobError> {
    match answer {
        Ok(r) if r.is_success() => Ok(r),
        Ok(r) if r.status == 429 || r.status >= 500 => {
            let message = format!("{what}: the API answered {}", r.status);
            Err(match r.header("retry-after").and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(secs) => jobs::retry_after(message, secs * 1000),
                None => jobs::retry(message),
            })
        }
        Ok(r) => Err(jobs::fail(format!("{what}: the API refused with {}: {}", r.status, r.text()))),
        Err(HttpError::Timeout(e) | HttpError::Failed(e)) => Err(jobs::retry(format!("{what}: {e}"))),
        Err(HttpError::Denied(e) | HttpError::Invalid(e) | HttpError::TooLarge(e)) => {
            Err(jobs::fail(format!("{what}: {e}")))
        }
    }
}

/// The webhook's slug in the API's answer, `{"data":{"slug":"..."}}`.
fn slug(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.pointer("/data/slug")?.as_str().map(str::to_owned)
}

fn register(resource: &str) -> std::result::Result<(), JobError> {
    if read(&format!("hook/{resource}"))?.is_some() {
        return Ok(()); // a job runs at least once: this one already did its work
    }
    let (Some(token), Some(app)) = (read(&format!("token/{resource}"))?, read(&format!("app/{resource}"))?) else {
        return Err(jobs::fail(format!("no API token kept for {resource}")));
    };
    let url = hook_url().map_err(|e| jobs::fail(format!("{e:?}")))?;
    let body = format!(r#"{{"url":{},"events":{EVENTS}}}"#, serde_json::Value::String(url));
    let answer = Request::post(&format!("{}/v0.1/apps/{app}/outgoing-webhooks", api_base()))
        .header("Authorization", &token)
        .json(&body)
        .send();
    let registered = judge("registering the webhook", answer)?;
    let hook = slug(&registered.body).ok_or_else(|| jobs::fail("the API's answer names no webhook slug"))?;
    write(kv::set_string(&format!("hook/{resource}"), &hook))?;
    log::info!("registered webhook {hook} for app {app}");
    Ok(())
}

fn unregister(resource: &str) -> std::result::Result<(), JobError> {
    let (token, app, hook) =
        (read(&format!("token/{resource}"))?, read(&format!("app/{resource}"))?, read(&format!("hook/{resource}"))?);
    if let (Some(token), Some(app), Some(hook)) = (token, app, hook) {
        let url = format!("{}/v0.1/apps/{app}/outgoing-webhooks/{hook}", api_base());
        match Request::delete(&url).header("Authorization", &token).send() {
            Ok(r) if r.status == 404 => {} // already gone
            answer => {
                judge("removing the webhook", answer)?;
            }
        }
        log::info!("removed webhook {hook} of app {app}");
    }
    for key in ["hook", "token", "app"] {
        write(kv::delete(&format!("{key}/{resource}")))?;
    }
    Ok(())
}

impl Provider for Webhooks {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let prefix = config::addon_id().to_ascii_uppercase().replace('-', "_");
        let reply = ProvisionReply::new().var(format!("{prefix}_EVENTS_URL"), hook_url()?);
        let Some(token) = req.api_token else {
            return Ok(reply.message("No API token from this platform: no webhook to register."));
        };
        kv::set_string(&format!("token/{}", req.resource_id), &token)?;
        kv::set_string(&format!("app/{}", req.resource_id), &req.app_id)?;
        if kv::get(&format!("hook/{}", req.resource_id))?.is_none() {
            jobs::enqueue("register", req.resource_id.as_bytes(), 0)?;
        }
        Ok(reply.message("The webhook is registered in the background."))
    }

    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        jobs::enqueue("unregister", req.resource_id.as_bytes(), 0)?;
        Ok(())
    }

    fn run_job(job: Job) -> std::result::Result<(), JobError> {
        let resource = String::from_utf8_lossy(&job.payload).into_owned();
        match job.kind.as_str() {
            "register" => register(&resource),
            "unregister" => unregister(&resource),
            other => Err(jobs::fail(format!("unknown job kind `{other}`"))),
        }
    }
}

export_provider!(Webhooks);

/// The provider's logic, natively, against `addon_sdk::testing`'s host double.
#[cfg(test)]
mod tests {
    use addon_sdk::testing::{TestHost, deprovision_request, provision_request};

    use super::*;

    fn host() -> TestHost {
        TestHost::new().addon_id("hooks").config("hook_url", "https://events.example.com/in")
    }

    #[test]
    fn provision_only_enqueues_and_the_job_registers_once() {
        let host = host().on_http(|req| {
            assert_eq!(req.header_value("authorization"), Some("test-api-token"));
            Ok(Response::new(201, r#"{"data":{"slug":"hook-9"}}"#))
        });
        let reply = host.call(|| Webhooks::provision(provision_request("app-1", "free"))).unwrap();
        assert_eq!(reply.vars(), [("HOOKS_EVENTS_URL".to_owned(), "https://events.example.com/in".to_owned())]);
        assert!(host.requests().is_empty(), "the provision itself calls nothing");
        let job = host.enqueued()[0].job(1);
        host.call(|| Webhooks::run_job(job.clone())).unwrap();
        assert_eq!(host.kv_string("hook/app-1").as_deref(), Some("hook-9"));
        assert_eq!(host.requests()[0].url(), "https://api.bitrise.io/v0.1/apps/app-1/outgoing-webhooks");
        host.call(|| Webhooks::run_job(job)).unwrap();
        assert_eq!(host.requests().len(), 1, "a second run of the same job registers nothing");
    }

    #[test]
    fn a_busy_api_is_retried_and_a_refusal_is_final() {
        let busy = host()
            .on_http(|_| Ok(Response { status: 503, headers: vec![("retry-after".into(), "7".into())], body: vec![] }));
        busy.call(|| Webhooks::provision(provision_request("app-1", "free"))).unwrap();
        let job = busy.enqueued()[0].job(1);
        let outcome = busy.call(|| Webhooks::run_job(job));
        assert!(matches!(outcome, Err(JobError::Retry(ref r)) if r.after_ms == Some(7_000)), "{outcome:?}");
        assert_eq!(busy.kv_string("hook/app-1"), None);

        let refused = host().on_http(|_| Ok(Response::new(403, "no")));
        refused.call(|| Webhooks::provision(provision_request("app-1", "free"))).unwrap();
        let job = refused.enqueued()[0].job(1);
        assert!(matches!(refused.call(|| Webhooks::run_job(job)), Err(JobError::Fail(_))));
    }

    #[test]
    fn deprovision_removes_the_webhook_and_forgets_the_token() {
        let host = host().on_http(|req| match req.method() {
            "POST" => Ok(Response::new(201, r#"{"data":{"slug":"hook-9"}}"#)),
            _ => Ok(Response::new(204, "")),
        });
        host.call(|| Webhooks::provision(provision_request("app-1", "free"))).unwrap();
        host.call(|| Webhooks::run_job(host.enqueued()[0].job(1))).unwrap();
        host.call(|| Webhooks::deprovision(deprovision_request("app-1", "free"))).unwrap();
        host.call(|| Webhooks::run_job(host.enqueued()[1].job(1))).unwrap();
        let delete = &host.requests()[1];
        assert_eq!(
            (delete.method(), delete.url()),
            ("DELETE", "https://api.bitrise.io/v0.1/apps/app-1/outgoing-webhooks/hook-9")
        );
        assert!(host.kv_keys().is_empty(), "{:?}", host.kv_keys());
    }
}
