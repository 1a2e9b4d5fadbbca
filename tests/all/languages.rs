//! Plugins in JavaScript and Python, held to the Rust example's contract: the `credentials`
//! example written in each passes the conformance kit (both platforms' sequences, the
//! refusals, hygiene) and answers exactly as the Rust one does; the host swaps between the
//! Rust and the JavaScript plugin under traffic; and a looping JavaScript call and a
//! memory-hungry Python call are stopped by the same deadline and memory cap as Rust code.
//! Each holds on both compilers: Cranelift's optimised code and Winch's baseline code, which
//! serves a large upload until Cranelift's build is ready (tiered compilation).
//! The components are built from source by their generators (`addon_host_tests::languages`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use addon_host::config::Compiler;
use addon_host_tests::languages::{self, Lang};
use axum::http::Method;

use crate::conformance::{assert_all_pass, credentials, kit};
use crate::process::write_config;
use crate::support::*;

/// The component built from `dir`, or `None` (said loudly) when its generator is not
/// available here; in CI (`ADDON_REQUIRE_GUEST_LANGS`) that is a failure.
///
/// Every guest plugin of the suite is built first (each once, then from its hash): the
/// generators take a core for half a minute a build, and a test timing Cranelift's background
/// compile must not share the machine with them.
pub(crate) async fn built(lang: Lang, dir: &'static str) -> Option<String> {
    let all = move || {
        for (lang, dir) in ALL_GUESTS {
            // Each one's own test reports its failure.
            let _ = languages::build(lang, dir);
        }
        languages::build(lang, dir)
    };
    match tokio::task::spawn_blocking(all).await.unwrap() {
        Ok(path) => Some(path.to_str().unwrap().to_owned()),
        Err(why) if languages::required() => panic!("ADDON_REQUIRE_GUEST_LANGS is set, and {dir} did not build: {why}"),
        Err(why) => {
            eprintln!("\n!!!!!!!! SKIPPED: {dir} did not build, so it was NOT tested: {why} !!!!!!!!\n");
            None
        }
    }
}

/// The JavaScript and Python plugins the suite builds.
const ALL_GUESTS: [(Lang, &str); 8] = [
    (Lang::Js, "plugins/credentials-js"),
    (Lang::Python, "plugins/credentials-py"),
    (Lang::Js, "tests/guests/misbehave-js"),
    (Lang::Python, "tests/guests/misbehave-py"),
    (Lang::Js, "tests/guests/jobs-js"),
    (Lang::Python, "tests/guests/jobs-py"),
    (Lang::Js, "tests/guests/web-js"),
    (Lang::Python, "tests/guests/web-py"),
];

/// Held by the tests that compile the 12–18 MB JavaScript and Python components with
/// Cranelift while they time something: one at a time, so neither waits minutes for the
/// other's compilations on two cores (their watchdogs start after it is taken).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The compile cache every test host shares (see `support::config`).
pub(crate) const SHARED_CACHE: &str = "addon-host-tests-compiled";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_python_credentials_pass_the_conformance_kit_on_both_compilers() {
    for (lang, dir) in [(Lang::Js, "plugins/credentials-js"), (Lang::Python, "plugins/credentials-py")] {
        let Some(plugin) = built(lang, dir).await else { continue };
        for compiler in ["cranelift", "winch"] {
            let scratch = tempfile::tempdir().unwrap();
            let cache = std::env::temp_dir().join(SHARED_CACHE);
            let server = format!("compile_cache = {:?}\ncompiler = {compiler:?}\n", cache.to_str().unwrap());
            let config = write_config(scratch.path(), &format!("{server}{}", credentials(&plugin).to_toml()));
            let (ok, report) = kit(&[&plugin, "--config", config.to_str().unwrap()]).await;
            println!("{dir} on {compiler}:");
            assert_all_pass(ok, &report);
        }
    }
}

