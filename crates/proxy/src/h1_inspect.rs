//! Watches the raw HTTP/1.1 request stream of one connection for requests that carry both
//! `Content-Length` and `Transfer-Encoding`, which hyper accepts but hides from the handler.
//!
//! Rampart refuses such requests (docs/proxying.md#malformed-requests) with 400 before any upstream sees them. hyper's h1 server
//! drops the `Content-Length` (and only turns keep-alive off), so by the time a request
//! reaches the handler nothing shows it was ambiguous. [`InspectedIo`] sits between the
//! socket (or the plaintext side of TLS) and hyper, follows request framing on the bytes hyper
//! is about to read, and records offending requests by their position on the connection in
//! an [`H1Flags`]; the handler counts the requests it is given and asks
//! [`H1Flags::is_smuggling`].
//!
//! The tracker follows hyper's own framing rules (httparse with hyper's default parser
//! settings, `Content-Length` as bare digits, hyper's chunked state machine) so that its
//! request numbering cannot drift from hyper's. Whenever it sees something it does not
//! understand it stops and passes bytes through untouched: in every such case hyper either
//! refuses the request and closes the connection, or the connection is no longer HTTP/1.1
//! (prior-knowledge HTTP/2). It only observes; it never changes, delays or fails I/O.
//!
//! `Upgrade` and `CONNECT` requests do not stop it: an upgrade the upstream refuses is
//! answered like any other request, and hyper then goes on reading HTTP/1.1 from the same
//! connection, so giving up there would let the next request past unobserved. When the
//! upstream accepts an upgrade (a WebSocket), the proxy sends the client its 101 and
//! tunnels the connection; the tunnel's bytes then either fail to parse (tracking stops)
//! or get numbered as requests hyper never hands to the service, which nobody asks about.
//!
//! Cost: a head that arrives whole in one read is parsed in place (no allocation); only a
//! head split across reads is copied into a per-connection buffer, which is freed as soon as
//! the head is complete, so an idle keep-alive connection holds none. Body bytes are skipped
//! by count, never scanned.
//!
//! The wrapper also carries the connection's write-progress watchdog (`send_timeout`,
//! docs/proxying.md#hostile-clients): a write that stays blocked for that long, because the
//! client stopped reading, fails with `TimedOut`, which ends the connection (and so the
//! response and the upstream slot it held), whatever protocol runs over it. And it notes a
//! client that closed while it had sent only part of the HTTP/2 preface, which hyper would
//! otherwise report as a malformed HTTP/1.1 request.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What an HTTP/2 prior-knowledge client sends first; hyper-util's `auto` server serves
/// such a connection as HTTP/2, so there is no HTTP/1.1 framing to follow.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Header slots handed to httparse: as many as the server lets hyper accept, so that no
/// head hyper serves is one the tracker gives up on.
const MAX_HEADERS: usize = crate::server::MAX_HEADER_COUNT;

/// Largest partial head buffered before giving up. hyper refuses heads past its
/// `max_buf_size`, but one read may carry its buffer past that limit (it reads into all of
/// the spare capacity of a buffer that grows by doubling), so allow twice as much: giving
/// up earlier than hyper would let a later request on the connection go unobserved.
const MAX_HEAD_BYTES: usize = 2 * crate::server::MAX_HEADER_BYTES;

/// First amount of a read appended to a split head; doubles while the head stays
/// incomplete, so the body after a head is rarely copied.
const APPEND_STEP: usize = 1024;

/// The verdicts the tracker shares with the handler of one connection.
///
/// Requests are numbered 0, 1, 2, ... in the order they arrive on the connection, which is
/// the order hyper hands them to the service. Only the first offending request is kept:
/// hyper closes the connection after a request that had both headers, so no later request
/// of that connection reaches the handler.
#[derive(Debug, Default)]
pub struct H1Flags {
    /// Index + 1 of the first request with both `Content-Length` and `Transfer-Encoding`;
    /// 0 while there is none.
    first_smuggling: AtomicU64,
    /// The client closed after sending only a part of the HTTP/2 preface.
    closed_in_preface: std::sync::atomic::AtomicBool,
    /// A write stayed blocked for the send timeout and failed the connection.
    send_timed_out: std::sync::atomic::AtomicBool,
}

