//! A real browser for the tests of the add-on's pages: Debian's `chromium`, headless, driven
//! over the DevTools protocol by Playwright's maintained client library (`playwright-core`,
//! npm, installed once into the target folder; it downloads no browser of its own). A test
//! runs a script from `tests/browser/` with its inputs as JSON and reads its observations
//! back as JSON; screenshots land in `<target>/screenshots/`.

use std::path::PathBuf;
use std::process::Command;

pub const PLAYWRIGHT: &str = "playwright-core@1.56.1";

/// Flags for a headless Chromium in a container: no sandbox (root), no GPU, nothing that
/// reaches the network on its own.
pub const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
}

/// Whether a missing browser fails the run (CI) rather than skipping the test.
pub fn required() -> bool {
    std::env::var_os("ADDON_REQUIRE_BROWSER").is_some()
}

/// The Chromium to drive: `ADDON_CHROMIUM`, or Debian's.
pub fn chromium() -> Result<PathBuf, String> {
    let path = std::env::var_os("ADDON_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("no Chromium at {} (apt-get install chromium, or set ADDON_CHROMIUM)", path.display()))
    }
}

/// Where screenshots go.
pub fn screenshots() -> PathBuf {
    target().join("screenshots")
}

/// `playwright-core`'s folder, installed first if needed (one test at a time, under a lock).
fn playwright() -> Result<PathBuf, String> {
    let dir = target().join("browser-tools");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|e| format!("lock: {e}"))?;
    lock.lock().map_err(|e| format!("lock: {e}"))?;
    let module = dir.join("node_modules/playwright-core");
    if !module.join("package.json").exists() {
        let output = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
            .arg(&dir)
            .arg(PLAYWRIGHT)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .output()
            .map_err(|e| format!("npm: {e}"))?;
        if !output.status.success() {
            return Err(format!("npm install {PLAYWRIGHT}: {}", String::from_utf8_lossy(&output.stderr)));
        }
    }
    Ok(dir.join("node_modules"))
}

/// Run `tests/browser/{script}` with `input` (Chromium's path and flags and the screenshot
/// folder are added); what it printed last, as JSON. `Err` says what is missing or failed.
pub fn run(script: &str, mut input: serde_json::Value) -> Result<serde_json::Value, String> {
    let chromium = chromium()?;
    let modules = playwright()?;
    std::fs::create_dir_all(screenshots()).map_err(|e| format!("screenshots: {e}"))?;
    input["chromium"] = chromium.display().to_string().into();
    input["flags"] = CHROMIUM_FLAGS.iter().map(|f| serde_json::Value::from(*f)).collect();
    input["screenshots"] = screenshots().display().to_string().into();
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/browser")).join(script);
    let output = Command::new("node")
        .arg(&script)
        .arg(input.to_string())
        .env("NODE_PATH", &modules)
        .output()
        .map_err(|e| format!("node {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!("{} failed ({}):\n{stdout}\n{stderr}", script.display(), output.status));
    }
    let last = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("{} printed no JSON ({e}):\n{stdout}\n{stderr}", script.display()))
}