/// The same requests to the Rust, JavaScript and Python plugins give the same variables; a
/// repeat keeps the secret; a deprovision forgets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_python_answer_as_the_rust_example_does() {
    for (lang, dir) in [(Lang::Js, "plugins/credentials-js"), (Lang::Python, "plugins/credentials-py")] {
        let Some(plugin) = built(lang, dir).await else { continue };
        let host =
            TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| cfg.addons[0].plugin = plugin.clone().into());
        let rust = TestHost::start();
        for h in [&host, &rust] {
            let first = h.provision("myaddon", TOKEN, "app-1", "free").await;
            assert_eq!(first.status, 201, "{dir}: {}", first.text);
            let keys: Vec<String> = first.envs().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["MYADDON_HOST_URL", "MYADDON_AUTH_SECRET"], "{dir}");
            assert_eq!(first.env("MYADDON_HOST_URL"), "https://myaddon.example.com/apps/app-1");
            let secret = first.env("MYADDON_AUTH_SECRET");
            assert!(secret.len() == 48 && secret.chars().all(|c| c.is_ascii_hexdigit()), "{dir}: {secret}");
            assert_eq!(h.kv("myaddon")["secret/app-1"], secret, "{dir}: the secret is kept in KV");
            let xervo = h.xprovision("xapp", "test").await;
            assert_eq!(xervo.status, 200, "{dir}: {}", xervo.text);
            assert_eq!(xervo.json()["message"], "Credentials issued. Use them from your builds.");
            let gone = h.deprovision("myaddon", TOKEN, "app-1").await;
            assert_eq!(gone.status, 200, "{dir}: {}", gone.text);
            assert!(!h.kv("myaddon").contains_key("secret/app-1"), "{dir}: deprovision forgets the secret");
            let again = h.provision("myaddon", TOKEN, "app-1", "free").await;
            assert_ne!(again.env("MYADDON_AUTH_SECRET"), secret, "{dir}: a new provision gets a new secret");
        }
    }
}

/// The `myaddon` add-on swapped between the Rust and the JavaScript plugin twenty times while
/// four clients provision: no request fails, and the records show both plugins served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_swaps_between_rust_and_javascript_under_traffic() {
    let Some(js) = built(Lang::Js, "plugins/credentials-js").await else { return };
    let host = Arc::new(TestHost::start());
    let rust = host.service.addon("myaddon").unwrap().plugin().sha256.clone();
    let pushed =
        host.admin(Method::POST, "/admin/addons/myaddon/plugins?activate=false", std::fs::read(&js).unwrap()).await;
    assert_eq!(pushed.status, 201, "{}", pushed.text);
    let javascript = pushed.json()["version"]["sha256"].as_str().unwrap().to_owned();

    let traffic = Traffic::start(&host);
    for _ in 0..10 {
        for sha in [&javascript, &rust] {
            let reply = host.admin(Method::POST, &format!("/admin/addons/myaddon/plugins/{sha}/activate"), "").await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    let requests = traffic.stop().await;
    let served: std::collections::HashSet<String> = host
        .service
        .addon("myaddon")
        .unwrap()
        .store()
        .records()
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| addon_host::service::Record::from_bytes(&bytes).unwrap().plugin_version)
        .collect();
    println!("{requests} provisions during 20 swaps, served by {} plugin(s)", served.len());
    assert!(served.contains(&rust) && served.contains(&javascript), "both plugins served: {served:?}");
}

/// Four clients provisioning new apps on `myaddon`, each followed by a repeat that must
/// answer the same; every request must succeed. A steady stream rather than a flood: each
/// client pauses 25 ms between apps, so the traffic leaves the 2-core machine room for the
/// compilations it runs beside (at 10 ms, ~1 core of JS calls on Winch's build in a debug
/// host, the idle-class Cranelift build of the JS plugin took 130–140 s, near the suite's
/// watchdog under its load).
struct Traffic {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(host: &Arc<TestHost>) -> Traffic {
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let workers = (0..4)
            .map(|worker| {
                let (host, stop, served) = (host.clone(), stop.clone(), served.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let slug = format!("w{worker}-{i}");
                        let first = host.provision("myaddon", TOKEN, &slug, "free").await;
                        assert_eq!(first.status, 201, "a provision failed: {}", first.text);
                        let again = host.provision("myaddon", TOKEN, &slug, "free").await;
                        assert_eq!((again.status.as_u16(), again.text), (200, first.text), "a repeat changed");
                        served.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                })
            })
            .collect();
        Traffic { stop, served, workers }
    }

    /// New apps provisioned so far.
    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Stop, check that no request failed, and say how many new apps were provisioned.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let served = self.served.clone();
        for worker in self.workers {
            worker.await.expect("a request failed during the traffic");
        }
        served.load(Ordering::Relaxed)
    }
}

