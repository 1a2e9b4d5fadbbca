//! The glue between `wasi:http` and [`Web`]: read the host's request (its identity headers
//! included) into a [`Request`], call the handler, and write its [`Response`] back.

use std::io::Write as _;

use wasip2::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam};
use wasip2::io::streams::StreamError;

use super::{Identity, Request, Response, Surface, Web, percent_decode};
use crate::Platform;

/// Serve one request with `W`. A request the host did not mark with an identity (which the
/// host never sends) gets 400.
pub fn serve<W: Web>(request: IncomingRequest, out: ResponseOutparam) {
    let response = match read(&request) {
        Ok(req) => W::handle(req),
        Err(problem) => Response::new(400).header("content-type", "text/plain; charset=utf-8").body(problem),
    };
    drop(request);
    write(response, out);
}

fn read(request: &IncomingRequest) -> Result<Request, String> {
    let method = match request.method() {
        Method::Get => "GET".to_owned(),
        Method::Head => "HEAD".to_owned(),
        Method::Post => "POST".to_owned(),
        Method::Put => "PUT".to_owned(),
        Method::Delete => "DELETE".to_owned(),
        Method::Patch => "PATCH".to_owned(),
        Method::Options => "OPTIONS".to_owned(),
        Method::Connect => "CONNECT".to_owned(),
        Method::Trace => "TRACE".to_owned(),
        Method::Other(other) => other.to_ascii_uppercase(),
    };
    let target = request.path_with_query().unwrap_or_else(|| "/".to_owned());
    let headers: Vec<(String, String)> = request
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let identity = identity(&headers)?;
    let mut req = Request::new(&method, &target, identity);
    req.headers = headers;
    req.body = body(request)?;
    Ok(req)
}

fn body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let incoming = request.consume().map_err(|()| "the request body was already taken".to_owned())?;
    let mut bytes = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "the request body has no stream".to_owned())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
            }
        }
    }
    drop(incoming);
    Ok(bytes)
}

/// The identity the host put in `x-addon-*` headers.
fn identity(headers: &[(String, String)]) -> Result<Identity, String> {
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let need = |name: &str| get(name).ok_or_else(|| format!("the host sent no `{name}` header"));
    let decoded = |name: &str| get(name).map(|v| percent_decode(v.as_bytes(), false));
    let surface = match need("x-addon-surface")?.as_str() {
        "api" => Surface::Api,
        _ => Surface::Dashboard,
    };
    let platform = match need("x-addon-platform")?.as_str() {
        "xervo" => Platform::Xervo,
        _ => Platform::Bitrise,
    };
    Ok(Identity {
        surface,
        resource_id: need("x-addon-resource-id")?,
        platform,
        app_id: get("x-addon-app-id").unwrap_or_default(),
        plan: get("x-addon-plan").unwrap_or_default(),
        app_title: decoded("x-addon-app-title"),
        unverified_email: decoded("x-addon-unverified-email"),
        csrf_token: get("x-addon-csrf-token"),
        csp_nonce: get("x-addon-csp-nonce"),
        base_path: get("x-addon-base-path").unwrap_or_default(),
    })
}

fn write(response: Response, out: ResponseOutparam) {
    let pairs: Vec<(String, Vec<u8>)> =
        response.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())).collect();
    // A header wasi:http refuses (a forbidden or malformed name) is a plugin bug: answer 500
    // saying so rather than dropping it silently.
    let (fields, status, body) = match Fields::from_list(&pairs) {
        Ok(fields) => (fields, response.status, response.body),
        Err(e) => (Fields::new(), 500, format!("the plugin set an invalid header: {e:?}").into_bytes()),
    };
    let outgoing = OutgoingResponse::new(fields);
    if outgoing.set_status_code(status).is_err() {
        let _ = outgoing.set_status_code(500);
    }
    let Ok(sink) = outgoing.body() else { return };
    ResponseOutparam::set(out, Ok(outgoing));
    if let Ok(mut stream) = sink.write() {
        // The host caps what it reads; past that, writes fail and the response is refused.
        let _ = stream.write_all(&body);
        let _ = stream.flush();
    }
    let _ = OutgoingBody::finish(sink, None);
}
