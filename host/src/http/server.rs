//! The listener: serves up to `server.max_connections` connections, at most
//! `max_connections_per_client` from one address (past either, a fast 503, see
//! [`super::deadline`]), each with hyper under a header-read timeout that also closes idle
//! keep-alive connections and a write deadline that closes connections whose client stopped
//! reading; on shutdown it stops accepting, lets requests in flight finish (for a bounded
//! time), then flushes storage.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::deadline::{Clients, WriteDeadline, refuse};
use crate::config::ServerConfig;

/// The most a connection buffers of requests not yet answered (headers included).
const READ_BUFFER: usize = 64 * 1024;

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(30);

pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    server: &ServerConfig,
    open: prometheus_client::metrics::gauge::Gauge,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = server.max_connections;
    room_for(max);
    let header_timeout = Duration::from_millis(server.header_timeout_ms);
    let write_timeout = Duration::from_millis(server.write_timeout_ms);
    let connections = Arc::new(Semaphore::new(max));
    let clients = Arc::new(Clients::default());
    // Refusals being written at once; past it a refused connection is just closed.
    let refusing = Arc::new(Semaphore::new(256));
    let (closing, closed) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refuse(stream, &refusing, "the host is serving as many connections as it may");
            continue;
        };
        let Some(client) = clients.take(peer.ip(), server.max_connections_per_client) else {
            refuse(stream, &refusing, "too many connections from your address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = taking_turns(router.clone());
        let mut closed = closed.clone();
        let open = Open::new(open.clone());
        tokio::spawn(async move {
            let (_permit, _client) = (permit, client);
            let _open = open;
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Pipelined requests are answered one at a time and read only while answers are
            // written, so the read buffer bounds a connection's unanswered backlog.
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(READ_BUFFER);
            let conn = builder.serve_connection(TokioIo::new(WriteDeadline::new(stream, write_timeout)), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection closed: {e}");
                    }
                }
                _ = closed.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    if tokio::time::timeout(DRAIN, connections.acquire_many(max as u32)).await.is_err() {
        tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

/// Connections the kernel may hold for the listener before it accepts them. A burst of new
/// connections past the backlog has its SYNs dropped, and each of those clients waits a
/// whole second to retry, however idle the host is (the kernel caps it at
/// `net.core.somaxconn`, 4096 by default).
const BACKLOG: u32 = 4096;

/// A listener on `addr` with room for a burst of [`BACKLOG`] connections.
pub(crate) fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Raises the process's open-file limit so `max` connections fit beside the host's own files
/// (storage, plugins, outbound calls), up to the hard limit; warns if that is not enough.
#[allow(unsafe_code, reason = "getrlimit and setrlimit have no safe wrapper in std")]
fn room_for(max: usize) {
    const OWN_FILES: u64 = 512;
    let want = max as u64 + OWN_FILES;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= want {
        return;
    }
    let raised = libc::rlimit { rlim_cur: want.min(limit.rlim_max), rlim_max: limit.rlim_max };
    // SAFETY: as above.
    let cur =
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 { raised.rlim_cur } else { limit.rlim_cur };
    if cur < want {
        tracing::warn!(
            "server.max_connections is {max} but the open-file limit is {cur}: past about {} connections, \
             accepting fails; raise the limit (ulimit -n) or lower max_connections",
            cur.saturating_sub(OWN_FILES)
        );
    }
}

/// `router` for one connection, which lets every other task run before each of its
/// requests. Without it, a connection with a backlog of pipelined requests is served a whole
/// scheduling budget's worth of them per turn, and a thousand such connections keep every
/// other client waiting for seconds; with it, each turn serves one request.
fn taking_turns(
    router: Router,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> {
    let service = TowerToHyperService::new(router);
    // The first request waited for its turn already, when the connection was accepted.
    let first = std::sync::atomic::AtomicBool::new(true);
    hyper::service::service_fn(move |request| {
        let waits = !first.swap(false, std::sync::atomic::Ordering::Relaxed);
        let served = hyper::service::Service::call(&service, request);
        async move {
            if waits {
                tokio::task::yield_now().await;
            }
            served.await
        }
    })
}

/// Counts an open connection in the `addon_host_connections` gauge while it lives.
struct Open(prometheus_client::metrics::gauge::Gauge);

impl Open {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Open {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}
