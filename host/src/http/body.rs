//! Reading request bodies at the edge: each route's size limit applied while reading (a
//! 60 MB body to a 64 KiB route is cut off at 64 KiB, not buffered first; one a little over
//! the limit is read to its end and dropped, so the client gets to read the 413), and a time
//! limit on the whole body, so a client trickling bytes cannot hold a connection and a handler.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body::{Frame, SizeHint};

use crate::error::ServiceError;

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct BodyTimeout(Duration);

/// A body that fails once `limit` has passed since the request arrived.
struct TimedBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Give the request's body `limit` to arrive, counted from now (the headers are in).
pub(crate) fn time_limit(req: Request, limit: Duration) -> Request {
    req.map(|inner| Body::new(TimedBody { inner, deadline: Box::pin(tokio::time::sleep(limit)), limit }))
}

/// How much of an over-limit body is still read, and thrown away, before the 413: a client
/// that writes its whole body before reading the answer (Go's and most others) then sees the
/// 413 instead of a connection reset in the middle of its write. Larger bodies are cut off.
const DRAIN_BYTES: u64 = 1 << 20;

/// Read a whole body of at most `max` bytes; `what` names it in errors.
pub(crate) async fn read(mut body: Body, max: usize, what: &str) -> Result<Bytes, ServiceError> {
    use http_body_util::BodyExt;
    let too_large = || ServiceError::PayloadTooLarge(format!("{what} exceeds the {max}-byte limit"));
    let announced = http_body::Body::size_hint(&body).lower();
    if announced > max as u64 {
        if announced <= max as u64 + DRAIN_BYTES {
            drain(&mut body).await;
        }
        return Err(too_large());
    }
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(unreadable)?.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > max {
            drain(&mut body).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes.freeze())
}

/// Read and discard up to [`DRAIN_BYTES`] more of the body, within its time limit.
async fn drain(body: &mut Body) {
    use http_body_util::BodyExt;
    let mut read = 0u64;
    while read <= DRAIN_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

fn unreadable(e: axum::Error) -> ServiceError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(timeout) = err.downcast_ref::<BodyTimeout>() {
            return ServiceError::RequestTimeout(timeout.to_string());
        }
        source = err.source();
    }
    ServiceError::BadRequest(format!("unreadable request body: {e}"))
}