impl H1Flags {
    /// Flags with no request marked, for a connection that has not sent anything yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether request number `request_index` of this connection (counting from 0) carried
    /// both `Content-Length` and `Transfer-Encoding`, and so must be refused with 400.
    ///
    /// The answer is final when hyper hands that request to the service: the tracker sees
    /// the bytes of a head before hyper does.
    pub fn is_smuggling(&self, request_index: u64) -> bool {
        request_index
            .checked_add(1)
            .is_some_and(|marked| self.first_smuggling.load(Ordering::Acquire) == marked)
    }

    /// Whether the client closed the connection after sending only part of the HTTP/2
    /// preface (and nothing else): a closed connection, not a malformed request.
    pub fn closed_in_preface(&self) -> bool {
        self.closed_in_preface.load(Ordering::Acquire)
    }

    /// Whether the connection ended because a write made no progress for the send timeout.
    pub fn send_timed_out(&self) -> bool {
        self.send_timed_out.load(Ordering::Acquire)
    }

    fn record_smuggling(&self, request_index: u64) {
        // Only the first one matters (see the type's doc); a later store would be a bug in
        // the tracker, not something to overwrite the first verdict with.
        let _ = self.first_smuggling.compare_exchange(
            0,
            request_index.saturating_add(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// A connection's byte stream with request-framing inspection on the read side.
///
/// Wrap the stream hyper will read HTTP from (the `TcpStream`, or the plaintext side of a
/// TLS stream) before handing it to hyper, keep [`InspectedIo::flags`] for the service of
/// that connection. Reads and writes are delegated unchanged.
#[derive(Debug)]
pub struct InspectedIo<T> {
    inner: T,
    tracker: Tracker,
    /// Longest a write may stay blocked; `None`: no watchdog.
    send_timeout: Option<Duration>,
    /// The watchdog's timer, made the first time a write blocks and kept for reuse.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether `stall` runs for the write blocked now.
    stall_armed: bool,
}

impl<T> InspectedIo<T> {
    /// Wraps a freshly accepted connection; nothing may have been read from it yet, since
    /// the tracker numbers requests from the first byte.
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            tracker: Tracker::new(Arc::new(H1Flags::new())),
            send_timeout: None,
            stall: None,
            stall_armed: false,
        }
    }

    /// Fails writes that stay blocked for `timeout` (the client accepts no bytes) with
    /// `TimedOut`, ending the connection.
    pub fn set_send_timeout(&mut self, timeout: Duration) {
        self.send_timeout = Some(timeout);
    }

    /// The verdicts for this connection, to be moved into its service.
    pub fn flags(&self) -> &Arc<H1Flags> {
        &self.tracker.flags
    }

    /// The wrapped stream, for peer addresses or TLS session details.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for InspectedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let room = buf.remaining();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            match buf.filled().get(before..) {
                Some(read) if !read.is_empty() => this.tracker.feed(read),
                _ if room > 0 => this.tracker.eof(),
                _ => {}
            }
        }
        polled
    }
}

