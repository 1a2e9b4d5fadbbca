//! addon-host: serves partners' add-on provisioning APIs from sandboxed WebAssembly plugins.
//!
//! The request path reads top-down: a protocol adapter ([`bitrise`], [`xervo`]) parses the wire format
//! and calls the [`service`], which authenticates, deduplicates, enforces deadlines and
//! stores state ([`storage`]), and hands the add-on's own logic to its plugin through the
//! [`runtime`].

pub mod admin;
pub mod app;
pub mod bitrise;
pub mod cli;
mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod pages;
pub mod runtime;
pub mod service;
pub mod storage;
pub mod versions;
pub mod watch;
pub mod xervo;

pub use app::{app, serve};