/// What `/admin/status` says of `myaddon`'s plugin.
async fn status(host: &TestHost) -> serde_json::Value {
    let reply = host.admin(Method::GET, "/admin/status", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json()["addons"].as_array().unwrap().iter().find(|a| a["id"] == "myaddon").unwrap().clone()
}

/// Tiered compilation: a first upload of a large plugin serves at once from Winch's build
/// while Cranelift's is made in the background; the optimised build then takes over between
/// two calls under traffic, with no failed request; and it lands in the compile cache, so the
/// next start serves optimised code at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_serves_from_winch_first_then_from_cranelift_under_traffic() {
    let Some(js) = built(Lang::Js, "plugins/credentials-js").await else { return };
    let _heavy = HEAVY.lock().await;
    // A cache of its own, so nothing of the JS plugin is compiled yet.
    let cache = tempfile::tempdir().unwrap();
    let private = |cfg: &mut addon_host::config::HostConfig| cfg.server.compile_cache = Some(cache.path().into());
    let host = Arc::new(TestHost::start_with(tempfile::tempdir().unwrap(), private));
    let traffic = Traffic::start(&host);

    let pushed = host.admin(Method::POST, "/admin/addons/myaddon/plugins", std::fs::read(&js).unwrap()).await;
    assert_eq!(pushed.status, 201, "{}", pushed.text);
    assert_eq!(pushed.json()["compiler"], "winch", "a large first upload serves from baseline code");
    let javascript = pushed.json()["version"]["sha256"].as_str().unwrap().to_owned();
    let at_upload = traffic.served();
    assert_eq!(status(&host).await["compiler"], "winch");

    let waiting = Instant::now();
    while status(&host).await["compiler"] != "cranelift" {
        assert!(waiting.elapsed() < Duration::from_secs(300), "Cranelift's build never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_winch = traffic.served() - at_upload;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = traffic.stop().await;
    println!("{requests} provisions; {on_winch} on Winch's build in the {:?} until Cranelift's", waiting.elapsed());
    assert!(on_winch > 0, "requests were served from the baseline build while Cranelift compiled");
    let record = host.record("myaddon", "w0-0").unwrap();
    assert_ne!(record.plugin_version, javascript, "traffic began on the Rust plugin");
    let last = host.provision("myaddon", TOKEN, "after-upload", "free").await;
    assert_eq!(last.status, 201, "{}", last.text);
    assert_eq!(host.record("myaddon", "after-upload").map(|r| r.plugin_version), Some(javascript.clone()));

    // A restart serves Cranelift's build from the cache.
    let host = Arc::into_inner(host).expect("the traffic is over").restart_with(private);
    let after = status(&host).await;
    assert_eq!((after["compiler"].as_str(), after["loaded_from_cache"].as_bool()), (Some("cranelift"), Some(true)));
    let fresh = host.provision("myaddon", TOKEN, "after-restart", "free").await;
    assert_eq!(fresh.status, 201, "{}", fresh.text);
}

/// The deadline and the memory cap hold for a real JS engine and a real CPython, on
/// Cranelift's code and on Winch's (whose epoch checks and memory growth are its own). And a
/// JS plugin built for the `plugin` world that enqueues a job is told at once to build for
/// `worker` (its jobs used to be stored, then retried forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_js_call_and_a_memory_hungry_python_call_are_stopped() {
    let js = built(Lang::Js, "tests/guests/misbehave-js").await;
    let py = built(Lang::Python, "tests/guests/misbehave-py").await;
    let _heavy = HEAVY.lock().await;
    for compiler in [Compiler::Cranelift, Compiler::Winch] {
        misbehaviour_is_stopped(compiler, &js, &py).await;
    }
}

async fn misbehaviour_is_stopped(compiler: Compiler, js: &Option<String>, py: &Option<String>) {
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        cfg.server.compiler = compiler;
        let misbehave = cfg.addons.iter().find(|a| a.id == "misbehave").unwrap().clone();
        for (id, plugin) in [("js", js), ("py", py)] {
            if let Some(plugin) = plugin {
                let mut addon = misbehave.clone();
                addon.id = format!("misbehave-{id}");
                addon.plugin = plugin.into();
                addon.xervo = None;
                // Room for the engine itself (JS ~20 MiB, CPython ~30 MiB), and a cap a bomb hits.
                addon.limits.memory_mib = 96;
                cfg.addons.push(addon);
            }
        }
    });
    for (id, plan, status, kind, needle) in [
        ("js", "loop", 504, "deadline_exceeded", "500 ms deadline"),
        ("js", "memory", 500, "memory_limit", "96 MiB"),
        ("js", "enqueue", 500, "plugin_error", "build it for the `worker` world"),
        ("py", "loop", 504, "deadline_exceeded", "500 ms deadline"),
        ("py", "memory", 500, "memory_limit", "96 MiB"),
    ] {
        let addon = format!("misbehave-{id}");
        if host.service.addon(&addon).is_err() {
            continue;
        }
        let started = Instant::now();
        let reply = host.provision(&addon, MISBEHAVE_TOKEN, &format!("{plan}-1"), plan).await;
        let elapsed = started.elapsed();
        assert_error(&reply, status, kind, needle);
        if plan == "loop" {
            assert!(elapsed < Duration::from_millis(1_500), "{addon} on {compiler:?}: the loop ran {elapsed:?}");
        }
        // The add-on still serves.
        let fine = host.provision(&addon, MISBEHAVE_TOKEN, &format!("{plan}-ok"), "normal").await;
        assert_eq!(fine.status, 201, "{addon} on {compiler:?}: {}", fine.text);
        assert_eq!(fine.env("MISBEHAVE_PLAN"), "normal");
    }
}

