//! HTTP/1.1 framing, where request smuggling would happen.
//!
//! [`split`]: the smuggling inspector (`rampart_proxy::h1_inspect`) alone. The bytes of a
//! connection reach it in reads of any size, so its verdict (which request, if any, carried
//! both `Content-Length` and `Transfer-Encoding`) must not depend on where the reads split,
//! and it must pass every byte through unchanged.
//!
//! [`serve`]: the inspector in front of hyper's server on an in-memory connection, built
//! as `crates/proxy/src/server.rs` builds it, with a trivial service that refuses flagged
//! requests the way the proxy does. Checked: nothing panics; the connection ends once the
//! client has sent everything; a request that reaches the service unflagged is never
//! flagged later; a flagged request is the one hyper parsed (it still has its
//! `Transfer-Encoding`) and the last one served; and each request hyper hands over is,
//! method, target and verdict, the one an independent whole-buffer reading of the same
//! bytes finds at that position.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rampart_proxy::h1_inspect::{H1Flags, InspectedIo};
use rampart_proxy::server::{MAX_HEADER_BYTES, MAX_HEADER_COUNT};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::task::JoinHandle;

/// Inputs are cut to this length. It is below the inspector's own limit on a buffered head
/// (twice hyper's 64 KiB), where giving up on a head hyper refuses anyway is allowed to
/// depend on the read sizes.
pub const MAX_INPUT: usize = MAX_HEADER_BYTES;

/// What an HTTP/2 prior-knowledge client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Virtual time a connection may take once the client has sent everything (the clock is
/// paused, so waiting costs nothing; hyper's 30 s header timeout fits many times over).
const DEADLINE: Duration = Duration::from_secs(3600);

/// Body bytes the service reads per request before answering.
const MAX_BODY: usize = 1 << 20;

fn cap(data: &[u8]) -> &[u8] {
    data.get(..MAX_INPUT).unwrap_or(data)
}

/// The inspector over `data` in reads of the sizes `sizes` gives: the first request it
/// flagged. Panics if a byte comes out changed.
fn inspect(data: &[u8], sizes: impl FnMut() -> usize + Unpin) -> Option<u64> {
    let mut io = InspectedIo::new(Reads { rest: data, sizes });
    let mut out = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; data.len() + 1];
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut io).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
            other => panic!("an in-memory read returned {other:?}"),
        }
    }
    assert!(out == data, "the inspector changed the bytes it passed on");
    first_flagged(io.flags(), data.len())
}

/// The first request (by index) the flags mark, among at most `bytes + 1` requests (every
/// request takes at least one byte).
fn first_flagged(flags: &H1Flags, bytes: usize) -> Option<u64> {
    let last = u64::try_from(bytes).unwrap_or(u64::MAX);
    (0..=last).find(|&index| flags.is_smuggling(index))
}

/// A connection's bytes, handed out in reads of the sizes a closure picks.
struct Reads<'a, F> {
    rest: &'a [u8],
    sizes: F,
}

impl<F: FnMut() -> usize + Unpin> AsyncRead for Reads<'_, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = (this.sizes)()
            .max(1)
            .min(buf.remaining())
            .min(this.rest.len());
        let (now, later) = this.rest.split_at(n);
        buf.put_slice(now);
        this.rest = later;
        Poll::Ready(Ok(()))
    }
}

/// The inspector's verdict on `data` is the same whether it arrives in one read, one byte
/// at a time, or in reads of random sizes (several size ranges).
pub fn split(data: &[u8]) {
    let data = cap(data);
    let whole = inspect(data, || usize::MAX);
    let ones = inspect(data, || 1);
    assert_eq!(
        ones, whole,
        "one-byte reads flag request {ones:?}, one read flags {whole:?}"
    );
    for (stream, max) in [(1, 8), (2, 64), (3, 1500), (4, 20_000)] {
        let mut rng = super::Rng::from_input(data, stream);
        let mut sizes = Vec::new();
        let verdict = inspect(data, || {
            let size = rng.size(max);
            sizes.push(size);
            size
        });
        assert_eq!(
            verdict, whole,
            "reads of sizes {sizes:?} flag request {verdict:?}, one read flags {whole:?}"
        );
    }
}

