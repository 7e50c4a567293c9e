//! HTTP/1.x framing, where request smuggling would happen: Rampart's own HTTP/1.1 server
//! (`crates/proxy/src/h1/`).
//!
//! [`split`]: the codec alone (`rampart_proxy::h1::codec`). A connection's bytes reach
//! `parse_request` and `ChunkedDecoder` in reads of any size, so what they make of the bytes
//! must not depend on where the reads split. The bytes are read as a connection would be:
//! a head, then its body (a `Content-Length` body by count, a chunked one through the
//! decoder, which hands out chunks of random caps), then the next head, until a head or a
//! chunk is refused or the input ends. Checked: one read, one-byte reads and reads of random
//! sizes find the same requests (method, target, version, framing, keep-alive, fields, body
//! bytes, trailers) and stop the same way (the same `ParseError` or `ChunkError`, or the same
//! bytes left over); `parse_request` leaves the buffer untouched when it needs more bytes and
//! otherwise takes exactly the head off its front; an accepted head has the framing its
//! fields say and never both `Content-Length` and `Transfer-Encoding`; a body delivers
//! exactly the bytes its framing says (a chunked body read again on its own, with a separate
//! parser, gives the same data and ends at the same byte); a failed decoder stays failed and
//! an ended one takes nothing more. And where an independent reading of the whole input
//! (httparse and a separate chunked parser, on the framing rules of RFC 9112; see
//! [`independent_reading`]) is sure of the outcome, the codec agrees with it.
//!
//! [`serve`]: the connection driver (`rampart_proxy::h1::serve_h1`) with the data plane's
//! default limits, on an in-memory connection with random buffer and write sizes and a
//! paused clock, with a trivial service that reads each request body (up to 1 MiB), may wait
//! before it answers, and answers 200. The client writes the input, closes its sending side
//! and reads everything. Checked: nothing panics; `serve_h1` returns within the virtual
//! deadline; the requests the service gets are, in order, the requests (with their body
//! bytes, or a failed body) that the codec's reading of the whole input finds and the
//! driver's rules let through (a request that breaks the `Host` rules is refused; nothing
//! follows a refusal, a request without keep-alive or a failed body), all of them unless the
//! driver dropped the one in flight when it saw the client close; they agree with the
//! independent reading where it is sure; none carries both `Content-Length` and
//! `Transfer-Encoding`; the output is a sequence of responses whose status lines parse, 100
//! only for `Expect: 100-continue`, one 200 per answered request; a connection that starts
//! with the HTTP/2 preface is handed back with every byte the client sent.

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use rampart_core::config::Limits;
use rampart_proxy::body::RespBody;
use rampart_proxy::h1::codec::{
    self, Chunk, ChunkError, ChunkedDecoder, ParseError, RequestFraming, RequestHead,
    MAX_CHUNK_LINE_BYTES, MAX_HEADERS, MAX_HEAD_BYTES,
};
use rampart_proxy::h1::conn::{Served, Service};
use rampart_proxy::h1::{serve_h1, H1Settings, RequestBody};
use rampart_proxy::handler::ConnInfo;
use rampart_proxy::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Inputs are cut to this length: the codec's limit on a request head, so every head
/// the input can hold is one the codec reads whole.
pub const MAX_INPUT: usize = MAX_HEAD_BYTES;

/// What an HTTP/2 prior-knowledge client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Virtual time a connection may take once the client has sent everything (the clock is
/// paused, so waiting costs nothing; the 30 s header timeout fits many times over).
const DEADLINE: Duration = Duration::from_secs(3600);

/// Body bytes the service reads per request before answering.
const MAX_BODY: usize = 1 << 20;

/// What the service answers every request it gets.
const ANSWER: &str = "ok\n";

fn cap(data: &[u8]) -> &[u8] {
    data.get(..MAX_INPUT).unwrap_or(data)
}

// ---------------------------------------------------------------------------------
// The codec's reading of a connection's bytes
// ---------------------------------------------------------------------------------

/// A request as the codec read it.
#[derive(Debug, Clone, PartialEq)]
struct Req {
    /// Bytes the head took, with the empty lines before it.
    head_len: usize,
    method: Method,
    uri: Uri,
    version: Version,
    framing: RequestFraming,
    keep_alive: bool,
    expect_continue: bool,
    fields: Vec<(HeaderName, HeaderValue)>,
    body: Body,
}

/// A request's body as the codec read it.
#[derive(Debug, Clone, PartialEq)]
enum Body {
    /// Complete: its data, its trailers, and the bytes it took on the wire.
    Done {
        data: Vec<u8>,
        trailers: Vec<(HeaderName, HeaderValue)>,
        wire: usize,
    },
    /// The input ended inside the body, after this data.
    Cut { data: Vec<u8> },
    /// The decoder refused the chunked body, after this data.
    Bad { error: ChunkError, data: Vec<u8> },
}

/// How a reading ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// The input ended between requests: `leftover` bytes of a head not complete yet.
    Eof { leftover: usize },
    /// A head was refused.
    Refused(ParseError),
    /// The last request's body was cut or refused.
    InBody,
}

/// Every request read from a connection's bytes, and how the reading ended.
#[derive(Debug, Clone, PartialEq)]
struct Reading {
    requests: Vec<Req>,
    end: End,
}

/// Reads `input` with the codec as a connection's driver would, in reads of the sizes
/// `reads` gives, with chunk caps `max` gives; checks the codec's promises on the way.
fn read_codec(
    input: &[u8],
    mut reads: impl FnMut() -> usize,
    mut max: impl FnMut() -> usize,
) -> Reading {
    let mut reader = CodecReader {
        input,
        fed: 0,
        buf: BytesMut::new(),
        state: State::Head,
        requests: Vec::new(),
        end: None,
    };
    while reader.fed < input.len() && reader.end.is_none() {
        let n = reads().max(1).min(input.len() - reader.fed);
        reader.feed(n, &mut max);
    }
    reader.finish()
}

struct CodecReader<'a> {
    input: &'a [u8],
    /// Bytes of `input` put in `buf` so far.
    fed: usize,
    buf: BytesMut,
    state: State,
    requests: Vec<Req>,
    end: Option<End>,
}

enum State {
    Head,
    /// A `Content-Length` body that started at `start` in the input.
    Length {
        start: usize,
        remaining: u64,
    },
    /// A chunked body that started at `start` in the input.
    Chunked {
        start: usize,
        decoder: ChunkedDecoder,
    },
    Stopped,
}

