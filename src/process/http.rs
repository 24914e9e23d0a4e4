//! The HTTP accept loop, with the bounds `axum::serve` does not offer: a connection cap and a
//! header-read timeout.
//!
//! Without them one client can hold the server's sockets forever (slowloris: open connections
//! that send a header byte now and then and never finish), and every tenant shares those sockets.
//! Here a connection must deliver a whole request head within `header_timeout` (hyper starts the
//! clock whenever it waits for a head, so an idle keep-alive connection is closed after the same
//! time), and at most `max_connections` are open at once: past that the loop stops accepting and
//! new clients wait in the kernel's backlog until a connection closes. Bodies and handlers are
//! bounded by the router's layers (`api::router`: body idle timeout and request deadline).
//!
//! Each request carries the peer's address (`ConnectInfo<SocketAddr>`) for per-address throttling
//! of failed authentication.

use crate::config::ConnectionLimits;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish (for
/// at most `drain`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    drain: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "requests still open after the drain period; closing them"
        );
    }
}
