//! The HTTP/1.1 connection driver: one task per client connection reads request heads,
//! hands each request to the proxy, feeds the request body as the proxy asks for it, writes
//! the response, and then keeps the connection for the next request or closes it.
//!
//! Memory: while a connection waits for its next request it holds no buffer at all (a
//! plain TCP socket is polled for readiness first; a read buffer is taken only when bytes
//! are there) and its task is the driver's state, a few hundred bytes. Buffers live for the
//! length of one exchange.
//!
//! Deadlines (docs/proxying.md#hostile-clients): the first complete head within
//! `header_timeout` of accept; each later head within `keepalive_timeout` of the previous
//! response's end; a write that makes no progress for `send_timeout` ends the connection.
//! A request body's pace is bounded by the upstream's `idle_timeout` in the proxy's body.
//!
//! Refusals: a head that does not parse or breaks the framing rules ([`codec`]) gets 400
//! (431 when too large) with `connection: close`, is counted in
//! `rampart_malformed_requests_total{reason}`, and never reaches the proxy. So do the `Host`
//! rules (RFC 9112 section 3.2). A bad chunk mid-body fails the body the proxy is reading;
//! the proxy answers 400 and the connection closes.

use super::body::{Chan, ClientUpgrade, Demand, H1Body, RequestBody, UpgradeIo, Upgraded};
use super::codec::{self, Chunk, ChunkedDecoder, ParseError, RequestFraming, ResponseFraming};
use super::io::{IdleRead, Prefixed};
use crate::body::RespBody;
use crate::handler::{ConnInfo, ProxyState};
use crate::metrics::Metrics;
use crate::watched_io::StallTimer;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use rampart_core::config::Limits;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

/// What the prior-knowledge HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// First read buffer of an exchange: a typical request head fits many times over.
const HEAD_READ: usize = 4 * 1024;
/// Read size while a request body streams.
const BODY_READ: usize = 16 * 1024;
/// Largest body frame handed to the proxy at once.
const MAX_FRAME: usize = 64 * 1024;
/// Response body frames up to this size are copied beside the head or chunk framing, so
/// one write carries them; larger ones are written from their own buffer.
const COPY_LIMIT: usize = 4 * 1024;
/// Pending output that is written before the next frame is taken from the body.
const FLUSH_AT: usize = 16 * 1024;
/// Pipelined bytes read ahead while a request is served, at most.
const READ_AHEAD_LIMIT: usize = codec::MAX_HEAD_BYTES;
/// Most of a request body the upstream left unread that is read and discarded after the
/// response, so that the connection can carry the next request; a longer rest closes it.
const DISCARD_LIMIT: u64 = 256 * 1024;
/// Longest time spent discarding such a rest.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The limits one connection runs under, read from the snapshot when it was accepted.
#[derive(Debug, Clone, Copy)]
pub struct H1Settings {
    /// From accept to the first complete request head.
    pub header_timeout: Duration,
    /// From the end of a response to the next complete request head.
    pub keepalive_timeout: Duration,
    /// Longest a write may make no progress.
    pub send_timeout: Duration,
}

impl From<&Limits> for H1Settings {
    fn from(limits: &Limits) -> H1Settings {
        H1Settings {
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            send_timeout: limits.send_timeout,
        }
    }
}