impl CodecReader<'_> {
    fn feed(&mut self, n: usize, max: &mut impl FnMut() -> usize) {
        let end = self.fed + n;
        self.buf
            .extend_from_slice(self.input.get(self.fed..end).unwrap_or_default());
        self.fed = end;
        self.advance(max);
    }

    /// Goes as far as the buffer allows.
    fn advance(&mut self, max: &mut impl FnMut() -> usize) {
        loop {
            // Where `buf` starts in the input.
            let offset = self.fed - self.buf.len();
            match &mut self.state {
                State::Stopped => return,
                State::Head => {
                    let before = self.buf.clone();
                    match codec::parse_request(&mut self.buf) {
                        Ok(None) => {
                            assert!(
                                self.buf == before,
                                "parse_request answered Ok(None) but changed the buffer \
                                 ({} bytes before, {} after)",
                                before.len(),
                                self.buf.len()
                            );
                            return;
                        }
                        Ok(Some(head)) => {
                            let used = before.len().checked_sub(self.buf.len());
                            let Some(used) =
                                used.filter(|&u| before.get(u..) == Some(&self.buf[..]))
                            else {
                                panic!(
                                    "parse_request returned a head but did not split it off the \
                                     front of the buffer ({} bytes before, {} after)",
                                    before.len(),
                                    self.buf.len()
                                );
                            };
                            let req = check_head(head, before.get(..used).unwrap_or_default());
                            let start = offset + used;
                            self.state = match req.framing {
                                RequestFraming::Length(n) if n > 0 => State::Length {
                                    start,
                                    remaining: n,
                                },
                                RequestFraming::Chunked => State::Chunked {
                                    start,
                                    decoder: ChunkedDecoder::new(),
                                },
                                _ => State::Head,
                            };
                            self.requests.push(req);
                        }
                        Err(error) => {
                            self.end = Some(End::Refused(error));
                            self.state = State::Stopped;
                        }
                    }
                }
                State::Length { start, remaining } => {
                    if self.buf.is_empty() {
                        return;
                    }
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    let part = self.buf.split_to(n);
                    *remaining -= n as u64;
                    let (start, done) = (*start, *remaining == 0);
                    let data = body_data(&mut self.requests);
                    data.extend_from_slice(&part);
                    if done {
                        let data = std::mem::take(data);
                        let wire = self.input.get(start..start + data.len());
                        assert!(
                            wire == Some(&data[..]),
                            "a Content-Length body delivered bytes that are not the ones \
                             after its head"
                        );
                        set_body(
                            &mut self.requests,
                            Body::Done {
                                wire: data.len(),
                                data,
                                trailers: Vec::new(),
                            },
                        );
                        self.state = State::Head;
                    }
                }
                State::Chunked { start, decoder } => {
                    let start = *start;
                    let cap = max();
                    let before = self.buf.len();
                    let result = decoder.decode(&mut self.buf, cap);
                    assert!(
                        self.buf.len() <= before,
                        "the chunked decoder added bytes to the buffer"
                    );
                    match result {
                        Ok(None) => {
                            assert!(
                                !decoder.is_done(),
                                "the decoder says it is done before it returned the end"
                            );
                            return;
                        }
                        Ok(Some(Chunk::Data(data))) => {
                            assert!(
                                !data.is_empty() && data.len() <= cap.max(1),
                                "the decoder returned {} data bytes with a cap of {cap}",
                                data.len()
                            );
                            assert!(
                                before - self.buf.len() >= data.len(),
                                "the decoder returned more data than it took from the buffer"
                            );
                            body_data(&mut self.requests).extend_from_slice(&data);
                        }
                        Ok(Some(Chunk::End(trailers))) => {
                            assert!(decoder.is_done(), "the decoder ended but is not done");
                            for name in [CONTENT_LENGTH, TRANSFER_ENCODING, HOST] {
                                assert!(
                                    !trailers.contains_key(&name),
                                    "the decoder passed on a {name} trailer"
                                );
                            }
                            let rest = self.buf.clone();
                            let again = decoder.decode(&mut self.buf, cap);
                            assert!(
                                again == Ok(None) && self.buf == rest,
                                "a decoder that ended answered {again:?} and took {} bytes",
                                rest.len().saturating_sub(self.buf.len())
                            );
                            let end = self.fed - self.buf.len();
                            let wire = self.input.get(start..end).unwrap_or_default();
                            let data = std::mem::take(body_data(&mut self.requests));
                            match loose_chunked(wire) {
                                Some((again, used)) if used == wire.len() && again == data => {}
                                other => panic!(
                                    "the decoder ended a chunked body of {} bytes with {} data \
                                     bytes; read on its own, the body gives {:?}",
                                    wire.len(),
                                    data.len(),
                                    other.map(|(d, used)| (d.len(), used))
                                ),
                            }
                            set_body(
                                &mut self.requests,
                                Body::Done {
                                    data,
                                    trailers: fields(&trailers),
                                    wire: wire.len(),
                                },
                            );
                            self.state = State::Head;
                        }
                        Err(error) => {
                            let rest = self.buf.clone();
                            let again = decoder.decode(&mut self.buf, cap);
                            assert!(
                                again == Err(error) && self.buf == rest,
                                "a decoder that failed with {error:?} answered {again:?} next"
                            );
                            let data = std::mem::take(body_data(&mut self.requests));
                            set_body(&mut self.requests, Body::Bad { error, data });
                            self.end = Some(End::InBody);
                            self.state = State::Stopped;
                        }
                    }
                }
            }
        }
    }

    fn finish(self) -> Reading {
        let end = match (self.end, self.state) {
            (Some(end), _) => end,
            (None, State::Head) => End::Eof {
                leftover: self.buf.len(),
            },
            (None, _) => End::InBody,
        };
        Reading {
            requests: self.requests,
            end,
        }
    }
}

/// The data of the body being read (the last request's, still `Cut`).
fn body_data(requests: &mut [Req]) -> &mut Vec<u8> {
    match requests.last_mut().map(|r| &mut r.body) {
        Some(Body::Cut { data }) => data,
        other => panic!("the harness lost track of the body being read: {other:?}"),
    }
}

fn set_body(requests: &mut [Req], body: Body) {
    if let Some(req) = requests.last_mut() {
        req.body = body;
    }
}

fn fields(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect()
}

/// The elements of a comma-separated field value, OWS-trimmed, empty ones left out.
fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| elements(v.as_bytes()).any(|e| e.eq_ignore_ascii_case(token)))
}