/// JavaScript as partners write it: `async` handlers are awaited (they answered 200 with an
/// empty body), and the standard `fetch` reaches an allowed origin through the host's
/// outbound policy (it trapped), while another origin is refused with the reason. Red when
/// the SDK returns an async handler's promise unawaited (no variable), or when `fetch` is
/// StarlingMonkey's own (a trap, not the allow-list's words).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_async_handlers_are_awaited_and_fetch_goes_through_the_allow_list() {
    let Some(js) = built(Lang::Js, "tests/guests/misbehave-js").await else { return };
    let stand_in = axum::Router::new().route(
        "/hello",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            ([("x-stand-in", "yes")], axum::Json(serde_json::json!({ "hello": accept })))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, stand_in).await.unwrap() });
    let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
        let misbehave = cfg.addons.iter_mut().find(|a| a.id == "misbehave").unwrap();
        misbehave.plugin = js.into();
        misbehave.xervo = None;
        misbehave.limits.memory_mib = 96;
        misbehave.limits.deadline_ms = 3_000;
        misbehave.allowed_outbound = vec![origin.clone()];
        misbehave.config.insert("fetch_url".into(), format!("{origin}/hello"));
    });
    let fine = host.provision("misbehave", MISBEHAVE_TOKEN, "async", "normal").await;
    assert_eq!(fine.status, 201, "{}", fine.text);
    assert_eq!(fine.env("MISBEHAVE_PLAN"), "normal", "an async handler's reply was lost: {}", fine.text);
    let fetched = host.provision("misbehave", MISBEHAVE_TOKEN, "fetch", "fetch").await;
    assert_eq!(fetched.status, 201, "{}", fetched.text);
    assert_eq!(fetched.env("MISBEHAVE_FETCHED"), "200 yes application/json");
    let elsewhere = host.provision("misbehave", MISBEHAVE_TOKEN, "elsewhere", "fetch-elsewhere").await;
    assert_error(&elsewhere, 500, "plugin_error", "https://example.com is not an allowed origin (allowed_outbound)");
    assert!(elsewhere.text.contains("fetch https://example.com/"), "{}", elsewhere.text);
    let refused = host.provision("misbehave", MISBEHAVE_TOKEN, "refusal", "async-refusal").await;
    assert_error(&refused, 500, "plugin_error", "refused after an await");
    // A refusal thrown after an await, as an `Error` subclass, is the platform's 422.
    let invalid = host.provision("misbehave", MISBEHAVE_TOKEN, "invalid", "refuse").await;
    assert_error(&invalid, 422, "refused", "not for this app");
    assert!(host.record("misbehave", "elsewhere").is_none() && host.record("misbehave", "refusal").is_none());
}

