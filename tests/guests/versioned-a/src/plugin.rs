// Shared by versioned-a and versioned-b, which differ only in `VERSION`.

use addon_sdk::{
    ChangePlanReply, ChangePlanRequest, Provider, ProvisionReply, ProvisionRequest, Result, export_provider, kv,
};

struct Versioned;

impl Provider for Versioned {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        kv::set_string(&format!("served-by/{}", req.resource_id), VERSION)?;
        Ok(ProvisionReply::new().var("VERSIONED_VERSION", VERSION).var("VERSIONED_PLAN", req.plan))
    }

    fn change_plan(req: ChangePlanRequest) -> Result<ChangePlanReply> {
        kv::set_string(&format!("plan-by/{}", req.resource_id), VERSION)?;
        Ok(ChangePlanReply::new().var("VERSIONED_VERSION", VERSION).message(format!("version {VERSION}")))
    }
}

export_provider!(Versioned);

/// Its HTTP handler answers with its version (and records it), so swaps can be watched on
/// the HTTP surfaces too.
impl addon_sdk::web::Web for Versioned {
    fn handle(req: addon_sdk::web::Request) -> addon_sdk::web::Response {
        let who = req.identity();
        if req.path() == "/dashboard/" {
            let page = format!("<!DOCTYPE html><html><head>{}</head><body><p>version {VERSION}</p></body></html>", who.beam());
            return addon_sdk::web::Response::html(page);
        }
        match kv::set_string(&format!("http-by/{}", who.resource_id), VERSION) {
            Ok(()) => addon_sdk::web::Response::text(VERSION),
            Err(e) => addon_sdk::web::Response::new(500).body(format!("{e:?}")),
        }
    }
}

addon_sdk::export_web!(Versioned);