/// What the service was handed, as it saw it.
#[derive(Debug, Clone)]
struct Seen {
    index: u64,
    /// The inspector's verdict when the request reached the service.
    flagged: bool,
    version: Version,
    method: Method,
    uri: Uri,
    has_transfer_encoding: bool,
    has_content_length: bool,
}

/// Spawns hyper's background tasks (HTTP/2 streams) and keeps their handles, so that a
/// panic in one is raised instead of lost in the runtime.
#[derive(Clone, Default)]
struct Exec(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let handle = tokio::spawn(async move {
            future.await;
        });
        if let Ok(mut handles) = self.0.lock() {
            handles.push(handle);
        }
    }
}

impl Exec {
    async fn raise_panics(&self) {
        let handles = match self.0.lock() {
            Ok(mut handles) => std::mem::take(&mut *handles),
            Err(_) => Vec::new(),
        };
        for handle in handles {
            handle.abort();
            if let Err(error) = handle.await {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        }
    }
}

/// The data-plane server's HTTP settings, as `server.rs` sets them (its `builder()` is
/// private; the limits are the public constants the inspector is sized by).
fn builder(exec: Exec) -> auto::Builder<Exec> {
    let mut builder = auto::Builder::new(exec);
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

/// Serves `data` as one client connection through the inspector and hyper, and checks what
/// reached the service (see the module doc).
pub fn serve(data: &[u8]) {
    let data = cap(data);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => panic!("cannot start a runtime: {error}"),
    };
    let mut rng = super::Rng::from_input(data, 0);
    let capacity = [7, 64, 1024, 64 * 1024][rng.size(4) - 1];
    let max_write = [1, 16, 500, MAX_INPUT][rng.size(4) - 1];
    let outcome = runtime.block_on(async {
        tokio::time::timeout(DEADLINE, exchange(data, capacity, max_write, rng)).await
    });
    let Ok((seen, flags)) = outcome else {
        panic!(
            "the connection was still open {DEADLINE:?} (virtual) after the client sent \
             everything and closed its side (buffer {capacity}, writes up to {max_write})"
        );
    };
    check_served(data, &seen, &flags);
}

async fn exchange(
    data: &[u8],
    capacity: usize,
    max_write: usize,
    mut rng: super::Rng,
) -> (Vec<Seen>, Arc<H1Flags>) {
    let (client, server) = tokio::io::duplex(capacity);
    let io = InspectedIo::new(server);
    let flags = Arc::clone(io.flags());
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let service = {
        let flags = Arc::clone(&flags);
        let seen = Arc::clone(&seen);
        let requests = Arc::new(AtomicU64::new(0));
        service_fn(move |request: Request<Incoming>| {
            // As server.rs: number the request, ask the inspector, refuse a flagged one.
            let index = requests.fetch_add(1, Ordering::Relaxed);
            let flagged = flags.is_smuggling(index);
            let headers = request.headers();
            let entry = Seen {
                index,
                flagged,
                version: request.version(),
                method: request.method().clone(),
                uri: request.uri().clone(),
                has_transfer_encoding: headers.contains_key(http::header::TRANSFER_ENCODING),
                has_content_length: headers.contains_key(http::header::CONTENT_LENGTH),
            };
            if let Ok(mut seen) = seen.lock() {
                seen.push(entry);
            }
            async move {
                let mut response = Response::new(Empty::<Bytes>::new());
                if flagged {
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    return Ok::<_, Infallible>(response);
                }
                // Read the body, as a proxy forwarding it would, so hyper goes on to the
                // next request.
                let _ = Limited::new(request.into_body(), MAX_BODY).collect().await;
                Ok(response)
            }
        })
    };
    let exec = Exec::default();
    let builder = builder(exec.clone());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);

    let (mut from_server, mut to_server) = tokio::io::split(client);
    let send = async move {
        let mut rest = data;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(rng.size(max_write).min(rest.len()));
            if to_server.write_all(now).await.is_err() {
                break;
            }
            rest = later;
            tokio::task::yield_now().await;
        }
        let _ = to_server.shutdown().await;
    };
    let receive = async move {
        let mut sink = [0u8; 4096];
        while let Ok(n) = from_server.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let ((), (), _result) = tokio::join!(send, receive, connection);
    exec.raise_panics().await;
    let seen = match seen.lock() {
        Ok(seen) => seen.clone(),
        Err(_) => panic!("the service panicked"),
    };
    (seen, flags)
}

