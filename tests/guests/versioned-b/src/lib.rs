//! Test-only plugin, version "b" of two (the code is versioned-a's `plugin.rs`).

const VERSION: &str = "b";

include!("../../versioned-a/src/plugin.rs");