/// `addon-host new --lang js|python --template provider|jobs|web`: each project builds with
/// its own build command (the one `serve --watch` runs) for the world its plugin needs, says
/// which, and passes the conformance kit, both platforms, nothing skipped; the jobs template's
/// calls to its API are answered by the kit's stub, never sent. Each project's own native
/// tests pass first (`npm test` under Node, `python3 -m unittest` under CPython, against the
/// SDKs' in-memory hosts). A syntax error is reported with its file and line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_js_and_python_projects_build_and_pass_the_kit() {
    // The projects' own configs keep them on sled: on the PostgreSQL pass this would only
    // build the same six projects again (70 s).
    if addon_host_tests::postgres::selected() {
        eprintln!("new_js_and_python_projects_build_and_pass_the_kit: storage-independent, run on the sled pass");
        return;
    }
    for (lang, flag) in [(Lang::Js, "js"), (Lang::Python, "python")] {
        let tools = match tokio::task::spawn_blocking(move || languages::tools(lang)).await.unwrap() {
            Ok(dir) => dir,
            Err(why) if languages::required() => panic!("ADDON_REQUIRE_GUEST_LANGS is set: {why}"),
            Err(why) => {
                eprintln!(
                    "\n!!!!!!!! SKIPPED: no {flag} generator, the {flag} template was NOT tested: {why} !!!!!!!!\n"
                );
                continue;
            }
        };
        let path = format!("{}:{}", tools.display(), std::env::var("PATH").unwrap_or_default());
        for (template, world) in [("provider", "plugin"), ("jobs", "worker"), ("web", "web")] {
            let dir = tempfile::tempdir().unwrap();
            let project = dir.path().join("hello");
            let new = tokio::process::Command::new(env!("CARGO_BIN_EXE_addon-host-e2e"))
                .args(["new", "hello", "--lang", flag, "--template", template, "--dir"])
                .arg(&project)
                .output()
                .await
                .unwrap();
            assert!(new.status.success(), "{}", String::from_utf8_lossy(&new.stderr));
            let config = std::fs::read_to_string(project.join("addon-host.toml")).unwrap();
            let command = config.split("command = \"").nth(1).unwrap().split('"').next().unwrap().to_owned();
            let run = |command: String| {
                let path = path.clone();
                let project = project.clone();
                async move {
                    let out = tokio::process::Command::new("sh")
                        .args(["-c", &command])
                        .current_dir(&project)
                        .env("PATH", path)
                        .output()
                        .await
                        .unwrap();
                    let said =
                        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                    (out.status.success(), said)
                }
            };
            // Its native tests first, against the SDK's in-memory host (no build needed).
            let native = if lang == Lang::Js { "npm test" } else { "python3 -m unittest" };
            let (passed, said) = run(native.to_owned()).await;
            assert!(passed, "{flag} {template}: `{native}`: {said}");
            let (built, said) = run(command.clone()).await;
            assert!(built, "{flag} {template}: `{command}`: {said}");
            assert!(said.contains(&format!("building for the `{world}` world")), "{flag} {template}: {said}");
            if template == "provider" {
                // A syntax error is reported with its file and line (componentize-js said only
                // "failed to parse JS source, encountered [1] errors"; red without the check).
                let source = project.join(if lang == Lang::Js { "app.js" } else { "app.py" });
                let good = std::fs::read_to_string(&source).unwrap();
                let line = good.lines().count() + 2;
                let bad = if lang == Lang::Js { "const broken = (;" } else { "broken = (" };
                std::fs::write(&source, format!("{good}\n{bad}\n")).unwrap();
                let (built, said) = run(command.clone()).await;
                let place = if lang == Lang::Js { format!("app.js:{line}") } else { format!("app.py\", line {line}") };
                assert!(!built && said.contains(&place), "{flag}: no `{place}` in: {said}");
                std::fs::write(&source, good).unwrap();
            }
            // The suite's compile cache: the generator's runtime is compiled once per run.
            let cache = std::env::temp_dir().join(SHARED_CACHE);
            let with_cache =
                config.replace("[server]\n", &format!("[server]\ncompile_cache = {:?}\n", cache.to_str().unwrap()));
            std::fs::write(project.join("addon-host.toml"), with_cache).unwrap();
            let (ok, report) = kit(&[
                project.join("plugin.wasm").to_str().unwrap(),
                "--config",
                project.join("addon-host.toml").to_str().unwrap(),
            ])
            .await;
            println!("{flag} {template}:");
            assert_all_pass(ok, &report);
            let stubbed = report["outbound"]["requests"].as_array().cloned().unwrap_or_default();
            if template == "jobs" {
                assert!(
                    stubbed.iter().any(|r| r == "POST https://api.example.com/apps"),
                    "{flag}: the job's call was not answered by the stub: {stubbed:?}"
                );
            } else {
                assert!(stubbed.is_empty(), "{flag} {template}: {stubbed:?}");
            }
        }
    }
}

