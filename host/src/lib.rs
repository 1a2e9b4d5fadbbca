//! addon-host: serves partners' add-on provisioning APIs from sandboxed WebAssembly plugins.
//!
//! The request path reads top-down: a protocol adapter ([`bitrise`], [`xervo`]) parses the wire format
//! and calls the [`service`], which authenticates, deduplicates, enforces deadlines and
//! stores state ([`storage`]), and hands the add-on's own logic to its plugin through the
//! [`runtime`]. The add-on's own pages and build API ([`web`]) take the same path to the
//! plugin's HTTP handler.
//!
//! Arrows point down only, and a test holds the code to it (`layers.rs`): utilities
//! (`clock`, `blocking`, `logs`) → [`config`] → [`storage`] → `versions` → [`runtime`] →
//! [`metrics`] → [`jobs`] → [`error`] → [`service`] → `http` → `pages` → `web` → the adapters
//! → `admin` → [`app`] → [`conformance`] → `watch` → [`cli`], each using only those before it.

pub(crate) mod admin;
pub mod app;
pub(crate) mod bitrise;
mod blocking;
pub mod cli;
mod clock;
pub mod config;
pub mod conformance;
pub mod error;
pub(crate) mod http;
pub mod jobs;
#[cfg(test)]
mod layers;
mod logs;
pub mod metrics;
pub(crate) mod pages;
pub mod runtime;
pub mod service;
pub mod storage;
pub(crate) mod versions;
pub(crate) mod watch;
pub(crate) mod web;
pub(crate) mod xervo;

pub use app::{app, serve};
/// The allocator the host's binaries install (`#[global_allocator]`), see `main.rs`.
pub use mimalloc::MiMalloc as Allocator;
