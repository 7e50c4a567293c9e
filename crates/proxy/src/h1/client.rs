//! Rampart's own HTTP/1.1 client for plain-HTTP upstreams, for requests without a body
//! (the common case: GET, HEAD, DELETE).
//!
//! Why: hyper-util's pooled client runs each upstream connection in a task of its own, so
//! every request checks a connection out of a pool keyed by a SipHash of scheme and
//! authority, crosses a channel into that task, and crosses back with the response; in the
//! instruction profile that was about 40 % of a proxied request (docs/PERFORMANCE.md). Here
//! the request is written and the response read by the task of the client's connection
//! itself: the response body owns the upstream connection while it streams, and hands it
//! back to the upstream's idle list when it ends.
//!
//! What still goes through hyper-util: requests with a body (they stream both ways at once,
//! and may be re-sent after a refused connection), upgrades, TLS and HTTP/2 upstreams, and
//! health checks.
//!
//! The idle list is bounded as hyper-util's pool was (`pool.max_idle` per upstream,
//! `pool.idle_timeout`), checked for connections the upstream closed before one is reused,
//! and an idempotent request whose reused connection turns out closed before any byte of
//! the answer came is sent again once on a new connection: the upstream most likely closed
//! it idle. A POST (with an empty body) is not: the upstream may have read it.

use super::codec::{self, Chunk, ChunkedDecoder};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use rampart_core::config::Upstream;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest response head accepted from an upstream.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Read size for response heads and bodies.
const READ_SIZE: usize = 16 * 1024;
/// Largest body frame handed on at once.
const MAX_FRAME: usize = 64 * 1024;