fn all_digits(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(u8::is_ascii_digit)
}

/// Checks an accepted head against the bytes it was read from (`raw`: the empty lines
/// before it, the head and its final empty line), and turns it into a [`Req`].
fn check_head(head: RequestHead, raw: &[u8]) -> Req {
    let shown = format!("{} {} {:?}", head.method, head.uri, head.version);
    let headers = &head.headers;
    assert!(
        head.version == Version::HTTP_10 || head.version == Version::HTTP_11,
        "{shown}: accepted with version {:?}",
        head.version
    );
    let has_length = headers.contains_key(CONTENT_LENGTH);
    let has_encoding = headers.contains_key(TRANSFER_ENCODING);
    assert!(
        !(has_length && has_encoding),
        "{shown}: a head with both Content-Length and Transfer-Encoding was accepted"
    );
    match head.framing {
        RequestFraming::Empty => assert!(
            !has_length && !has_encoding,
            "{shown}: framed as bodiless with Content-Length {has_length}, Transfer-Encoding \
             {has_encoding}"
        ),
        RequestFraming::Length(n) => {
            let values: Vec<&[u8]> = headers
                .get_all(CONTENT_LENGTH)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(|e| e.trim_ascii())
                .collect();
            assert!(
                !values.is_empty()
                    && values.iter().all(|v| {
                        all_digits(v)
                            && std::str::from_utf8(v)
                                .ok()
                                .and_then(|s| s.parse::<u64>().ok())
                                == Some(n)
                    }),
                "{shown}: framed as Length({n}) with Content-Length {:?}",
                headers.get_all(CONTENT_LENGTH).iter().collect::<Vec<_>>()
            );
        }
        RequestFraming::Chunked => {
            let codings: Vec<&[u8]> = headers
                .get_all(TRANSFER_ENCODING)
                .iter()
                .flat_map(|v| elements(v.as_bytes()))
                .collect();
            let chunked = codings
                .iter()
                .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                .count();
            assert!(
                head.version == Version::HTTP_11
                    && chunked == 1
                    && codings
                        .last()
                        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")),
                "{shown}: framed as chunked with Transfer-Encoding {:?}",
                headers
                    .get_all(TRANSFER_ENCODING)
                    .iter()
                    .collect::<Vec<_>>()
            );
        }
    }
    assert!(
        raw.ends_with(b"\n\n") || raw.ends_with(b"\n\r\n"),
        "{shown}: the head taken off the buffer does not end in an empty line"
    );
    let mut line = raw;
    while let Some(rest) = line
        .strip_prefix(b"\r\n".as_slice())
        .or_else(|| line.strip_prefix(b"\n".as_slice()))
    {
        line = rest;
    }
    let method = head.method.as_str().as_bytes();
    assert!(
        line.starts_with(method) && line.get(method.len()) == Some(&b' '),
        "{shown}: the head taken off the buffer starts {:?}",
        String::from_utf8_lossy(line.get(..40).unwrap_or(line))
    );
    let keep_alive = if connection_has(headers, b"close") {
        false
    } else {
        head.version == Version::HTTP_11 || connection_has(headers, b"keep-alive")
    };
    assert_eq!(
        head.keep_alive,
        keep_alive,
        "{shown}: keep-alive {} with Connection {:?}",
        head.keep_alive,
        headers.get_all(CONNECTION).iter().collect::<Vec<_>>()
    );
    let expect = head.version == Version::HTTP_11
        && headers.get_all(EXPECT).iter().any(|v| {
            v.as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
        });
    assert_eq!(
        head.expect_continue,
        expect,
        "{shown}: expect_continue {} with Expect {:?}",
        head.expect_continue,
        headers.get_all(EXPECT).iter().collect::<Vec<_>>()
    );
    let body = match head.framing {
        RequestFraming::Empty | RequestFraming::Length(0) => Body::Done {
            data: Vec::new(),
            trailers: Vec::new(),
            wire: 0,
        },
        _ => Body::Cut { data: Vec::new() },
    };
    Req {
        head_len: raw.len(),
        fields: fields(headers),
        method: head.method,
        uri: head.uri,
        version: head.version,
        framing: head.framing,
        keep_alive: head.keep_alive,
        expect_continue: head.expect_continue,
        body,
    }
}

/// A complete chunked body at the start of `body`, read loosely (sizes of 1 to 16 hex
/// digits, anything but CR and LF up to a size line's CRLF, trailer lines ending in CRLF):
/// its data and its length on the wire. Everything the decoder accepts, this reads.
fn loose_chunked(body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut pos = 0usize;
    let mut data = Vec::new();
    loop {
        let rest = body.get(pos..)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(rest.get(..digits)?).ok()?, 16).ok()?;
        pos += digits;
        let cr = pos + body.get(pos..)?.iter().position(|&b| b == b'\r')?;
        if body.get(pos..cr)?.contains(&b'\n') || body.get(cr + 1) != Some(&b'\n') {
            return None;
        }
        pos = cr + 2;
        if size == 0 {
            break;
        }
        let end = pos.checked_add(usize::try_from(size).ok()?)?;
        data.extend_from_slice(body.get(pos..end)?);
        if body.get(end..end.checked_add(2)?)? != b"\r\n" {
            return None;
        }
        pos = end + 2;
    }
    loop {
        let lf = pos + body.get(pos..)?.iter().position(|&b| b == b'\n')?;
        if lf == pos || body.get(lf - 1) != Some(&b'\r') {
            return None;
        }
        if lf == pos + 1 {
            return Some((data, lf + 1));
        }
        pos = lf + 1;
    }
}

/// The codec reads `data` the same whether it arrives in one read, one byte at a time, or
/// in reads of random sizes (several size ranges, with random chunk caps); see the module
/// doc for what else is checked on the way.
pub fn split(data: &[u8]) {
    let data = cap(data);
    let whole = read_codec(data, || usize::MAX, || usize::MAX);
    check_against_independent(data, &whole);
    let ones = read_codec(data, || 1, || 1);
    assert_same(&ones, &whole, "one-byte reads");
    for (stream, max) in [(1, 8), (2, 64), (3, 1500), (4, 20_000)] {
        let mut rng = super::Rng::from_input(data, stream);
        let mut caps = super::Rng::from_input(data, stream + 100);
        let mut sizes = Vec::new();
        let reading = read_codec(
            data,
            || {
                let size = rng.size(max);
                sizes.push(size);
                size
            },
            || caps.size(max),
        );
        let first: Vec<usize> = sizes.iter().copied().take(40).collect();
        assert_same(
            &reading,
            &whole,
            &format!("reads of sizes {first:?}... (up to {max})"),
        );
    }
}

