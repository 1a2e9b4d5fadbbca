//! Where the capability modules ([`crate::kv`], [`crate::config`], [`crate::log`],
//! [`crate::random`], [`crate::clock`]) reach the host: the WIT imports in a plugin, the
//! testing double (`crate::testing`) in a partner's `cargo test`. Both offer the same names.
// Off wasm32 (a partner's `cargo test`), the testing double answers instead of the host.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing as imp;

/// The host's imports, under the names the testing double also has.
#[cfg(target_arch = "wasm32")]
pub(crate) mod imp {
    pub(crate) use crate::bindings::addon::provider::http::send as http_send;
    pub(crate) use crate::bindings::addon::provider::jobs::enqueue as jobs_enqueue;
    use crate::bindings::addon::provider::{config, env, kv, log};
    pub(crate) use config::{get as config, secret};
    pub(crate) use env::{now_ms, random_bytes};
    pub(crate) use kv::{compare_and_swap as kv_compare_and_swap, delete as kv_delete, get as kv_get};
    pub(crate) use kv::{list_keys as kv_list_keys, set as kv_set};
    pub(crate) use log::log;

    pub(crate) fn addon_id() -> String {
        config::addon_id()
    }
}