/// Why a request to an upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (refused, unreachable, name not resolved).
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The connection attempt took longer than `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The upstream closed, reset or answered something that is not HTTP/1.1.
    #[error("upstream: {0}")]
    Protocol(io::Error),
}

/// The idle keep-alive connections of one upstream.
#[derive(Debug)]
pub struct H1Pool {
    idle: Mutex<Vec<IdleConn>>,
    host: String,
    port: u16,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Whether the task that closes expired idle connections runs.
    reaper: Mutex<bool>,
}

#[derive(Debug)]
struct IdleConn {
    stream: TcpStream,
    since: Instant,
}

impl H1Pool {
    /// The pool of `config`'s upstream; `None` when this client does not serve it (TLS or
    /// HTTP/2 upstreams).
    pub fn for_upstream(
        config: &Upstream,
        authority: &http::uri::Authority,
    ) -> Option<Arc<H1Pool>> {
        use rampart_core::config::{Protocol, Scheme};
        if config.protocol != Protocol::Http1 || config.scheme != Scheme::Http {
            return None;
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Some(Arc::new(H1Pool {
            idle: Mutex::new(Vec::new()),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            max_idle: config.pool_max_idle,
            idle_timeout: config.pool_idle_timeout,
            connect_timeout: config.connect_timeout,
            reaper: Mutex::new(false),
        }))
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < self.idle_timeout && still_open(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    }

    /// Keeps `stream` for the next request, if there is room.
    fn put(self: &Arc<Self>, stream: TcpStream) {
        if self.max_idle == 0 {
            return;
        }
        {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            if idle.len() >= self.max_idle {
                return;
            }
            idle.push(IdleConn {
                stream,
                since: Instant::now(),
            });
        }
        self.start_reaper();
    }

    /// Starts, once, the task that closes connections idle for longer than
    /// `idle_timeout`; it ends when the pool is dropped (a reload that changed the upstream).
    fn start_reaper(self: &Arc<Self>) {
        let Ok(mut started) = self.reaper.lock() else {
            return;
        };
        if *started {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *started = true;
        let pool: Weak<H1Pool> = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                let timeout = pool.idle_timeout;
                if let Ok(mut idle) = pool.idle.lock() {
                    idle.retain(|c| c.since.elapsed() < timeout && still_open(&c.stream));
                };
            }
        });
    }

    /// A new connection, under `connect_timeout`.
    async fn connect(&self) -> Result<TcpStream, ClientError> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let stream = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| ClientError::ConnectTimeout(self.connect_timeout))?
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// An idle connection is reusable when a read would block: no data and no end of stream.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Sends a request without a body to `pool`'s upstream and reads the response head; the
/// body streams from the upstream connection as the response's body is polled.
///
/// `headers` are sent as given (the caller has rewritten them and set `Host`).
pub async fn send(
    pool: &Arc<H1Pool>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Response<H1ResponseBody>, ClientError> {
    let mut head = super::io::take_write_buffer();
    encode_request_head(method, path_and_query, headers, &mut head);
    let response = send_head(pool, method, &head).await;
    super::io::give_write_buffer(head);
    response
}

/// [`send`] once the head is encoded.
async fn send_head(
    pool: &Arc<H1Pool>,
    method: &Method,
    head: &[u8],
) -> Result<Response<H1ResponseBody>, ClientError> {
    if let Some(stream) = pool.checkout() {
        match exchange(pool, stream, method, head).await {
            Ok(response) => return Ok(response),
            // Closed while idle: the upstream never saw the request. Once more, on a new
            // connection.
            Err(Attempt::Stale(_)) => {}
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
    let stream = pool.connect().await?;
    match exchange(pool, stream, method, head).await {
        Ok(response) => Ok(response),
        Err(Attempt::Stale(e) | Attempt::Failed(e)) => Err(e),
    }
}

enum Attempt {
    /// Nothing of the answer came before the connection failed.
    Stale(ClientError),
    Failed(ClientError),
}

/// Writes the head and reads the response head on `stream`.
async fn exchange(
    pool: &Arc<H1Pool>,
    mut stream: TcpStream,
    method: &Method,
    head: &[u8],
) -> Result<Response<H1ResponseBody>, Attempt> {
    if let Err(e) = stream.write_all(head).await {
        return Err(Attempt::Stale(ClientError::Protocol(e)));
    }
    let mut buf = super::io::take_read_buffer(READ_SIZE / 4);
    let mut parse_first = false;
    loop {
        if parse_first {
            parse_first = false;
        } else {
            // Written, then closed before any byte of an answer: the upstream most likely
            // closed the connection idle, but it may have read the request first. Only an
            // idempotent request may be sent again (RFC 9110 section 9.2.2).
            let resend = buf.is_empty() && method.is_idempotent();
            let n = match stream.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) if resend => return Err(Attempt::Stale(ClientError::Protocol(e))),
                Err(e) => return Err(Attempt::Failed(ClientError::Protocol(e))),
            };
            if n == 0 {
                let error = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed the connection before a response head",
                );
                return Err(if resend {
                    Attempt::Stale(ClientError::Protocol(error))
                } else {
                    Attempt::Failed(ClientError::Protocol(error))
                });
            }
        }
        match parse_response(&mut buf, method)
            .map_err(|e| Attempt::Failed(ClientError::Protocol(e)))?
        {
            None => {
                if buf.len() > MAX_RESPONSE_HEAD {
                    return Err(Attempt::Failed(ClientError::Protocol(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response head too large",
                    ))));
                }
                if buf.capacity() - buf.len() < READ_SIZE / 4 {
                    buf.reserve(READ_SIZE);
                }
            }
            // What follows the interim answer may already be in the buffer.
            Some(Parsed::Interim) => parse_first = true,
            Some(Parsed::Final(parts, framing, keep_alive)) => {
                let body = H1ResponseBody {
                    stream: Some(stream),
                    buf,
                    framing: match framing {
                        BodyFraming::None => Framing::Done,
                        BodyFraming::Length(0) => Framing::Done,
                        BodyFraming::Length(n) => Framing::Length(n),
                        BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new()),
                        BodyFraming::UntilClose => Framing::UntilClose,
                    },
                    keep_alive,
                    pool: Arc::clone(pool),
                };
                let mut body = body;
                body.release_if_done();
                return Ok(Response::from_parts(parts, body));
            }
        }
    }
}

/// Writes `METHOD target HTTP/1.1`, the fields and the empty line.
fn encode_request_head(method: &Method, target: &str, headers: &HeaderMap, dst: &mut Vec<u8>) {
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        codec::encode_field(name, value, dst);
    }
    dst.extend_from_slice(b"\r\n");
}

enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

enum Parsed {
    /// A 1xx answer (not 101), skipped.
    Interim,
    Final(http::response::Parts, BodyFraming, bool),
}

/// Parses a response head off the front of `buf` (RFC 9112 section 6.3 for its body).
fn parse_response(buf: &mut BytesMut, method: &Method) -> io::Result<Option<Parsed>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    // The head is split off the buffer before it is parsed, so header values can be slices
    // of it: found by its CRLF CRLF (every upstream we have met), or else by a first parse
    // (a head with bare LF line endings, which httparse accepts).
    let len = match memchr::memmem::find(buf, b"\r\n\r\n") {
        Some(end) => end + 4,
        None => {
            let mut slots =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                buf,
                &mut slots,
            ) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(invalid(&format!("invalid response head: {e}"))),
            }
        }
    };
    let head = buf.split_to(len).freeze();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        &head,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(parsed)) if parsed == len => {}
        Ok(_) => return Err(invalid("invalid response head")),
        Err(e) => return Err(invalid(&format!("invalid response head: {e}"))),
    }
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| invalid("invalid status code"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades go through hyper's client; switching a connection this client never
        // asked to switch is not HTTP/1.1 any more.
        return Err(invalid(
            "101 Switching Protocols without an upgrade request",
        ));
    }
    if status.is_informational() {
        return Ok(Some(Parsed::Interim));
    }
    // One pass over the fields: the framing and connection fields are read from the bytes,
    // and the hop-by-hop ones (which the handler would strip) never enter the map.
    let mut facts = FieldFacts::default();
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for field in response.headers.iter() {
        let name = field.name.as_bytes();
        let keep = match hop_field(name) {
            Some(HopField::Connection) => facts.connection(field.value),
            Some(HopField::TransferEncoding) => {
                facts.transfer_encoding(field.value);
                false
            }
            Some(HopField::Other) => false,
            Some(HopField::ContentLength) => {
                facts.content_length(field.value);
                true
            }
            None => true,
        };
        if !keep {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| invalid("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
            .map_err(|_| invalid("invalid header value"))?;
        headers.append(name, value);
    }
    let mut keep_alive = if version == Version::HTTP_10 {
        facts.keep_alive && !facts.close
    } else {
        !facts.close
    };
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        BodyFraming::None
    } else if facts.transfer_encoding {
        // RFC 9112 section 6.3: Transfer-Encoding overrides Content-Length, which a proxy
        // must then not forward.
        headers.remove(CONTENT_LENGTH);
        if facts.chunked_last {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else {
        match (facts.length_invalid, facts.length) {
            (true, _) => return Err(invalid("invalid Content-Length")),
            (false, Some(n)) => BodyFraming::Length(n),
            (false, None) => BodyFraming::UntilClose,
        }
    };
    if matches!(framing, BodyFraming::UntilClose) {
        keep_alive = false;
    }
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed::Final(parts, framing, keep_alive)))
}

/// The response fields that are not passed on as they are: the framing ones and the
/// hop-by-hop ones (RFC 9110 section 7.6.1).
#[derive(Clone, Copy, Debug, PartialEq)]
enum HopField {
    /// `Connection`: read for `close` and `keep-alive`.
    Connection,
    /// `Transfer-Encoding`: read for the framing, not passed on.
    TransferEncoding,
    /// `Content-Length`: read for the framing, and passed on.
    ContentLength,
    /// The other hop-by-hop fields, dropped: `Keep-Alive`, `Proxy-Connection`, `TE`,
    /// `Trailer`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`.
    Other,
}