/// The SDKs' in-memory hosts for native tests (`guest-sdk/js/addon-testing.js` under Node,
/// `guest-sdk/python/addon_testing.py` under CPython) keep the real host's rules: a failed
/// call's writes and jobs are dropped, a call sees its own writes, compare-and-swap and
/// listings see pending writes, and outbound requests reach only the test's routes. Red when
/// a double commits a failed call, or answers an unrouted request.
#[tokio::test]
async fn the_sdks_in_memory_hosts_keep_the_hosts_rules() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "tests/guests/testing-doubles/doubles.test.js",
        "tests/guests/testing-doubles/test_doubles.py",
        "guest-sdk/js/addon-sdk.js",
        "guest-sdk/js/addon-testing.js",
        "guest-sdk/js/addon-testing-hooks.js",
        "guest-sdk/python/addon_sdk.py",
        "guest-sdk/python/addon_testing.py",
    ] {
        let name = std::path::Path::new(file).file_name().unwrap();
        std::fs::copy(root.join(file), dir.path().join(name)).unwrap();
    }
    for (command, args) in
        [("node", &["--import", "./addon-testing-hooks.js", "--test"][..]), ("python3", &["-m", "unittest", "-v"][..])]
    {
        let out = match tokio::process::Command::new(command).args(args).current_dir(dir.path()).output().await {
            Ok(out) => out,
            Err(e) if languages::required() => {
                panic!("ADDON_REQUIRE_GUEST_LANGS is set, and {command} cannot run: {e}")
            }
            Err(e) => {
                eprintln!(
                    "\n!!!!!!!! SKIPPED: {command} cannot run ({e}): its SDK's test double was NOT tested !!!!!!!!\n"
                );
                continue;
            }
        };
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{command}: {said}");
        // Each suite ran its four tests.
        let ran = if command == "node" { said.contains("# pass 4") } else { said.contains("Ran 4 tests") };
        assert!(ran, "{command}: {said}");
    }
}