impl<T> InspectedIo<T> {
    /// The write watchdog: a write that made progress disarms it; one that is blocked arms
    /// it (once per blocked stretch) and fails with `TimedOut` when it fires.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let Some(timeout) = self.send_timeout else {
            return polled;
        };
        if polled.is_ready() {
            self.stall_armed = false;
            return polled;
        }
        let deadline = Instant::now() + timeout;
        let stall = match &mut self.stall {
            Some(stall) => {
                if !self.stall_armed {
                    stall.as_mut().reset(deadline);
                }
                stall
            }
            None => self
                .stall
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.stall_armed = true;
        if stall.as_mut().poll(cx).is_ready() {
            self.tracker
                .flags
                .send_timed_out
                .store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no bytes for send_timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for InspectedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch_write(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where in the request stream the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head (or the empty lines httparse skips before one); a partial head is
    /// in the split-head buffer.
    Head,
    /// A `Content-Length` body with this many bytes still to come.
    Length(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// Not following the stream any more; every byte passes unobserved.
    Stopped,
}

/// Position inside a chunked body, mirroring hyper's `ChunkedState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    SizeStart,
    /// More hex digits, whitespace, `;` or CR.
    Size(u64),
    /// Whitespace after the size: more of it, `;` or CR.
    SizeLws(u64),
    /// A chunk extension, up to CR.
    Extension(u64),
    /// The LF ending a size line.
    SizeLf(u64),
    /// Chunk data with this many bytes still to come.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// After the last chunk's size line, or after a trailer line: CR of the final empty
    /// line, or the first byte of a trailer.
    EndCr,
    /// Inside a trailer line, up to CR.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
}

/// How the body after a head is framed, or what to do instead of following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Both `Content-Length` and `Transfer-Encoding`: flag the request and stop (hyper
    /// closes the connection after it).
    Smuggling,
    /// A body of this many bytes (0 for no body).
    Length(u64),
    /// A chunked body.
    Chunked,
}

/// The outcome of parsing what may be a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// A head of `len` bytes (with any empty lines before it).
    Complete { len: usize, framing: Framing },
    /// More bytes are needed.
    Partial,
    /// Not an HTTP/1.1 head hyper would serve, or not HTTP/1.1 at all: stop following.
    Untrackable,
}

/// Follows one connection's request framing and records requests with both length headers.
#[derive(Debug)]
struct Tracker {
    flags: Arc<H1Flags>,
    state: State,
    /// Number of the request whose head comes next.
    next_index: u64,
    /// A head split across reads, from its first byte; empty otherwise.
    head_buf: Vec<u8>,
}

impl Tracker {
    fn new(flags: Arc<H1Flags>) -> Self {
        Self {
            flags,
            state: State::Head,
            next_index: 0,
            head_buf: Vec::new(),
        }
    }

