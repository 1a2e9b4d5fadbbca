//! Plugins in JavaScript and Python, built from source at test time by their own generators,
//! pinned to releases whose output links with this host: componentize-js 0.23.0 (npm; its
//! own CLI, because `jco componentize` 1.35's sandboxed WIT reader cannot open the WIT folder
//! it is given) and componentize-py 0.25.1 (PyPI, in a venv). The tools are installed once
//! into the target folder; a build is kept under a hash of its inputs (the WIT, the SDK
//! layer, the plugin's sources), and a file lock lets one test at a time install or build.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The SDKs' HTTP handler layers, for plugins of the `web` world.
const WEB_JS: &str = "guest-sdk/js/addon-web.js";
const WEB_PY: &str = "guest-sdk/python/addon_web.py";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Js,
    Python,
}

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Whether a missing generator fails the run (CI) rather than skipping the test.
pub fn required() -> bool {
    std::env::var_os("ADDON_REQUIRE_GUEST_LANGS").is_some()
}

/// Build the plugin in `dir` (relative to the repository, e.g. `plugins/credentials-js`);
/// the path of its component. `Err` says what is missing or what the generator printed.
pub fn build(lang: Lang, dir: &str) -> Result<PathBuf, String> {
    let (out, _lock) = locked()?;

    let (source, sdk, pin) = match lang {
        Lang::Js => ("app.js", "guest-sdk/js/addon-sdk.js", COMPONENTIZE_JS),
        Lang::Python => ("app.py", "guest-sdk/python/addon_sdk.py", COMPONENTIZE_PY),
    };
    let mut hash = Sha256::new();
    let deps = ["cli", "clocks", "filesystem", "http", "io", "random", "sockets"].map(|d| format!("wit/deps/{d}.wit"));
    for file in ["wit/provider.wit", sdk, &format!("{dir}/{source}")].into_iter().chain(deps.iter().map(String::as_str))
    {
        hash.update(std::fs::read(root().join(file)).map_err(|e| format!("{file}: {e}"))?);
    }
    hash.update(pin.as_bytes());
    let name = dir.rsplit('/').next().unwrap_or(dir);
    let wasm = out.join(format!("{name}-{}.wasm", &hex::encode(hash.finalize())[..16]));
    if wasm.exists() {
        return Ok(wasm);
    }

    // A plugin that serves HTTP exports `wasi:http/incoming-handler`: the `web` world; one
    // that runs jobs exports `run-job`: the `worker` world.
    let text = std::fs::read_to_string(root().join(dir).join(source)).map_err(|e| format!("{dir}: {e}"))?;
    let world = if text.contains("incomingHandler") || text.contains("class IncomingHandler") {
        "web"
    } else if text.contains("runJob") || text.contains("def run_job") {
        "worker"
    } else {
        "plugin"
    };
    let build = out.join(format!("build-{name}"));
    let _ = std::fs::remove_dir_all(&build);
    for file in std::iter::once("wit/provider.wit").chain(deps.iter().map(String::as_str)) {
        copy(&root().join(file), &build.join(file))?;
    }
    let built = build.join("out.wasm");
    let mut command = match lang {
        Lang::Js => {
            let bin = install(lang)?.join("componentize-js");
            // The repository's layout, so the plugin's relative import of the SDK resolves.
            copy(&root().join(sdk), &build.join(sdk))?;
            copy(&root().join(WEB_JS), &build.join(WEB_JS))?;
            copy(&root().join(dir).join(source), &build.join(dir).join(source))?;
            let mut c = Command::new(bin);
            c.arg(format!("{dir}/{source}"))
                .args(["--wit", "wit", "--world-name", world, "-o", "out.wasm"])
                // Leave out StarlingMonkey's own fetch() and fetch-event: outbound calls go
                // through the SDK's `http` (which the host checks), and a `web` plugin exports
                // its handler itself (addon-web.js).
                .args(["-d", "http", "-d", "fetch-event"]);
            c
        }
        Lang::Python => {
            let bin = install(lang)?.join("componentize-py");
            copy(&root().join(sdk), &build.join("addon_sdk.py"))?;
            copy(&root().join(WEB_PY), &build.join("addon_web.py"))?;
            copy(&root().join(dir).join(source), &build.join(source))?;
            let mut c = Command::new(bin);
            c.args(["-d", "wit", "-w", world, "componentize", "app", "-o", "out.wasm"]);
            c
        }
    };
    run(command.current_dir(&build))?;
    std::fs::rename(&built, &wasm).map_err(|e| format!("{}: {e}", built.display()))?;
    Ok(wasm)
}

/// The folder builds go to, and the lock on it (held until dropped).
fn locked() -> Result<(PathBuf, std::fs::File), String> {
    let out = target().join("guest-plugins");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let lock = std::fs::File::create(out.join(".lock")).map_err(|e| format!("lock: {e}"))?;
    lock.lock().map_err(|e| format!("lock: {e}"))?;
    Ok((out, lock))
}

/// The folder holding the generator's command (`componentize-js` or `componentize-py`),
/// installed first if needed; for a project built by its own build command (put it on PATH).
pub fn tools(lang: Lang) -> Result<PathBuf, String> {
    let (_, _lock) = locked()?;
    install(lang)
}

/// Install the generator into the target folder unless it is there; its command's folder.
/// The caller holds the lock.
fn install(lang: Lang) -> Result<PathBuf, String> {
    let tools = target().join("guest-tools");
    match lang {
        Lang::Js => {
            let bin = tools.join("js/node_modules/.bin");
            if !bin.join("componentize-js").exists() {
                run(Command::new("npm")
                    .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
                    .arg(tools.join("js"))
                    .arg(COMPONENTIZE_JS))?;
            }
            Ok(bin)
        }
        Lang::Python => {
            let bin = tools.join("py/bin");
            if !bin.join("componentize-py").exists() {
                run(Command::new("python3").args(["-m", "venv"]).arg(tools.join("py")))?;
                run(Command::new(bin.join("pip")).args(["install", "--quiet", COMPONENTIZE_PY]))?;
            }
            Ok(bin)
        }
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::copy(from, to).map(drop).map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| format!("{shown}: {e}"))?;
    if !output.status.success() {
        let _ = std::io::stderr().write_all(&output.stderr);
        return Err(format!(
            "{shown} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
