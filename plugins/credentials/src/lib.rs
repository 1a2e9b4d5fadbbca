//! Example add-on: issues per-app credentials.
//!
//! Provisioning an app exports `<ADDON>_HOST_URL` (where the app's builds reach the service)
//! and `<ADDON>_AUTH_SECRET` (a secret generated once per app and kept in the add-on's KV,
//! so repeats and re-provisions return the same value). Deprovisioning forgets the secret,
//! so a later provision issues a new one. The variable prefix is the add-on's id in upper
//! case, which is what Xervo requires of config var names.
//!
//! Config: `host_url` (required) — the service's public base URL.

use addon_sdk::{
    ChangePlanReply, ChangePlanRequest, DeprovisionRequest, Error, Provider, ProvisionReply, ProvisionRequest, Result,
    export_provider, kv,
};

struct Credentials;

fn prefix() -> String {
    addon_sdk::addon_id().to_ascii_uppercase().replace('-', "_")
}

fn secret_key(resource_id: &str) -> String {
    format!("secret/{resource_id}")
}

fn host_url(resource_id: &str) -> Result<String> {
    let base = addon_sdk::config("host_url").ok_or_else(|| Error::internal("config `host_url` is not set"))?;
    Ok(format!("{}/apps/{resource_id}", base.trim_end_matches('/')))
}

impl Provider for Credentials {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let key = secret_key(&req.resource_id);
        let secret = match kv().get_string(&key)? {
            Some(existing) => existing,
            None => {
                let fresh = addon_sdk::random_hex(24);
                // compare-and-swap so that two racing first provisions agree on one secret.
                if !kv().compare_and_swap(&key, None, Some(fresh.as_bytes()))? {
                    kv().get_string(&key)?.ok_or_else(|| Error::internal("secret vanished"))?
                } else {
                    fresh
                }
            }
        };
        addon_sdk::info!("issued credentials for {} ({:?})", req.resource_id, req.platform);
        let prefix = prefix();
        Ok(ProvisionReply::new()
            .var(format!("{prefix}_HOST_URL"), host_url(&req.resource_id)?)
            .var(format!("{prefix}_AUTH_SECRET"), secret)
            .message("Credentials issued. Use them from your builds."))
    }

    fn change_plan(req: ChangePlanRequest) -> Result<ChangePlanReply> {
        addon_sdk::info!("{} moves from {} to {}", req.resource_id, req.previous_plan, req.plan);
        Ok(ChangePlanReply::new().message(format!("Now on {}.", req.plan)))
    }

    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        let existed = kv().delete(&secret_key(&req.resource_id))?;
        addon_sdk::info!("revoked credentials for {} (existed: {existed})", req.resource_id);
        Ok(())
    }
}

export_provider!(Credentials);

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

    #[test]
    fn without_host_url_it_fails_and_keeps_nothing() {
        let host = TestHost::new();
        let failed = host.call(|| Credentials::provision(provision_request("app-2", "free")));
        assert!(failed.is_err());
        assert!(host.kv_keys().is_empty(), "a failed call's secret was kept");
    }
}