/// Panics, saying where, when `reading` differs from the one-read `whole`.
fn assert_same(reading: &Reading, whole: &Reading, how: &str) {
    if reading == whole {
        return;
    }
    let index = reading
        .requests
        .iter()
        .zip(&whole.requests)
        .position(|(a, b)| a != b);
    match index {
        Some(i) => panic!(
            "{how} read request {i} as {:?}; one read: {:?}",
            reading.requests.get(i),
            whole.requests.get(i)
        ),
        None => panic!(
            "{how} found {} requests and ended {:?}; one read found {} and ended {:?}",
            reading.requests.len(),
            reading.end,
            whole.requests.len(),
            whole.end
        ),
    }
}

// ---------------------------------------------------------------------------------
// The independent reading
// ---------------------------------------------------------------------------------

/// A request as the independent reading found it.
#[derive(Debug)]
struct RefReq {
    head_len: usize,
    method: Vec<u8>,
    target: Vec<u8>,
    version: Version,
    framing: RequestFraming,
    keep_alive: bool,
    body: RefBody,
}

#[derive(Debug, PartialEq)]
enum RefBody {
    Done {
        data: Vec<u8>,
        wire: usize,
    },
    Cut {
        data: Vec<u8>,
    },
    /// Outside what the independent reading is sure of: nothing after is compared.
    Unsure,
}

#[derive(Debug, PartialEq)]
enum RefEnd {
    /// The input ended where a head starts, or inside one: `leftover` bytes of it.
    Eof { leftover: usize },
    /// The last request's body was cut.
    InBody,
    /// A head is refused (for this reason, when the reading knows which).
    Refused(Option<ParseError>),
    /// A head or body the reading is not sure of: nothing after is compared.
    Unsure,
}

/// The independent reading of `data`: every request it finds and how the bytes end.
#[derive(Debug)]
struct RefReading {
    requests: Vec<RefReq>,
    end: RefEnd,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// Reads the request heads in `data` as a whole with httparse and the framing rules of RFC
/// 9112 section 6 (with the codec's limits: eight empty lines before a request line, 256
/// fields, 64 KiB heads), and chunked bodies with a strict parser of its own. It stops,
/// unsure, at what it does not decide itself: a `CONNECT` or absolute-form target, a
/// transfer coding with parameters, a chunk extension or trailer outside a plain subset.
fn independent_reading(data: &[u8]) -> RefReading {
    let mut requests = Vec::new();
    let mut rest = data;
    let end = loop {
        match independent_request(rest) {
            Ok((req, used)) => {
                let stop = match &req.body {
                    RefBody::Done { .. } => None,
                    RefBody::Cut { .. } => Some(RefEnd::InBody),
                    RefBody::Unsure => Some(RefEnd::Unsure),
                };
                requests.push(req);
                if let Some(end) = stop {
                    break end;
                }
                rest = rest.get(used..).unwrap_or_default();
            }
            Err(end) => break end,
        }
    };
    RefReading { requests, end }
}

/// The request at the start of `rest` and the bytes it takes, or how the reading ends.
fn independent_request(rest: &[u8]) -> Result<(RefReq, usize), RefEnd> {
    let eof = RefEnd::Eof {
        leftover: rest.len(),
    };
    let malformed = RefEnd::Refused(Some(ParseError::Malformed));
    // Empty lines before the request line: at most eight, CRLF or LF.
    let mut skip = 0;
    let mut lines = 0;
    loop {
        match (rest.get(skip), rest.get(skip + 1)) {
            (None, _) | (Some(b'\r'), None) => return Err(eof),
            (Some(b'\n'), _) => skip += 1,
            (Some(b'\r'), Some(b'\n')) => skip += 2,
            (Some(b'\r'), Some(_)) => return Err(malformed),
            (Some(_), _) => break,
        }
        lines += 1;
        if lines > 8 {
            return Err(malformed);
        }
    }
    if rest.len() >= MAX_HEAD_BYTES {
        return Err(RefEnd::Unsure);
    }
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let len = match request.parse(rest.get(skip..).unwrap_or_default()) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(eof),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RefEnd::Refused(Some(ParseError::TooManyHeaders)))
        }
        Err(_) => return Err(malformed),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(malformed);
    };
    let version = if version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if Method::from_bytes(method.as_bytes()).is_err() {
        return Err(malformed);
    }
    let mut lengths = Vec::new();
    let mut encodings = Vec::new();
    let (mut close, mut keep_alive) = (false, false);
    for field in request.headers.iter() {
        if HeaderName::from_bytes(field.name.as_bytes()).is_err()
            || HeaderValue::from_bytes(field.value).is_err()
        {
            return Err(malformed);
        }
        if field.name.eq_ignore_ascii_case("content-length") {
            lengths.push(field.value);
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            encodings.push(field.value);
        } else if field.name.eq_ignore_ascii_case("connection") {
            for token in elements(field.value) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let framing = independent_framing(&lengths, &encodings, version)?;
    // The request target: origin-form, or `*` for OPTIONS; the others are not decided here.
    let uri_ok = Uri::from_maybe_shared(Bytes::copy_from_slice(target.as_bytes())).is_ok();
    if method == "CONNECT" {
        return Err(RefEnd::Unsure);
    } else if target == "*" {
        if method != "OPTIONS" {
            return Err(RefEnd::Refused(Some(ParseError::BadTarget)));
        }
    } else if target.starts_with('/') {
        if !uri_ok {
            return Err(RefEnd::Refused(Some(ParseError::BadTarget)));
        }
    } else {
        return Err(RefEnd::Unsure);
    }
    let head_len = skip + len;
    let after = rest.get(head_len..).unwrap_or_default();
    let (body, used) = match framing {
        RequestFraming::Empty => (
            RefBody::Done {
                data: Vec::new(),
                wire: 0,
            },
            0,
        ),
        RequestFraming::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= after.len() => (
                RefBody::Done {
                    data: after.get(..n).unwrap_or_default().to_vec(),
                    wire: n,
                },
                n,
            ),
            _ => (
                RefBody::Cut {
                    data: after.to_vec(),
                },
                after.len(),
            ),
        },
        RequestFraming::Chunked => {
            let body = strict_chunked(after);
            let used = match &body {
                RefBody::Done { wire, .. } => *wire,
                _ => after.len(),
            };
            (body, used)
        }
    };
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    let req = RefReq {
        head_len,
        method: method.as_bytes().to_vec(),
        target: target.as_bytes().to_vec(),
        version,
        framing,
        keep_alive,
        body,
    };
    Ok((req, head_len + used))
}

