//! A plugin for tests only. The plan picks what it does, so one component exercises every
//! way a partner's code can behave: well, slowly, wrongly, or hostilely.
//!
//! Every call first reads the key `marker` and reports it as `MISBEHAVE_MARKER`, so a test can
//! see whether an earlier, failed call left a write behind.

use addon_sdk::{
    ChangePlanReply, ChangePlanRequest, DeprovisionRequest, Error, Provider, ProvisionReply, ProvisionRequest, Result,
    clock, config, export_provider, kv, log,
};

struct Misbehave;

fn marker() -> Result<String> {
    Ok(kv::get_string("marker")?.unwrap_or_else(|| "none".into()))
}

/// Spin for `ms` milliseconds of wall-clock time (there is no sleep in the sandbox).
fn spin(ms: u64) {
    let start = clock::now_ms();
    let mut x: u64 = 0;
    while clock::now_ms() < start + ms {
        x = x.wrapping_add(1);
        std::hint::black_box(x);
    }
}

/// Recurses until the stack runs out (the guard keeps the compiler from proving it).
fn recurse(depth: u64) -> u64 {
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(1)
}

impl Provider for Misbehave {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let title = req.app_title.clone().unwrap_or_default();
        match req.plan.as_str() {
            "loop" => loop {
                std::hint::black_box(&req);
            },
            "panic" => panic!("misbehave panicked on purpose"),
            "memory" => {
                let big = vec![7u8; 1 << 30];
                Ok(ProvisionReply::new().var("MISBEHAVE_LEN", big.len().to_string()))
            }
            "recursion" => Ok(ProvisionReply::new().var("MISBEHAVE_DEPTH", recurse(0).to_string())),
            // Blocks in a host call (WASI's monotonic clock and poll), not in its own code.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(title.parse().unwrap_or(30_000)));
                Ok(ProvisionReply::new().var("MISBEHAVE_SLEPT", "done"))
            }
            // Makes the host hold its writes: 200 KiB values, one after another, far past
            // what one call may keep pending.
            "kv-hog" => {
                let value = "h".repeat(200 << 10);
                for i in 0..1_000 {
                    kv::set_string(&format!("hog/{}/{i}", req.resource_id), &value)?;
                }
                Ok(ProvisionReply::new().var("MISBEHAVE_HOGGED", "1000"))
            }
            // Lists 1,000 pending keys of 400 bytes over and over: each listing is a fresh
            // 400 KB the host must build for it.
            "list-hog" => {
                for i in 0..1_000 {
                    kv::set_string(&format!("{}/{i:04}", "k".repeat(395)), "v")?;
                }
                let mut listed = 0;
                for _ in 0..100 {
                    listed += kv::list_keys("")?.len();
                }
                Ok(ProvisionReply::new().var("MISBEHAVE_LISTED", listed.to_string()))
            }
            "slow" => {
                spin(title.parse().unwrap_or(100));
                Ok(ProvisionReply::new().var("MISBEHAVE_SLOW", "done"))
            }
            "write-then-refuse" => {
                kv::set_string("marker", &req.resource_id)?;
                Err(Error::invalid("refused after writing"))
            }
            "write-then-fail" => {
                kv::set_string("marker", &req.resource_id)?;
                Err(Error::internal("failed after writing"))
            }
            "write-then-trap" => {
                kv::set_string("marker", &req.resource_id)?;
                panic!("trapped after writing")
            }
            "write" => {
                kv::set_string("marker", &req.resource_id)?;
                Ok(ProvisionReply::new().var("MISBEHAVE_MARKER", req.resource_id.clone()))
            }
            "unavailable" => Err(Error::unavailable_with_docs("busy right now", "https://example.com/why")),
            // A global counter: every call must see a fresh instance, so always 1.
            "static" => {
                static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                Ok(ProvisionReply::new().var("MISBEHAVE_STATIC", n.to_string()))
            }
            "count" => {
                let n = kv::increment("calls", 1)?;
                Ok(ProvisionReply::new().var("MISBEHAVE_CALLS", n.to_string()).var("MISBEHAVE_MARKER", marker()?))
            }
            "big-reply" => Ok(ProvisionReply::new().var("MISBEHAVE_BIG", "x".repeat(1 << 20))),
            "huge-reply" => Ok(ProvisionReply::new().var("MISBEHAVE_BIG", "x".repeat(100 << 20))),
            "log-flood" => {
                for i in 0..20_000 {
                    log::info!("flooding the log, line {i}: {}", "y".repeat(100));
                    if i % 10 == 0 {
                        eprintln!("stderr flood line {i}");
                    }
                }
                Ok(ProvisionReply::new().var("MISBEHAVE_LOGGED", "20000"))
            }
            "escape" => {
                // Everything a plugin might try to reach beyond its imports.
                let fs = std::fs::read_dir("/").map(|d| d.count()).map_err(|e| e.kind());
                let file = std::fs::read("/etc/passwd").map(|b| b.len()).map_err(|e| e.kind());
                let write = std::fs::write("escape.txt", b"x").map_err(|e| e.kind());
                let env = std::env::vars().count();
                let args = std::env::args().count();
                // The test listens on the port it passes as the app title, so a leak would connect.
                let port: u16 = title.parse().unwrap_or(80);
                let net = std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ()).map_err(|e| e.kind());
                let dns =
                    std::net::ToSocketAddrs::to_socket_addrs("localhost:80").map(|a| a.count()).map_err(|e| e.kind());
                Ok(ProvisionReply::new()
                    .var("ESCAPE_FS", format!("{fs:?}"))
                    .var("ESCAPE_FILE", format!("{file:?}"))
                    .var("ESCAPE_WRITE", format!("{write:?}"))
                    .var("ESCAPE_ENV", env.to_string())
                    .var("ESCAPE_ARGS", args.to_string())
                    .var("ESCAPE_NET", format!("{net:?}"))
                    .var("ESCAPE_DNS", format!("{dns:?}")))
            }
            "fill" => {
                for i in 0..8 {
                    kv::set_string(&format!("fill/{}/{i}", req.resource_id), &"z".repeat(200))?;
                }
                Ok(ProvisionReply::new().var("MISBEHAVE_FILLED", "8"))
            }
            // Lines that try to pass for the host's own: a newline, then a timestamp and a
            // host module, through the log import, stderr and a refusal's message.
            "log-forge" => {
                let forged = "2030-01-01T00:00:00Z  INFO addon_host::admin: forged";
                log::warn!("innocent\n{forged} by log\r\n{forged} by crlf\u{1b}[2K");
                eprintln!("innocent\n{forged} by stderr");
                Err(Error::invalid(format!("refused\n{forged} by refusal")))
            }
            "log-then-refuse" => {
                log::warn!("misbehave logs before refusing {}", req.resource_id);
                Err(Error::invalid("refused after logging"))
            }
            "write-then-loop" => {
                kv::set_string("marker", &req.resource_id)?;
                loop {
                    std::hint::black_box(&req);
                }
            }
            "many-vars" => Ok((0..65).fold(ProvisionReply::new(), |r, i| r.var(format!("MISBEHAVE_{i}"), "v"))),
            "dup-var" => Ok(ProvisionReply::new().var("MISBEHAVE_TWICE", "a").var("MISBEHAVE_TWICE", "b")),
            "big-key" => {
                kv::set_string(&"k".repeat(513), "v")?;
                Ok(ProvisionReply::new().var("MISBEHAVE_KEY", "513"))
            }
            "big-value" => {
                kv::set_string("big", &"v".repeat(262_145))?;
                Ok(ProvisionReply::new().var("MISBEHAVE_VALUE", "262145"))
            }
            "empty-value" => Ok(ProvisionReply::new().var("MISBEHAVE_EMPTY", "")),
            // No variables at all: `addon-host test` fails it unless --allow-empty.
            "no-vars" => Ok(ProvisionReply::new()),
            "public-url" => {
                let url = config::get("public_url").unwrap_or_else(|| "unset".into());
                Ok(ProvisionReply::new().var("MISBEHAVE_PUBLIC_URL", url))
            }
            "bad-name" => Ok(ProvisionReply::new().var("not a name", "v")),
            // Replies the host lets through that `addon-host test` flags.
            "lower-name" => Ok(ProvisionReply::new().var("MISBEHAVE_lower", "v")),
            "blank-value" => Ok(ProvisionReply::new().var("MISBEHAVE_BLANK", "  ")),
            "xervo-good" => Ok(ProvisionReply::new().var("MISBEHAVE_URL", "https://misbehave.example.com/r")),
            "bad-url" => Ok(ProvisionReply::new().var("MISBEHAVE_URL", "not a url")),
            "foreign-var" => Ok(ProvisionReply::new()
                .var("MISBEHAVE_URL", "https://misbehave.example.com/r")
                .var("OTHER_TOKEN", "v")),
            "kv-flood" => {
                for i in 0..100_000 {
                    kv::set_string(&format!("flood/{i}"), "x")?;
                }
                Ok(ProvisionReply::new().var("MISBEHAVE_FLOOD", "done"))
            }
            _ => Ok(ProvisionReply::new().var("MISBEHAVE_MARKER", marker()?).var("MISBEHAVE_PLAN", req.plan.clone())),
        }
    }

    fn change_plan(req: ChangePlanRequest) -> Result<ChangePlanReply> {
        match req.plan.as_str() {
            "loop" => loop {
                std::hint::black_box(&req);
            },
            "refuse" => Err(Error::invalid(format!("cannot leave {}", req.previous_plan))),
            // A good provision, a bad variable name on plan change only.
            "lower-on-change" => Ok(ChangePlanReply::new().var("MISBEHAVE_changed", "v")),
            _ => Ok(ChangePlanReply::new().var("MISBEHAVE_PLAN", req.plan.clone())),
        }
    }

    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        if req.plan == "sticky" {
            return Err(Error::unavailable("cannot deprovision right now"));
        }
        Ok(())
    }
}