    /// Follows the framing over `bytes`, the next bytes read from the connection.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Stopped => return,
                State::Head => self.feed_head(bytes),
                State::Length(remaining) => {
                    let (left, rest) = skip(bytes, remaining);
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                    rest
                }
                State::Chunked(chunk) => self.feed_chunked(chunk, bytes),
            };
        }
    }

    /// Consumes head bytes; returns what follows the head in `bytes`.
    fn feed_head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let connection_start = self.next_index == 0;
        if self.head_buf.is_empty() {
            // The common case: the whole head is in this read, parse it where it lies.
            return match inspect_head(bytes, connection_start) {
                Head::Complete { len, framing } => {
                    self.finish_head(framing);
                    bytes.get(len..).unwrap_or_default()
                }
                Head::Partial if bytes.len() < MAX_HEAD_BYTES => {
                    // Room for the rest of a typical head too, so that completing it does
                    // not reallocate (hyper-util's version sniff splits every first head).
                    self.head_buf.reserve(bytes.len() + APPEND_STEP);
                    self.head_buf.extend_from_slice(bytes);
                    &[]
                }
                Head::Partial | Head::Untrackable => self.stop(),
            };
        }

        let buffered = self.head_buf.len();
        let mut rest = bytes;
        loop {
            let room = MAX_HEAD_BYTES.saturating_sub(self.head_buf.len());
            let step = self
                .head_buf
                .len()
                .max(APPEND_STEP)
                .min(room)
                .min(rest.len());
            let (now, later) = rest.split_at_checked(step).unwrap_or((rest, &[]));
            self.head_buf.extend_from_slice(now);
            rest = later;
            match inspect_head(&self.head_buf, connection_start) {
                Head::Complete { len, framing } => {
                    // The buffered bytes were a partial head, so the head ends in `bytes`.
                    let Some(from_this_read) = len.checked_sub(buffered) else {
                        return self.stop();
                    };
                    // Freed, not kept: an idle keep-alive connection holds no buffer.
                    self.head_buf = Vec::new();
                    self.finish_head(framing);
                    return bytes.get(from_this_read..).unwrap_or_default();
                }
                Head::Partial if self.head_buf.len() >= MAX_HEAD_BYTES => return self.stop(),
                Head::Partial if rest.is_empty() => return &[],
                Head::Partial => {}
                Head::Untrackable => return self.stop(),
            }
        }
    }

    /// Numbers the head just parsed and moves on to its body.
    fn finish_head(&mut self, framing: Framing) {
        let index = self.next_index;
        self.next_index = index.saturating_add(1);
        match framing {
            Framing::Smuggling => {
                self.flags.record_smuggling(index);
                self.stop();
            }
            Framing::Length(0) => self.state = State::Head,
            Framing::Length(len) => self.state = State::Length(len),
            Framing::Chunked => self.state = State::Chunked(Chunk::SizeStart),
        }
    }

    /// Follows a chunked body from `chunk`; returns what follows the body in `bytes`.
    fn feed_chunked<'a>(&mut self, mut chunk: Chunk, mut bytes: &'a [u8]) -> &'a [u8] {
        loop {
            // Chunk data, extensions and trailers are passed over in bulk; only the framing
            // bytes around them go through the state machine one at a time.
            match chunk {
                Chunk::Data(remaining) => {
                    let (left, rest) = skip(bytes, remaining);
                    bytes = rest;
                    chunk = if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    };
                }
                Chunk::Extension(_) => {
                    let end = bytes
                        .iter()
                        .position(|&b| b == b'\r' || b == b'\n')
                        .unwrap_or(bytes.len());
                    bytes = bytes.get(end..).unwrap_or_default();
                }
                Chunk::Trailer => {
                    let end = bytes
                        .iter()
                        .position(|&b| b == b'\r')
                        .unwrap_or(bytes.len());
                    bytes = bytes.get(end..).unwrap_or_default();
                }
                _ => {}
            }
            let Some((&byte, rest)) = bytes.split_first() else {
                self.state = State::Chunked(chunk);
                return bytes;
            };
            bytes = rest;
            chunk = match (chunk, byte) {
                (Chunk::SizeStart, _) => match hex_digit(byte) {
                    Some(digit) => Chunk::Size(digit),
                    None => return self.stop(),
                },
                (Chunk::Size(size), b' ' | b'\t') | (Chunk::SizeLws(size), b' ' | b'\t') => {
                    Chunk::SizeLws(size)
                }
                (Chunk::Size(size), b';') | (Chunk::SizeLws(size), b';') => Chunk::Extension(size),
                (Chunk::Size(size), b'\r')
                | (Chunk::SizeLws(size), b'\r')
                | (Chunk::Extension(size), b'\r') => Chunk::SizeLf(size),
                (Chunk::Size(size), _) => {
                    match hex_digit(byte).and_then(|digit| size.checked_mul(16)?.checked_add(digit))
                    {
                        Some(size) => Chunk::Size(size),
                        None => return self.stop(),
                    }
                }
                (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
                (Chunk::SizeLf(size), b'\n') => Chunk::Data(size),
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::SizeStart,
                (Chunk::EndCr, b'\r') => Chunk::EndLf,
                (Chunk::EndCr, _) => Chunk::Trailer,
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
                (Chunk::EndLf, b'\n') => {
                    self.state = State::Head;
                    return bytes;
                }
                // hyper fails the body on anything else and closes the connection.
                _ => return self.stop(),
            };
        }
    }

    /// The client closed its side. Only a close in the middle of the HTTP/2 preface is
    /// noted (see [`H1Flags::closed_in_preface`]).
    fn eof(&mut self) {
        if self.state == State::Head
            && self.next_index == 0
            && !self.head_buf.is_empty()
            && H2_PREFACE.starts_with(&self.head_buf)
        {
            self.flags.closed_in_preface.store(true, Ordering::Release);
        }
    }

    /// Stops following the stream for good; returns the (empty) rest to feed.
    fn stop(&mut self) -> &'static [u8] {
        self.state = State::Stopped;
        self.head_buf = Vec::new();
        &[]
    }

    #[cfg(test)]
    fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }
}