/// RFC 9112 section 6.3 on the `Content-Length` and `Transfer-Encoding` values of a head.
fn independent_framing(
    lengths: &[&[u8]],
    encodings: &[&[u8]],
    version: Version,
) -> Result<RequestFraming, RefEnd> {
    let refused = |e| Err(RefEnd::Refused(Some(e)));
    if !lengths.is_empty() && !encodings.is_empty() {
        return refused(ParseError::LengthAndEncoding);
    }
    if !encodings.is_empty() {
        if version != Version::HTTP_11 {
            return refused(ParseError::BadTransferEncoding);
        }
        let mut codings = Vec::new();
        for value in encodings {
            let before = codings.len();
            for coding in elements(value) {
                if coding.contains(&b';') {
                    return Err(RefEnd::Unsure);
                }
                codings.push(coding);
            }
            if codings.len() == before {
                return refused(ParseError::BadTransferEncoding);
            }
        }
        let chunked = codings
            .iter()
            .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
            .count();
        let last = codings
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        if chunked != 1 || !last || !codings.iter().all(|c| is_token(c)) {
            return refused(ParseError::BadTransferEncoding);
        }
        return Ok(RequestFraming::Chunked);
    }
    let mut length = None;
    for value in lengths {
        for element in value.split(|&b| b == b',') {
            let element = element.trim_ascii();
            let n = if all_digits(element) {
                std::str::from_utf8(element)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
            } else {
                None
            };
            match (n, length) {
                (None, _) => return refused(ParseError::BadContentLength),
                (Some(n), Some(m)) if n != m => return refused(ParseError::BadContentLength),
                (Some(n), _) => length = Some(n),
            }
        }
    }
    Ok(length.map_or(RequestFraming::Empty, RequestFraming::Length))
}

/// A chunked body at the start of `body`, in a strict subset of RFC 9112 section 7.1:
/// sizes of 1 to 16 hex digits, extensions `;name` or `;name=value` of tokens without
/// spaces, size lines of at most `MAX_CHUNK_LINE_BYTES`, at most 32 trailer fields
/// `name: value` (visible ASCII, spaces, tabs) in at most 4 KiB, CRLF everywhere. `Cut`
/// when the bytes end inside such a body, `Unsure` at anything else.
fn strict_chunked(body: &[u8]) -> RefBody {
    let mut pos = 0usize;
    let mut data = Vec::new();
    // Each step: `Some(Ok(()))` on, `Some(Err(()))` unsure, `None` the bytes ended.
    let crlf = |pos: &mut usize| -> Option<Result<(), ()>> {
        match (body.get(*pos), body.get(*pos + 1)) {
            (Some(b'\r'), Some(b'\n')) => {
                *pos += 2;
                Some(Ok(()))
            }
            (None, _) | (Some(b'\r'), None) => None,
            _ => Some(Err(())),
        }
    };
    let tokens = |pos: &mut usize| -> usize {
        let n = body
            .get(*pos..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| is_tchar(b))
            .count();
        *pos += n;
        n
    };
    macro_rules! step {
        ($e:expr) => {
            match $e {
                Some(Ok(())) => {}
                Some(Err(())) => return RefBody::Unsure,
                None => return RefBody::Cut { data },
            }
        };
    }
    loop {
        // The decoder refuses a size line longer than this, even one not ended yet.
        let line = body
            .get(pos..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b != b'\r' && b != b'\n')
            .count();
        if line > MAX_CHUNK_LINE_BYTES {
            return RefBody::Unsure;
        }
        let digits = body
            .get(pos..)
            .unwrap_or_default()
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let hex = body.get(pos..pos + digits).unwrap_or_default();
        pos += digits;
        if digits > 16 {
            return RefBody::Unsure;
        }
        let size = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        step!(match (body.get(pos), size) {
            (None, _) => None,
            (Some(_), None) => Some(Err(())),
            (Some(_), Some(_)) => Some(Ok(())),
        });
        let size = size.unwrap_or(0);
        while body.get(pos) == Some(&b';') {
            pos += 1;
            let name = tokens(&mut pos);
            if body.get(pos) == Some(&b'=') && name > 0 {
                pos += 1;
                step!(match (tokens(&mut pos), body.get(pos)) {
                    (_, None) => None,
                    (0, Some(_)) => Some(Err(())),
                    _ => Some(Ok(())),
                });
            } else {
                step!(match (name, body.get(pos)) {
                    (_, None) => None,
                    (0, Some(_)) => Some(Err(())),
                    _ => Some(Ok(())),
                });
            }
        }
        step!(crlf(&mut pos));
        if size == 0 {
            break;
        }
        let available = body.len() - pos;
        let Some(n) = usize::try_from(size).ok().filter(|&n| n <= available) else {
            data.extend_from_slice(body.get(pos..).unwrap_or_default());
            return RefBody::Cut { data };
        };
        data.extend_from_slice(body.get(pos..pos + n).unwrap_or_default());
        pos += n;
        step!(crlf(&mut pos));
    }
    // The trailer section, read within its first 4 KiB (the decoder refuses a section
    // longer than 16 KiB, even one not ended yet).
    match strict_trailers(
        body.get(pos..pos + 4096)
            .unwrap_or(body.get(pos..).unwrap_or_default()),
    ) {
        Some(Ok(len)) => RefBody::Done {
            data,
            wire: pos + len,
        },
        None if body.len() - pos <= 4096 => RefBody::Cut { data },
        _ => RefBody::Unsure,
    }
}

/// A trailer section of at most 32 fields `name: value` (visible ASCII, spaces, tabs) and
/// its final CRLF: `Some(Ok(length))`, `None` when `section` ends inside it, `Some(Err(()))`
/// at anything else.
fn strict_trailers(section: &[u8]) -> Option<Result<usize, ()>> {
    let mut pos = 0;
    for _ in 0..=32 {
        match (section.get(pos), section.get(pos + 1)) {
            (Some(b'\r'), Some(b'\n')) => return Some(Ok(pos + 2)),
            (None, _) | (Some(b'\r'), None) => return None,
            _ => {}
        }
        let name = section
            .get(pos..)?
            .iter()
            .take_while(|&&b| is_tchar(b))
            .count();
        pos += name;
        match section.get(pos)? {
            b':' if name > 0 => pos += 1,
            _ => return Some(Err(())),
        }
        pos += section
            .get(pos..)?
            .iter()
            .take_while(|&&b| b == b'\t' || (0x20..0x7f).contains(&b))
            .count();
        match (section.get(pos), section.get(pos + 1)) {
            (Some(b'\r'), Some(b'\n')) => pos += 2,
            (None, _) | (Some(b'\r'), None) => return None,
            _ => return Some(Err(())),
        }
    }
    Some(Err(()))
}

