//! The service's own request types. Adapters build these from their wire formats; the service
//! turns them into the plugin contract's (WIT) types only where it calls the runtime, so
//! neither the wire formats nor the WIT bindings leak into the other.

use std::sync::Arc;

use crate::error::ServiceError;
use crate::runtime;

/// The platform a request comes from. A resource remembers the platform that created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Bitrise,
    Xervo,
}

impl Platform {
    /// The name stored in records and alias keys.
    pub fn name(self) -> &'static str {
        match self {
            Platform::Bitrise => "bitrise",
            Platform::Xervo => "xervo",
        }
    }

    /// The platform a record names (records written before a platform existed say "bitrise").
    pub fn from_name(name: &str) -> Platform {
        match name {
            "xervo" => Platform::Xervo,
            _ => Platform::Bitrise,
        }
    }

    pub(crate) fn to_wit(self) -> runtime::Platform {
        match self {
            Platform::Bitrise => runtime::Platform::Bitrise,
            Platform::Xervo => runtime::Platform::Xervo,
        }
    }
}

/// A platform's rules on the variables a plugin returns, checked before anything is stored.
/// The adapter that owns the platform supplies them; the service only asks.
pub trait ConfigRules: Send + Sync {
    /// What is wrong with `config`, if anything.
    fn problem(&self, config: &[(String, String)]) -> Option<String>;
}

/// A platform that puts no rules on the variables.
pub struct NoRules;

impl ConfigRules for NoRules {
    fn problem(&self, _: &[(String, String)]) -> Option<String> {
        None
    }
}

/// The time a request has left: it starts when the service takes the request, and lasts its
/// platform's budget (`server.budgets`).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    until: tokio::time::Instant,
}

impl Budget {
    pub fn start(length: std::time::Duration) -> Budget {
        Budget { until: tokio::time::Instant::now() + length }
    }

    /// When the request's time is up.
    pub fn until(&self) -> tokio::time::Instant {
        self.until
    }

    /// The time left now (zero once it is up).
    pub fn remaining(&self) -> std::time::Duration {
        self.until.saturating_duration_since(tokio::time::Instant::now())
    }
}

/// Who is calling: the platform, and its rules on what the plugin returns.
#[derive(Clone)]
pub struct Caller {
    pub platform: Platform,
    pub rules: Arc<dyn ConfigRules>,
}

impl Caller {
    /// A caller whose platform puts no rules on the variables.
    pub fn unruled(platform: Platform) -> Caller {
        Caller { platform, rules: Arc::new(NoRules) }
    }
}

/// Which resource a provision is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The platform named the resource (Bitrise's app slug, Heroku v3's uuid).
    Resource(String),
    /// The platform named only its app: the host answers with the active resource already
    /// provisioned for that app, or creates one with a fresh id.
    App,
}

/// A provision as the service sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Provision {
    pub target: Target,
    /// The platform's own id of the app the resource is for.
    pub app_id: String,
    pub plan: String,
    pub app_title: Option<String>,
    pub api_token: Option<String>,
    pub email: Option<String>,
    pub region: Option<String>,
    pub callback_url: Option<String>,
    pub options: Vec<(String, String)>,
}

impl Provision {
    /// A provision of `plan` for `app_id`, with every optional field empty.
    pub fn new(target: Target, app_id: impl Into<String>, plan: impl Into<String>) -> Provision {
        Provision {
            target,
            app_id: app_id.into(),
            plan: plan.into(),
            app_title: None,
            api_token: None,
            email: None,
            region: None,
            callback_url: None,
            options: Vec::new(),
        }
    }

    /// The plugin contract's request, for resource `resource_id`.
    pub(crate) fn to_wit(&self, platform: Platform, resource_id: &str) -> runtime::ProvisionRequest {
        runtime::ProvisionRequest {
            resource_id: resource_id.to_owned(),
            platform: platform.to_wit(),
            app_id: self.app_id.clone(),
            plan: self.plan.clone(),
            app_title: self.app_title.clone(),
            api_token: self.api_token.clone(),
            email: self.email.clone(),
            region: self.region.clone(),
            callback_url: self.callback_url.clone(),
            options: self.options.clone(),
        }
    }
}

/// The rule for a resource id or app slug, wherever it comes from (a URL, a body, a token):
/// 1-128 URL-safe characters, never `.` or `..`.
pub fn check_resource_id(field: &str, id: &str) -> Result<(), ServiceError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ServiceError::BadRequest(format!("`{field}` must be 1-128 characters long")));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(ServiceError::BadRequest(format!(
            "`{field}` may contain only letters, digits, '-', '_' and '.'; found {c:?}"
        )));
    }
    if id == "." || id == ".." {
        return Err(ServiceError::BadRequest(format!("`{field}` must not be `{id}`")));
    }
    Ok(())
}
