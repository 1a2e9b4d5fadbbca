//! A property test over the request decoders of both protocols: thousands of generated
//! requests — valid templates mutated by truncation, byte flips, injected tokens, type swaps
//! and hostile path segments — sent through the router. Properties: no request gets a 5xx or
//! a non-JSON error, and the resources that exist afterwards are exactly those a 2xx
//! acknowledged (a refused request changes nothing).
//!
//! `ADDON_FUZZ_CASES` (default 5000) and `ADDON_FUZZ_SEED` make runs longer or different.

use std::collections::BTreeSet;

use axum::http::Method;

use crate::support::*;

/// xorshift64*: small, deterministic, good enough to explore inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const SEGMENTS: &[&str] = &[
    "app1",
    "app2",
    "a",
    "..",
    "%2e%2e",
    "..%2F..",
    "a%00b",
    "%ff",
    "a b",
    "%20",
    "-",
    "_",
    "x.y",
    "ABCdef0123456789",
    "%E2%98%83",
    "a%2Fb",
    "\u{7f}",
    "0",
    "",
];
const TOKENS: &[&str] = &[
    "null",
    "[]",
    "{}",
    "1e999",
    "-0",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"",
    ",",
    ":",
    "true",
    "\"free\"",
    "{\"a\":",
    "]",
];
const VALUES: &[&str] =
    &["\"free\"", "\"pro\"", "\"test\"", "7", "null", "[]", "{}", "\"\"", "\"app1\"", "true", "\"..\""];

fn mutate(rng: &mut Rng, body: String) -> Vec<u8> {
    let mut bytes = body.into_bytes();
    for _ in 0..rng.below(4) {
        match rng.below(5) {
            0 if !bytes.is_empty() => bytes.truncate(rng.below(bytes.len())),
            1 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(bytes.len() + 1);
                let token = rng.pick(TOKENS).as_bytes().to_vec();
                bytes.splice(i..i, token);
            }
            3 if !bytes.is_empty() => {
                let i = rng.below(bytes.len());
                bytes.remove(i);
            }
            _ => {}
        }
    }
    bytes
}

#[tokio::test]
async fn generated_requests_never_break_the_decoders() {
    let cases: usize = std::env::var("ADDON_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let seed: u64 = std::env::var("ADDON_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_1234_abcd);
    let mut rng = Rng(seed | 1);
    let host = TestHost::start();
    let xervo_auth = basic("myaddon", XERVO_PASSWORD);
    let mut acknowledged = BTreeSet::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();

    for n in 0..cases {
        let seg = rng.pick(SEGMENTS);
        let (method, path, content_type, auth, template) = match rng.below(8) {
            0 => (
                Method::POST,
                "/addons/myaddon/provision".to_owned(),
                "application/json",
                "bitrise",
                format!(
                    r#"{{"app_slug":{},"app_title":{},"api_token":{},"plan":{}}}"#,
                    rng.pick(VALUES),
                    rng.pick(VALUES),
                    rng.pick(VALUES),
                    rng.pick(VALUES)
                ),
            ),
            1 => (
                Method::PUT,
                format!("/addons/myaddon/provision/{seg}"),
                "application/json",
                "bitrise",
                format!(r#"{{"plan":{}}}"#, rng.pick(VALUES)),
            ),
            2 => (
                Method::DELETE,
                format!("/addons/myaddon/provision/{seg}"),
                "application/json",
                "bitrise",
                "null".to_owned(),
            ),
            3 => (
                Method::POST,
                "/addons/myaddon/login".to_owned(),
                "application/x-www-form-urlencoded",
                "none",
                format!("app_slug={seg}&timestamp={}&token={}", rng.next() % 2_000_000_000, rng.pick(SEGMENTS)),
            ),
            4 => (
                Method::POST,
                "/addons/myaddon/resources".to_owned(),
                "application/json",
                "xervo",
                format!(
                    r#"{{"plan":{},"modulus_id":{},"options":{},"email":{},"region":{}}}"#,
                    rng.pick(VALUES),
                    rng.pick(VALUES),
                    rng.pick(&["{}", "{\"a\":1}", "[]", "null", "\"x\""]),
                    rng.pick(VALUES),
                    rng.pick(VALUES)
                ),
            ),
            5 => (
                Method::PUT,
                format!("/addons/myaddon/resources/{seg}"),
                "application/json",
                "xervo",
                format!(r#"{{"plan":{}}}"#, rng.pick(VALUES)),
            ),
            6 => {
                (Method::DELETE, format!("/addons/myaddon/resources/{seg}"), "application/json", "xervo", String::new())
            }
            _ => (
                Method::POST,
                "/addons/myaddon/sso/login".to_owned(),
                "application/json",
                "none",
                format!(
                    r#"{{"id":{},"timestamp":{},"token":{}}}"#,
                    rng.pick(VALUES),
                    rng.pick(VALUES),
                    rng.pick(VALUES)
                ),
            ),
        };
        let body = mutate(&mut rng, template);
        let mut headers = vec![("content-type", content_type)];
        match auth {
            "bitrise" => headers.push(("authentication", TOKEN)),
            "xervo" => headers.push(("authorization", xervo_auth.as_str())),
            _ => {}
        }
        // Paths with bytes the URI parser refuses never reach the server; skip those.
        if axum::http::Uri::try_from(path.as_str()).is_err() {
            continue;
        }
        let reply = host.send(method.clone(), &path, &headers, body.clone()).await;
        let status = reply.status.as_u16();
        *statuses.entry(status).or_default() += 1;
        let shown = String::from_utf8_lossy(&body).into_owned();
        assert!(status < 500, "case {n}: {method} {path} {shown:?} → {status} {}", reply.text);
        if !(200..300).contains(&status) {
            let json: serde_json::Value = serde_json::from_str(&reply.text)
                .unwrap_or_else(|_| panic!("case {n}: {method} {path} {shown:?} → non-JSON {status}: {}", reply.text));
            assert!(json["error"].is_string() && json["message"].is_string(), "case {n}: {}", reply.text);
        } else if method == Method::POST && path.ends_with("/provision") {
            acknowledged
                .insert(reply.json()["envs"][0]["value"].as_str().unwrap().rsplit('/').next().unwrap().to_owned());
        } else if method == Method::POST && path.ends_with("/resources") {
            acknowledged.insert(reply.json()["id"].as_str().unwrap().to_owned());
        }
    }
    let stored: BTreeSet<String> =
        host.service.addon("myaddon").unwrap().store().records().unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(stored, acknowledged, "every stored resource was acknowledged, and only those");
    println!("fuzz: {cases} cases, statuses {statuses:?}, {} resources", stored.len());
    assert!(statuses.keys().any(|s| *s >= 400), "the generator produced no invalid input");
}