/// Where the independent reading is sure, the codec's whole-input reading agrees with it.
fn check_against_independent(data: &[u8], reading: &Reading) {
    let reference = independent_reading(data);
    for (i, r) in reference.requests.iter().enumerate() {
        let shown = format!(
            "{} {} ({:?}, {:?}, keep-alive {}, head of {} bytes)",
            String::from_utf8_lossy(&r.method),
            String::from_utf8_lossy(&r.target),
            r.version,
            r.framing,
            r.keep_alive,
            r.head_len
        );
        let Some(c) = reading.requests.get(i) else {
            panic!(
                "request {i} is {shown} by an independent reading; the codec ended before it \
                 ({:?})",
                reading.end
            );
        };
        let uri = Uri::from_maybe_shared(Bytes::copy_from_slice(&r.target)).ok();
        assert!(
            c.head_len == r.head_len
                && c.method.as_str().as_bytes() == r.method.as_slice()
                && Some(&c.uri) == uri.as_ref()
                && c.version == r.version
                && c.framing == r.framing
                && c.keep_alive == r.keep_alive,
            "request {i} is {shown} by an independent reading; the codec read {} {} ({:?}, \
             {:?}, keep-alive {}, head of {} bytes)",
            c.method,
            c.uri,
            c.version,
            c.framing,
            c.keep_alive,
            c.head_len
        );
        let agree = match (&r.body, &c.body) {
            (RefBody::Unsure, _) => true,
            (
                RefBody::Done { data, wire },
                Body::Done {
                    data: d, wire: w, ..
                },
            ) => data == d && wire == w,
            (RefBody::Cut { data }, Body::Cut { data: d }) => data == d,
            _ => false,
        };
        assert!(
            agree,
            "request {i} ({shown}): the independent reading finds the body {}, the codec {}",
            shown_ref_body(&r.body),
            shown_body(&c.body)
        );
    }
    let n = reference.requests.len();
    let ends = match &reference.end {
        RefEnd::Unsure => true,
        RefEnd::Eof { leftover } => {
            reading.requests.len() == n
                && reading.end
                    == End::Eof {
                        leftover: *leftover,
                    }
        }
        RefEnd::InBody => reading.requests.len() == n && reading.end == End::InBody,
        RefEnd::Refused(kind) => {
            reading.requests.len() == n
                && matches!(reading.end, End::Refused(e) if kind.is_none_or(|k| k == e))
        }
    };
    assert!(
        ends,
        "an independent reading finds {n} requests and ends {:?}; the codec finds {} and ends \
         {:?}",
        reference.end,
        reading.requests.len(),
        reading.end
    );
}

fn shown_ref_body(body: &RefBody) -> String {
    match body {
        RefBody::Done { data, wire } => {
            format!("complete ({} bytes, {wire} on the wire)", data.len())
        }
        RefBody::Cut { data } => format!("cut after {} bytes", data.len()),
        RefBody::Unsure => "unsure".to_string(),
    }
}

fn shown_body(body: &Body) -> String {
    match body {
        Body::Done { data, wire, .. } => {
            format!("complete ({} bytes, {wire} on the wire)", data.len())
        }
        Body::Cut { data } => format!("cut after {} bytes", data.len()),
        Body::Bad { error, data } => format!("refused ({error:?}) after {} bytes", data.len()),
    }
}

// ---------------------------------------------------------------------------------
// The connection driver
// ---------------------------------------------------------------------------------

/// What the service was handed, as it saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    version: Version,
    content_length: bool,
    transfer_encoding: bool,
    expect_continue: bool,
    /// The body as the service read it, or why it failed; `None` if the driver dropped
    /// the request before.
    body: Option<Result<Vec<u8>, String>>,
    /// The service returned its response.
    answered: bool,
}

/// The service: reads the body, waits first if the request is number `delay_at`, answers
/// 200 with [`ANSWER`], and records what it saw.
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    delay_at: Option<usize>,
}

fn record(seen: &Mutex<Vec<Seen>>, index: usize, update: impl FnOnce(&mut Seen)) {
    if let Ok(mut seen) = seen.lock() {
        if let Some(entry) = seen.get_mut(index) {
            update(entry);
        }
    }
}

impl Service for Recorder {
    fn call(
        &self,
        _conn: ConnInfo,
        request: Request<RequestBody>,
    ) -> impl Future<Output = Response<RespBody>> + Send {
        let headers = request.headers();
        let entry = Seen {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            content_length: headers.contains_key(CONTENT_LENGTH),
            transfer_encoding: headers.contains_key(TRANSFER_ENCODING),
            expect_continue: headers.get_all(EXPECT).iter().any(|v| {
                v.as_bytes()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue")
            }),
            body: None,
            answered: false,
        };
        let index = match self.seen.lock() {
            Ok(mut seen) => {
                seen.push(entry);
                seen.len() - 1
            }
            Err(_) => usize::MAX,
        };
        let delay = self.delay_at == Some(index);
        let seen = Arc::clone(&self.seen);
        async move {
            let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
                Ok(collected) => Ok(collected.to_bytes().to_vec()),
                Err(error) => Err(error.to_string()),
            };
            record(&seen, index, |s| s.body = Some(body));
            if delay {
                // The driver watches the connection meanwhile, as for a slow upstream.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            record(&seen, index, |s| s.answered = true);
            Response::new(RespBody::own(ANSWER))
        }
    }
}

/// The outcome of serving one connection.
struct Exchanged {
    seen: Vec<Seen>,
    /// Every byte the client received.
    output: Vec<u8>,
    /// What `serve_h1` handed on as HTTP/2, read to its end.
    http2: Option<Vec<u8>>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| match Metrics::new(&prometheus::Registry::new()) {
        Ok(metrics) => metrics,
        Err(error) => panic!("cannot register the proxy's metrics: {error}"),
    })
}

