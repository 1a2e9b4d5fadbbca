//! The listener: accepts connections up to `server.max_connections` (past it, new clients
//! wait in the kernel's backlog), serves each with hyper under a header-read timeout that
//! also closes idle keep-alive connections, and on shutdown stops accepting, lets requests
//! in flight finish (for a bounded time), then flushes storage.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::ServerConfig;

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
    let header_timeout = Duration::from_millis(server.header_timeout_ms);
    let connections = Arc::new(Semaphore::new(max));
    let (closing, closed) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut closed = closed.clone();
        let open = Open::new(open.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
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