fn check_served(data: &[u8], seen: &[Seen], flags: &H1Flags) {
    let shown = |s: &Seen| format!("request {} ({} {})", s.index, s.method, s.uri);
    for s in seen {
        assert_eq!(
            s.flagged,
            flags.is_smuggling(s.index),
            "{}: the inspector's verdict changed after the request reached the service",
            shown(s)
        );
        if s.version == Version::HTTP_2 {
            assert!(!s.flagged, "{}: an HTTP/2 request was flagged", shown(s));
            continue;
        }
        if s.flagged {
            // hyper drops Content-Length when Transfer-Encoding is present, never the
            // other way round: a flagged request without Transfer-Encoding is not the
            // request the inspector judged.
            assert!(
                s.has_transfer_encoding && !s.has_content_length,
                "{}: flagged, but hyper parsed it with transfer-encoding {} and \
                 content-length {}",
                shown(s),
                s.has_transfer_encoding,
                s.has_content_length
            );
        }
    }
    if let Some(flagged) = seen.iter().find(|s| s.flagged) {
        let after: Vec<String> = seen
            .iter()
            .filter(|s| s.index > flagged.index)
            .map(shown)
            .collect();
        assert!(
            after.is_empty(),
            "hyper served {after:?} after the flagged {}",
            shown(flagged)
        );
    }

    let heads = reference_heads(data);
    for s in seen {
        if s.version == Version::HTTP_2 {
            continue;
        }
        let Some(head) = usize::try_from(s.index).ok().and_then(|i| heads.get(i)) else {
            continue;
        };
        let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(&head.target)).ok();
        assert!(
            s.method.as_str().as_bytes() == head.method.as_slice() && Some(&s.uri) == uri.as_ref(),
            "{}: the bytes at that position are the request {} {}",
            shown(s),
            String::from_utf8_lossy(&head.method),
            String::from_utf8_lossy(&head.target)
        );
        assert_eq!(
            s.flagged,
            head.both_lengths,
            "{}: flagged {} but its head {} both Content-Length and Transfer-Encoding",
            shown(s),
            s.flagged,
            if head.both_lengths {
                "has"
            } else {
                "does not have"
            }
        );
    }
}

/// One request head found by [`reference_heads`].
#[derive(Debug)]
struct RefHead {
    method: Vec<u8>,
    target: Vec<u8>,
    both_lengths: bool,
}

/// The request heads in `data`, read as a whole (no read boundaries) by a deliberately
/// simple framer that follows hyper's rules on the common cases and stops at the first
/// thing it is not sure of: only the heads before that point are compared.
fn reference_heads(data: &[u8]) -> Vec<RefHead> {
    let mut heads = Vec::new();
    if data.starts_with(H2_PREFACE) {
        return heads;
    }
    let mut rest = data;
    while !rest.is_empty() {
        let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADER_COUNT];
        let mut request = httparse::Request::new(&mut slots);
        let len = match request.parse(rest) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEADER_BYTES => len,
            _ => break,
        };
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            break;
        };
        let mut lengths = Vec::new();
        let mut transfer_encoding = false;
        let mut chunked = false;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                lengths.push(header.value);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                chunked = std::str::from_utf8(header.value).is_ok_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
                });
            }
        }
        let both_lengths = transfer_encoding && !lengths.is_empty();
        heads.push(RefHead {
            method: method.as_bytes().to_vec(),
            target: target.as_bytes().to_vec(),
            both_lengths,
        });
        if both_lengths {
            // hyper closes the connection after it.
            break;
        }
        rest = rest.get(len..).unwrap_or_default();
        let body = if transfer_encoding {
            if version != 1 || !chunked {
                break;
            }
            match chunked_length(rest) {
                Some(n) => n,
                None => break,
            }
        } else if let Some(first) = lengths.first() {
            let Some(n) = digits(first) else { break };
            if lengths.iter().any(|l| digits(l) != Some(n)) {
                break;
            }
            match usize::try_from(n) {
                Ok(n) if n <= rest.len() => n,
                _ => break,
            }
        } else {
            0
        };
        rest = rest.get(body..).unwrap_or_default();
    }
    heads
}

fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Length of a chunked body at the start of `body`, for a strict subset of what hyper
/// accepts (sizes of 1 to 15 hex digits, printable extensions, printable trailer lines).
fn chunked_length(body: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    loop {
        let rest = body.get(pos..)?;
        let hex = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if hex == 0 || hex > 15 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(rest.get(..hex)?).ok()?, 16).ok()?;
        pos += hex;
        if body.get(pos) == Some(&b';') {
            pos += 1;
            while let Some(&byte) = body.get(pos) {
                if byte == b'\r' {
                    break;
                }
                if !(byte == b'\t' || (0x20..0x7f).contains(&byte)) {
                    return None;
                }
                pos += 1;
            }
        }
        if body.get(pos..pos + 2)? != b"\r\n" {
            return None;
        }
        pos += 2;
        if size == 0 {
            break;
        }
        let end = pos.checked_add(usize::try_from(size).ok()?)?;
        if body.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        pos = end + 2;
    }
    loop {
        let rest = body.get(pos..)?;
        let line = rest.iter().position(|&b| b == b'\r' || b == b'\n')?;
        if rest.get(line..line + 2)? != b"\r\n" {
            return None;
        }
        if rest
            .get(..line)?
            .iter()
            .any(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
        {
            return None;
        }
        pos += line + 2;
        if line == 0 {
            return Some(pos);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SIZED: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] =
        b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    const CL_TE: &[u8] =
        b"POST /c HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    fn pipeline() -> Vec<u8> {
        [SIZED, CHUNKED, CL_TE].concat()
    }

    fn seen(index: u64, method: Method, uri: &str, flagged: bool) -> Seen {
        Seen {
            index,
            flagged,
            version: Version::HTTP_11,
            method,
            uri: Uri::from_maybe_shared(Bytes::copy_from_slice(uri.as_bytes())).unwrap(),
            has_transfer_encoding: flagged,
            has_content_length: false,
        }
    }

    /// The flags the inspector leaves after reading `data` in one go.
    fn flags_after(data: &[u8]) -> Arc<H1Flags> {
        let mut io = InspectedIo::new(Reads {
            rest: data,
            sizes: || usize::MAX,
        });
        let mut buf = vec![0u8; data.len() + 1];
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut read = ReadBuf::new(&mut buf);
        let _ = Pin::new(&mut io).poll_read(&mut cx, &mut read);
        Arc::clone(io.flags())
    }

    #[test]
    fn the_reference_framer_finds_each_head_and_which_has_both_lengths() {
        let heads = reference_heads(&pipeline());
        let found: Vec<(&[u8], bool)> = heads
            .iter()
            .map(|h| (h.target.as_slice(), h.both_lengths))
            .collect();
        assert_eq!(
            found,
            [(&b"/a"[..], false), (&b"/b"[..], false), (&b"/c"[..], true)]
        );
        assert_eq!(inspect(&pipeline(), || 3), Some(2));
    }

    #[test]
    fn the_reference_framer_stops_where_it_is_unsure() {
        let odd_chunk =
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n";
        let heads = reference_heads(&[&odd_chunk[..], SIZED].concat());
        assert_eq!(heads.len(), 1);
        assert!(reference_heads(&[H2_PREFACE, SIZED].concat()).is_empty());
    }

    #[test]
    fn the_served_pipeline_passes_its_checks() {
        serve(&pipeline());
    }

    #[test]
    #[should_panic(expected = "verdict changed after the request reached the service")]
    fn a_request_flagged_after_it_reached_the_service_fails() {
        let data = pipeline();
        let flags = flags_after(&data);
        let served = [
            seen(0, Method::POST, "/a", false),
            seen(1, Method::POST, "/b", false),
            seen(2, Method::POST, "/c", false),
        ];
        check_served(&data, &served, &flags);
    }

    #[test]
    #[should_panic(expected = "the bytes at that position are the request POST /b")]
    fn a_request_numbered_differently_from_the_bytes_fails() {
        let data = pipeline();
        let flags = flags_after(&data);
        let served = [
            seen(0, Method::POST, "/a", false),
            seen(1, Method::POST, "/c", false),
        ];
        check_served(&data, &served, &flags);
    }

    #[test]
    #[should_panic(expected = "after the flagged")]
    fn a_request_served_after_a_flagged_one_fails() {
        let data = [CL_TE, SIZED].concat();
        let flags = flags_after(&data);
        let served = [
            seen(0, Method::POST, "/c", true),
            seen(1, Method::POST, "/a", false),
        ];
        check_served(&data, &served, &flags);
    }
}
