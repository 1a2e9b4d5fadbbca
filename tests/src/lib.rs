//! Paths of the plugins built from source for these tests (see `build.rs`), and the config
//! files the tests and benchmarks hand to the real binary.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));

mod addon_toml;
pub mod browser;
pub mod languages;
pub mod native;
pub use addon_toml::{AddonToml, addons_toml};
pub mod postgres;