/// Which of [`HopField`] `name` is, in any letter case.
fn hop_field(name: &[u8]) -> Option<HopField> {
    if name.eq_ignore_ascii_case(b"connection") {
        Some(HopField::Connection)
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        Some(HopField::TransferEncoding)
    } else if name.eq_ignore_ascii_case(b"content-length") {
        Some(HopField::ContentLength)
    } else if crate::headers::is_fixed_hop_by_hop_name(name) {
        Some(HopField::Other)
    } else {
        None
    }
}

/// What the framing and connection fields of a response head say.
#[derive(Debug, Default)]
struct FieldFacts {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive` (what keeps an HTTP/1.0 connection open).
    keep_alive: bool,
    /// Any `Transfer-Encoding` field.
    transfer_encoding: bool,
    /// The last coding of the last `Transfer-Encoding` field is `chunked`.
    chunked_last: bool,
    /// The one length every `Content-Length` value gives, so far.
    length: Option<u64>,
    /// A `Content-Length` value that is not a number, or differs from another.
    length_invalid: bool,
}

impl FieldFacts {
    /// Reads a `Connection` value; whether the field must be kept in the map: only when it
    /// names other fields, which the handler's hop-by-hop strip then removes.
    fn connection(&mut self, value: &[u8]) -> bool {
        let mut names_others = false;
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                names_others = true;
            }
        }
        names_others
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encoding = true;
        self.chunked_last = value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    }

    fn content_length(&mut self, value: &[u8]) {
        if !self.length_invalid && !codec::accumulate_content_length(value, &mut self.length) {
            self.length_invalid = true;
        }
    }
}

/// How much of a response body is left.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// A response body read from the upstream connection as it is polled; the connection goes
/// back to the idle list when the body ends, or is closed when the body is dropped early.
#[derive(Debug)]
pub struct H1ResponseBody {
    stream: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<H1Pool>,
}

impl H1ResponseBody {
    /// Hands the connection back once the body is over (and nothing unexpected follows).
    fn release_if_done(&mut self) {
        if !matches!(self.framing, Framing::Done) {
            return;
        }
        if let Some(stream) = self.stream.take() {
            if self.keep_alive && self.buf.is_empty() {
                self.pool.put(stream);
            }
        }
        if self.buf.is_empty() {
            super::io::give_read_buffer(std::mem::take(&mut self.buf));
        }
    }

    fn read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        let read = stream.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }
}

use std::future::Future;

impl Body for H1ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            let frame = match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(remaining) => {
                    let data = codec::take_body_bytes(&mut this.buf, remaining, MAX_FRAME);
                    if *remaining == 0 {
                        this.framing = Framing::Done;
                    }
                    data.map(Frame::data)
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut this.buf, MAX_FRAME) {
                    Ok(Some(Chunk::Data(data))) => Some(Frame::data(data)),
                    Ok(Some(Chunk::End(trailers))) => {
                        this.framing = Framing::Done;
                        if trailers.is_empty() {
                            this.release_if_done();
                            return Poll::Ready(None);
                        }
                        Some(Frame::trailers(trailers))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        this.stream = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            e.to_string(),
                        ))));
                    }
                },
                Framing::UntilClose => {
                    if this.buf.is_empty() {
                        None
                    } else {
                        let n = this.buf.len().min(MAX_FRAME);
                        Some(Frame::data(this.buf.split_to(n).freeze()))
                    }
                }
            };
            if let Some(frame) = frame {
                this.release_if_done();
                return Poll::Ready(Some(Ok(frame)));
            }
            match ready!(this.read_more(cx)) {
                Ok(0) => {
                    if matches!(this.framing, Framing::UntilClose) {
                        this.framing = Framing::Done;
                        this.stream = None;
                        return Poll::Ready(None);
                    }
                    this.stream = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the end of the body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.stream = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(bytes: &[u8], method: Method) -> io::Result<Option<Parsed>> {
        let mut buf = BytesMut::from(bytes);
        parse_response(&mut buf, &method)
    }

    fn framing_of(bytes: &[u8], method: Method) -> (StatusCode, &'static str, bool) {
        match parse(bytes, method).unwrap() {
            Some(Parsed::Final(parts, framing, keep_alive)) => (
                parts.status,
                match framing {
                    BodyFraming::None => "none",
                    BodyFraming::Length(_) => "length",
                    BodyFraming::Chunked => "chunked",
                    BodyFraming::UntilClose => "close",
                },
                keep_alive,
            ),
            _ => panic!("not a final response"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let cases: &[(&[u8], Method, &str, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Method::GET,
                "length",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET,
                "chunked",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Method::GET,
                "close",
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", Method::GET, "close", false),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Method::HEAD,
                "none",
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                "none",
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                Method::GET,
                "none",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
                Method::GET,
                "length",
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n",
                Method::GET,
                "length",
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n",
                Method::GET,
                "length",
                true,
            ),
        ];
        for (bytes, method, framing, keep_alive) in cases {
            let (_, got, alive) = framing_of(bytes, method.clone());
            assert_eq!(
                (got, alive),
                (*framing, *keep_alive),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn bad_heads_and_lengths_are_errors_and_partial_heads_wait() {
        assert!(parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            Method::GET
        )
        .is_err());
        assert!(parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
            Method::GET
        )
        .is_err());
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", Method::GET).is_err());
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-le", Method::GET),
            Ok(None)
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 100 Continue\r\n\r\n", Method::GET),
            Ok(Some(Parsed::Interim))
        ));
    }

    fn headers_of(bytes: &[u8]) -> HeaderMap {
        match parse(bytes, Method::GET).unwrap() {
            Some(Parsed::Final(parts, _, _)) => parts.headers,
            _ => panic!("not a final response"),
        }
    }

    #[test]
    fn hop_by_hop_fields_never_reach_the_map_and_the_others_keep_their_order() {
        let headers = headers_of(
            b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: Keep-Alive\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Connection: x\r\nTE: trailers\r\nTrailer: x-sum\r\nUpgrade: h2c\r\n\
              Proxy-Authenticate: Basic\r\nProxy-Authorization: y\r\nx-a: 1\r\nx-a: 2\r\n\
              Content-Length: 0\r\n\r\n",
        );
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server", "x-a", "content-length"]);
        let values: Vec<&[u8]> = headers
            .get_all("x-a")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(values, [b"1" as &[u8], b"2"]);
    }

    #[test]
    fn a_connection_field_naming_other_fields_stays_for_the_strip() {
        let headers = headers_of(
            b"HTTP/1.1 200 OK\r\nConnection: close, x-private\r\nx-private: 1\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(headers.contains_key("connection"));
        let mut stripped = headers.clone();
        crate::headers::strip_hop_by_hop(&mut stripped, false);
        assert!(!stripped.contains_key("connection") && !stripped.contains_key("x-private"));
    }

    #[test]
    fn transfer_encoding_overrides_and_removes_content_length() {
        let bytes =
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(
            framing_of(bytes, Method::GET),
            (StatusCode::OK, "chunked", true)
        );
        let headers = headers_of(bytes);
        assert!(!headers.contains_key("content-length"));
        assert!(!headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn content_length_lists_and_limits() {
        let length = |value: &str| {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {value}\r\n\r\n");
            match parse(head.as_bytes(), Method::GET) {
                Ok(Some(Parsed::Final(_, BodyFraming::Length(n), _))) => Some(n),
                Err(_) => None,
                _ => panic!("neither a length nor an error for {value:?}"),
            }
        };
        assert_eq!(length("7"), Some(7));
        assert_eq!(length("7, 7,7"), Some(7));
        assert_eq!(length("18446744073709551615"), Some(u64::MAX));
        for bad in ["7, 8", "+7", "7,", "", "0x7", "18446744073709551616", "7 7"] {
            assert_eq!(length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_request_head_is_written_as_given() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("shop"));
        headers.append("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        encode_request_head(&Method::GET, "/cart?x=1", &headers, &mut out);
        assert_eq!(
            out,
            b"GET /cart?x=1 HTTP/1.1\r\nhost: shop\r\nx-a: 1\r\n\r\n"
        );
    }

    async fn upstream(
        answers: Vec<&'static [u8]>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut served = 0;
            for answer in answers {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return served;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                conn.write_all(answer).await.unwrap();
                served += 1;
            }
            served
        });
        (addr, task)
    }

    fn pool_for(addr: std::net::SocketAddr) -> Arc<H1Pool> {
        Arc::new(H1Pool {
            idle: Mutex::new(Vec::new()),
            host: addr.ip().to_string(),
            port: addr.port(),
            max_idle: 4,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            reaper: Mutex::new(false),
        })
    }

    async fn body_of(body: H1ResponseBody) -> Vec<u8> {
        use http_body_util::BodyExt;
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn one_connection_carries_sized_and_chunked_answers_and_goes_back_idle() {
        let (addr, served) = upstream(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        ])
        .await;
        let pool = pool_for(addr);
        let headers = HeaderMap::new();
        let first = send(&pool, &Method::GET, "/a", &headers).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(body_of(first.into_body()).await, b"hello");
        assert_eq!(pool.idle_count(), 1, "the connection went back idle");
        let second = send(&pool, &Method::GET, "/b", &headers).await.unwrap();
        assert_eq!(second.status(), StatusCode::CREATED);
        assert_eq!(body_of(second.into_body()).await, b"abcde");
        assert_eq!(pool.idle_count(), 1);
        drop(pool);
        assert_eq!(
            served.await.unwrap(),
            2,
            "both answers came on one connection"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced_once() {
        let (addr, served) =
            upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]).await;
        let pool = pool_for(addr);
        let headers = HeaderMap::new();
        let first = send(&pool, &Method::GET, "/", &headers).await.unwrap();
        assert_eq!(body_of(first.into_body()).await, b"ok");
        // The upstream served one answer and closed; a second listener takes the retry.
        assert_eq!(served.await.unwrap(), 1);
        assert_eq!(pool.idle_count(), 1);
        let result = send(&pool, &Method::GET, "/", &headers).await;
        // Nothing listens any more: the closed idle connection is detected or fails stale,
        // and the new connection is refused.
        assert!(matches!(result, Err(ClientError::Connect(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_the_connection_is_not_kept() {
        let (addr, _served) =
            upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"]).await;
        let pool = pool_for(addr);
        let response = send(&pool, &Method::GET, "/", &HeaderMap::new())
            .await
            .unwrap();
        use http_body_util::BodyExt;
        let collected = response.into_body().collect().await;
        assert!(collected.is_err());
        assert_eq!(pool.idle_count(), 0);
    }

    /// An upstream that answers the first request of each connection and closes the
    /// connection after reading the second; counts the connections it accepted.
    async fn closes_after_reading_the_second(
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    for answer in [true, false] {
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = conn.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            got.extend_from_slice(&buf[..n]);
                        }
                        got.clear();
                        if answer {
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn only_idempotent_requests_are_sent_again_after_a_silent_close() {
        use std::sync::atomic::Ordering;
        let (addr, accepted) = closes_after_reading_the_second().await;
        let pool = pool_for(addr);
        let headers = HeaderMap::new();
        let first = send(&pool, &Method::GET, "/", &headers).await.unwrap();
        assert_eq!(body_of(first.into_body()).await, b"ok");
        // The idle connection reads the GET and closes: it is sent again on a new one.
        let again = send(&pool, &Method::GET, "/", &headers).await.unwrap();
        assert_eq!(body_of(again.into_body()).await, b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // The same for a POST: it may have been processed, so it fails instead.
        let post = send(&pool, &Method::POST, "/", &headers).await;
        assert!(matches!(post, Err(ClientError::Protocol(_))), "{post:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "no new connection for the POST"
        );
    }

    #[test]
    fn an_unasked_101_is_an_error() {
        assert!(parse(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            Method::GET
        )
        .is_err());
    }
}
