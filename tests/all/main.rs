//! End-to-end tests of addon-host: the real router (driven with `oneshot`) or the real binary
//! on 127.0.0.1, real sled in temporary folders, and plugins compiled from `plugins/` and
//! `tests/guests/` by this crate's build script.

mod process;
mod support;
mod watchdog;
mod wit;

mod allocator;
mod bitrise;
mod browser;
mod cli;
mod concurrency;
mod config;
mod conformance;
mod crash;
mod dia;
mod fuzz;
mod hostile;
mod hosts;

mod disk;
mod durability;
mod edge;
mod isolation;
mod jobs;
mod kit;
mod languages;
mod limits;
mod liveness;
mod load;
mod observe;
mod outbound;
mod plans;
mod sso;
mod tenants;
mod upgrade;
mod web;
mod xervo;
