//! The data-plane listener: HTTP/1.1 and h2c (prior knowledge) on one port, with limits
//! that refuse malformed requests before any upstream sees them, and graceful shutdown.

use crate::handler::{ConnInfo, ProxyState};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest request header section accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADER_COUNT: usize = 256;

fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADER_COUNT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    builder
}

/// Serves the data plane on `listener` until `stop` resolves, then stops accepting and
/// returns the handle that waits for open connections to finish (after telling
/// keep-alive connections to close and HTTP/2 peers GOAWAY).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    stop: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let builder = builder();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn_info = ConnInfo { peer, tls: false };
        let state_for_conn = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state_for_conn);
            async move { Ok::<_, Infallible>(state.handle(conn_info, request).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let watched = graceful.watch(connection);
        let state_for_errors = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                record_connection_error(&state_for_errors, error.as_ref());
            }
        });
    }
    graceful
}

/// Counts requests hyper refused while parsing (it answers 400 or 431 itself).
fn record_connection_error(state: &ProxyState, error: &(dyn std::error::Error + 'static)) {
    let Some(hyper_error) = error.downcast_ref::<hyper::Error>() else {
        tracing::debug!(error = %error, "connection ended with an error");
        return;
    };
    let reason = if hyper_error.is_parse_too_large() {
        "header_too_large"
    } else if hyper_error.is_parse() {
        "bad_request"
    } else {
        tracing::debug!(error = %error, "connection ended with an error");
        return;
    };
    state.metrics.malformed.with_label_values(&[reason]).inc();
    tracing::info!(reason, error = %error, "malformed request refused");
}
