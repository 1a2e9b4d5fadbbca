//! Wall-clock time in the two units the host stores: milliseconds (records, versions, the
//! storage heartbeat, the plugin's `env.now-ms`) and seconds (SSO timestamps and tickets).
//! A clock before 1970 reads as 0 rather than failing a request.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn unix_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