/// Jobs and outbound HTTP from JavaScript and Python: a job runs after the reply, a retry is
/// honoured, and an outbound call reaches an allowed origin and is refused elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_python_plugins_run_jobs_and_call_allowed_origins() {
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", probe.local_addr().unwrap());
    let app = axum::Router::new().route("/probe", axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT }));
    tokio::spawn(async move { axum::serve(probe, app).await.unwrap() });
    for (lang, dir) in [(Lang::Js, "tests/guests/jobs-js"), (Lang::Python, "tests/guests/jobs-py")] {
        let Some(plugin) = built(lang, dir).await else { continue };
        let addon = |id: &str, probe_url: String| {
            let token = format!("{id}-shared-token-0123");
            let mut a = addon_host::config::AddonConfig::on_bitrise(id, &plugin, &token, "jobs-sso-secret-0123");
            a.config.insert("probe_url".into(), probe_url);
            a.allowed_outbound = vec![origin.clone()];
            a.jobs.backoff_ms = 50;
            a.jobs.max_backoff_ms = 200;
            a
        };
        let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
            cfg.addons.push(addon("jobs", format!("{origin}/probe")));
            cfg.addons.push(addon("walled", "http://127.0.0.1:9/probe".into()));
        });
        for (id, plan) in [("jobs", "once"), ("jobs", "flaky"), ("jobs", "fetch"), ("walled", "fetch")] {
            let reply = host.provision(id, &format!("{id}-shared-token-0123"), &format!("{plan}-app"), plan).await;
            assert_eq!(reply.status, 201, "{dir} {id} {plan}: {}", reply.text);
        }
        for (id, key, value) in [
            ("jobs", "ran/once-app", "1"),
            ("jobs", "ran/flaky-app", "3"),
            ("jobs", "fetched/fetch-app", "204"),
            ("walled", "refused/fetch-app", "denied"),
        ] {
            let started = Instant::now();
            while host.kv(id).get(key).map(String::as_str) != Some(value) {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{dir}: {id} {key} is {:?}, not {value}",
                    host.kv(id).get(key)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// JavaScript and Python plugins of the `web` world serve the add-on's build API and its
/// dashboard through the SDKs' HTTP layers (`addon-web.js`, `addon_web.py`): the identity the
/// host verified reaches them, their writes are kept, and the CSRF check stands in front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_python_plugins_serve_their_dashboard_and_build_api() {
    for (lang, dir, id) in [(Lang::Js, "tests/guests/web-js", "webjs"), (Lang::Python, "tests/guests/web-py", "webpy")]
    {
        let Some(plugin) = built(lang, dir).await else { continue };
        let token = format!("{id}-shared-token-0123");
        let sso = format!("{id}-sso-secret-0123");
        let host = TestHost::start_with(tempfile::tempdir().unwrap(), |cfg| {
            let mut addon = addon_host::config::AddonConfig::on_bitrise(id, &plugin, &token, &sso);
            addon.web.build_api = true;
            cfg.addons.push(addon);
        });
        let reply = host.provision_titled(id, &token, "app1", "pro", "Ünïcode & co").await;
        let api_token = crate::web::token_in(&reply, &format!("{}_API_TOKEN", id.to_ascii_uppercase()));
        let path = format!("/addons/{id}/api/whoami");
        for calls in [1, 2] {
            let whoami = crate::web::api(&host, Method::GET, &path, &api_token, "").await;
            assert_eq!(whoami.status, 200, "{dir}: {}", whoami.text);
            let seen = whoami.json();
            assert_eq!(seen["resourceId"], "app1", "{dir}");
            assert_eq!(seen["plan"], "pro", "{dir}");
            assert_eq!(seen["surface"], "api", "{dir}");
            assert_eq!(seen["appTitle"], "Ünïcode & co", "{dir}");
            assert_eq!(seen["calls"], calls, "{dir}: the handler's writes are kept");
        }
        assert_eq!(crate::web::api(&host, Method::GET, &path, "abt1.app1.x", "").await.status, 401, "{dir}");
        {
            // A handler's own status is kept (JS: after an await in an `async` handler); one
            // that throws gives the client a generic 500 and its deployers the error and the
            // stack.
            let later = crate::web::api(&host, Method::GET, &format!("/addons/{id}/api/later"), &api_token, "").await;
            assert_eq!((later.status.as_u16(), later.json()["later"].as_bool()), (202, Some(true)), "{}", later.text);
            let boom = crate::web::api(&host, Method::GET, &format!("/addons/{id}/api/boom"), &api_token, "").await;
            assert_eq!(boom.status, 500, "{}", boom.text);
            assert!(!boom.text.contains("boom on purpose"), "the error reached the client: {}", boom.text);
            let recent = host.admin(Method::GET, &format!("/admin/addons/{id}/logs"), "").await.json();
            let logged = recent["lines"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|l| l["message"].as_str())
                .find(|m| m.contains("boom on purpose"))
                .map(str::to_owned);
            let logged = logged.unwrap_or_else(|| panic!("the handler's error was not logged: {recent}"));
            let source = if lang == Lang::Js { "app.js" } else { "app.py" };
            assert!(logged.contains("GET /api/boom") && logged.contains(source), "no place in {logged}");
        }

        let ts = now();
        let form = format!("app_slug=app1&timestamp={ts}&token={}", sso_token("app1", &sso, ts));
        let headers = [("content-type", "application/x-www-form-urlencoded")];
        let login = host.send(Method::POST, &format!("/addons/{id}/login"), &headers, form).await;
        assert_eq!(login.status, 200, "{dir}: {}", login.text);
        assert!(login.text.contains("<h1 id=\"plan\">pro</h1>"), "{dir}: {}", login.text);
        // Bitrise's Beam header from the SDK's helper, with the app's title escaped for script.
        assert!(login.text.contains("@bitrise/beam") && login.text.contains("\\u0026 co"), "{dir}: {}", login.text);
        roxmltree::Document::parse_with_options(
            &login.text,
            roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("{dir}: the page is not well-formed XHTML ({e}): {}", login.text));
        let cookie = crate::web::session_cookie(&login);
        let csrf = login.text.split("name=\"_csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let post = [("cookie", cookie.as_str()), ("content-type", "application/x-www-form-urlencoded")];
        let note = format!("/addons/{id}/dashboard/note");
        let refused = host.send(Method::POST, &note, &post, "note=forged").await;
        assert_eq!(refused.status, 403, "{dir}: {}", refused.text);
        let saved = host.send(Method::POST, &note, &post, format!("_csrf={csrf}&note=hello+there")).await;
        assert_eq!((saved.status.as_u16(), saved.text.as_str()), (200, "<p>saved</p>"), "{dir}");
        assert_eq!(host.kv(id)["note/app1"], "hello there", "{dir}");
    }
}