/// What answers the requests of a connection: the proxy ([`ProxyState::handle`]), or a
/// stand-in in tests and fuzzing.
pub trait Service: Send + Sync {
    /// The response to `request`, which came on connection `conn`.
    fn call(
        &self,
        conn: ConnInfo,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Response<RespBody>> + Send;
}

impl Service for Arc<ProxyState> {
    fn call(
        &self,
        conn: ConnInfo,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Response<RespBody>> + Send {
        self.handle(conn, request)
    }
}

/// How a connection served by [`serve_h1`] ended.
#[derive(Debug)]
pub enum Served<I> {
    /// Closed (or handed to an upgrade's tunnel).
    Done,
    /// The client sent the HTTP/2 prior-knowledge preface: serve HTTP/2 on this I/O (the
    /// preface and whatever followed it are put back in front).
    Http2(Prefixed<I>),
}

/// Serves HTTP/1.x on `io` until the connection closes, a deadline passes, the drain asks
/// it to close, or it turns out to be HTTP/2 (returned for hyper to serve).
pub async fn serve_h1<I, S: Service>(
    service: &S,
    metrics: &Metrics,
    io: I,
    conn: ConnInfo,
    accepted_at: Instant,
    settings: H1Settings,
    drain: &mut watch::Receiver<()>,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + IdleRead + Unpin + Send + 'static,
{
    let mut driver = Driver {
        service,
        metrics,
        io,
        buf: BytesMut::new(),
        out: Outgoing::default(),
        conn,
        settings,
        send_stall: StallTimer::new(settings.send_timeout),
        responding: false,
    };
    let mut deadline = accepted_at + settings.header_timeout;
    // One timer for the connection's life, registered once: a request moves the deadline
    // and the timer follows only when it fires early (see `read_head`), instead of a timer
    // registered and cancelled per request.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut first = true;
    loop {
        let head = match driver
            .read_head(deadline, timer.as_mut(), first, drain)
            .await
        {
            HeadRead::Head(head) => head,
            HeadRead::Http2 => {
                let prefix = std::mem::take(&mut driver.buf).freeze();
                return Served::Http2(Prefixed::new(prefix, driver.io));
            }
            HeadRead::Refused(error) => {
                Box::pin(driver.refuse_head(error)).await;
                return Served::Done;
            }
            HeadRead::TimedOut => {
                if first {
                    count_timeout(metrics, "header_timeout");
                    tracing::debug!(peer = %conn.peer, timeout = ?settings.header_timeout, "no complete request head in time: connection closed");
                } else {
                    tracing::debug!(peer = %conn.peer, timeout = ?settings.keepalive_timeout, "idle keep-alive connection closed");
                }
                driver.shutdown().await;
                return Served::Done;
            }
            HeadRead::Closed => return Served::Done,
        };
        first = false;
        // Boxed (one allocation per request): an exchange, the proxy's future in it, is
        // several KiB, and inline it would size the task of every connection, idle ones
        // included, for their whole life.
        match Box::pin(driver.exchange(head, drain)).await {
            Next::KeepAlive => {}
            Next::Close => {
                driver.shutdown().await;
                return Served::Done;
            }
            Next::Upgrade(tx) => {
                let read_ahead = std::mem::take(&mut driver.buf).freeze();
                let io: Box<dyn UpgradeIo> = Box::new(driver.io);
                let _ = tx.send(Prefixed::new(read_ahead, io));
                return Served::Done;
            }
            Next::Gone => return Served::Done,
        }
        deadline = Instant::now() + settings.keepalive_timeout;
        driver.idle();
    }
}

/// The result of waiting for a request head.
// The head is the common case, moved once per request: boxing it would cost an allocation
// per request to shrink the rare variants.
#[allow(clippy::large_enum_variant)]
enum HeadRead {
    Head(codec::RequestHead),
    Http2,
    Refused(ParseError),
    TimedOut,
    Closed,
}

/// What the connection does after an exchange.
enum Next {
    KeepAlive,
    Close,
    Upgrade(oneshot::Sender<Upgraded>),
    /// The connection failed (the client went away, a write timed out): nothing to close
    /// politely.
    Gone,
}

/// Output waiting to be written: `bytes[pos..]`, then `data`, then `tail`.
#[derive(Default)]
struct Outgoing {
    bytes: Vec<u8>,
    pos: usize,
    data: Bytes,
    tail: &'static [u8],
}

impl Outgoing {
    fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len() && self.data.is_empty() && self.tail.is_empty()
    }

    /// The buffer to queue bytes in (a pooled one once the connection was idle).
    fn buffer(&mut self) -> &mut Vec<u8> {
        if self.bytes.capacity() == 0 {
            self.bytes = super::io::take_write_buffer();
        }
        &mut self.bytes
    }

    /// Whether the output must be written before more is added.
    fn must_flush(&self) -> bool {
        !self.data.is_empty() || self.bytes.len() - self.pos >= FLUSH_AT
    }

    /// Adds a body frame (as a chunk when `chunked`). Only when `data` is empty.
    fn push_data(&mut self, data: Bytes, chunked: bool) {
        if chunked {
            codec::encode_chunk_size(data.len(), &mut self.bytes);
        }
        if data.len() <= COPY_LIMIT {
            self.bytes.extend_from_slice(&data);
            if chunked {
                self.bytes.extend_from_slice(b"\r\n");
            }
        } else {
            self.data = data;
            self.tail = if chunked { b"\r\n" } else { b"" };
        }
    }

    /// Notes `n` bytes written.
    fn advance(&mut self, mut n: usize) {
        let in_bytes = (self.bytes.len() - self.pos).min(n);
        self.pos += in_bytes;
        n -= in_bytes;
        let in_data = self.data.len().min(n);
        let _ = self.data.split_to(in_data);
        n -= in_data;
        let in_tail = self.tail.len().min(n);
        self.tail = self.tail.get(in_tail..).unwrap_or_default();
        if self.pos >= self.bytes.len() {
            self.bytes.clear();
            self.pos = 0;
        }
    }
}

/// The request body as the driver reads it from the connection.
struct Feeder {
    chan: Arc<Chan>,
    framing: Framing,
    /// `Expect: 100-continue` not yet answered.
    continue_pending: bool,
    /// The whole body was read from the connection.
    done: bool,
    /// The body failed (bad chunk, client gone): the connection cannot carry another
    /// request.
    broken: bool,
    /// The proxy dropped the body before its end (the upstream answered without reading
    /// it all): the rest is discarded after the response, within bounds.
    dropped: bool,
}

enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// The state of one connection.
struct Driver<'s, I, S> {
    service: &'s S,
    metrics: &'s Metrics,
    io: I,
    /// Read buffer; no capacity while the connection is idle.
    buf: BytesMut,
    out: Outgoing,
    conn: ConnInfo,
    settings: H1Settings,
    /// The send-timeout watchdog of the writes.
    send_stall: StallTimer,
    /// The response head was queued: no more `100 Continue`.
    responding: bool,
}

impl<I, S> Driver<'_, I, S>
where
    I: AsyncRead + AsyncWrite + IdleRead + Unpin + Send + 'static,
    S: Service,
{
    /// Gives back what an idle connection does not need.
    fn idle(&mut self) {
        if self.buf.is_empty() {
            super::io::give_read_buffer(std::mem::take(&mut self.buf));
        }
        super::io::give_write_buffer(std::mem::take(&mut self.out.bytes));
        self.out = Outgoing::default();
        self.responding = false;
    }

    /// Reads more bytes into `buf`; waits for readiness first when `buf` has no memory.
    fn poll_read_more(&mut self, cx: &mut Context<'_>, chunk: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() == 0 {
            ready!(self.io.poll_idle_readable(cx))?;
            self.buf = super::io::take_read_buffer(HEAD_READ);
        }
        if self.buf.capacity() - self.buf.len() < chunk / 4 {
            self.buf.reserve(chunk);
        }
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }

