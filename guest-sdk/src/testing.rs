//! Run a provider natively in `cargo test`, without a host: an in-memory key-value store with
//! the host's transactional semantics (a call's writes are visible to the call at once and
//! kept only if it returns `Ok`), configuration, secrets, a settable clock, randomness, and
//! the lines the plugin logged. Off `wasm32` only; on `wasm32` the real host answers.
//!
//! ```
//! use addon_sdk::testing::{TestHost, provision_request};
//! use addon_sdk::{kv, Provider, ProvisionReply, ProvisionRequest, Result};
//!
//! struct Counter;
//! impl Provider for Counter {
//!     fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
//!         let n = kv::increment("provisions", 1)?;
//!         Ok(ProvisionReply::new().var("COUNTER_N", n.to_string()))
//!     }
//! }
//!
//! let host = TestHost::new();
//! host.call(|| Counter::provision(provision_request("app-1", "free"))).unwrap();
//! let reply = host.call(|| Counter::provision(provision_request("app-2", "free"))).unwrap();
//! assert_eq!(reply.vars(), [("COUNTER_N".to_owned(), "2".to_owned())]);
//! assert_eq!(host.kv_string("provisions").as_deref(), Some("2"));
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::bindings::addon::provider::types::Platform;
use crate::log::Level;
use crate::{ChangePlanRequest, DeprovisionRequest, KvError, ProvisionRequest};

/// A host double. Calls run one at a time on the current thread, through [`TestHost::call`].
#[derive(Clone, Default)]
pub struct TestHost {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Default)]
struct Inner {
    addon_id: String,
    config: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    now_ms: Option<u64>,
    committed: BTreeMap<String, Vec<u8>>,
    /// The running call's writes (`None`: deleted).
    pending: BTreeMap<String, Option<Vec<u8>>>,
    logs: Vec<(Level, String)>,
    /// Jobs enqueued by committed calls, and by the running call.
    jobs: Vec<Enqueued>,
    pending_jobs: Vec<Enqueued>,
    /// Answers outbound requests; none: every request is denied.
    http: Option<Rc<Responder>>,
    requests: Vec<crate::http::Request>,
}

type Responder = dyn Fn(&crate::http::Request) -> Result<crate::http::Response, crate::http::HttpError>;

/// A job a call enqueued (see [`TestHost::enqueued`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The id `enqueue` returned.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its delay.
    pub delay_ms: u64,
}