/// Serves `data` as one client connection through `serve_h1`, and checks what reached the
/// service and what the client got back (see the module doc).
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
    let delay_at = (rng.size(4) == 1).then(|| rng.size(4) - 1);
    let outcome = runtime.block_on(async {
        tokio::time::timeout(DEADLINE, exchange(data, capacity, max_write, delay_at, rng)).await
    });
    let Ok(exchanged) = outcome else {
        panic!(
            "the connection was still open {DEADLINE:?} (virtual) after the client sent \
             everything and closed its side (buffer {capacity}, writes up to {max_write}, \
             delay at request {delay_at:?})"
        );
    };
    check_served(data, &exchanged);
}

async fn exchange(
    data: &[u8],
    capacity: usize,
    max_write: usize,
    delay_at: Option<usize>,
    mut rng: super::Rng,
) -> Exchanged {
    let (client, server) = tokio::io::duplex(capacity);
    let recorder = Recorder {
        seen: Arc::default(),
        delay_at,
    };
    let (drain_tx, mut drain) = tokio::sync::watch::channel(());
    let conn = ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 40_000)),
        tls: false,
    };
    let settings = H1Settings::from(&Limits::default());
    let serving = async {
        let served = serve_h1(
            &recorder,
            metrics(),
            server,
            conn,
            tokio::time::Instant::now(),
            settings,
            &mut drain,
        )
        .await;
        match served {
            Served::Done => None,
            Served::Http2(mut io) => {
                let mut handed = Vec::new();
                let _ = io.read_to_end(&mut handed).await;
                Some(handed)
            }
        }
    };
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
        let mut output = Vec::new();
        let _ = from_server.read_to_end(&mut output).await;
        output
    };
    let ((), output, http2) = tokio::join!(send, receive, serving);
    drop(drain_tx);
    let seen = match recorder.seen.lock() {
        Ok(seen) => seen.clone(),
        Err(_) => panic!("the service panicked"),
    };
    Exchanged {
        seen,
        output,
        http2,
    }
}

/// The requests of `reading` the driver hands to the service, in order: it refuses a
/// request that breaks the `Host` rules (RFC 9112 section 3.2: two `Host` fields, or none
/// on HTTP/1.1 without an absolute-form target) and closes, and it closes after a request
/// without keep-alive or whose body is cut or refused.
fn passed_on(reading: &Reading) -> Vec<&Req> {
    let mut passed = Vec::new();
    for req in &reading.requests {
        let hosts = req.fields.iter().filter(|(name, _)| name == HOST).count();
        let no_host =
            hosts == 0 && req.uri.authority().is_none() && req.version == Version::HTTP_11;
        if hosts > 1 || no_host {
            break;
        }
        passed.push(req);
        if !req.keep_alive || !matches!(req.body, Body::Done { .. }) {
            break;
        }
    }
    passed
}

fn check_served(data: &[u8], exchanged: &Exchanged) {
    let seen = &exchanged.seen;
    let shown = |i: usize, s: &Seen| format!("request {i} ({} {})", s.method, s.uri);
    for (i, s) in seen.iter().enumerate() {
        assert!(
            !(s.content_length && s.transfer_encoding),
            "{}: reached the service with both Content-Length and Transfer-Encoding",
            shown(i, s)
        );
    }
    check_output(&exchanged.output, seen);

    if data.starts_with(H2_PREFACE) {
        assert!(
            seen.is_empty() && exchanged.output.is_empty(),
            "a connection that starts with the HTTP/2 preface was served as HTTP/1.1"
        );
        assert!(
            exchanged.http2.as_deref() == Some(data),
            "the HTTP/2 connection was handed on with {:?} bytes; the client sent {}",
            exchanged.http2.as_ref().map(Vec::len),
            data.len()
        );
        return;
    }
    assert!(
        exchanged.http2.is_none(),
        "a connection without the HTTP/2 preface was handed on as HTTP/2"
    );
    if H2_PREFACE.starts_with(data) {
        // The driver waits for the rest of a preface that never comes.
        assert!(
            seen.is_empty() && exchanged.output.is_empty(),
            "a connection holding only the start of the HTTP/2 preface got an answer"
        );
        return;
    }

    let reading = read_codec(data, || usize::MAX, || usize::MAX);
    check_against_independent(data, &reading);
    let expected = passed_on(&reading);
    for (i, s) in seen.iter().enumerate() {
        let Some(req) = expected.get(i) else {
            panic!(
                "{}: the service got it, but a whole-input reading passes on only {} \
                 requests (the reading ends {:?})",
                shown(i, s),
                expected.len(),
                reading.end
            );
        };
        assert!(
            s.method == req.method && s.uri == req.uri && s.version == req.version,
            "{}: the whole-input reading has {} {} ({:?}) at that position",
            shown(i, s),
            req.method,
            req.uri,
            req.version
        );
        let body_agrees = match (&s.body, &req.body) {
            (Some(Ok(got)), Body::Done { data, .. }) => got == data,
            (Some(Err(_)), Body::Cut { .. } | Body::Bad { .. }) => true,
            (None, _) => !s.answered,
            _ => false,
        };
        assert!(
            body_agrees,
            "{}: the service read the body {:?}; the whole-input reading finds it {}",
            shown(i, s),
            s.body.as_ref().map(|b| b.as_ref().map(Vec::len)),
            shown_body(&req.body)
        );
    }
    if let Some(i) = seen.iter().position(|s| !s.answered) {
        assert!(
            i + 1 == seen.len(),
            "{} was dropped unanswered, yet the driver went on to the next request",
            shown(i, &seen[i])
        );
    } else {
        assert!(
            seen.len() == expected.len(),
            "the service got and answered {} requests; a whole-input reading passes on {}: \
             {:?}",
            seen.len(),
            expected.len(),
            expected
                .iter()
                .map(|r| format!("{} {}", r.method, r.uri))
                .collect::<Vec<_>>()
        );
    }
}

