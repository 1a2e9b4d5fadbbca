//! Test-only plugin, version "a" of two (see `plugin.rs`).

const VERSION: &str = "a";

include!("plugin.rs");
