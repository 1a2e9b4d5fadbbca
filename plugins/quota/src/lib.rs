//! Example add-on: storage whose behaviour depends on the plan.
//!
//! Each plan grants a quota (`<ADDON>_QUOTA_MB`) and a bucket URL signed with the add-on's
//! `signing_key` secret. Rules that show how a plugin refuses work:
//! - the free tier has a fixed capacity (`free_capacity` in config, counted with
//!   compare-and-swap); when it is full, provisioning on `free` is *unavailable*;
//! - moving to `enterprise` is not instant (unavailable, with a documentation link);
//! - a downgrade to a plan whose quota is below what the resource has stored is refused.
//!   Usage is taken from the provision's `usage_mb` option (Xervo) and defaults to 0.
//!
//! Config: `bucket_url` (required), `free_capacity` (default 1000), `docs_url`.
//! Secrets: `signing_key` (required).

use addon_sdk::{
    ChangePlanReply, ChangePlanRequest, DeprovisionRequest, Error, Provider, ProvisionReply, ProvisionRequest, Result,
    clock, config, export_provider, kv, log,
};

struct Quota;

const PLANS: &[(&str, u64)] = &[("free", 512), ("pro", 10_240), ("enterprise", 1_048_576)];

fn quota_mb(plan: &str) -> Result<u64> {
    PLANS
        .iter()
        .find(|(name, _)| *name == plan)
        .map(|(_, mb)| *mb)
        .ok_or_else(|| Error::invalid(format!("unknown plan `{plan}`; plans are free, pro, enterprise")))
}

fn prefix() -> String {
    config::addon_id().to_ascii_uppercase().replace('-', "_")
}

/// A stable, unguessable bucket name: a keyed digest of the resource id. (FNV-style mixing
/// keeps the example dependency-free; a real add-on would use HMAC-SHA256.)
fn bucket_name(resource_id: &str) -> Result<String> {
    let key = config::secret("signing_key").ok_or_else(|| Error::internal("secret `signing_key` is not set"))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([b':']).chain(resource_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("b{h:016x}"))
}

fn usage_key(resource_id: &str) -> String {
    format!("res/{resource_id}/usage")
}

fn plan_key(resource_id: &str) -> String {
    format!("res/{resource_id}/plan")
}

fn usage_mb(resource_id: &str) -> Result<u64> {
    Ok(kv::get_string(&usage_key(resource_id))?.and_then(|s| s.parse().ok()).unwrap_or(0))
}

fn vars(resource_id: &str, plan: &str) -> Result<Vec<(String, String)>> {
    let base = config::get("bucket_url").ok_or_else(|| Error::internal("config `bucket_url` is not set"))?;
    let p = prefix();
    Ok(vec![
        (format!("{p}_URL"), format!("{}/{}", base.trim_end_matches('/'), bucket_name(resource_id)?)),
        (format!("{p}_QUOTA_MB"), quota_mb(plan)?.to_string()),
    ])
}

/// Count the resource on the free tier, refusing when the tier is full.
fn take_free_slot() -> Result<()> {
    let capacity: i64 = config::get("free_capacity").and_then(|c| c.parse().ok()).unwrap_or(1000);
    let used = kv::increment("tier/free/used", 1)?;
    if used > capacity {
        // The refusal discards this increment along with every other write of the call.
        let docs = config::get("docs_url").unwrap_or_else(|| "https://example.com/docs/free-tier".into());
        return Err(Error::unavailable_with_docs(
            "The free tier is full right now; try again later or choose pro.",
            docs,
        ));
    }
    Ok(())
}

impl Provider for Quota {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let quota = quota_mb(&req.plan)?;
        let usage: u64 = match req.options.iter().find(|(k, _)| k == "usage_mb") {
            Some((_, v)) => v.parse().map_err(|_| Error::invalid(format!("option usage_mb `{v}` is not a number")))?,
            None => 0,
        };
        if usage > quota {
            return Err(Error::invalid(format!("{usage} MB does not fit the {} plan's {quota} MB", req.plan)));
        }
        let first_time = kv::get(&plan_key(&req.resource_id))?.is_none();
        if first_time && req.plan == "free" {
            take_free_slot()?;
        }
        kv::set_string(&plan_key(&req.resource_id), &req.plan)?;
        kv::set_string(&usage_key(&req.resource_id), &usage.to_string())?;
        kv::set_string(&format!("res/{}/since", req.resource_id), &clock::now_ms().to_string())?;
        log::info!("allocated {quota} MB for {}", req.resource_id);
        let mut reply = ProvisionReply::new().message(format!("{quota} MB ready on the {} plan.", req.plan));
        for (k, v) in vars(&req.resource_id, &req.plan)? {
            reply = reply.var(k, v);
        }
        Ok(reply)
    }

    fn change_plan(req: ChangePlanRequest) -> Result<ChangePlanReply> {
        let new_quota = quota_mb(&req.plan)?;
        if req.plan == "enterprise" && req.previous_plan != "enterprise" {
            let docs = config::get("docs_url").unwrap_or_else(|| "https://example.com/docs/enterprise".into());
            return Err(Error::unavailable_with_docs(
                "Moving to enterprise is not instant: our team will contact you to set it up.",
                docs,
            ));
        }
        let usage = usage_mb(&req.resource_id)?;
        if usage > new_quota {
            log::warn!("refused downgrade of {} to {}", req.resource_id, req.plan);
            return Err(Error::invalid(format!(
                "cannot move to {}: {usage} MB stored exceeds its {new_quota} MB quota; delete data first",
                req.plan
            )));
        }
        if req.plan == "free" && req.previous_plan != "free" {
            take_free_slot()?;
        } else if req.previous_plan == "free" && req.plan != "free" {
            kv::increment("tier/free/used", -1)?;
        }
        kv::set_string(&plan_key(&req.resource_id), &req.plan)?;
        let mut reply = ChangePlanReply::new().message(format!("Quota is now {new_quota} MB."));
        for (k, v) in vars(&req.resource_id, &req.plan)? {
            reply = reply.var(k, v);
        }
        Ok(reply)
    }

    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        if kv::get_string(&plan_key(&req.resource_id))?.as_deref() == Some("free") {
            kv::increment("tier/free/used", -1)?;
        }
        // Remove everything kept for this resource.
        let keys = kv::list_keys(&format!("res/{}/", req.resource_id))?;
        for key in &keys {
            kv::delete(key)?;
        }
        let removed = keys.len();
        log::info!("released {} ({removed} keys)", req.resource_id);
        Ok(())
    }
}

export_provider!(Quota);
