//! The data-plane listener: HTTP/1.1 and h2c (prior knowledge) on one port, or TLS with
//! ALPN `h2`/`http/1.1`; limits that refuse malformed requests before any upstream sees
//! them; HTTP/1.1 upgrades tunnelled; graceful shutdown.
//!
//! Clients that hold on to resources are bounded here (docs/proxying.md#hostile-clients,
//! `limits:` in docs/config.md): at most `max_connections` connections (accepting pauses at
//! the cap, so the metrics and admin listeners keep their descriptors), a deadline from
//! accept to the first complete request head whatever the protocol (`header_timeout`),
//! idle HTTP/1.1 keep-alive connections closed after `keepalive_timeout`,
//! GOAWAY for HTTP/2 connections idle for `h2_idle_timeout`, and a client that accepts no
//! bytes for `send_timeout` is disconnected, which releases the upstream slot its response
//! held.

use crate::body::RespBody;
use crate::connection::{ClientBody, ConnWatch};
use crate::h1::body::RequestBody;
use crate::h1::conn::Served;
use crate::h1::{H1Settings, IdleRead, Prefixed};
use crate::handler::{own_response, ConnInfo, ProxyState};
use crate::headers::check_host;
use crate::watched_io::WatchedIo;
use bytes::Bytes;
use http::StatusCode;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rampart_core::config::Limits;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// Largest request header section accepted; larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in one request.
pub const MAX_HEADER_COUNT: usize = 256;
/// Longest a TLS handshake may take (less when `header_timeout` is shorter).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors kept back from the default `max_connections`: the metrics and admin
/// listeners and their clients, the config and certificate watchers, state and log files.
pub const RESERVED_FDS: u64 = 128;
/// Open-file limit assumed when the process's own cannot be read.
const FALLBACK_FD_LIMIT: u64 = 1024;
/// Shortest pause between send-timeout checks of an HTTP/2 connection.
const MIN_SEND_CHECK: Duration = Duration::from_millis(50);

/// Binds the data-plane listener on `addr` with an accept queue of `backlog` connections
/// (`limits.listen_backlog`; the kernel caps it at `net.core.somaxconn`).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The process's open-file limit (soft), from `/proc/self/limits`.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::from(u32::MAX)),
        n => n.parse().ok(),
    }
}

/// The default `max_connections`: half of what the open-file limit leaves after
/// [`RESERVED_FDS`], since every proxied HTTP/1.1 request may hold an upstream connection
/// beside its client's.
pub fn default_max_connections() -> u32 {
    let limit = open_file_limit().unwrap_or(FALLBACK_FD_LIMIT);
    let usable = limit.saturating_sub(RESERVED_FDS) / 2;
    u32::try_from(usable.max(16)).unwrap_or(u32::MAX)
}

/// hyper's HTTP/2 server as the data plane runs it.
fn h2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_concurrent_streams);
    builder
}

/// Waits for the open connections when the listener has stopped: keep-alive connections
/// are told to close, HTTP/2 peers get GOAWAY.
pub struct Drain {
    tx: Arc<watch::Sender<()>>,
}

impl Drain {
    /// Asks every open connection to finish what it has in flight and close; resolves
    /// when all have closed.
    pub async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }

    /// Connections still open.
    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Logs one line at most once a second, with the number of lines it held back.
struct Throttled {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    fn new() -> Self {
        Throttled {
            last: None,
            held_back: 0,
        }
    }

    /// Calls `log` with the held-back count if a second has passed since the last line.
    fn log(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.held_back += 1;
            return;
        }
        self.last = Some(now);
        log(std::mem::take(&mut self.held_back));
    }
}

/// What every connection task shares.
struct Shared {
    state: Arc<ProxyState>,
    tls: Option<TlsAcceptor>,
    drain: Arc<watch::Sender<()>>,
}

