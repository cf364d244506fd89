//! How every Paygate listener serves HTTP (the api, its admin and metrics ports, each
//! service's health port, the simulator), in place of `axum::serve`, which sets no
//! header-read timeout and takes every connection it is offered.
//!
//! What it guarantees, per listener:
//! - a client sends a request's whole head (request line and headers) within
//!   `http.header_read_timeout_ms`, or its connection is closed; the same bound closes a
//!   keep-alive connection that sits idle between requests. A thousand half-sent heads
//!   hold a thousand sockets for seconds, not for ever. (Reading the body is the
//!   route's business: the api bounds it with `api.body_read_timeout_ms`.)
//! - at most `http.max_connections` connections are open at once; past that the
//!   listener stops accepting until one closes, and newcomers wait in the kernel's
//!   backlog instead of costing a file descriptor and a task each.
//! - every request carries the peer's address as [`axum::extract::ConnectInfo`], so
//!   limits per client address can be applied before any work.
//! - on shutdown it stops accepting, lets the requests in flight finish, and returns
//!   once every connection has closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::config::HttpSettings;

/// The bounds a listener enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a client may take to send a request's head (and how long a keep-alive
    /// connection may sit idle).
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// For the gateway simulator, a test tool with no settings of its own: the defaults'
    /// header timeout, and room for every connection a load test opens.
    pub const SIMULATOR: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 4096,
    };
}

impl From<&HttpSettings> for Limits {
    fn from(settings: &HttpSettings) -> Self {
        Limits {
            header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms),
            max_connections: settings.max_connections,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`, then lets the
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Each connection's task holds a receiver; when all are dropped, all have ended.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = router
            .clone()
            .map_request(move |request: axum::http::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let (shutdown, open) = (shutdown.clone(), open_rx.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop((slot, open));
        });
    }
    drop(open_rx);
    drop(listener);
    open_tx.closed().await;
    Ok(())
}

/// The peer address of a request served by [`serve`] (`None` for a router driven
/// without a socket, as unit tests do).
pub fn peer(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
}