/// The client's bytes are HTTP/1.1 responses, each complete: `100 Continue` only before
/// the answer to a request with `Expect: 100-continue`, one `200` with [`ANSWER`] (its
/// head only, for HEAD) per request the service answered, Rampart's refusals otherwise.
fn check_output(output: &[u8], seen: &[Seen]) {
    if output.is_empty() {
        return;
    }
    assert!(
        output.starts_with(b"HTTP/1.1 "),
        "the output starts {:?}",
        String::from_utf8_lossy(output.get(..40).unwrap_or(output))
    );
    let mut rest = output;
    let mut answers = 0usize;
    let mut continued = false;
    while !rest.is_empty() {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut slots);
        let len = match response.parse(rest) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "after {answers} answers the output does not parse as a response ({other:?}): \
                 {:?}",
                String::from_utf8_lossy(rest.get(..80).unwrap_or(rest))
            ),
        };
        let code = response.code.unwrap_or(0);
        assert_eq!(response.version, Some(1), "a response that is not HTTP/1.1");
        let mut length = None;
        for header in response.headers.iter() {
            assert!(
                !header.name.eq_ignore_ascii_case("transfer-encoding"),
                "a {code} response is chunked though its body's length is known"
            );
            if header.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            }
        }
        rest = rest.get(len..).unwrap_or_default();
        if code == 100 {
            assert!(!continued, "two 100 Continue in a row");
            continued = true;
            continue;
        }
        let body_len = if code == 200 {
            let Some(s) = seen.get(answers) else {
                panic!("200 number {answers}, but the service answered only {answers} requests");
            };
            assert!(
                !continued || s.expect_continue,
                "100 Continue before the answer to {} {}, which did not ask for it",
                s.method,
                s.uri
            );
            answers += 1;
            if s.method == Method::HEAD {
                0
            } else {
                assert_eq!(length, Some(ANSWER.len()), "a 200 with the wrong length");
                ANSWER.len()
            }
        } else {
            assert!(
                code == 400 || code == 431,
                "a {code} response, neither the service's answer nor a refusal"
            );
            // A refused HEAD request gets the head only.
            if rest.is_empty() || rest.starts_with(b"HTTP/1.1 ") {
                0
            } else {
                length.unwrap_or(0)
            }
        };
        let Some(body) = rest.get(..body_len) else {
            panic!(
                "a {code} response of {body_len} bytes is cut after {}",
                rest.len()
            );
        };
        if code == 200 && body_len > 0 {
            assert_eq!(body, ANSWER.as_bytes(), "a 200 with another body");
        }
        rest = rest.get(body_len..).unwrap_or_default();
        continued = false;
    }
    let answered = seen.iter().filter(|s| s.answered).count();
    assert_eq!(
        answers, answered,
        "{answers} 200 responses for {answered} requests the service answered"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SIZED: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
    const CHUNKED: &[u8] = b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n";
    const CL_TE: &[u8] = b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    fn pipeline() -> Vec<u8> {
        [SIZED, CHUNKED, CL_TE].concat()
    }

    fn whole(data: &[u8]) -> Reading {
        read_codec(data, || usize::MAX, || usize::MAX)
    }

    fn seen(method: Method, uri: &str, body: &[u8]) -> Seen {
        Seen {
            method,
            uri: Uri::from_maybe_shared(Bytes::copy_from_slice(uri.as_bytes())).unwrap(),
            version: Version::HTTP_11,
            content_length: true,
            transfer_encoding: false,
            expect_continue: false,
            body: Some(Ok(body.to_vec())),
            answered: true,
        }
    }

    fn exchanged(seen: Vec<Seen>) -> Exchanged {
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
        Exchanged {
            output: answer.repeat(seen.len()).into_bytes(),
            seen,
            http2: None,
        }
    }

    #[test]
    fn the_codec_reads_each_request_and_refuses_the_one_with_both_lengths() {
        let reading = whole(&pipeline());
        let found: Vec<(String, RequestFraming)> = reading
            .requests
            .iter()
            .map(|r| (r.uri.to_string(), r.framing))
            .collect();
        assert_eq!(
            found,
            [
                ("/a".to_string(), RequestFraming::Length(5)),
                ("/b".to_string(), RequestFraming::Chunked)
            ]
        );
        assert_eq!(reading.end, End::Refused(ParseError::LengthAndEncoding));
        let Body::Done { data, trailers, .. } = &reading.requests[1].body else {
            panic!("{:?}", reading.requests[1].body);
        };
        assert_eq!((data.as_slice(), trailers.len()), (&b"abc"[..], 1));
    }

    #[test]
    fn the_independent_reading_finds_the_same_and_stops_where_it_is_unsure() {
        let reference = independent_reading(&pipeline());
        assert_eq!(reference.requests.len(), 2);
        assert_eq!(
            reference.end,
            RefEnd::Refused(Some(ParseError::LengthAndEncoding))
        );
        let connect = b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n";
        assert_eq!(independent_reading(connect).end, RefEnd::Unsure);
        let quoted = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
            1;a=\"b\"\r\nx\r\n0\r\n\r\n";
        assert_eq!(
            independent_reading(quoted).requests[0].body,
            RefBody::Unsure
        );
        let cut = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab";
        assert_eq!(
            independent_reading(cut).requests[0].body,
            RefBody::Cut {
                data: b"ab".to_vec()
            }
        );
    }

    #[test]
    fn a_pipeline_passes_both_targets() {
        split(&pipeline());
        serve(&pipeline());
        serve(&[SIZED, CHUNKED, b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"].concat());
    }

    #[test]
    fn the_loose_chunked_reading_ends_where_the_body_ends() {
        let body = b"3;x=\"y z\"\r\nabc\r\n0\r\nT: 1\r\n\r\nGET";
        assert_eq!(loose_chunked(body), Some((b"abc".to_vec(), body.len() - 3)));
    }

    #[test]
    #[should_panic(expected = "the whole-input reading has POST /b")]
    fn a_request_other_than_the_bytes_hold_fails() {
        let data = pipeline();
        let served = vec![
            seen(Method::POST, "/a", b"hello"),
            seen(Method::POST, "/c", b""),
        ];
        check_served(&data, &exchanged(served));
    }

    #[test]
    #[should_panic(expected = "passes on only 2 requests")]
    fn a_request_after_a_refusal_fails() {
        let data = pipeline();
        let served = vec![
            seen(Method::POST, "/a", b"hello"),
            seen(Method::POST, "/b", b"abc"),
            seen(Method::POST, "/c", b""),
        ];
        check_served(&data, &exchanged(served));
    }

    #[test]
    #[should_panic(expected = "the driver went on to the next request")]
    fn serving_past_a_dropped_request_fails() {
        let data = pipeline();
        let mut first = seen(Method::POST, "/a", b"hello");
        first.answered = false;
        let mut ex = exchanged(vec![first, seen(Method::POST, "/b", b"abc")]);
        ex.output = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_vec();
        check_served(&data, &ex);
    }

    #[test]
    #[should_panic(expected = "does not parse as a response")]
    fn output_that_is_not_a_response_fails() {
        check_output(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\nHTTP/1.1 2",
            &[seen(Method::GET, "/", b"")],
        );
    }
}