/// Serves the data plane on `listener` (through `tls` when given) until `stop` resolves,
/// then stops accepting and returns the handle that waits for open connections to finish.
///
/// `limits.max_connections` is read once, here; the other limits are read from the
/// snapshot for each new connection, so a reload applies to the connections after it.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ProxyState>,
    tls: Option<TlsAcceptor>,
    stop: impl Future<Output = ()>,
) -> Drain {
    let drain = Arc::new(watch::channel(()).0);
    let max = state
        .snapshot
        .load()
        .config
        .limits
        .max_connections
        .unwrap_or_else(default_max_connections);
    state.metrics.connections_max.set(i64::from(max));
    let slots = Arc::new(Semaphore::new(
        usize::try_from(max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Shared {
        state,
        tls,
        drain: Arc::clone(&drain),
    });
    let mut builder: Option<(Limits, Arc<http2::Builder<TokioExecutor>>)> = None;
    let mut cap_log = Throttled::new();
    let mut accept_log = Throttled::new();
    let mut accept_backoff = Duration::ZERO;
    tokio::pin!(stop);
    loop {
        // A slot before the accept: at the cap the listener stops accepting, and new
        // connections wait in the kernel's queue instead of taking descriptors the metrics
        // and admin listeners need.
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                shared.state.metrics.connection_cap_reached.inc();
                cap_log.log(|held_back| {
                    tracing::warn!(
                        max_connections = max,
                        held_back,
                        "connection cap reached: not accepting until a connection closes"
                    )
                });
                let acquired = tokio::select! {
                    _ = &mut stop => break,
                    permit = Arc::clone(&slots).acquire_owned() => permit,
                };
                match acquired {
                    Ok(permit) => permit,
                    Err(_) => break,
                }
            }
        };
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_backoff = Duration::ZERO;
                a
            }
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or memory: wait, longer each time, so
                // the loop neither spins nor floods the log; a reset before accept: retry.
                let resource = matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105));
                accept_backoff = if resource {
                    (accept_backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
                } else {
                    Duration::ZERO
                };
                accept_log.log(|held_back| {
                    tracing::warn!(error = %e, held_back, retry_in_ms = accept_backoff.as_millis() as u64, "accept failed")
                });
                if !accept_backoff.is_zero() {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(accept_backoff) => {}
                    }
                }
                continue;
            }
        };
        let accepted_at = Instant::now();
        let limits = shared.state.snapshot.load().config.limits;
        let builder = match &builder {
            Some((built_for, b)) if *built_for == limits => Arc::clone(b),
            _ => {
                let b = Arc::new(h2_builder(&limits));
                builder = Some((limits, Arc::clone(&b)));
                b
            }
        };
        let conn = ConnInfo {
            peer,
            tls: shared.tls.is_some(),
        };
        tokio::spawn(connection(
            Arc::clone(&shared),
            builder,
            limits,
            stream,
            conn,
            accepted_at,
            permit,
        ));
    }
    Drain { tx: drain }
}

/// Counts an open connection for `rampart_connections_open` while it lives.
struct OpenGuard<'a>(&'a ProxyState);

impl<'a> OpenGuard<'a> {
    fn new(state: &'a ProxyState) -> Self {
        state.metrics.connections_open.inc();
        OpenGuard(state)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections_open.dec();
    }
}

/// One client connection from accept to close: TLS handshake (if any), then HTTP under
/// the connection's deadlines.
async fn connection(
    shared: Arc<Shared>,
    builder: Arc<http2::Builder<TokioExecutor>>,
    limits: Limits,
    stream: TcpStream,
    conn: ConnInfo,
    accepted_at: Instant,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let _open = OpenGuard::new(&shared.state);
    let _ = stream.set_nodelay(true);
    match &shared.tls {
        None => serve_http(&shared, &builder, limits, stream, conn, accepted_at, false).await,
        // Boxed: the TLS session and handshake state would otherwise size every
        // connection's task, plaintext ones included.
        Some(acceptor) => {
            Box::pin(serve_tls(
                &shared,
                acceptor,
                &builder,
                limits,
                stream,
                conn,
                accepted_at,
            ))
            .await
        }
    }
}

/// The TLS handshake, under both its own timeout and the header deadline, then HTTP.
async fn serve_tls(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    builder: &http2::Builder<TokioExecutor>,
    limits: Limits,
    stream: TcpStream,
    conn: ConnInfo,
    accepted_at: Instant,
) {
    let header_deadline = accepted_at + limits.header_timeout;
    let handshake_deadline = header_deadline.min(accepted_at + TLS_HANDSHAKE_TIMEOUT);
    match tokio::time::timeout_at(handshake_deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_http(shared, builder, limits, tls_stream, conn, accepted_at, h2).await
        }
        Ok(Err(e)) => tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            if handshake_deadline == header_deadline {
                count_timeout(&shared.state, "header_timeout");
            }
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out")
        }
    }
}

fn count_timeout(state: &ProxyState, timeout: &str) {
    state
        .metrics
        .client_timeouts
        .with_label_values(&[timeout])
        .inc();
}

/// Serves HTTP on `io`: HTTP/2 when ALPN chose it (`h2`), else HTTP/1.x by Rampart's own
/// server, which hands the connection to HTTP/2 when it starts with the prior-knowledge
/// preface.
async fn serve_http<I>(
    shared: &Shared,
    builder: &http2::Builder<TokioExecutor>,
    limits: Limits,
    io: I,
    conn: ConnInfo,
    accepted_at: Instant,
    h2: bool,
) where
    I: AsyncRead + AsyncWrite + IdleRead + Unpin + Send + 'static,
{
    let mut drain = shared.drain.subscribe();
    let io = if h2 {
        Prefixed::new(Bytes::new(), io)
    } else {
        let served = crate::h1::serve_h1(
            &shared.state,
            &shared.state.metrics,
            io,
            conn,
            accepted_at,
            H1Settings::from(&limits),
            &mut drain,
        )
        .await;
        match served {
            Served::Http2(io) => io,
            Served::Done => return,
        }
    };
    // Boxed: HTTP/2's connection state would otherwise size every connection's task.
    Box::pin(serve_h2(
        shared,
        builder,
        limits,
        io,
        conn,
        accepted_at,
        drain,
    ))
    .await;
}

