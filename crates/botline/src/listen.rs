//! The HTTP server of `botline serve`: the router of [`crate::http`] on a TCP listener, with the
//! bounds a public endpoint needs against slow or idle clients (slowloris).
//!
//! `axum::serve` sets no timer on its connections, so hyper's header-read timeout never applies
//! and a client that sends half a request holds its connection (and a file descriptor) for as
//! long as it likes. Here each connection is served by hyper directly (as axum's
//! `serve-with-hyper` example does), with:
//! - a header-read timeout ([`HttpLimits::header_read_timeout`]): the request line and headers
//!   must arrive within it, counted from the connection's start or the end of its previous
//!   response, so an idle keep-alive connection is closed after it too;
//! - a cap on open connections ([`HttpLimits::max_connections`], above Telegram's
//!   `max_connections` of 100): a connection beyond it is closed at once, before anything is
//!   read, and counted in `botline_http_connections_refused_total`;
//! - the body-read timeout, which the webhook handler applies ([`crate::http`]).
//!
//! Telegram sends each request whole and at once, so none of these bounds delays it.

use crate::metrics as names;
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
use tower::ServiceExt;

/// The bounds on what one client can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// Time to receive a request's line and headers.
    pub header_read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` resolves; then stops accepting, lets the
/// connections finish the requests in hand, and returns once they are closed (the caller bounds
/// how long it waits).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    metrics::gauge!(names::HTTP_CONNECTIONS).set(0.0);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up before the accept: wait a
                    // little rather than spin, then go on.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics::counter!(names::HTTP_CONNECTIONS_REFUSED).increment(1);
            tracing::debug!(peer = %peer, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // What `into_make_service_with_connect_info` would insert: the edge guard reads it.
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        metrics::gauge!(names::HTTP_CONNECTIONS).increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                if e.is_timeout() {
                    metrics::counter!(names::HTTP_TIMEOUTS, "phase" => "headers").increment(1);
                    tracing::debug!(peer = %peer, "connection closed: headers not received in time");
                } else {
                    tracing::debug!(peer = %peer, error = %e, "connection closed with an error");
                }
            }
            metrics::gauge!(names::HTTP_CONNECTIONS).decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
