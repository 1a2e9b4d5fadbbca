//! Paths of the plugins built from source for these tests (see `build.rs`).

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