/// Serves HTTP/2 on `io` until the connection ends, a deadline closes it, or the drain has
/// asked it to close and it has.
async fn serve_h2<I>(
    shared: &Shared,
    builder: &http2::Builder<TokioExecutor>,
    limits: Limits,
    io: I,
    conn: ConnInfo,
    accepted_at: Instant,
    mut drain: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watch = Arc::new(ConnWatch::new(accepted_at));
    let service = service_for(&shared.state, conn, &watch);
    let io = WatchedIo::new(io, limits.send_timeout);
    let timed_out = io.timed_out();
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);

    let header_deadline = accepted_at + limits.header_timeout;
    let timer = tokio::time::sleep_until(header_deadline);
    tokio::pin!(timer);
    let mut ticking = true;
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    if timed_out.load(Ordering::Acquire) {
                        count_timeout(&shared.state, "send_timeout");
                        tracing::debug!(error = %error, "client accepted no bytes for send_timeout: connection closed");
                    } else {
                        tracing::debug!(error = %error, "HTTP/2 connection ended with an error");
                    }
                }
                return;
            }
            changed = drain.changed(), if !draining => {
                // Shutdown (or the listener is gone): finish in-flight requests and close.
                let _ = changed;
                connection.as_mut().graceful_shutdown();
                draining = true;
                continue;
            }
            _ = watch.first_request(), if watch.requests() == 0 => {}
            _ = watch.became_idle(), if !draining => {}
            _ = &mut timer, if ticking => {}
        }

        // Work out what the connection waits for now, and when to look again.
        let now = Instant::now();
        if watch.requests() == 0 {
            if now >= header_deadline {
                count_timeout(&shared.state, "header_timeout");
                tracing::debug!(peer = %conn.peer, timeout = ?limits.header_timeout, "no complete request head in time: connection closed");
                return;
            }
            timer.as_mut().reset(header_deadline);
            ticking = true;
            continue;
        }
        if watch.open() == 0 {
            let idle_deadline = watch.idle_since() + limits.h2_idle_timeout;
            if draining {
                ticking = false;
            } else if now >= idle_deadline {
                count_timeout(&shared.state, "h2_idle_timeout");
                tracing::debug!(peer = %conn.peer, timeout = ?limits.h2_idle_timeout, "idle HTTP/2 connection: GOAWAY");
                connection.as_mut().graceful_shutdown();
                draining = true;
                ticking = false;
            } else {
                // Streams opening before then wake nothing; the check at this deadline
                // sees them and switches to send-timeout checks.
                timer.as_mut().reset(idle_deadline);
                ticking = true;
            }
            continue;
        }
        if let Some(since) = watch.oldest_waiting() {
            if now.duration_since(since) >= limits.send_timeout {
                count_timeout(&shared.state, "send_timeout");
                tracing::debug!(peer = %conn.peer, timeout = ?limits.send_timeout, "HTTP/2 client accepted no data: connection closed");
                return;
            }
        }
        timer
            .as_mut()
            .reset(now + (limits.send_timeout / 4).max(MIN_SEND_CHECK));
        ticking = true;
    }
}

/// The per-connection HTTP/2 service: refuses requests with a bad `Host`, then hands each
/// request to the proxy. The closure's future is not boxed: no allocation per request.
fn service_for(
    state: &Arc<ProxyState>,
    conn: ConnInfo,
    watch: &Arc<ConnWatch>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<ClientBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let state = Arc::clone(state);
    let watch = Arc::clone(watch);
    service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let state = Arc::clone(&state);
        let in_flight = watch.request(true);
        let (parts, body) = request.into_parts();
        let mut request = http::Request::from_parts(parts, RequestBody::Http2(body));
        let refused = check_host(&mut request).err();
        async move {
            let response = match refused {
                Some(reason) => refuse(&state, reason),
                None => state.handle(conn, request).await,
            };
            let (head, body) = response.into_parts();
            Ok::<_, Infallible>(http::Response::from_parts(
                head,
                ClientBody::new(body, in_flight),
            ))
        }
    })
}

/// 400 for a malformed HTTP/2 request (counted by `reason`).
fn refuse(state: &ProxyState, reason: &'static str) -> http::Response<RespBody> {
    state.metrics.malformed.with_label_values(&[reason]).inc();
    tracing::info!(reason, "malformed request refused");
    own_response(StatusCode::BAD_REQUEST, "bad_request", false)
}
