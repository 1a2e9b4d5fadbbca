//! Hostile input on every route of both protocols, driven by `tests/data/hostile.json`: each
//! case must get its 4xx with a JSON error of the expected kind, and none may change state.

use axum::http::Method;
use serde::Deserialize;

use crate::support::*;

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    method: String,
    path: String,
    /// "bitrise", "xervo" or "none".
    auth: String,
    content_type: Option<String>,
    body: Option<String>,
    body_hex: Option<String>,
    status: u16,
    error: String,
    message: Option<String>,
}

/// Expand `${X*N}` into X repeated N times.
fn expand(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start..].find('}') else { break };
        let inner = &rest[start + 2..start + len];
        match inner.rsplit_once('*').and_then(|(x, n)| Some((x, n.parse::<usize>().ok()?))) {
            Some((x, n)) => {
                out.push_str(&rest[..start]);
                out.push_str(&x.repeat(n));
            }
            None => out.push_str(&rest[..=start + len]),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    let cases: Vec<Case> = serde_json::from_str(include_str!("../data/hostile.json")).expect("hostile.json");
    assert!(cases.len() >= 50);
    let host = TestHost::start();
    let xervo_auth = basic("myaddon", XERVO_PASSWORD);
    for case in &cases {
        let body: Vec<u8> = match (&case.body, &case.body_hex) {
            (_, Some(hex)) => hex::decode(hex).unwrap(),
            (Some(b), None) => expand(b).into_bytes(),
            (None, None) => Vec::new(),
        };
        let content_type = case.content_type.clone().unwrap_or_else(|| "application/json".into());
        let mut headers = vec![("content-type", content_type.as_str())];
        match case.auth.as_str() {
            "bitrise" => headers.push(("authentication", TOKEN)),
            "xervo" => headers.push(("authorization", xervo_auth.as_str())),
            _ => {}
        }
        let method = Method::from_bytes(case.method.as_bytes()).unwrap();
        let reply = host.send(method, &expand(&case.path), &headers, body).await;
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {}",
            case.name,
            reply.text.chars().take(300).collect::<String>()
        );
        let json: serde_json::Value =
            serde_json::from_str(&reply.text).unwrap_or_else(|_| panic!("{}: not JSON: {}", case.name, reply.text));
        assert_eq!(json["error"], case.error.as_str(), "{}: {}", case.name, reply.text);
        let message = json["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{}: no message", case.name);
        if let Some(needle) = &case.message {
            assert!(message.contains(needle.as_str()), "{}: message {message:?} lacks {needle:?}", case.name);
        }
    }
    assert!(!host.service.runtime().info().fuel, "the suite runs on the default, unmetered engine");
    for addon in ["myaddon", "storage", "misbehave"] {
        assert!(host.service.addon(addon).unwrap().store().records().unwrap().is_empty(), "{addon} got a record");
        assert!(host.kv(addon).is_empty(), "{addon} KV changed");
    }
}
