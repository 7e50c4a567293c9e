//! The data-plane listener: HTTP/1.1 and h2c (prior knowledge) on one port, or TLS with
//! ALPN `h2`/`http/1.1`; limits that refuse malformed requests before any upstream sees
//! them; HTTP/1.1 upgrades tunnelled; graceful shutdown.

use crate::body::RespBody;
use crate::h1_inspect::{H1Flags, InspectedIo};
use crate::handler::{own_response, ConnInfo, ProxyState};
use http::header::{HeaderValue, CONNECTION};
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Largest request header section accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADER_COUNT: usize = 256;
/// Longest a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Serves the data plane on `listener` (through `tls` when given) until `stop` resolves,
/// then stops accepting and returns the handle that waits for open connections to finish
/// (keep-alive connections are told to close, HTTP/2 peers get GOAWAY).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder());
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
        let conn = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        match &tls {
            None => serve_connection(&builder, &graceful, &state, conn, stream),
            Some(acceptor) => {
                // The handshake runs in its own task so a slow client cannot stall accepts;
                // the connection joins the graceful-shutdown set once it speaks HTTP.
                let acceptor = acceptor.clone();
                let builder = Arc::clone(&builder);
                let state = Arc::clone(&state);
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            let (service, io) = service_for(&state, conn, tls_stream);
                            let connection =
                                builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                            if let Err(error) = watcher.watch(connection.into_owned()).await {
                                record_connection_error(&state, error.as_ref());
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    graceful
}

fn serve_connection<I>(
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    state: &Arc<ProxyState>,
    conn: ConnInfo,
    io: I,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (service, io) = service_for(state, conn, io);
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let watched = graceful.watch(connection);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        if let Err(error) = watched.await {
            record_connection_error(&state, error.as_ref());
        }
    });
}

/// The per-connection service: refuses requests the framing inspector flagged, then hands
/// each request to the proxy. The closure's future is not boxed: no allocation per request.
fn service_for<I>(
    state: &Arc<ProxyState>,
    conn: ConnInfo,
    io: I,
) -> (
    impl hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<RespBody>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
    InspectedIo<I>,
) {
    let io = InspectedIo::new(io);
    let flags: Arc<H1Flags> = Arc::clone(io.flags());
    let requests = Arc::new(AtomicU64::new(0));
    let state = Arc::clone(state);
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        let index = requests.fetch_add(1, Ordering::Relaxed);
        let smuggling = flags.is_smuggling(index);
        async move {
            if smuggling {
                return Ok::<_, Infallible>(refuse_smuggling(&state));
            }
            Ok(state.handle(conn, request).await)
        }
    });
    (service, io)
}

/// 400 and close for a request with both `Content-Length` and `Transfer-Encoding`.
fn refuse_smuggling(state: &ProxyState) -> http::Response<RespBody> {
    state
        .metrics
        .malformed
        .with_label_values(&["content_length_and_transfer_encoding"])
        .inc();
    tracing::info!(
        reason = "content_length_and_transfer_encoding",
        "malformed request refused"
    );
    let mut response = own_response(StatusCode::BAD_REQUEST, "bad_request", false);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
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