export_provider!(Misbehave);

/// Its HTTP handler: the path's last segment picks the behaviour, on either surface.
impl addon_sdk::web::Web for Misbehave {
    fn handle(req: addon_sdk::web::Request) -> addon_sdk::web::Response {
        use addon_sdk::web::Response;
        let who = req.identity().clone();
        let what = req.path().rsplit('/').next().unwrap_or_default().to_owned();
        match what.as_str() {
            // The dashboard's first page: well-formed XHTML with Beam, as Bitrise's kit wants.
            // With a CSRF-protected form that writes the marker, as real dashboards have.
            "" | "dashboard" => Response::html(format!(
                "<!DOCTYPE html><html><head>{}</head><body><p>misbehave</p><p id=\"resource\">{}</p>\
                 <form method=\"post\" action=\"write?v=form\">{}<button id=\"write\">write</button></form></body></html>",
                who.beam(),
                who.resource_id,
                who.csrf_field()
            )),
            // A hostile page: its script attacks the origin named by `?target=` (tests/browser/).
            "attack" => Response::html(
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"/><title>attack</title>\
                 <script src=\"attack.js\"></script></head><body><p>attack</p></body></html>",
            ),
            "attack.js" => {
                Response::new(200).header("content-type", "text/javascript").body(include_str!("../attack.js"))
            }
            "sw.js" => Response::new(200)
                .header("content-type", "text/javascript")
                .body("self.addEventListener('fetch', () => {});"),
            // What reached the plugin: the identity and every header, as JSON.
            "echo" => {
                let headers: Vec<String> = [("method", req.method()), ("path", req.path()), ("query", req.query())]
                    .iter()
                    .map(|(k, v)| format!("{k:?}:{v:?}"))
                    .chain(
                        [
                            "cookie",
                            "authorization",
                            "x-addon-resource-id",
                            "x-addon-platform",
                            "x-addon-plan",
                            "x-addon-app-title",
                            "x-addon-unverified-email",
                            "x-addon-surface",
                            "x-addon-csrf-token",
                            "x-addon-base-path",
                            "x-addon-injected",
                            "x-custom",
                        ]
                        .iter()
                        .map(|h| format!("{h:?}:{:?}", req.header(h).unwrap_or(""))),
                    )
                    .chain([
                        format!("\"body_len\":{}", req.body().len()),
                        format!("\"resource\":{:?}", who.resource_id),
                        format!("\"app_title\":{:?}", who.app_title.unwrap_or_default()),
                    ])
                    .collect();
                Response::json(format!("{{{}}}", headers.join(",")))
            }
            "loop" => loop {
                std::hint::black_box(&req);
            },
            "memory" => {
                let big = vec![7u8; 1 << 30];
                Response::text(big.len().to_string())
            }
            "panic" => panic!("misbehave's handler panicked on purpose"),
            "huge" => Response::text("x".repeat(8 << 20)),
            "slow" => {
                spin(req.query_value("ms").and_then(|m| m.parse().ok()).unwrap_or(200));
                Response::text("slow done")
            }
            // A key-value write, kept when the answer is 2xx and dropped when it is 500.
            "write" | "write-then-500" => {
                let value = req.query_value("v").unwrap_or_else(|| "w".into());
                if let Err(e) = kv::set_string("marker", &value) {
                    return Response::new(500).body(format!("{e:?}"));
                }
                Response::text(format!("wrote {value}")).status(if what == "write" { 200 } else { 500 })
            }
            "marker" => Response::text(marker().unwrap_or_default()),
            "set-cookie" => Response::text("cookies")
                .header("set-cookie", "addon_session=forged; Path=/")
                .header("set-cookie", "theirs=1; Path=/addons/misbehave/"),
            // Every header a hostile plugin would like a browser to act on.
            "hostile" => Response::text("hostile")
                .header("set-cookie", "addon_session =forged; Path=/addons/victim/")
                .header("set-cookie", "ADDON_SESSION=forged; Path=/addons/misbehave/")
                .header("set-cookie", "__Host-addon_session=forged; Path=/; Secure")
                .header("set-cookie", "tossed=1; Domain=localhost; Path=/")
                .header("set-cookie", "everywhere=1; Path=/")
                .header("service-worker-allowed", "/")
                .header("clear-site-data", "\"*\"")
                .header("access-control-allow-origin", "*")
                .header("access-control-allow-credentials", "true")
                .header("x-frame-options", "ALLOWALL")
                .header("alt-svc", "h2=\":444\"")
                .header("x-addon-resource-id", "someone-else"),
            // A switch to another protocol, which only the host may answer.
            "switch" => Response::new(101),
            // Outbound wasi:http, which the host refuses.
            "outbound" => {
                use addon_sdk::web::wasi::http::{outgoing_handler, types};
                let request = types::OutgoingRequest::new(types::Fields::new());
                let _ = request.set_scheme(Some(&types::Scheme::Https));
                let _ = request.set_authority(Some("example.com"));
                let _ = request.set_path_with_query(Some("/"));
                let future = match outgoing_handler::handle(request, None) {
                    Ok(future) => future,
                    Err(e) => return Response::new(502).body(format!("refused: {e:?}")),
                };
                future.subscribe().block();
                match future.get() {
                    Some(Ok(Ok(_))) => Response::text("sent"),
                    Some(Ok(Err(e))) => Response::new(502).body(format!("refused: {e:?}")),
                    other => Response::new(502).body(format!("no response: {other:?}")),
                }
            }
            _ => Response::not_found(),
        }
    }
}

addon_sdk::export_web!(Misbehave);
