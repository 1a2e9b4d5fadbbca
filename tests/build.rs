//! Builds the example plugins and the test-only guest programs for `wasm32-wasip2` from
//! source, once per change, and exposes their paths as constants (`PLUGIN_*`).
//!
//! The nested cargo uses its own target directory, so it never waits on the outer build's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[(&str, &str)] = &[
    ("CREDENTIALS", "credentials"),
    ("QUOTA", "quota"),
    ("WEBHOOKS", "webhooks"),
    ("MISBEHAVE", "misbehave"),
    ("VERSIONED_A", "versioned-a"),
    ("VERSIONED_B", "versioned-b"),
    ("NOT_A_PLUGIN", "not-a-plugin"),
    ("FUTURE_WIT", "future-wit"),
    ("BULKY", "bulky"),
    ("JOBS", "jobs-guest"),
    ("LEGACY_WIT", "legacy-wit"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; share one wasm target dir per <target>.
    let target_dir = out.ancestors().nth(4).map(|t| t.join("wasm-plugins")).unwrap_or_else(|| out.join("wasm"));

    for dir in ["wit", "guest-sdk", "plugins", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "plugin", "--target-dir"])
        .arg(&target_dir);
    for (_, package) in PLUGINS {
        cmd.args(["-p", package]);
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the wasm plugins");
    assert!(
        status.success(),
        "building the plugins for wasm32-wasip2 failed; is the target installed? (rustup target add wasm32-wasip2)"
    );

    let mut consts = String::new();
    for (name, package) in PLUGINS {
        // cdylibs are named with underscores, binaries keep their dashes.
        let dir = target_dir.join("wasm32-wasip2/plugin");
        let path = [package.replace('-', "_"), package.to_string()]
            .into_iter()
            .map(|name| dir.join(format!("{name}.wasm")))
            .find(|p| p.exists())
            .unwrap_or_else(|| dir.join(format!("{package}.wasm")));
        assert!(Path::new(&path).exists(), "missing plugin artefact {}", path.display());
        consts.push_str(&format!(
            "/// `{package}` built for wasm32-wasip2.\npub const PLUGIN_{name}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    consts.push_str(&format!(
        "/// The repository root.\npub const REPO_ROOT: &str = {:?};\n",
        root.display().to_string()
    ));
    std::fs::write(out.join("plugins.rs"), consts).expect("writing plugins.rs");
}
