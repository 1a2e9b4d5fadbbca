//! # addon-sdk — write an addon-host plugin in Rust
//!
//! An add-on plugin is a WebAssembly component that answers a platform's provisioning
//! calls. addon-host speaks the platforms' protocols (Bitrise, Xervo), authenticates,
//! deduplicates, stores the records and replays replies; your plugin only decides what a
//! provision, a plan change and a deprovision *mean* for your service.
//!
//! Implement [`Provider`] and export it with [`export_provider!`]:
//!
//! ```no_run
//! use addon_sdk::{export_provider, kv, Error, Provider, ProvisionReply, ProvisionRequest, Result};
//!
//! struct Hello;
//!
//! impl Provider for Hello {
//!     fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
//!         if req.plan == "gold" {
//!             return Err(Error::invalid("the gold plan is retired"));
//!         }
//!         // Keep one greeting per app: a repeated provision returns the same value.
//!         let key = format!("greeting/{}", req.resource_id);
//!         let greeting = match kv().get_string(&key)? {
//!             Some(existing) => existing,
//!             None => {
//!                 let fresh = format!("hello-{}", addon_sdk::random_hex(8));
//!                 kv().set_string(&key, &fresh)?;
//!                 fresh
//!             }
//!         };
//!         addon_sdk::info!("provisioned {} on {}", req.resource_id, req.plan);
//!         Ok(ProvisionReply::new().var("HELLO_GREETING", greeting))
//!     }
//! }
//!
//! export_provider!(Hello);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component the host loads (crate type `cdylib`).
//!
//! A plugin runs in a fresh sandbox for every call, with no filesystem, network or
//! environment: everything it keeps between calls goes through [`kv()`], whose writes are
//! committed only if the call succeeds.

#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        default_bindings_module: "addon_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        additional_derives: [PartialEq, Eq],
    });
}

mod error;
mod host;
mod reply;

pub use bindings::addon::provider::types::{EnvVar, Platform};
pub use bindings::{ChangePlanRequest, DeprovisionRequest, ProvisionRequest};
pub use error::{Error, Result};
pub use host::{Kv, KvError, Level, addon_id, config, kv, log, now_ms, random_bytes, random_hex, secret};
pub use reply::{ChangePlanReply, ProvisionReply};

/// What an add-on does when a platform provisions, re-plans or removes a resource.
///
/// Each function runs in a fresh instance; keep state in [`kv()`]. A returned [`Error`]
/// reaches the platform as a refusal and discards every key-value write of the call.
pub trait Provider {
    /// Create the resource and return the variables to export to the app. The host replays
    /// the stored reply for identical repeats, so this runs once per distinct request.
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply>;

    /// Move the resource to `req.plan`. The default accepts every change and keeps the
    /// provisioned variables.
    fn change_plan(req: ChangePlanRequest) -> Result<ChangePlanReply> {
        let _ = req;
        Ok(ChangePlanReply::new())
    }

    /// Release the resource. The default does nothing.
    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        let _ = req;
        Ok(())
    }
}

/// Export a [`Provider`] implementation as the plugin's entry points. Use it once per crate.
#[macro_export]
macro_rules! export_provider {
    ($provider:ty) => {
        #[doc(hidden)]
        pub struct __AddonSdkExport;

        impl $crate::bindings::Guest for __AddonSdkExport {
            fn provision(
                req: $crate::bindings::ProvisionRequest,
            ) -> ::core::result::Result<$crate::bindings::ProvisionReply, $crate::bindings::ProviderError> {
                <$provider as $crate::Provider>::provision(req)
                    .map($crate::ProvisionReply::into_wit)
                    .map_err($crate::Error::into_wit)
            }

            fn change_plan(
                req: $crate::bindings::ChangePlanRequest,
            ) -> ::core::result::Result<$crate::bindings::ChangePlanReply, $crate::bindings::ProviderError> {
                <$provider as $crate::Provider>::change_plan(req)
                    .map($crate::ChangePlanReply::into_wit)
                    .map_err($crate::Error::into_wit)
            }

            fn deprovision(
                req: $crate::bindings::DeprovisionRequest,
            ) -> ::core::result::Result<(), $crate::bindings::ProviderError> {
                <$provider as $crate::Provider>::deprovision(req).map_err($crate::Error::into_wit)
            }
        }

        $crate::bindings::__export_plugin!(__AddonSdkExport with_types_in $crate::bindings);
    };
}