impl Enqueued {
    /// The job as `run_job` receives it on its `attempt`-th run.
    pub fn job(&self, attempt: u32) -> crate::jobs::Job {
        crate::jobs::Job {
            id: self.id.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            resource_id: None,
            attempt,
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<TestHost>> = const { RefCell::new(None) };
}

impl TestHost {
    /// A host for add-on `test`, with nothing configured and an empty store.
    pub fn new() -> TestHost {
        let host = TestHost::default();
        host.inner.borrow_mut().addon_id = "test".into();
        host
    }

    /// The add-on id the plugin sees.
    pub fn addon_id(self, id: &str) -> TestHost {
        self.inner.borrow_mut().addon_id = id.into();
        self
    }

    /// A `[config]` setting.
    pub fn config(self, key: &str, value: &str) -> TestHost {
        self.inner.borrow_mut().config.insert(key.into(), value.into());
        self
    }

    /// A `[secrets]` entry.
    pub fn secret(self, name: &str, value: &str) -> TestHost {
        self.inner.borrow_mut().secrets.insert(name.into(), value.into());
        self
    }

    /// Fix the clock (default: the real time).
    pub fn at_ms(self, now_ms: u64) -> TestHost {
        self.inner.borrow_mut().now_ms = Some(now_ms);
        self
    }

    /// Run one call as the host would: its key-value writes are kept only if it returns `Ok`.
    pub fn call<T, E>(&self, call: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        {
            let mut inner = self.inner.borrow_mut();
            inner.pending.clear();
            inner.pending_jobs.clear();
        }
        let previous = CURRENT.with(|c| c.replace(Some(self.clone())));
        let outcome = call();
        CURRENT.with(|c| *c.borrow_mut() = previous);
        let mut inner = self.inner.borrow_mut();
        let pending = std::mem::take(&mut inner.pending);
        let jobs = std::mem::take(&mut inner.pending_jobs);
        if outcome.is_ok() {
            inner.jobs.extend(jobs);
            for (key, value) in pending {
                match value {
                    Some(v) => inner.committed.insert(key, v),
                    None => inner.committed.remove(&key),
                };
            }
        }
        outcome
    }

    /// A committed value.
    pub fn kv(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.borrow().committed.get(key).cloned()
    }

    /// A committed value as text.
    pub fn kv_string(&self, key: &str) -> Option<String> {
        self.kv(key).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Every committed key, in order.
    pub fn kv_keys(&self) -> Vec<String> {
        self.inner.borrow().committed.keys().cloned().collect()
    }

    /// Answer the plugin's outbound requests with `respond` (without it, each is denied, as
    /// the host denies origins not in `allowed_outbound`).
    pub fn on_http(
        self,
        respond: impl Fn(&crate::http::Request) -> Result<crate::http::Response, crate::http::HttpError> + 'static,
    ) -> TestHost {
        self.inner.borrow_mut().http = Some(Rc::new(respond));
        self
    }

    /// The outbound requests the plugin sent, in order.
    pub fn requests(&self) -> Vec<crate::http::Request> {
        self.inner.borrow().requests.clone()
    }

    /// The jobs enqueued by calls that succeeded, in order.
    pub fn enqueued(&self) -> Vec<Enqueued> {
        self.inner.borrow().jobs.clone()
    }

    /// The lines logged so far, with their level.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.inner.borrow().logs.clone()
    }
}

fn with<T>(f: impl FnOnce(&mut Inner) -> T) -> T {
    CURRENT.with(|c| {
        let current = c.borrow();
        let host = current.as_ref().expect("addon_sdk host functions run inside addon_sdk::testing::TestHost::call");
        let mut inner = host.inner.borrow_mut();
        f(&mut inner)
    })
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() || key.len() > 512 {
        return Err(KvError::InvalidKey(format!("keys are 1-512 bytes; this one is {}", key.len())));
    }
    Ok(())
}

impl Inner {
    fn read(&self, key: &str) -> Option<Vec<u8>> {
        match self.pending.get(key) {
            Some(value) => value.clone(),
            None => self.committed.get(key).cloned(),
        }
    }
}

pub(crate) fn kv_get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    check_key(key)?;
    Ok(with(|h| h.read(key)))
}

pub(crate) fn kv_set(key: &str, value: &[u8]) -> Result<(), KvError> {
    check_key(key)?;
    with(|h| h.pending.insert(key.into(), Some(value.to_vec())));
    Ok(())
}

pub(crate) fn kv_delete(key: &str) -> Result<bool, KvError> {
    check_key(key)?;
    Ok(with(|h| {
        let existed = h.read(key).is_some();
        h.pending.insert(key.into(), None);
        existed
    }))
}

pub(crate) fn kv_list_keys(prefix: &str) -> Result<Vec<String>, KvError> {
    Ok(with(|h| {
        let mut keys: BTreeMap<&String, bool> = h.committed.keys().map(|k| (k, true)).collect();
        for (k, v) in &h.pending {
            keys.insert(k, v.is_some());
        }
        keys.into_iter().filter(|(k, live)| *live && k.starts_with(prefix)).map(|(k, _)| k.clone()).collect()
    }))
}

pub(crate) fn kv_compare_and_swap(key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, KvError> {
    check_key(key)?;
    Ok(with(|h| {
        if h.read(key).as_deref() != expected {
            return false;
        }
        h.pending.insert(key.into(), new.map(<[u8]>::to_vec));
        true
    }))
}

pub(crate) fn jobs_enqueue(kind: &str, payload: &[u8], delay_ms: u64) -> Result<String, String> {
    if kind.is_empty() || kind.len() > 64 {
        return Err(format!("a job's kind must be 1 to 64 bytes long, not {}", kind.len()));
    }
    Ok(with(|h| {
        let id = format!("job-{}", h.jobs.len() + h.pending_jobs.len() + 1);
        h.pending_jobs.push(Enqueued { id: id.clone(), kind: kind.into(), payload: payload.to_vec(), delay_ms });
        id
    }))
}

pub(crate) fn http_send(
    req: &crate::bindings::addon::provider::http::Request,
) -> Result<crate::bindings::addon::provider::http::Response, crate::http::HttpError> {
    let request = crate::http::Request(req.clone());
    let respond = with(|h| {
        h.requests.push(request.clone());
        h.http.clone()
    });
    let response = match respond {
        Some(respond) => respond(&request)?,
        None => return Err(crate::http::HttpError::Denied(format!("{} is not an allowed origin", req.url))),
    };
    Ok(crate::bindings::addon::provider::http::Response {
        status: response.status,
        headers: response.headers,
        body: response.body,
    })
}

pub(crate) fn log(level: Level, message: &str) {
    with(|h| h.logs.push((level, message.to_owned())));
}

pub(crate) fn addon_id() -> String {
    with(|h| h.addon_id.clone())
}

pub(crate) fn config(key: &str) -> Option<String> {
    with(|h| h.config.get(key).cloned())
}

pub(crate) fn secret(name: &str) -> Option<String> {
    with(|h| h.secrets.get(name).cloned())
}

pub(crate) fn now_ms() -> u64 {
    let fixed = with(|h| h.now_ms);
    fixed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    })
}

