//! The platform operations: provision (deduplicated, re-provision on a changed request),
//! change plan and deprovision, each one plugin call through the call engine ([`super::call`])
//! under the resource's lock, and the rules a reply must pass before it is stored (the
//! platform's variable rules, the build API token's variable).

use std::sync::Arc;

use super::call::{call_failed, stored};
use super::record::{self, Record, Status};
use super::request::{Caller, ConfigRules, Provision, Target};
use super::{Addon, Service, storage_work};
use crate::clock;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::runtime::{CallFailure, ChangePlanRequest, DeprovisionRequest, Export, short_version};

/// What a deprovision found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deprovisioned {
    /// The resource was active and is now released.
    Released(Record),
    /// It had been deprovisioned before.
    AlreadyGone(Record),
    /// No such resource was ever provisioned.
    Unknown,
}

/// The result of a provision: the record as stored, and whether this call created it.
#[derive(Debug)]
pub struct Provisioned {
    pub record: Record,
    pub created: bool,
}

impl Service {
    /// Provision a resource. An identical repeat replays the stored reply without calling the
    /// plugin; a different request for an active resource re-provisions it (the plugin is
    /// called again and its new reply stored), as Bitrise's "create or update" asks.
    ///
    /// [`Target::App`] asks the host to choose: the active resource already provisioned for
    /// the same platform app identity, or a fresh id.
    pub async fn provision(
        &self,
        addon: &Arc<Addon>,
        caller: &Caller,
        req: Provision,
    ) -> Result<Provisioned, ServiceError> {
        let budget = self.budget(caller.platform);
        addon.check_plan(&req.plan)?;
        let platform = caller.platform;
        let (resource_id, alias, _app_guard) = match &req.target {
            Target::Resource(id) => (id.clone(), None, None),
            Target::App => {
                let alias_key = format!("{}/{}", platform.name(), req.app_id);
                let app_key = format!("{}/{alias_key}", addon.id());
                let guard = self.lock(&self.app_locks, "app", app_key, addon, &budget).await?;
                let (a, key) = (addon.clone(), alias_key.clone());
                let active = storage_work(move || match a.store.alias(&key)? {
                    Some(id) if a.record(&id)?.is_some_and(|r| r.is_active()) => Ok(Some(id)),
                    _ => Ok(None),
                });
                match active.await? {
                    Some(id) => (id, None, Some(guard)),
                    None => {
                        let id = new_resource_id(addon.id())?;
                        (id.clone(), Some((alias_key, id)), Some(guard))
                    }
                }
            }
        };
        let _lock = self.lock_resource(addon, &resource_id, &budget).await?;
        let existing = stored(addon, &resource_id).await?.filter(Record::is_active);
        let token_of = existing.clone();
        if existing.as_ref().is_some_and(|r| !r.belongs_to(platform)) {
            return Err(no_resource(&resource_id));
        }
        let digest = record::request_digest(&req, platform, &resource_id);
        if let Some(record) = existing.as_ref().filter(|r| r.request_digest == digest) {
            Metrics::addon_counter(&self.metrics.replays, addon.id());
            return Ok(Provisioned { record: record.clone(), created: false });
        }
        let now = clock::now_ms();
        let created = existing.is_none();
        if created {
            // A new resource needs room; re-provisions, plan changes and deprovisions go on.
            self.storage.check_room()?;
        }
        let created_ms = existing.as_ref().map_or(now, |r| r.created_ms);
        let alias = alias.as_ref().map(|(k, id)| (k.as_str(), id.as_str()));
        let export = Export::Provision(req.to_wit(platform, &resource_id));
        let rules = caller.rules.as_ref();
        let record = self
            .run(addon, &budget, export, alias, |answer, version| {
                check_config(addon, rules, "provision", version, &with_token_var(addon, &answer.config))?;
                Ok(Record {
                    api_token: self.issue_token(addon, &resource_id, created_ms, token_of.as_ref()),
                    resource_id: resource_id.clone(),
                    platform: platform.name().to_owned(),
                    app_id: req.app_id.clone(),
                    plan: req.plan.clone(),
                    app_title: req.app_title.clone(),
                    request_digest: digest.clone(),
                    config: answer.config.clone(),
                    message: answer.message.clone(),
                    status: Status::Active,
                    plugin_version: version.to_owned(),
                    created_ms,
                    updated_ms: now,
                })
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = %record.resource_id, plan = %record.plan, created, "provisioned");
        Ok(Provisioned { record, created })
    }

    /// Move an active resource to another plan. The same plan again is a no-op success.
    pub async fn change_plan(
        &self,
        addon: &Arc<Addon>,
        caller: &Caller,
        resource_id: &str,
        plan: &str,
    ) -> Result<Record, ServiceError> {
        let budget = self.budget(caller.platform);
        addon.check_plan(plan)?;
        let _lock = self.lock_resource(addon, resource_id, &budget).await?;
        let current = stored(addon, resource_id)
            .await?
            .filter(|r| r.is_active() && r.belongs_to(caller.platform))
            .ok_or_else(|| no_resource(resource_id))?;
        if current.plan == plan {
            return Ok(current);
        }
        let request = ChangePlanRequest {
            resource_id: resource_id.to_owned(),
            platform: caller.platform.to_wit(),
            app_id: current.app_id.clone(),
            previous_plan: current.plan.clone(),
            plan: plan.to_owned(),
        };
        let rules = caller.rules.as_ref();
        let record = self
            .run(addon, &budget, Export::ChangePlan(request), None, |answer, version| {
                let mut next = current.clone();
                next.plan = plan.to_owned();
                merge_config(&mut next.config, &answer.config);
                check_config(addon, rules, "change-plan", version, &with_token_var(addon, &next.config))?;
                next.message = answer.message.clone().or(next.message);
                next.plugin_version = version.to_owned();
                next.updated_ms = clock::now_ms();
                Ok(next)
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = resource_id, plan, "plan changed");
        Ok(record)
    }

    /// Deprovision a resource. Only an active resource calls the plugin; repeats succeed
    /// without a call, so the operation is idempotent. The record is kept, marked
    /// deprovisioned, so the platform's later SSO or repeats can be told what happened.
    pub async fn deprovision(
        &self,
        addon: &Arc<Addon>,
        caller: &Caller,
        resource_id: &str,
    ) -> Result<Deprovisioned, ServiceError> {
        let budget = self.budget(caller.platform);
        let _lock = self.lock_resource(addon, resource_id, &budget).await?;
        let current = match stored(addon, resource_id).await? {
            None => return Ok(Deprovisioned::Unknown),
            Some(r) if !r.belongs_to(caller.platform) => return Err(no_resource(resource_id)),
            Some(r) if !r.is_active() => return Ok(Deprovisioned::AlreadyGone(r)),
            Some(r) => r,
        };
        let request = DeprovisionRequest {
            resource_id: resource_id.to_owned(),
            platform: caller.platform.to_wit(),
            app_id: current.app_id.clone(),
            plan: current.plan.clone(),
        };
        let gone = self
            .run(addon, &budget, Export::Deprovision(request), None, |_, version| {
                let mut gone = current.clone();
                gone.status = Status::Deprovisioned;
                gone.plugin_version = version.to_owned();
                gone.updated_ms = clock::now_ms();
                Ok(gone)
            })
            .await?;
        tracing::info!(addon = addon.id(), resource = resource_id, "deprovisioned");
        Ok(Deprovisioned::Released(gone))
    }
}

/// The answer for a resource that does not exist, or that another platform created (to this
/// platform, it does not exist either).
pub(super) fn no_resource(resource_id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no provisioned resource `{resource_id}`"))
}

/// A fresh resource id: URL-safe, starting with a letter, unguessable.
fn new_resource_id(addon_id: &str) -> Result<String, ServiceError> {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServiceError::host("no randomness for a resource id", anyhow::anyhow!("{e}")))?;
    Ok(format!("{addon_id}-{}", hex::encode(bytes)))
}

/// Refuse a reply whose variables break the calling platform's rules: the platform gets a
/// 5xx naming the variable, and nothing is stored.
fn check_config(
    addon: &Addon,
    rules: &dyn ConfigRules,
    call: &'static str,
    version: &str,
    config: &[(String, String)],
) -> Result<(), ServiceError> {
    match rules.problem(config) {
        None => Ok(()),
        Some(problem) => Err(call_failed(addon, call, short_version(version), CallFailure::InvalidReply(problem))),
    }
}

/// The variables a platform will get, for its rules: the plugin's and, when the add-on
/// issues build API tokens, the token's (whose value the host makes).
fn with_token_var(addon: &Addon, config: &[(String, String)]) -> Vec<(String, String)> {
    let mut vars = config.to_vec();
    if addon.config.web.build_api {
        vars.push((addon.config.web.token_var(addon.id()), "abt1.token".into()));
    }
    vars
}

/// Overlay a plan change's variables on the provisioned ones.
fn merge_config(config: &mut Vec<(String, String)>, changes: &[(String, String)]) {
    for (key, value) in changes {
        match config.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => config.push((key.clone(), value.clone())),
        }
    }
}
