//! A realistic-size plugin: 2 MB of embedded data (think templates, tables, certificates).

use addon_sdk::{Provider, ProvisionReply, ProvisionRequest, Result, export_provider};

static BLOB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/blob.bin"));

struct Bulky;

impl Provider for Bulky {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let i = req.resource_id.len() * 7919 % BLOB.len();
        Ok(ProvisionReply::new().var("BULKY_BYTE", BLOB[i].to_string()).var("BULKY_SIZE", BLOB.len().to_string()))
    }
}

export_provider!(Bulky);