pub(crate) fn random_bytes(len: u32) -> Vec<u8> {
    // Distinct values for tests; not for secrets (the real host gives cryptographic ones).
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    (0..len)
        .map(|i| {
            let mut h = state.build_hasher();
            h.write_u32(i);
            h.finish() as u8
        })
        .collect()
}

/// A Bitrise provision of `resource_id` (also its app id) on `plan`, with an API token.
pub fn provision_request(resource_id: &str, plan: &str) -> ProvisionRequest {
    ProvisionRequest {
        resource_id: resource_id.into(),
        platform: Platform::Bitrise,
        app_id: resource_id.into(),
        plan: plan.into(),
        app_title: None,
        api_token: Some("test-api-token".into()),
        email: None,
        region: None,
        callback_url: None,
        options: Vec::new(),
    }
}

/// A plan change of `resource_id` from `previous_plan` to `plan`.
pub fn change_plan_request(resource_id: &str, previous_plan: &str, plan: &str) -> ChangePlanRequest {
    ChangePlanRequest {
        resource_id: resource_id.into(),
        platform: Platform::Bitrise,
        app_id: resource_id.into(),
        previous_plan: previous_plan.into(),
        plan: plan.into(),
    }
}

/// A deprovision of `resource_id`, on `plan`.
pub fn deprovision_request(resource_id: &str, plan: &str) -> DeprovisionRequest {
    DeprovisionRequest {
        resource_id: resource_id.into(),
        platform: Platform::Bitrise,
        app_id: resource_id.into(),
        plan: plan.into(),
    }
}

/// The identity the host verified, as a plugin's HTTP handler gets it: a Bitrise app
/// `resource_id` on `plan`, on `surface` (the dashboard has a CSRF token, the API none), for
/// add-on `test` at `/addons/test`.
pub fn identity(surface: crate::web::Surface, resource_id: &str, plan: &str) -> crate::web::Identity {
    crate::web::Identity {
        surface,
        resource_id: resource_id.into(),
        platform: Platform::Bitrise,
        app_id: resource_id.into(),
        plan: plan.into(),
        app_title: None,
        unverified_email: None,
        csrf_token: (surface == crate::web::Surface::Dashboard).then(|| "test-csrf-token".into()),
        csp_nonce: None,
        base_path: "/addons/test".into(),
    }
}
