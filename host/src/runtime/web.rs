//! A plugin's optional HTTP export, the standard `wasi:http/incoming-handler` (the `web`
//! world of `wit/provider.wit`), run through `wasmtime-wasi-http`. The host has already
//! authenticated the request and read its (capped) body; here it becomes a
//! `wasi:http/types.incoming-request` for one fresh instance, and the instance's response is
//! read back under a size cap while the guest is still writing it (its body streams through a
//! bounded channel, so reading only after the call returned would stall a large body).
//!
//! The guest gets `wasi:http/types` but no way out: `outgoing-handler` is linked so that
//! components built with it still load, and refuses every request. Outbound calls go through
//! the `http` interface, which enforces `allowed_outbound`.

use std::convert::Infallible;

use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::p2::bindings::exports::wasi::http::incoming_handler::GuestIndices;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::failure::CallFailure;
use super::state::CallState;

/// One HTTP request for a plugin's handler: what the host forwards after authenticating it.
#[derive(Debug, Clone)]
pub struct WebRequest {
    pub method: Method,
    /// Path and query as the plugin sees them (`/dashboard/...`, `/api/...`).
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Largest response body the host reads back.
    pub max_response_bytes: usize,
}

/// A handler's response, read in full.
#[derive(Debug, Clone)]
pub struct WebResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The hooks of a call's `wasi:http`: the default header rules, and no outbound requests.
pub(super) struct NoOutbound;

impl WasiHttpHooks for NoOutbound {
    fn send_request(
        &mut self,
        _request: axum::http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        axum::http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.web, table: &mut self.table, hooks: &mut self.web_hooks }
    }
}

/// Whether a linked component exports the handler: its export indices, if so.
pub(super) fn indices(pre: &wasmtime::component::InstancePre<CallState>) -> Option<GuestIndices> {
    GuestIndices::new(pre).ok()
}

/// Call the handler of `instance` with `request`; the response, or why there is none.
pub(super) async fn handle(
    instance: &wasmtime::component::Instance,
    indices: &GuestIndices,
    store: &mut Store<CallState>,
    request: WebRequest,
) -> wasmtime::Result<Result<WebResponse, CallFailure>> {
    let max = request.max_response_bytes;
    let mut builder = axum::http::Request::builder().method(request.method).uri(request.uri);
    if let Some(headers) = builder.headers_mut() {
        *headers = request.headers;
    }
    let body = Full::new(request.body).map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} });
    let incoming = builder.body(body)?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, incoming)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let guest = indices.load(&mut *store, instance)?;
    let call = async {
        let called = guest.call_handle(&mut *store, req, out).await;
        // What the guest left behind (an outparam never set, a body never finished) goes
        // now, so the reading side below ends instead of waiting for the deadline.
        store.data_mut().table = ResourceTable::new();
        called
    };
    let read = async {
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => return Err(CallFailure::InvalidReply(format!("its handler failed: {}", describe(&code)))),
            Err(_) => return Err(CallFailure::InvalidReply("its handler returned without a response".into())),
        };
        let (parts, body) = response.into_parts();
        match Limited::new(body, max).collect().await {
            Ok(body) => {
                Ok(WebResponse { status: parts.status.as_u16(), headers: parts.headers, body: body.to_bytes() })
            }
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(CallFailure::ResponseTooLarge { max }),
            Err(e) => Err(CallFailure::InvalidReply(format!("its response body broke off: {e}"))),
        }
    };
    let (called, read) = tokio::join!(call, read);
    called?;
    Ok(read)
}

fn describe(code: &ErrorCode) -> String {
    format!("{code:?}")
}