/// Skips up to `count` bytes; returns how many are still to skip and the bytes after.
fn skip(bytes: &[u8], count: u64) -> (u64, &[u8]) {
    let take = usize::try_from(count).map_or(bytes.len(), |count| count.min(bytes.len()));
    let (skipped, rest) = bytes.split_at_checked(take).unwrap_or((bytes, &[]));
    // `skipped.len() <= count`, so this cannot underflow.
    (count.saturating_sub(skipped.len() as u64), rest)
}

fn hex_digit(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

/// Parses `bytes` as the start of a request head the way hyper's h1 server does and decides
/// how its body is framed.
fn inspect_head(bytes: &[u8], connection_start: bool) -> Head {
    if connection_start {
        if bytes.starts_with(H2_PREFACE) {
            return Head::Untrackable;
        }
        if H2_PREFACE.starts_with(bytes) {
            // Might still become the preface; httparse would call it a partial request
            // line anyway, but say so explicitly.
            return Head::Partial;
        }
    }

    // Uninitialised slots, as hyper does: zeroing 256 headers per request costs more than
    // parsing a typical head.
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(bytes, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Untrackable,
    };

    let mut has_content_length = false;
    let mut content_length: Option<u64> = None;
    let mut content_length_valid = true;
    let mut has_transfer_encoding = false;
    let mut chunked = false;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            has_content_length = true;
            match (parse_content_length(header.value), content_length) {
                (Some(len), None) => content_length = Some(len),
                (Some(len), Some(previous)) if len == previous => {}
                _ => content_length_valid = false,
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            has_transfer_encoding = true;
            // hyper goes by the last Transfer-Encoding line alone.
            chunked = ends_in_chunked(header.value);
        }
    }

    let framing = match (has_content_length, has_transfer_encoding) {
        (true, true) => Framing::Smuggling,
        // hyper answers 400 and closes for each of these.
        (false, true) if request.version != Some(1) || !chunked => return Head::Untrackable,
        (false, true) => Framing::Chunked,
        (true, false) => match content_length {
            Some(len) if content_length_valid => Framing::Length(len),
            _ => return Head::Untrackable,
        },
        (false, false) => Framing::Length(0),
    };
    Head::Complete { len, framing }
}

/// `Content-Length` as hyper's server reads it: one or more ASCII digits, nothing else,
/// fitting in a u64.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |len, &byte| {
        let digit = char::from(byte).to_digit(10)?;
        len.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Whether `chunked` is the last coding of a `Transfer-Encoding` value.