    /// Reads ahead while a request is being served, to notice a client that closes the
    /// connection (as hyper does): ready when it has. Pipelined requests are kept in the
    /// buffer, up to [`READ_AHEAD_LIMIT`] bytes; past that the client is not watched.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.buf.len() < READ_AHEAD_LIMIT {
            match ready!(self.poll_read_more(cx, HEAD_READ)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
        Poll::Pending
    }

    /// Waits for the next complete request head, or for the connection to end.
    ///
    /// `timer` may be set earlier than `deadline` (it was set for an earlier request): when
    /// it fires before `deadline` it is moved there, and the wait goes on.
    async fn read_head(
        &mut self,
        deadline: Instant,
        mut timer: Pin<&mut Sleep>,
        first: bool,
        drain: &mut watch::Receiver<()>,
    ) -> HeadRead {
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        loop {
            if !self.buf.is_empty() {
                if first
                    && H2_PREFACE.starts_with(&self.buf[..self.buf.len().min(H2_PREFACE.len())])
                {
                    if self.buf.len() >= H2_PREFACE.len() {
                        return HeadRead::Http2;
                    }
                } else {
                    match codec::parse_request(&mut self.buf) {
                        Ok(Some(head)) => return HeadRead::Head(head),
                        Ok(None) => {}
                        Err(error) => return HeadRead::Refused(error),
                    }
                }
            }
            let idle = self.buf.is_empty();
            tokio::select! {
                biased;
                read = poll_fn(|cx| self.poll_read_more(cx, HEAD_READ)) => match read {
                    Ok(0) => {
                        if !self.buf.is_empty() {
                            tracing::debug!(peer = %self.conn.peer, bytes = self.buf.len(), "client closed partway through a request head");
                        }
                        return HeadRead::Closed;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer = %self.conn.peer, error = %e, "read failed");
                        return HeadRead::Closed;
                    }
                },
                // Drain: an idle connection closes now; one in the middle of a head gets
                // its answer with `connection: close`.
                _ = drain.changed(), if idle => return HeadRead::Closed,
                _ = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        return HeadRead::TimedOut;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Answers a head that was refused, and closes.
    async fn refuse_head(&mut self, error: ParseError) {
        count_malformed(self.metrics, error.metric_label(), &error.reason());
        let response = refusal(error.status());
        self.write_whole(response, Version::HTTP_11).await;
    }

    /// Writes a response of Rampart's own to a request that is refused, then shuts down.
    async fn write_whole(&mut self, response: Response<RespBody>, version: Version) {
        let (parts, mut body) = response.into_parts();
        let mut headers = parts.headers;
        let (framing, _) = codec::response_framing(
            false,
            version,
            false,
            false,
            parts.status,
            &mut headers,
            body.size_hint().exact(),
        );
        codec::encode_response_head(
            parts.status,
            &headers,
            framing,
            false,
            version,
            &mut self.out.bytes,
        );
        self.responding = true;
        let mut writing = BodyWrite::new(framing);
        let mut no_feed = None;
        let written =
            poll_fn(|cx| self.poll_exchange(cx, &mut no_feed, &mut body, &mut writing)).await;
        if written.is_ok() {
            self.shutdown().await;
        }
    }

    /// Serves one request: the proxy's answer to it, or Rampart's refusal.
    async fn exchange(
        &mut self,
        head: codec::RequestHead,
        drain: &mut watch::Receiver<()>,
    ) -> Next {
        let codec::RequestHead {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let is_head = method == Method::HEAD;
        let (body, mut feeder) = match framing {
            RequestFraming::Empty | RequestFraming::Length(0) => (RequestBody::Empty, None),
            RequestFraming::Length(n) => {
                let chan = Arc::new(Chan::default());
                (
                    RequestBody::Http1(H1Body::new(Arc::clone(&chan), Some(n))),
                    Some(Feeder::new(chan, Framing::Length(n), expect_continue)),
                )
            }
            RequestFraming::Chunked => {
                let chan = Arc::new(Chan::default());
                (
                    RequestBody::Http1(H1Body::new(Arc::clone(&chan), None)),
                    Some(Feeder::new(
                        chan,
                        Framing::Chunked(ChunkedDecoder::new()),
                        expect_continue,
                    )),
                )
            }
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        let upgrade = if version == Version::HTTP_11 && asks_upgrade(request.headers()) {
            let (tx, client) = ClientUpgrade::pair();
            request.extensions_mut().insert(client);
            Some(tx)
        } else {
            None
        };

        let (response, refused) = match crate::headers::check_host(&mut request) {
            Err(reason) => {
                count_malformed(self.metrics, reason, &reason);
                (refusal(StatusCode::BAD_REQUEST), true)
            }
            Ok(()) => {
                let service = self.service;
                let handler = service.call(self.conn, request);
                tokio::pin!(handler);
                let response = poll_fn(|cx| {
                    self.poll_feed(cx, &mut feeder);
                    if let Poll::Ready(response) = handler.as_mut().poll(cx) {
                        return Poll::Ready(Some(response));
                    }
                    // A body not read to its end notices a client that leaves by itself
                    // (the proxy sees the body fail, and answers for the client's fault).
                    let body_open = feeder.as_ref().is_some_and(|f| !f.done);
                    if !body_open && self.poll_client_gone(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await;
                match response {
                    Some(response) => (response, false),
                    None => {
                        // Dropping the proxy's future records the request as the client's
                        // (499) and releases what it held upstream.
                        tracing::debug!(peer = %self.conn.peer, "client closed the connection while its request was served");
                        return Next::Gone;
                    }
                }
            }
        };

        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let mut headers = parts.headers;
        let draining = drain.has_changed().unwrap_or(true);
        // A request body that will not be read to its end closes the connection: said in
        // this head, so that the client does not send its next request into the close.
        let body_left = feeder.as_ref().is_some_and(Feeder::cannot_be_discarded);
        let server_keep_alive = !refused && !draining && !body_left && !asks_close(&headers);
        let (framing, keep_alive) = codec::response_framing(
            is_head,
            version,
            keep_alive,
            server_keep_alive,
            status,
            &mut headers,
            // A HEAD response's body is empty whatever length its head gives.
            if is_head {
                None
            } else {
                body.size_hint().exact()
            },
        );
        let upgrading = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
        codec::encode_response_head(
            status,
            &headers,
            framing,
            keep_alive || upgrading,
            version,
            self.out.buffer(),
        );
        self.responding = true;
        if upgrading {
            drop(body);
            let written = poll_fn(|cx| self.poll_flush_out(cx)).await;
            return match (written, upgrade) {
                (Ok(()), Some(tx)) => Next::Upgrade(tx),
                _ => Next::Gone,
            };
        }
        let mut writing = BodyWrite::new(if is_head {
            ResponseFraming::None
        } else {
            framing
        });
        let written =
            poll_fn(|cx| self.poll_exchange(cx, &mut feeder, &mut body, &mut writing)).await;
        if let Err(e) = written {
            tracing::debug!(peer = %self.conn.peer, error = %e, "response not completed: connection closed");
            return Next::Gone;
        }
        let body_read = match feeder.as_mut() {
            None => true,
            Some(f) if f.broken => false,
            Some(f) if f.done => true,
            Some(f) => keep_alive && self.discard_rest(f).await,
        };
        if keep_alive && body_read {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Reads and discards the rest of a request body the proxy did not read to its end,
    /// so that the connection can carry the next request (as nginx and hyper do): at most
    /// [`DISCARD_LIMIT`] bytes within [`DISCARD_TIMEOUT`]. Whether the body ended.
    ///
    /// Only called when the response head promised keep-alive, so the rest was not known
    /// to be too long for this ([`Feeder::cannot_be_discarded`]).
    async fn discard_rest(&mut self, f: &mut Feeder) -> bool {
        if !f.dropped {
            // The proxy still holds the body, though its answer is complete: it gets no more.
            f.chan.deliver(
                Some(Err(io::Error::other(
                    "the response ended before the request body",
                ))),
                true,
            );
        }
        let discard = async {
            let mut discarded = 0u64;
            loop {
                match f.next_frame(&mut self.buf) {
                    Ok(Some((_, true))) => return true,
                    Ok(Some((frame, false))) => {
                        discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                        if discarded > DISCARD_LIMIT {
                            return false;
                        }
                    }
                    Ok(None) => match poll_fn(|cx| self.poll_read_more(cx, BODY_READ)).await {
                        Ok(0) | Err(_) => return false,
                        Ok(_) => {}
                    },
                    Err(_) => return false,
                }
            }
        };
        let ended = tokio::time::timeout(DISCARD_TIMEOUT, discard)
            .await
            .unwrap_or(false);
        if !ended {
            tracing::debug!(peer = %self.conn.peer, "request body left unread by the upstream: connection closed");
        }
        ended
    }

    /// Writes the response body while still feeding the request body (a response may
    /// start before the request ends).
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        feeder: &mut Option<Feeder>,
        body: &mut RespBody,
        writing: &mut BodyWrite,
    ) -> Poll<io::Result<()>> {
        self.poll_feed(cx, feeder);
        loop {
            if self.out.must_flush() || writing.finished {
                ready!(self.poll_flush_out(cx))?;
                if writing.finished {
                    return Poll::Ready(Ok(()));
                }
            }
            if writing.framing == ResponseFraming::None {
                writing.finished = true;
                continue;
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    writing.frame(frame, &mut self.out)?;
                    if body.is_end_stream() {
                        writing.end(&mut self.out)?;
                    }
                }
                Poll::Ready(None) => writing.end(&mut self.out)?,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                Poll::Pending => {
                    if !self.out.is_empty() {
                        ready!(self.poll_flush_out(cx))?;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Feeds the request body as far as it asks and the connection allows.
    fn poll_feed(&mut self, cx: &mut Context<'_>, feeder: &mut Option<Feeder>) {
        let Some(f) = feeder.as_mut() else {
            return;
        };
        if f.done || f.broken || f.dropped {
            return;
        }
        loop {
            match f.chan.demand(cx) {
                Demand::Wait => return,
                Demand::Dropped => {
                    f.dropped = true;
                    return;
                }
                Demand::Frame => {}
            }
            if f.continue_pending {
                if self.responding {
                    f.continue_pending = false;
                } else {
                    if self.out.is_empty() {
                        self.out.buffer().extend_from_slice(CONTINUE);
                    }
                    match self.poll_flush_out(cx) {
                        Poll::Ready(Ok(())) => f.continue_pending = false,
                        Poll::Ready(Err(e)) => {
                            f.fail(e);
                            return;
                        }
                        Poll::Pending => return,
                    }
                }
            }
            match f.next_frame(&mut self.buf) {
                Ok(Some((frame, end))) => {
                    f.chan.deliver(Some(Ok(frame)), end);
                    f.done = end;
                    if end {
                        return;
                    }
                }
                Ok(None) => match self.poll_read_more(cx, BODY_READ) {
                    Poll::Pending => return,
                    Poll::Ready(Ok(0)) => {
                        f.fail(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "client closed before the end of the request body",
                        ));
                        return;
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => {
                        f.fail(e);
                        return;
                    }
                },
                Err(error) => {
                    f.fail(io::Error::new(
                        io::ErrorKind::InvalidData,
                        error.to_string(),
                    ));
                    return;
                }
            }
        }
    }

    /// Writes all pending output, under the send-timeout watchdog.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let rest = self.out.bytes.get(self.out.pos..).unwrap_or_default();
            let slices = [
                io::IoSlice::new(rest),
                io::IoSlice::new(&self.out.data),
                io::IoSlice::new(self.out.tail),
            ];
            match Pin::new(&mut self.io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.send_stall.progressed();
                    self.out.advance(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    ready!(self.poll_send_timer(cx))?;
                }
            }
        }
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(result) => {
                self.send_stall.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => {
                ready!(self.poll_send_timer(cx))?;
                Poll::Pending
            }
        }
    }

    /// A write is blocked: starts the send timer if it is not running, and fails once it
    /// has run out.
    fn poll_send_timer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.send_stall.poll_blocked(cx));
        count_timeout(self.metrics, "send_timeout");
        tracing::debug!(peer = %self.conn.peer, timeout = ?self.settings.send_timeout, "client accepted no bytes for send_timeout: connection closed");
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    }

    /// Flushes what is left and closes the sending side, giving up after `send_timeout`.
    async fn shutdown(&mut self) {
        let _ = poll_fn(|cx| self.poll_flush_out(cx)).await;
        let _ = tokio::time::timeout(
            self.settings.send_timeout,
            tokio::io::AsyncWriteExt::shutdown(&mut self.io),
        )
        .await;
    }
}

impl Feeder {
    fn new(chan: Arc<Chan>, framing: Framing, continue_pending: bool) -> Feeder {
        Feeder {
            chan,
            framing,
            continue_pending,
            done: false,
            broken: false,
            dropped: false,
        }
    }

    /// Whether what is left of the body could not be discarded to keep the connection:
    /// the client waits for `100 Continue` before sending it, or it is known to be longer
    /// than [`DISCARD_LIMIT`].
    fn cannot_be_discarded(&self) -> bool {
        !self.done
            && (self.continue_pending
                || matches!(self.framing, Framing::Length(left) if left > DISCARD_LIMIT))
    }

    /// Ends the body with `error`.
    fn fail(&mut self, error: io::Error) {
        self.chan.deliver(Some(Err(error)), true);
        self.broken = true;
    }

    /// The next frame from `buf`, and whether it is the last; `None` when more bytes are
    /// needed.
    fn next_frame(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Frame<Bytes>, bool)>, codec::ChunkError> {
        match &mut self.framing {
            Framing::Length(remaining) => Ok(codec::take_body_bytes(buf, remaining, MAX_FRAME)
                .map(|data| (Frame::data(data), *remaining == 0))),
            Framing::Chunked(decoder) => match decoder.decode(buf, MAX_FRAME)? {
                Some(Chunk::Data(data)) => Ok(Some((Frame::data(data), false))),
                Some(Chunk::End(trailers)) => Ok(Some((Frame::trailers(trailers), true))),
                None => Ok(None),
            },
        }
    }
}

/// Where the writing of a response body stands.
struct BodyWrite {
    framing: ResponseFraming,
    /// Data bytes written, against a `Content-Length`.
    written: u64,
    trailers: Option<HeaderMap>,
    finished: bool,
}

impl BodyWrite {
    fn new(framing: ResponseFraming) -> BodyWrite {
        BodyWrite {
            framing,
            written: 0,
            trailers: None,
            finished: false,
        }
    }

    /// Queues a frame of the body.
    fn frame(&mut self, frame: Frame<Bytes>, out: &mut Outgoing) -> io::Result<()> {
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    return Ok(());
                }
                self.written += data.len() as u64;
                if let ResponseFraming::Length(n) = self.framing {
                    if self.written > n {
                        return Err(io::Error::other(
                            "response body longer than its Content-Length",
                        ));
                    }
                }
                out.push_data(data, self.framing == ResponseFraming::Chunked);
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    self.trailers = Some(trailers);
                }
            }
        }
        Ok(())
    }

    /// Queues the end of the body.
    fn end(&mut self, out: &mut Outgoing) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        match self.framing {
            ResponseFraming::Chunked => {
                codec::encode_last_chunk(self.trailers.as_ref(), &mut out.bytes)
            }
            ResponseFraming::Length(n) if self.written < n => {
                return Err(io::Error::other(
                    "response body shorter than its Content-Length",
                ));
            }
            _ => {}
        }
        self.finished = true;
        Ok(())
    }
}

/// `Connection: upgrade` with an `Upgrade` field.
fn asks_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && has_token(headers, "upgrade")
}

/// A response that asks for the connection to close (Rampart's own answers to faults).
fn asks_close(headers: &HeaderMap) -> bool {
    has_token(headers, "close")
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Rampart's answer to a refused request: 400 or 431, and the connection closes.
fn refusal(status: StatusCode) -> Response<RespBody> {
    let mut response = crate::handler::own_response(status, "bad_request", false);
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

fn count_malformed(metrics: &Metrics, reason: &'static str, detail: &dyn std::fmt::Debug) {
    metrics.malformed.with_label_values(&[reason]).inc();
    tracing::info!(reason, detail = ?detail, "malformed request refused");
}

fn count_timeout(metrics: &Metrics, timeout: &str) {
    metrics.client_timeouts.with_label_values(&[timeout]).inc();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Answers every request with an empty 200.
    struct Nothing;

    impl Service for Nothing {
        async fn call(
            &self,
            _conn: ConnInfo,
            _request: Request<RequestBody>,
        ) -> Response<RespBody> {
            Response::new(RespBody::empty())
        }
    }

    /// What an idle keep-alive connection costs is mostly its task, and its task is this
    /// future: the exchange (and the proxy's future in it) are boxed per request so they
    /// do not size it. A regression here shows as RSS per idle connection in the load
    /// bench; this catches it without one.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_tx, mut rx) = watch::channel(());
        let conn = ConnInfo {
            peer: addr,
            tls: false,
        };
        let settings = H1Settings {
            header_timeout: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            send_timeout: Duration::from_secs(1),
        };
        let fut = serve_h1(
            &Nothing,
            &metrics,
            stream,
            conn,
            Instant::now(),
            settings,
            &mut rx,
        );
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 1536, "serve_h1's future grew to {size} bytes");
    }

    /// Serves `Nothing` on one end of an in-memory pipe with `header_timeout` and
    /// `keepalive_timeout`; sends one request after `first_after`, reads its answer, and
    /// returns how long after that answer the connection was closed.
    async fn idle_close_after(
        header_timeout: Duration,
        keepalive_timeout: Duration,
        first_after: Duration,
    ) -> Duration {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(4096);
        let serving = tokio::spawn(async move {
            let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
            let (_tx, mut rx) = watch::channel(());
            let conn = ConnInfo {
                peer: "127.0.0.1:1".parse().unwrap(),
                tls: false,
            };
            let settings = H1Settings {
                header_timeout,
                keepalive_timeout,
                send_timeout: Duration::from_secs(60),
            };
            let accepted = Instant::now();
            serve_h1(
                &Nothing, &metrics, server, conn, accepted, settings, &mut rx,
            )
            .await;
        });
        tokio::time::sleep(first_after).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 512];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&chunk[..n]);
        }
        let answered = Instant::now();
        let mut rest = [0u8; 64];
        assert_eq!(
            client.read(&mut rest).await.unwrap(),
            0,
            "no more bytes, then close"
        );
        serving.await.unwrap();
        answered.elapsed()
    }

    /// The connection's one timer is set for `header_timeout` at accept and follows the
    /// keep-alive deadline lazily: it must neither close a connection early when it fires
    /// before the deadline, nor late when the deadline is earlier than where it is set.
    #[tokio::test(start_paused = true)]
    async fn the_keep_alive_deadline_holds_whichever_timeout_is_longer() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // The timer fires at 1 s, before the keep-alive deadline (0.5 + 3 s): moved, not
        // obeyed.
        let closed = idle_close_after(s(1), s(3), ms(500)).await;
        assert!(
            closed >= s(3) && closed < ms(3100),
            "closed {closed:?} after the answer"
        );
        // The timer is set for 10 s, the keep-alive deadline is 1 s after the answer.
        let closed = idle_close_after(s(10), s(1), ms(0)).await;
        assert!(
            closed >= s(1) && closed < ms(1100),
            "closed {closed:?} after the answer"
        );
    }
}