fn ends_in_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&byte| byte == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(Arc::new(H1Flags::new()))
    }

    /// Indices among the first `requests` that the tracker flagged.
    fn flagged(tracker: &Tracker, requests: u64) -> Vec<u64> {
        (0..requests)
            .filter(|&index| tracker.flags.is_smuggling(index))
            .collect()
    }

    const SIZED: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\n\r\n";
    const CL_THEN_TE: &[u8] = b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
        Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    const TE_THEN_CL: &[u8] = b"POST /d HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\
        CONTENT-LENGTH: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    const GET: &[u8] = b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n";

    fn stream(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn content_length_before_transfer_encoding_is_flagged_for_its_request() {
        let mut t = tracker();
        t.feed(&stream(&[GET, CL_THEN_TE]));
        assert_eq!(flagged(&t, 4), vec![1]);
    }

    #[test]
    fn transfer_encoding_before_content_length_is_flagged_whatever_the_case_of_the_names() {
        let mut t = tracker();
        t.feed(TE_THEN_CL);
        assert_eq!(flagged(&t, 4), vec![0]);
    }

    #[test]
    fn both_headers_are_flagged_even_when_the_length_is_garbage_or_repeated() {
        // hyper never parses a Content-Length that comes after Transfer-Encoding.
        let mut t = tracker();
        t.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: nope\r\n\r\n");
        assert_eq!(flagged(&t, 2), vec![0]);

        let mut t = tracker();
        t.feed(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\
              Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(flagged(&t, 2), vec![0]);
    }

    #[test]
    fn only_the_third_request_is_flagged_after_a_sized_and_a_chunked_request() {
        let mut t = tracker();
        t.feed(&stream(&[SIZED, CHUNKED, CL_THEN_TE, GET]));
        assert_eq!(flagged(&t, 5), vec![2]);
    }

    #[test]
    fn a_two_request_pipeline_is_judged_the_same_at_every_split_point() {
        for first in [SIZED, CHUNKED, GET] {
            for second in [CL_THEN_TE, TE_THEN_CL] {
                let bytes = stream(&[first, second]);
                for split in 0..=bytes.len() {
                    let (a, b) = bytes.split_at(split);
                    let mut t = tracker();
                    t.feed(a);
                    t.feed(b);
                    assert_eq!(flagged(&t, 3), vec![1], "split at {split}");
                }
            }
        }
    }

    #[test]
    fn a_clean_two_request_pipeline_is_never_flagged_nor_abandoned_at_any_split_point() {
        let bytes = stream(&[CHUNKED, SIZED]);
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            let mut t = tracker();
            t.feed(a);
            t.feed(b);
            assert_eq!(flagged(&t, 3), Vec::<u64>::new(), "split at {split}");
            assert_eq!(
                (t.next_index, t.state),
                (2, State::Head),
                "split at {split}"
            );
        }
    }

    #[test]
    fn one_byte_reads_flag_the_same_request() {
        let bytes = stream(&[SIZED, CHUNKED, GET, TE_THEN_CL]);
        let mut t = tracker();
        for byte in bytes.chunks(1) {
            t.feed(byte);
        }
        assert_eq!(flagged(&t, 5), vec![3]);
    }

    #[test]
    fn random_read_boundaries_give_the_same_verdict() {
        let extended = b"PUT /f HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            3;name=value\r\nabc\r\n10 ; x\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n";
        let bytes = stream(&[GET, extended, SIZED, b"\r\n", CHUNKED, GET, CL_THEN_TE]);
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for _ in 0..500 {
            let mut t = tracker();
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let (now, later) = rest.split_at(rng.usize(1..=rest.len().min(40)));
                t.feed(now);
                rest = later;
            }
            assert_eq!(flagged(&t, 8), vec![5]);
        }
    }

    #[test]
    fn chunk_extensions_and_trailers_are_followed_to_the_next_request() {
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;ext=\"a;b\"\r\nwiki\r\nA \t;x\r\n0123456789\r\n0;last\r\n\
            Trailer-One: 1\r\nContent-Length: 9\r\n\r\n";
        let mut t = tracker();
        t.feed(&stream(&[chunked, CL_THEN_TE]));
        assert_eq!(flagged(&t, 3), vec![1]);
    }

    #[test]
    fn header_names_inside_bodies_are_not_flagged() {
        let fake = b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut sized =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", fake.len()).into_bytes();
        sized.extend_from_slice(fake);
        let mut chunked = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            fake.len()
        )
        .into_bytes();
        chunked.extend_from_slice(fake);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");

        let mut t = tracker();
        t.feed(&stream(&[&sized, &chunked, GET]));
        assert_eq!(flagged(&t, 4), Vec::<u64>::new());
        assert_eq!((t.next_index, t.state), (3, State::Head));
    }

    #[test]
    fn empty_lines_between_requests_are_skipped_as_hyper_skips_them() {
        let mut t = tracker();
        t.feed(&stream(&[SIZED, b"\r\n\r\n", b"\n", CL_THEN_TE]));
        assert_eq!(flagged(&t, 3), vec![1]);
    }

    #[test]
    fn whole_heads_in_one_read_are_parsed_without_buffering() {
        let mut t = tracker();
        for request in [SIZED, CHUNKED, GET, SIZED] {
            t.feed(request);
        }
        assert_eq!(t.next_index, 4);
        assert_eq!(t.head_buf.capacity(), 0);
    }

    #[test]
    fn the_http2_preface_stops_tracking_even_when_split() {
        let bytes = stream(&[H2_PREFACE, CL_THEN_TE]);
        let mut t = tracker();
        for byte in bytes.chunks(1) {
            t.feed(byte);
        }
        assert!(t.is_stopped());
        assert_eq!(flagged(&t, 3), Vec::<u64>::new());
    }

    #[test]
    fn a_request_line_starting_like_the_preface_is_still_tracked() {
        let rest = b"1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut t = tracker();
        t.feed(b"P");
        t.feed(b"RI * HTTP/");
        t.feed(rest);
        assert_eq!(flagged(&t, 2), vec![0]);
    }

    #[test]
    fn a_refused_upgrade_keeps_tracking_the_requests_after_it() {
        // The proxy never answers 101, so hyper keeps reading HTTP/1.1 after an upgrade
        // request; giving up here would let the next request through unobserved.
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
        let mut t = tracker();
        t.feed(&stream(&[upgrade, connect, CL_THEN_TE]));
        assert_eq!(flagged(&t, 4), vec![2]);
    }

    #[test]
    fn opaque_bytes_after_an_accepted_upgrade_stop_tracking_quietly() {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut t = tracker();
        t.feed(&stream(&[upgrade, &frame, CL_THEN_TE]));
        assert!(t.is_stopped());
        assert_eq!(flagged(&t, 3), Vec::<u64>::new());
    }

    #[test]
    fn heads_hyper_refuses_stop_tracking() {
        let refused: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ];
        for head in refused {
            let mut t = tracker();
            t.feed(&stream(&[head, CL_THEN_TE]));
            assert!(t.is_stopped(), "{}", String::from_utf8_lossy(head));
            assert_eq!(flagged(&t, 3), Vec::<u64>::new());
        }
    }

    #[test]
    fn bad_chunking_stops_tracking() {
        let bad: [&[u8]; 4] = [
            b"zz\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"3;ext\nabc\r\n",
            b"ffffffffffffffffff\r\n",
        ];
        for body in bad {
            let mut t = tracker();
            t.feed(&stream(&[
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                body,
                CL_THEN_TE,
            ]));
            assert!(t.is_stopped(), "{}", String::from_utf8_lossy(body));
            assert_eq!(flagged(&t, 3), Vec::<u64>::new());
        }
    }

    #[test]
    fn a_head_larger_than_hyper_accepts_stops_tracking_and_frees_its_buffer() {
        let mut t = tracker();
        t.feed(b"GET / HTTP/1.1\r\n");
        let filler = format!("X-Filler: {}\r\n", "a".repeat(1000));
        for _ in 0..(MAX_HEAD_BYTES / filler.len() + 1) {
            t.feed(filler.as_bytes());
        }
        assert!(t.is_stopped());
        assert_eq!(t.head_buf.capacity(), 0);
    }

    #[test]
    fn a_head_with_as_many_headers_as_hyper_allows_is_tracked() {
        let mut head = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n".to_vec();
        for i in 1..MAX_HEADERS {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut t = tracker();
        t.feed(&stream(&[&head, TE_THEN_CL]));
        assert_eq!(flagged(&t, 3), vec![1]);
    }

    #[tokio::test]
    async fn small_reads_and_writes_pass_through_the_wrapper_unchanged() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut client, server) = tokio::io::duplex(7);
        let mut inspected = InspectedIo::new(server);
        let flags = Arc::clone(inspected.flags());
        let sent = stream(&[SIZED, CHUNKED, CL_THEN_TE]);
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&to_send).await?;
            client.shutdown().await?;
            let mut echoed = Vec::new();
            client.read_to_end(&mut echoed).await?;
            Ok::<_, io::Error>(echoed)
        });

        let mut received = Vec::new();
        let mut small = [0u8; 3];
        loop {
            let n = inspected.read(&mut small).await?;
            if n == 0 {
                break;
            }
            received.extend_from_slice(small.get(..n).unwrap_or_default());
        }
        assert_eq!(received, sent);
        assert_eq!(flagged(&inspected.tracker, 4), vec![2]);
        assert!(flags.is_smuggling(2));

        inspected
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await?;
        inspected.shutdown().await?;
        let echoed = writer.await.map_err(io::Error::other)??;
        assert_eq!(echoed, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        Ok(())
    }

    #[tokio::test]
    async fn a_close_inside_the_h2_preface_is_noted_and_a_close_after_a_request_is_not(
    ) -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for (sent, noted) in [
            (&H2_PREFACE[..18], true),
            (&H2_PREFACE[..5], true),
            (GET, false),
            (b"GET / HT".as_slice(), false),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            let mut inspected = InspectedIo::new(server);
            client.write_all(sent).await?;
            client.shutdown().await?;
            let mut all = Vec::new();
            inspected.read_to_end(&mut all).await?;
            assert_eq!(
                inspected.flags().closed_in_preface(),
                noted,
                "{}",
                String::from_utf8_lossy(sent)
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_write_blocked_for_the_send_timeout_fails_the_connection() -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(64);
        let mut inspected = InspectedIo::new(server);
        inspected.set_send_timeout(std::time::Duration::from_millis(100));
        // The client never reads: the 64-byte pipe fills and the write blocks.
        let written = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            inspected.write_all(&[b'x'; 4096]),
        )
        .await
        .map_err(|_| io::Error::other("the watchdog never fired"))?;
        let error = written.err().map(|e| e.kind());
        assert_eq!(error, Some(io::ErrorKind::TimedOut));
        assert!(inspected.flags().send_timed_out());
        drop(client);
        Ok(())
    }

    #[tokio::test]
    async fn writes_that_progress_never_time_out() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut inspected = InspectedIo::new(server);
        inspected.set_send_timeout(std::time::Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            // Slower overall than the timeout, but never blocked that long at once.
            let mut total = 0;
            let mut buf = [0u8; 64];
            while total < 64 * 20 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                total += client.read(&mut buf).await?;
            }
            Ok::<_, io::Error>(total)
        });
        inspected.write_all(&[b'x'; 64 * 20]).await?;
        assert!(!inspected.flags().send_timed_out());
        assert_eq!(reader.await.map_err(io::Error::other)??, 64 * 20);
        Ok(())
    }

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// Serves `requests` with hyper-util's `auto` server (as `server.rs` does) over an
    /// [`InspectedIo`], with a service that counts requests and answers 400 to flagged ones;
    /// returns the status lines the client got before hyper closed the connection.
    async fn statuses_from_hyper(
        requests: Vec<u8>,
    ) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        use http_body_util::{BodyExt, Full};
        use hyper::body::{Bytes, Incoming};
        use hyper::service::service_fn;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let io = InspectedIo::new(server);
        let flags = Arc::clone(io.flags());
        let counter = Arc::new(AtomicU64::new(0));
        let service = service_fn(move |request: http::Request<Incoming>| {
            let index = counter.fetch_add(1, Ordering::Relaxed);
            let status = if flags.is_smuggling(index) {
                http::StatusCode::BAD_REQUEST
            } else {
                http::StatusCode::OK
            };
            async move {
                // Read the body so that hyper keeps the connection for the next request.
                request.into_body().collect().await?;
                let mut response = http::Response::new(Full::new(Bytes::new()));
                *response.status_mut() = status;
                Ok::<_, hyper::Error>(response)
            }
        });
        let server = tokio::spawn(async move {
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await
        });

        client.write_all(&requests).await?;
        let mut responses = Vec::new();
        client.read_to_end(&mut responses).await?;
        let _ = server.await?;
        Ok(String::from_utf8(responses)?
            .lines()
            .filter(|line| line.starts_with("HTTP/1.1 "))
            .map(str::to_owned)
            .collect())
    }

    #[tokio::test]
    async fn hyper_hands_the_service_the_flagged_request_under_the_counted_index() -> TestResult {
        let statuses = statuses_from_hyper(stream(&[SIZED, CHUNKED, TE_THEN_CL, GET])).await?;
        assert_eq!(
            statuses,
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 400 Bad Request"
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn hyper_keeps_serving_http1_after_a_refused_upgrade_and_the_flag_follows() -> TestResult
    {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let statuses = statuses_from_hyper(stream(&[upgrade, CHUNKED, CL_THEN_TE])).await?;
        assert_eq!(
            statuses,
            [
                "HTTP/1.1 200 OK",
                "HTTP/1.1 200 OK",
                "HTTP/1.1 400 Bad Request"
            ]
        );
        Ok(())
    }
}
