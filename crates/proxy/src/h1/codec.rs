//! The HTTP/1.1 server codec: request heads in, response heads out.
//!
//! Pure byte transformations with no I/O, so the connection driver owns every read,
//! write and timeout, and this file can be tested (and fuzzed) on plain buffers.
//!
//! * [`parse_request`] turns the front of a read buffer into a [`RequestHead`] with
//!   RFC 9112 section 6 framing decided ([`RequestFraming`]), refusing anything that a
//!   front-end/back-end pair could disagree on (request smuggling) with a [`ParseError`]
//!   that carries the status and metric label to answer with.
//! * [`ChunkedDecoder`] reads a chunked request body (RFC 9112 section 7.1) strictly:
//!   CRLF everywhere, bounded size lines and trailer sections.
//! * [`response_framing`], [`encode_response_head`], [`encode_chunk_size`],
//!   and [`encode_last_chunk`] write the response side.
//!
//! Header values and request targets are never copied: they are slices of the head's
//! bytes, split off the read buffer once.

use std::cell::RefCell;
use std::fmt;
use std::mem::MaybeUninit;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// Most header fields in a request head (more: HeaderTooLarge-style refusal, see
/// [`ParseError::TooManyHeaders`]). Bounds the stack array httparse fills.
pub const MAX_HEADERS: usize = 256;

/// Fields a proxy typically adds to a request before forwarding it; the parsed map is
/// made with room for them.
const PROXY_FIELDS: usize = 8;

/// Largest request head in bytes (request line + fields + final CRLF), so a client
/// cannot make the proxy buffer an unbounded head.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most empty lines tolerated before a request line (RFC 9112 section 2.2 lets a server
/// skip "at least one"); more is garbage, not a robustness allowance.
const MAX_LEADING_EMPTY_LINES: usize = 8;

/// Longest chunk size line (size + extensions, without the CRLF).
pub const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// Largest trailer section of a chunked body (fields and the final CRLF).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Most fields in a trailer section.
pub const MAX_TRAILERS: usize = 64;

/// The largest second httpdate can format (9999-12-31T23:59:59Z); later clocks clamp.
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

// ---------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------

/// How a request's body is delimited (RFC 9112 section 6.3), so the driver knows how
/// many bytes after the head belong to this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body: neither Content-Length nor Transfer-Encoding (requests are never
    /// close-delimited).
    Empty,
    /// Exactly this many body bytes follow (Content-Length; 0 is kept as `Length(0)`).
    Length(u64),
    /// A chunked body follows; decode it with [`ChunkedDecoder`].
    Chunked,
}

/// A parsed request head: what the proxy needs to route, forward and frame a request.
#[derive(Debug)]
pub struct RequestHead {
    /// The request method.
    pub method: Method,
    /// The request target (origin-, absolute-, authority- or asterisk-form).
    pub uri: Uri,
    /// `HTTP_10` or `HTTP_11` only.
    pub version: Version,
    /// The fields as received (names lowercased), Content-Length / Transfer-Encoding kept.
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: RequestFraming,
    /// The client wants the connection kept open after this exchange:
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` (case-insensitive) on an HTTP/1.1 request.
    pub expect_continue: bool,
}

/// Why a request head was refused. [`ParseError::status`] is what the client gets,
/// [`ParseError::reason`] the label for the `rampart_malformed_requests_total{reason}`
/// counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// httparse refused the bytes (bad token, bad version, bare CR, obs-fold, NUL, ...).
    /// 400 "bad_request".
    Malformed,
    /// The head is longer than [`MAX_HEAD_BYTES`] (complete or not yet complete).
    /// 431 "header_too_large".
    TooLarge,
    /// More than [`MAX_HEADERS`] fields. 431 "header_too_large".
    TooManyHeaders,
    /// Both Content-Length and Transfer-Encoding.
    /// 400 "content_length_and_transfer_encoding".
    LengthAndEncoding,
    /// Content-Length not 1*DIGIT, overflowing u64, or several differing values.
    /// 400 "bad_content_length".
    BadContentLength,
    /// Transfer-Encoding whose final coding is not `chunked`, `chunked` applied twice,
    /// or any Transfer-Encoding on HTTP/1.0. 400 "bad_transfer_encoding".
    BadTransferEncoding,
    /// The request target does not parse as a URI, or its form does not fit the method.
    /// 400 "bad_request".
    BadTarget,
}

impl ParseError {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ParseError::TooLarge | ParseError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            ParseError::Malformed
            | ParseError::LengthAndEncoding
            | ParseError::BadContentLength
            | ParseError::BadTransferEncoding
            | ParseError::BadTarget => StatusCode::BAD_REQUEST,
        }
    }

    /// The `reason` label of `rampart_malformed_requests_total`: the framing errors share
    /// `bad_request`, as the metric documents them.
    pub fn metric_label(self) -> &'static str {
        match self {
            ParseError::TooLarge | ParseError::TooManyHeaders => "header_too_large",
            ParseError::LengthAndEncoding => "content_length_and_transfer_encoding",
            ParseError::Malformed
            | ParseError::BadTarget
            | ParseError::BadContentLength
            | ParseError::BadTransferEncoding => "bad_request",
        }
    }

    /// The refusal's own name, finer than its metric label (for logs).
    pub fn reason(self) -> &'static str {
        match self {
            ParseError::Malformed | ParseError::BadTarget => "bad_request",
            ParseError::TooLarge | ParseError::TooManyHeaders => "header_too_large",
            ParseError::LengthAndEncoding => "content_length_and_transfer_encoding",
            ParseError::BadContentLength => "bad_content_length",
            ParseError::BadTransferEncoding => "bad_transfer_encoding",
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            ParseError::Malformed => "malformed request head",
            ParseError::TooLarge => "request head too large",
            ParseError::TooManyHeaders => "too many header fields",
            ParseError::LengthAndEncoding => "both Content-Length and Transfer-Encoding",
            ParseError::BadContentLength => "invalid Content-Length",
            ParseError::BadTransferEncoding => "invalid Transfer-Encoding",
            ParseError::BadTarget => "invalid request target",
        };
        f.write_str(what)
    }
}

impl std::error::Error for ParseError {}

/// Parses one request head from the start of `buf`.
///
/// * `Ok(None)`: incomplete, read more; `buf` is untouched. (Once `buf` holds
///   [`MAX_HEAD_BYTES`] or more without a complete head, the head is necessarily too
///   long and this is `Err(TooLarge)` instead.)
/// * `Ok(Some(head))`: the head (with any leading empty lines) was split off the front
///   of `buf`, which now starts at the body or the next request.
/// * `Err(_)`: refuse the request with `status()`; the connection cannot be reused.
///   `buf` may have lost the head's bytes.
///
/// Up to 8 empty lines (CRLF or LF) before the request line are skipped (RFC 9112
/// section 2.2); more is `Malformed`. Field lines may end in bare LF, as httparse
/// allows (RFC 9112 section 2.2 permits it in heads); chunked bodies require CRLF.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, ParseError> {
    let Some(skip) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    match find_head_end(buf, skip) {
        Some(end) => {
            let head = buf.split_to(end).freeze();
            parse_head(&head, skip).map(Some)
        }
        None if buf.len() >= MAX_HEAD_BYTES => Err(ParseError::TooLarge),
        None => check_partial(buf.get(skip..).unwrap_or_default()),
    }
}

/// Counts the bytes of leading empty lines; `None` when `buf` ends inside them.
fn skip_empty_lines(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut pos = 0;
    let mut lines = 0;
    loop {
        match buf.get(pos) {
            Some(b'\n') => pos += 1,
            Some(b'\r') => match buf.get(pos + 1) {
                Some(b'\n') => pos += 2,
                Some(_) => return Err(ParseError::Malformed),
                None => return Ok(None),
            },
            Some(_) => return Ok(Some(pos)),
            None => return Ok(None),
        }
        lines += 1;
        if lines > MAX_LEADING_EMPTY_LINES {
            return Err(ParseError::Malformed);
        }
    }
}

/// The length of the head (through its empty line) if it ends within the first
/// [`MAX_HEAD_BYTES`] of `buf`. The head ends at the first line feed followed by an
/// empty line (LF or CRLF): field values cannot hold CR or LF, so on any head httparse
/// accepts this is exactly where httparse stops (and it is checked again below).
fn find_head_end(buf: &[u8], start: usize) -> Option<usize> {
    let window = buf.get(..buf.len().min(MAX_HEAD_BYTES))?;
    let mut from = start;
    loop {
        let i = from + find_lf(window.get(from..)?)?;
        match window.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') => match window.get(i + 2) {
                Some(b'\n') => return Some(i + 3),
                Some(_) => {}
                None => return None,
            },
            Some(_) => {}
            None => return None,
        }
        from = i + 1;
    }
}

/// Position of the first `\n`, eight bytes at a time (std has no memchr for us).
fn find_lf(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in chunks.by_ref() {
        if let Ok(word) = <[u8; 8]>::try_from(chunk) {
            let x = u64::from_le_bytes(word) ^ LF;
            if (x.wrapping_sub(LO) & !x & HI) != 0 {
                return chunk.iter().position(|&b| b == b'\n').map(|p| base + p);
            }
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| base + p)
}

/// An incomplete head: fail early on bytes httparse already refuses (so garbage, such as
/// a TLS hello on a plaintext port, is not buffered up to 64 KiB), else read more.
fn check_partial(src: &[u8]) -> Result<Option<RequestHead>, ParseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(src, &mut slots) {
        Ok(httparse::Status::Partial) => Ok(None),
        // A head httparse calls complete but find_head_end did not: never expected;
        // refuse rather than guess where it ends.
        Ok(httparse::Status::Complete(_)) => Err(ParseError::Malformed),
        Err(e) => Err(map_httparse_error(e)),
    }
}

fn map_httparse_error(e: httparse::Error) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        _ => ParseError::Malformed,
    }
}

/// Parses a complete head (`head[skip..]` starts at the request line).
fn parse_head(head: &Bytes, skip: usize) -> Result<RequestHead, ParseError> {
    let src = head.get(skip..).ok_or(ParseError::Malformed)?;
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(src, &mut slots) {
        Ok(httparse::Status::Complete(n)) if skip + n == head.len() => {}
        Ok(_) => return Err(ParseError::Malformed),
        Err(e) => return Err(map_httparse_error(e)),
    }

    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(ParseError::Malformed),
    };
    let method = req.method.ok_or(ParseError::Malformed)?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| ParseError::Malformed)?;
    let target = req.path.ok_or(ParseError::Malformed)?;

    // Room for the fields a proxy adds (forwarding, request id, backend) without the map
    // growing and rehashing on the request path.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + PROXY_FIELDS);
    let mut facts = FieldFacts::default();
    for field in req.headers.iter() {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ParseError::Malformed)?;
        facts.observe(&name, field.value);
        let value = HeaderValue::from_maybe_shared(shared_slice(head, field.value)?)
            .map_err(|_| ParseError::Malformed)?;
        headers.append(name, value);
    }

    // Framing before the target, so a request carrying both Content-Length and
    // Transfer-Encoding is always counted as such.
    let framing = facts.framing(version)?;
    let uri = parse_target(&method, head, target.as_bytes())?;
    let keep_alive = if version == Version::HTTP_11 {
        !facts.close
    } else {
        facts.keep_alive && !facts.close
    };
    Ok(RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue: version == Version::HTTP_11 && facts.expect_continue,
    })
}

/// `part` (a slice of `head`'s memory, as httparse returns) as a shared `Bytes`, without
/// copying. Checked rather than `slice_ref`, which panics on a foreign slice.
fn shared_slice(head: &Bytes, part: &[u8]) -> Result<Bytes, ParseError> {
    if part.is_empty() {
        return Ok(Bytes::new());
    }
    let offset = (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
    match offset.checked_add(part.len()) {
        Some(end) if offset < head.len() && end <= head.len() => Ok(head.slice(offset..end)),
        _ => Err(ParseError::Malformed),
    }
}

/// Checks the request-target's form against the method (RFC 9112 section 3.2) and
/// parses it as a `Uri` sharing the head's bytes.
fn parse_target(method: &Method, head: &Bytes, target: &[u8]) -> Result<Uri, ParseError> {
    let bytes = shared_slice(head, target).map_err(|_| ParseError::BadTarget)?;
    let uri = Uri::from_maybe_shared(bytes).map_err(|_| ParseError::BadTarget)?;
    let ok = if target == b"*" {
        // asterisk-form: OPTIONS only.
        method == Method::OPTIONS
    } else if *method == Method::CONNECT {
        // authority-form, and nothing else, for CONNECT: host ":" port, no userinfo.
        uri.scheme().is_none()
            && uri.path_and_query().is_none()
            && uri.port().is_some()
            && !target.contains(&b'@')
    } else if target.first() == Some(&b'/') {
        // origin-form.
        true
    } else {
        // absolute-form, http(s) only (the http crate requires a non-empty authority).
        matches!(uri.scheme_str(), Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
            && uri.authority().is_some()
    };
    if ok {
        Ok(uri)
    } else {
        Err(ParseError::BadTarget)
    }
}

/// What the framing-relevant fields said, gathered in the one pass over the fields.
#[derive(Default)]
struct FieldFacts {
    cl_seen: bool,
    cl_bad: bool,
    cl_value: Option<u64>,
    te_seen: bool,
    te_bad: bool,
    te_chunked: u32,
    te_last_chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl FieldFacts {
    fn observe(&mut self, name: &HeaderName, value: &[u8]) {
        if name == header::CONTENT_LENGTH {
            self.content_length(value);
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding(value);
        } else if name == header::CONNECTION {
            for token in list_elements(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        } else if name == header::EXPECT && trim_ows(value).eq_ignore_ascii_case(b"100-continue") {
            self.expect_continue = true;
        }
    }

    fn content_length(&mut self, value: &[u8]) {
        self.cl_seen = true;
        if !accumulate_content_length(value, &mut self.cl_value) {
            self.cl_bad = true;
        }
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        self.te_seen = true;
        let mut any = false;
        for element in list_elements(value) {
            any = true;
            let (name, params) = match element.iter().position(|&b| b == b';') {
                Some(i) => (
                    trim_ows(element.get(..i).unwrap_or_default()),
                    element.get(i..),
                ),
                None => (element, None),
            };
            if !is_token(name) {
                self.te_bad = true;
            }
            if name.eq_ignore_ascii_case(b"chunked") {
                // chunked takes no parameters (RFC 9112 section 7.1).
                if params.is_some() {
                    self.te_bad = true;
                }
                self.te_chunked = self.te_chunked.saturating_add(1);
                self.te_last_chunked = true;
            } else {
                self.te_last_chunked = false;
            }
        }
        // A Transfer-Encoding field with no coding at all names no framing.
        if !any {
            self.te_bad = true;
        }
    }

    /// RFC 9112 section 6.3, with the order of checks fixed so a request carrying both
    /// Content-Length and Transfer-Encoding always gets the same reason.
    fn framing(&self, version: Version) -> Result<RequestFraming, ParseError> {
        if self.te_seen && self.cl_seen {
            return Err(ParseError::LengthAndEncoding);
        }
        if self.te_seen {
            if version != Version::HTTP_11
                || self.te_bad
                || self.te_chunked != 1
                || !self.te_last_chunked
            {
                return Err(ParseError::BadTransferEncoding);
            }
            return Ok(RequestFraming::Chunked);
        }
        if self.cl_seen {
            return match (self.cl_bad, self.cl_value) {
                (false, Some(n)) => Ok(RequestFraming::Length(n)),
                _ => Err(ParseError::BadContentLength),
            };
        }
        Ok(RequestFraming::Empty)
    }
}

/// Folds one Content-Length field value (possibly a list) into `acc`: false if an element
/// is not 1*DIGIT, overflows u64, or differs from what `acc` already holds. Used for
/// requests here and for responses by the client.
pub(crate) fn accumulate_content_length(value: &[u8], acc: &mut Option<u64>) -> bool {
    for element in value.split(|&b| b == b',') {
        let Some(n) = parse_decimal(trim_ows(element)) else {
            return false;
        };
        match *acc {
            None => *acc = Some(n),
            Some(m) if m == n => {}
            Some(_) => return false,
        }
    }
    true
}

/// 1*DIGIT as a u64; `None` when empty, non-digit, or overflowing.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The non-empty, OWS-trimmed elements of a comma-separated field value
/// (RFC 9110 section 5.6.1).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// tchar (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

// ---------------------------------------------------------------------------------
// Chunked request bodies
// ---------------------------------------------------------------------------------

/// One step of decoding a chunked body.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// Body bytes (split off the read buffer without copying; never empty).
    Data(Bytes),
    /// The last chunk and trailer section were read; carries the trailer fields (often
    /// empty), without the framing fields Content-Length, Transfer-Encoding and Host.
    End(HeaderMap),
}

/// Why a chunked body is malformed (the client's fault: 400, reason "bad_body").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk size is missing or not hexadecimal.
    BadSize,
    /// The chunk size has more than 16 hex digits.
    SizeOverflow,
    /// A chunk extension is not `;name[=token|quoted-string]`, or holds a control byte.
    BadExtension,
    /// The size line (with extensions) is longer than [`MAX_CHUNK_LINE_BYTES`].
    ExtensionTooLong,
    /// A line ends in something other than CRLF (bare LF included), or chunk data is not
    /// followed by CRLF.
    MissingCrlf,
    /// The trailer section does not parse as header fields.
    BadTrailers,
    /// The trailer section is longer than [`MAX_TRAILER_BYTES`] or has more than
    /// [`MAX_TRAILERS`] fields.
    TrailersTooLarge,
}

impl ChunkError {
    /// The status the client is answered with (always 400).
    pub fn status(self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// The `reason` label for the malformed-request counter (always "bad_body").
    pub fn reason(self) -> &'static str {
        "bad_body"
    }
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            ChunkError::BadSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size too large",
            ChunkError::BadExtension => "invalid chunk extension",
            ChunkError::ExtensionTooLong => "chunk size line too long",
            ChunkError::MissingCrlf => "chunk line not terminated by CRLF",
            ChunkError::BadTrailers => "invalid trailer section",
            ChunkError::TrailersTooLarge => "trailer section too large",
        };
        f.write_str(what)
    }
}

impl std::error::Error for ChunkError {}

/// Where in a chunk size line the decoder is (RFC 9112 section 7.1.1 grammar:
/// `chunk-size *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ) CRLF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinePhase {
    Digits,
    AfterSize,
    ExtNameStart,
    ExtName,
    AfterExtName,
    ExtValStart,
    ExtValToken,
    Quoted,
    QuotedEscape,
    AfterExtVal,
    Lf,
}

#[derive(Debug, Clone, Copy)]
struct SizeLine {
    phase: LinePhase,
    size: u64,
    digits: u8,
    len: usize,
}

impl SizeLine {
    const fn new() -> SizeLine {
        SizeLine {
            phase: LinePhase::Digits,
            size: 0,
            digits: 0,
            len: 0,
        }
    }

    /// Consumes bytes of the line: `(used, true)` once its CRLF was read.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), ChunkError> {
        for (i, &b) in bytes.iter().enumerate() {
            if self.step(b)? {
                return Ok((i + 1, true));
            }
        }
        Ok((bytes.len(), false))
    }

    /// One byte; true when it was the LF ending the line.
    fn step(&mut self, b: u8) -> Result<bool, ChunkError> {
        use LinePhase as P;
        if self.phase == P::Lf {
            return if b == b'\n' {
                Ok(true)
            } else {
                Err(ChunkError::MissingCrlf)
            };
        }
        let quoted = matches!(self.phase, P::Quoted | P::QuotedEscape);
        if !quoted {
            if b == b'\r' {
                self.phase = match self.phase {
                    P::Digits if self.digits == 0 => return Err(ChunkError::BadSize),
                    P::ExtNameStart | P::ExtValStart => return Err(ChunkError::BadExtension),
                    _ => P::Lf,
                };
                return Ok(false);
            }
            if b == b'\n' {
                return Err(ChunkError::MissingCrlf);
            }
        }
        self.len += 1;
        if self.len > MAX_CHUNK_LINE_BYTES {
            return Err(ChunkError::ExtensionTooLong);
        }
        self.phase = match self.phase {
            P::Digits => {
                if let Some(v) = hex_value(b) {
                    self.digits += 1;
                    if self.digits > 16 {
                        return Err(ChunkError::SizeOverflow);
                    }
                    self.size = (self.size << 4) | u64::from(v);
                    P::Digits
                } else if self.digits == 0 {
                    return Err(ChunkError::BadSize);
                } else if is_ows(b) {
                    P::AfterSize
                } else if b == b';' {
                    P::ExtNameStart
                } else {
                    return Err(ChunkError::BadSize);
                }
            }
            P::AfterSize => match b {
                b' ' | b'\t' => P::AfterSize,
                b';' => P::ExtNameStart,
                _ => return Err(ChunkError::BadSize),
            },
            P::ExtNameStart => match b {
                b' ' | b'\t' => P::ExtNameStart,
                _ if is_tchar(b) => P::ExtName,
                _ => return Err(ChunkError::BadExtension),
            },
            P::ExtName => match b {
                _ if is_tchar(b) => P::ExtName,
                b' ' | b'\t' => P::AfterExtName,
                b'=' => P::ExtValStart,
                b';' => P::ExtNameStart,
                _ => return Err(ChunkError::BadExtension),
            },
            P::AfterExtName => match b {
                b' ' | b'\t' => P::AfterExtName,
                b'=' => P::ExtValStart,
                b';' => P::ExtNameStart,
                _ => return Err(ChunkError::BadExtension),
            },
            P::ExtValStart => match b {
                b' ' | b'\t' => P::ExtValStart,
                b'"' => P::Quoted,
                _ if is_tchar(b) => P::ExtValToken,
                _ => return Err(ChunkError::BadExtension),
            },
            P::ExtValToken => match b {
                _ if is_tchar(b) => P::ExtValToken,
                b' ' | b'\t' => P::AfterExtVal,
                b';' => P::ExtNameStart,
                _ => return Err(ChunkError::BadExtension),
            },
            P::Quoted => match b {
                b'"' => P::AfterExtVal,
                b'\\' => P::QuotedEscape,
                // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
                b'\t' | b' '..=b'~' | 0x80..=0xff => P::Quoted,
                _ => return Err(ChunkError::BadExtension),
            },
            P::QuotedEscape => match b {
                // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                b'\t' | b' '..=b'~' | 0x80..=0xff => P::Quoted,
                _ => return Err(ChunkError::BadExtension),
            },
            P::AfterExtVal => match b {
                b' ' | b'\t' => P::AfterExtVal,
                b';' => P::ExtNameStart,
                _ => return Err(ChunkError::BadExtension),
            },
            // Handled above.
            P::Lf => return Err(ChunkError::MissingCrlf),
        };
        Ok(false)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug)]
enum DecodeState {
    /// Reading a size line (consumed byte by byte, so a slow client costs O(n)).
    Size(SizeLine),
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Chunk data ended; its CR is next.
    DataCr,
    /// Chunk data ended; its LF is next.
    DataLf,
    /// Looking for the end of the trailer section, which stays in the buffer until it is
    /// complete: `scanned` bytes were searched, the current line starts at `line_start`.
    Trailers { scanned: usize, line_start: usize },
    /// End was returned.
    Done,
    /// An error was returned; it is returned again.
    Failed(ChunkError),
}

/// Decodes a chunked request body (RFC 9112 section 7.1) incrementally from a
/// connection's read buffer, so the proxy can stream a chunked upload to the upstream
/// without ever buffering it whole, and refuse framing a back end could read differently.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: DecodeState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: DecodeState::Size(SizeLine::new()),
        }
    }

    /// Consumes what it can from the front of `buf`.
    ///
    /// * `Ok(None)`: needs more bytes (everything usable was consumed, including any
    ///   partial size line; an incomplete trailer section stays in `buf`).
    /// * `Ok(Some(Data))`: up to `max` body bytes (a `max` of 0 is taken as 1, so each
    ///   call makes progress); may be part of a chunk.
    /// * `Ok(Some(End))`: the body is complete; `buf` starts after it. Further calls
    ///   return `Ok(None)` and consume nothing (the bytes belong to the next request).
    /// * `Err(_)`: the body is malformed; every later call returns the same error.
    pub fn decode(&mut self, buf: &mut BytesMut, max: usize) -> Result<Option<Chunk>, ChunkError> {
        let result = self.step(buf, max);
        if let Err(e) = result {
            self.state = DecodeState::Failed(e);
        }
        result
    }

    /// Whether End was returned.
    pub fn is_done(&self) -> bool {
        matches!(self.state, DecodeState::Done)
    }

    fn step(&mut self, buf: &mut BytesMut, max: usize) -> Result<Option<Chunk>, ChunkError> {
        loop {
            match &mut self.state {
                DecodeState::Size(line) => {
                    let (used, done) = line.feed(buf)?;
                    buf.advance(used);
                    if !done {
                        return Ok(None);
                    }
                    self.state = if line.size == 0 {
                        DecodeState::Trailers {
                            scanned: 0,
                            line_start: 0,
                        }
                    } else {
                        DecodeState::Data(line.size)
                    };
                }
                DecodeState::Data(remaining) => {
                    let Some(data) = take_body_bytes(buf, remaining, max) else {
                        return Ok(None);
                    };
                    if *remaining == 0 {
                        self.state = DecodeState::DataCr;
                    }
                    return Ok(Some(Chunk::Data(data)));
                }
                DecodeState::DataCr => match buf.first() {
                    None => return Ok(None),
                    Some(b'\r') => {
                        buf.advance(1);
                        self.state = DecodeState::DataLf;
                    }
                    Some(_) => return Err(ChunkError::MissingCrlf),
                },
                DecodeState::DataLf => match buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(1);
                        self.state = DecodeState::Size(SizeLine::new());
                    }
                    Some(_) => return Err(ChunkError::MissingCrlf),
                },
                DecodeState::Trailers {
                    scanned,
                    line_start,
                } => {
                    let Some(end) = scan_trailers(buf, scanned, line_start)? else {
                        return Ok(None);
                    };
                    let section = buf.split_to(end).freeze();
                    let trailers = parse_trailers(&section)?;
                    self.state = DecodeState::Done;
                    return Ok(Some(Chunk::End(trailers)));
                }
                DecodeState::Done => return Ok(None),
                DecodeState::Failed(e) => return Err(*e),
            }
        }
    }
}

/// Finds the end of the trailer section (the first empty line) incrementally; every
/// line must end in CRLF.
fn scan_trailers(
    buf: &[u8],
    scanned: &mut usize,
    line_start: &mut usize,
) -> Result<Option<usize>, ChunkError> {
    loop {
        let rest = buf.get(*scanned..).unwrap_or_default();
        let Some(offset) = find_lf(rest) else {
            *scanned = buf.len();
            if buf.len() > MAX_TRAILER_BYTES {
                return Err(ChunkError::TrailersTooLarge);
            }
            return Ok(None);
        };
        let lf = *scanned + offset;
        if lf >= MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailersTooLarge);
        }
        if lf == *line_start || buf.get(lf - 1) != Some(&b'\r') {
            return Err(ChunkError::MissingCrlf);
        }
        if lf == *line_start + 1 {
            return Ok(Some(lf + 1));
        }
        *line_start = lf + 1;
        *scanned = lf + 1;
    }
}

/// Parses a complete trailer section (ending in its empty line), dropping the fields
/// that must not come from a trailer: message framing and routing.
fn parse_trailers(section: &Bytes) -> Result<HeaderMap, ChunkError> {
    if section.len() <= 2 {
        return Ok(HeaderMap::new());
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((n, fields))) if n == section.len() => fields,
        Err(httparse::Error::TooManyHeaders) => return Err(ChunkError::TrailersTooLarge),
        _ => return Err(ChunkError::BadTrailers),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name =
            HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ChunkError::BadTrailers)?;
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::HOST
        {
            continue;
        }
        let value = shared_slice(section, field.value).map_err(|_| ChunkError::BadTrailers)?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| ChunkError::BadTrailers)?;
        map.append(name, value);
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------

/// How a response body is delimited on the wire, chosen by [`response_framing`] and
/// honoured by the driver when it writes the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body on the wire (1xx, 204, 304, or a response to HEAD).
    None,
    /// Exactly this many bytes, announced by Content-Length.
    Length(u64),
    /// Chunked transfer coding ([`encode_chunk_size`], [`encode_last_chunk`]).
    Chunked,
    /// The body ends when the connection closes (HTTP/1.0 client, unknown length).
    CloseDelimited,
}

/// Chooses the framing of a response and whether the connection may stay open after it.
///
/// `request_method_head`: the request was HEAD; `request_version`; `client_keep_alive`:
/// [`RequestHead::keep_alive`]; `status`; `headers`: the response headers
/// (Transfer-Encoding is removed here in any case: the framing is ours to choose);
/// `body_len`: the body's exact length if known.
///
/// * 1xx and 204: `None`, and any Content-Length is removed (RFC 9110 section 8.6: a
///   server must not send one). 304: `None`, Content-Length kept as is.
/// * HEAD: `None` on the wire; Content-Length kept if present, else added from
///   `body_len` when known.
/// * Otherwise a valid Content-Length equal to `body_len` (or with `body_len` unknown)
///   gives `Length`; a known `body_len` gives `Length(body_len)` and sets the header;
///   unknown length gives `Chunked` to HTTP/1.1 clients and `CloseDelimited` to HTTP/1.0
///   ones (an invalid Content-Length is removed).
///
/// Returns `(framing, keep_alive)` with
/// `keep_alive = client_keep_alive && server_keep_alive && framing != CloseDelimited`.
pub fn response_framing(
    request_method_head: bool,
    request_version: Version,
    client_keep_alive: bool,
    server_keep_alive: bool,
    status: StatusCode,
    headers: &mut HeaderMap,
    body_len: Option<u64>,
) -> (ResponseFraming, bool) {
    headers.remove(header::TRANSFER_ENCODING);
    let framing = if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        ResponseFraming::None
    } else if status == StatusCode::NOT_MODIFIED {
        ResponseFraming::None
    } else if request_method_head {
        if !headers.contains_key(header::CONTENT_LENGTH) {
            if let Some(n) = body_len {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
        }
        ResponseFraming::None
    } else {
        let declared = declared_length(headers);
        match (declared, body_len) {
            (Some(cl), None) => ResponseFraming::Length(cl),
            (Some(cl), Some(n)) if cl == n => ResponseFraming::Length(cl),
            (_, Some(n)) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                ResponseFraming::Length(n)
            }
            (None, None) => {
                headers.remove(header::CONTENT_LENGTH);
                if request_version == Version::HTTP_10 || request_version == Version::HTTP_09 {
                    ResponseFraming::CloseDelimited
                } else {
                    ResponseFraming::Chunked
                }
            }
        }
    };
    let keep_alive =
        client_keep_alive && server_keep_alive && framing != ResponseFraming::CloseDelimited;
    (framing, keep_alive)
}

/// The response's Content-Length if every value agrees and is 1*DIGIT.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut acc = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        if !accumulate_content_length(value.as_bytes(), &mut acc) {
            return None;
        }
    }
    acc
}

/// Writes the status line and header section of a response into `dst`.
///
/// `HTTP/1.1 <code> <canonical reason or empty>\r\n` (always HTTP/1.1, as hyper does),
/// each field `name: value\r\n` in `HeaderMap` order (multi-valued fields as separate
/// lines), then `transfer-encoding: chunked` if `framing` is `Chunked`,
/// `connection: close` if `!keep_alive` and the headers have no `connection` field,
/// `connection: keep-alive` if `keep_alive` on an HTTP/1.0 request (and no `connection`
/// field), `date: <IMF-fixdate>` if no `date` field, then the empty line.
///
/// Framing is `framing`'s alone: any `transfer-encoding` field in `headers` is skipped,
/// and so is `content-length` when `framing` is `Chunked` (RFC 9112 section 6.2).
pub fn encode_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    keep_alive: bool,
    request_version: Version,
    dst: &mut Vec<u8>,
) {
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    dst.reserve(fields + 128);

    write_status_line(status, dst);
    let chunked = framing == ResponseFraming::Chunked;
    let mut has_connection = false;
    let mut has_date = false;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || (chunked && name == header::CONTENT_LENGTH) {
            continue;
        }
        if name == header::CONNECTION {
            has_connection = true;
        } else if name == header::DATE {
            has_date = true;
        }
        encode_field(name, value, dst);
    }
    if chunked {
        dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !has_connection {
        if !keep_alive {
            dst.extend_from_slice(b"connection: close\r\n");
        } else if request_version == Version::HTTP_10 {
            dst.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    if !has_date {
        write_date_field(dst);
    }
    dst.extend_from_slice(b"\r\n");
}

fn write_status_line(status: StatusCode, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"HTTP/1.1 ");
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    if let Some(reason) = status.canonical_reason() {
        dst.extend_from_slice(reason.as_bytes());
    }
    dst.extend_from_slice(b"\r\n");
}

fn write_date_field(dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"date: ");
    let secs = unix_secs();
    let written = DATE
        .try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut cache) => {
                cache.refresh(secs);
                dst.extend_from_slice(&cache.text);
                true
            }
            Err(_) => false,
        })
        .unwrap_or(false);
    if !written {
        dst.extend_from_slice(&format_date(secs));
    }
    dst.extend_from_slice(b"\r\n");
}

/// The formatted date of one unix second.
struct DateCache {
    secs: u64,
    text: Bytes,
}

impl DateCache {
    fn refresh(&mut self, secs: u64) {
        if self.secs != secs {
            self.text = format_date(secs);
            self.secs = secs;
        }
    }
}

thread_local! {
    static DATE: RefCell<DateCache> = const {
        RefCell::new(DateCache { secs: u64::MAX, text: Bytes::new() })
    };
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_HTTP_DATE_SECS)
}

fn format_date(secs: u64) -> Bytes {
    Bytes::from(httpdate::fmt_http_date(
        UNIX_EPOCH + Duration::from_secs(secs),
    ))
}

/// The current time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, 29 bytes), for
/// the `date` field every response carries. Formatted at most once a second per thread
/// (a thread-local cache keyed by the unix second); the returned `Bytes` shares the
/// cached text. [`encode_response_head`] copies the cached text directly instead.
pub fn cached_date() -> Bytes {
    let secs = unix_secs();
    DATE.try_with(|cell| {
        cell.try_borrow_mut().ok().map(|mut cache| {
            cache.refresh(secs);
            cache.text.clone()
        })
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| format_date(secs))
}

/// Writes the size line of a chunk of `len` bytes (`{len:x}\r\n`); the caller writes the
/// data then `\r\n`. `len` must not be 0 (that is [`encode_last_chunk`]).
pub fn encode_chunk_size(len: usize, dst: &mut Vec<u8>) {
    write_hex(len as u64, dst);
    dst.extend_from_slice(b"\r\n");
}

/// Writes the last chunk, the given trailers (may be empty) and the final CRLF, ending a
/// chunked response body.
pub fn encode_last_chunk(trailers: Option<&HeaderMap>, dst: &mut Vec<u8>) {
    dst.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        for (name, value) in trailers {
            encode_field(name, value, dst);
        }
    }
    dst.extend_from_slice(b"\r\n");
}

/// Writes one field line, `name: value` and CRLF (heads and trailer sections alike).
pub fn encode_field(name: &HeaderName, value: &HeaderValue, dst: &mut Vec<u8>) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// Splits off the front of `buf` the next piece of a body of which `remaining` bytes are
/// still to come, at most `max` bytes; `None` when `buf` is empty. Lowers `remaining`.
pub fn take_body_bytes(buf: &mut BytesMut, remaining: &mut u64, max: usize) -> Option<Bytes> {
    if buf.is_empty() || *remaining == 0 {
        return None;
    }
    let n = usize::try_from(*remaining)
        .unwrap_or(usize::MAX)
        .min(buf.len())
        .min(max.max(1));
    *remaining -= n as u64;
    Some(buf.split_to(n).freeze())
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex without leading zeros ("0" for 0).
fn write_hex(mut n: u64, dst: &mut Vec<u8>) {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    loop {
        i -= 1;
        if let (Some(slot), Some(&digit)) = (tmp.get_mut(i), HEX_DIGITS.get((n & 0xf) as usize)) {
            *slot = digit;
        }
        n >>= 4;
        if n == 0 || i == 0 {
            break;
        }
    }
    dst.extend_from_slice(tmp.get(i..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn parse(s: &[u8]) -> Result<Option<RequestHead>, ParseError> {
        let mut buf = BytesMut::from(s);
        parse_request(&mut buf)
    }

    fn parse_ok(s: &[u8]) -> RequestHead {
        match parse(s) {
            Ok(Some(head)) => head,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn parse_err(s: &[u8]) -> ParseError {
        match parse(s) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(s)),
        }
    }

    fn req(fields: &str) -> Vec<u8> {
        format!("POST /p HTTP/1.1\r\nHost: a\r\n{fields}\r\n").into_bytes()
    }

    fn req10(fields: &str) -> Vec<u8> {
        format!("POST /p HTTP/1.0\r\nHost: a\r\n{fields}\r\n").into_bytes()
    }

    // ------------------------------------------------------------ request heads

    #[test]
    fn simple_get() {
        let mut buf = BytesMut::from(
            &b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"[..],
        );
        let head = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(head.method, Method::GET);
        assert_eq!(head.uri.path(), "/a/b");
        assert_eq!(head.uri.query(), Some("c=d"));
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers.len(), 2);
        assert_eq!(head.headers["host"], "example.com");
        assert_eq!(head.headers["accept"], "*/*");
        assert_eq!(head.framing, RequestFraming::Empty);
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
        assert!(buf.is_empty());
    }

    #[test]
    fn header_order_case_and_multi_values_kept() {
        let head = parse_ok(b"GET / HTTP/1.1\r\nHOST: h\r\nX-A: 1\r\nx-b: 2\r\nX-a: 3\r\nEmpty:\r\nSp:   v  \r\n\r\n");
        let a: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "3"]);
        assert_eq!(head.headers["x-b"], "2");
        assert_eq!(head.headers["empty"], "");
        assert_eq!(head.headers["sp"], "v");
        assert_eq!(head.headers["host"], "h");
    }

    #[test]
    fn values_and_target_share_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(1024);
        buf.extend_from_slice(b"GET /shared/path HTTP/1.1\r\nX-Long: some-value-here\r\n\r\n");
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let head = parse_request(&mut buf).unwrap().unwrap();
        let v = head.headers["x-long"].as_bytes().as_ptr() as usize;
        assert!(range.contains(&v), "header value was copied");
        let p = head.uri.path().as_ptr() as usize;
        assert!(range.contains(&p), "uri was copied");
    }

    #[test]
    fn pipelined_requests_stay_in_buffer() {
        let first = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let second = b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let mut buf = BytesMut::new();
        buf.extend_from_slice(first);
        buf.extend_from_slice(second);
        let one = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(one.uri.path(), "/1");
        assert_eq!(&buf[..], &second[..]);
        let two = parse_request(&mut buf).unwrap().unwrap();
        assert_eq!(two.uri.path(), "/2");
        assert_eq!(two.framing, RequestFraming::Length(2));
        assert_eq!(&buf[..], b"hi");
    }

    #[test]
    fn split_at_every_byte_boundary_matches_whole() {
        let inputs: &[&[u8]] = &[
            b"POST /x?y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
            b"\r\n\nGET / HTTP/1.0\nHost: a\nConnection: keep-alive\n\nrest",
            b"PUT http://h/p HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ];
        for input in inputs {
            let mut whole = BytesMut::from(&input[..]);
            let expected = parse_request(&mut whole).unwrap().unwrap();
            let expected_rest = whole.clone();
            let head_len = input.len() - expected_rest.len();
            for cut in 0..input.len() {
                let mut buf = BytesMut::from(&input[..cut]);
                let first = parse_request(&mut buf).unwrap();
                if cut < head_len {
                    assert!(first.is_none(), "cut {cut}");
                    assert_eq!(&buf[..], &input[..cut], "incomplete parse consumed bytes");
                    buf.extend_from_slice(&input[cut..]);
                    let head = parse_request(&mut buf).unwrap().unwrap();
                    assert_eq!(format!("{head:?}"), format!("{expected:?}"));
                } else {
                    let head = first.unwrap();
                    assert_eq!(format!("{head:?}"), format!("{expected:?}"));
                    buf.extend_from_slice(&input[cut..]);
                }
                assert_eq!(buf, expected_rest);
            }
            // Byte by byte.
            let mut buf = BytesMut::new();
            let mut got = None;
            for &b in input.iter() {
                buf.extend_from_slice(&[b]);
                if got.is_none() {
                    got = parse_request(&mut buf).unwrap();
                }
            }
            assert_eq!(format!("{:?}", got.unwrap()), format!("{expected:?}"));
            assert_eq!(buf, expected_rest);
        }
    }

    #[test]
    fn leading_empty_lines() {
        for prefix in ["\r\n", "\n", "\r\n\r\n", "\n\r\n\n", &"\r\n".repeat(8)] {
            let input = format!("{prefix}GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            let mut buf = BytesMut::from(input.as_bytes());
            let head = parse_request(&mut buf).unwrap().unwrap();
            assert_eq!(head.uri.path(), "/");
            assert!(buf.is_empty());
        }
        for bad in [
            "\r\n".repeat(9) + "GET / HTTP/1.1\r\n\r\n",
            "\n".repeat(9),
            "\r\rGET / HTTP/1.1\r\n\r\n".to_string(),
            "\rGET / HTTP/1.1\r\n\r\n".to_string(),
        ] {
            assert_eq!(parse_err(bad.as_bytes()), ParseError::Malformed, "{bad:?}");
        }
        for partial in ["", "\r", "\r\n", "\r\n\r", "\n\n\n"] {
            let mut buf = BytesMut::from(partial.as_bytes());
            assert!(parse_request(&mut buf).unwrap().is_none(), "{partial:?}");
            assert_eq!(&buf[..], partial.as_bytes());
        }
    }

    #[test]
    fn header_count_limits() {
        let fields = |n: usize| -> String { (0..n).map(|i| format!("X-{i}: v\r\n")).collect() };
        let ok = format!("GET / HTTP/1.1\r\n{}\r\n", fields(MAX_HEADERS));
        assert_eq!(parse_ok(ok.as_bytes()).headers.len(), MAX_HEADERS);
        let too_many = format!("GET / HTTP/1.1\r\n{}\r\n", fields(MAX_HEADERS + 1));
        assert_eq!(parse_err(too_many.as_bytes()), ParseError::TooManyHeaders);
        // Also while still incomplete.
        let partial = format!("GET / HTTP/1.1\r\n{}", fields(MAX_HEADERS + 1));
        assert_eq!(parse_err(partial.as_bytes()), ParseError::TooManyHeaders);
    }

    #[test]
    fn head_size_limits() {
        let big = "a".repeat(70 * 1024);
        let complete = format!("GET / HTTP/1.1\r\nX-Big: {big}\r\n\r\n");
        assert_eq!(parse_err(complete.as_bytes()), ParseError::TooLarge);
        let incomplete = format!("GET / HTTP/1.1\r\nX-Big: {big}");
        assert_eq!(parse_err(incomplete.as_bytes()), ParseError::TooLarge);
        let long_target = format!("GET /{big}");
        assert_eq!(parse_err(long_target.as_bytes()), ParseError::TooLarge);

        // Exactly MAX_HEAD_BYTES is accepted, one more is not (with or without body bytes
        // behind it).
        let base = "GET / HTTP/1.1\r\nX: \r\n\r\n".len();
        let exact = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES - base)
        );
        assert_eq!(exact.len(), MAX_HEAD_BYTES);
        let mut buf = BytesMut::from(exact.as_bytes());
        buf.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        assert!(parse_request(&mut buf).unwrap().is_some());
        assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n\r\n");
        let over = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES - base + 1)
        );
        assert_eq!(parse_err(over.as_bytes()), ParseError::TooLarge);
        // Incomplete just under the limit: read more.
        let under = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES - 100));
        assert!(parse(under.as_bytes()).unwrap().is_none());
    }

    #[test]
    fn content_length_and_transfer_encoding() {
        for fields in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
            "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
            // Both invalid: still this reason.
            "Content-Length: x\r\nTransfer-Encoding: bogus\r\n",
            "Content-Length: 0\r\nTransfer-Encoding: chunked, chunked\r\n",
        ] {
            assert_eq!(
                parse_err(&req(fields)),
                ParseError::LengthAndEncoding,
                "{fields:?}"
            );
            assert_eq!(
                parse_err(&req10(fields)),
                ParseError::LengthAndEncoding,
                "{fields:?}"
            );
        }
    }

    #[test]
    fn length_and_encoding_wins_over_a_bad_target() {
        let input = b"GET * HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_err(input), ParseError::LengthAndEncoding);
    }

    #[test]
    fn content_length_rules() {
        let bad = [
            "+5",
            "-1",
            "5 5",
            "5,6",
            "0x5",
            "100000000000000000000",
            "18446744073709551616",
            "",
            " ",
            "5,",
            ",5",
            "5,,5",
            "5;",
            "five",
            "5.0",
            "\u{b9}",
            "1e3",
        ];
        for v in bad {
            let fields = format!("Content-Length: {v}\r\n");
            assert_eq!(
                parse_err(&req(&fields)),
                ParseError::BadContentLength,
                "{v:?}"
            );
        }
        let good = [
            ("Content-Length: 5\r\n", 5),
            ("Content-Length: 5, 5\r\n", 5),
            ("Content-Length: 5\r\nContent-Length: 5\r\n", 5),
            ("Content-Length:5,5 ,\t5\r\n", 5),
            ("Content-Length: 0\r\n", 0),
            ("Content-Length: 007\r\n", 7),
            ("Content-Length: 18446744073709551615\r\n", u64::MAX),
        ];
        for (fields, n) in good {
            assert_eq!(
                parse_ok(&req(fields)).framing,
                RequestFraming::Length(n),
                "{fields:?}"
            );
        }
        assert_eq!(
            parse_err(&req("Content-Length: 5\r\nContent-Length: 6\r\n")),
            ParseError::BadContentLength
        );
        assert_eq!(
            parse_ok(&req10("Content-Length: 4\r\n")).framing,
            RequestFraming::Length(4)
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        let bad = [
            "chunked, gzip",
            "chunked, chunked",
            "xchunked",
            "chunkedx",
            "gzip",
            "identity",
            "",
            ",",
            "chunked;foo=bar",
            "gz ip, chunked",
            "\"chunked\"",
        ];
        for v in bad {
            let fields = format!("Transfer-Encoding: {v}\r\n");
            assert_eq!(
                parse_err(&req(&fields)),
                ParseError::BadTransferEncoding,
                "{v:?}"
            );
        }
        for fields in [
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n",
        ] {
            assert_eq!(
                parse_err(&req(fields)),
                ParseError::BadTransferEncoding,
                "{fields:?}"
            );
        }
        let good = [
            "Transfer-Encoding: chunked\r\n",
            "Transfer-Encoding: Chunked\r\n",
            "Transfer-Encoding: CHUNKED\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: gzip;q=1 ,chunked\r\n",
            "Transfer-Encoding: gzip,, chunked,\r\n",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        ];
        for fields in good {
            let head = parse_ok(&req(fields));
            assert_eq!(head.framing, RequestFraming::Chunked, "{fields:?}");
            assert!(head.headers.contains_key(header::TRANSFER_ENCODING));
        }
        // HTTP/1.0 never gets a chunked request body.
        assert_eq!(
            parse_err(&req10("Transfer-Encoding: chunked\r\n")),
            ParseError::BadTransferEncoding
        );
    }

    #[test]
    fn malformed_heads() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nX-Fold: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-Fold: a\r\n\tb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nX\0: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b" GET / HTTP/1.1\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n\x00", // obs-text is fine; see below
        ];
        for case in &cases[..cases.len() - 1] {
            let got = parse(case);
            assert!(
                matches!(got, Err(ParseError::Malformed) | Ok(None)),
                "{:?}: {got:?}",
                String::from_utf8_lossy(case)
            );
            // Complete (or complete-looking) ones must be refused outright.
            if case.ends_with(b"\r\n\r\n") {
                assert_eq!(
                    parse_err(case),
                    ParseError::Malformed,
                    "{:?}",
                    String::from_utf8_lossy(case)
                );
            }
        }
        // Garbage is refused before MAX_HEAD_BYTES arrive.
        assert_eq!(
            parse_err(b"\x16\x03\x01\x02\x00\x01\x00"),
            ParseError::Malformed
        );
        assert_eq!(
            parse_err(b"GET / HTTP/1.1\r\nX: a\rb"),
            ParseError::Malformed
        );
        // obs-text in a value is accepted (RFC 9110 field-vchar), as by hyper.
        let head = parse_ok(cases[cases.len() - 1]);
        assert_eq!(head.headers["x"].as_bytes(), b"\xff");
    }

    #[test]
    fn request_targets() {
        let ok: &[(&str, &str)] = &[
            ("GET", "/"),
            ("GET", "/a%20b?q=1&r"),
            ("OPTIONS", "*"),
            ("OPTIONS", "/"),
            ("CONNECT", "example.com:443"),
            ("CONNECT", "[::1]:8443"),
            ("GET", "http://example.com/a?b"),
            ("GET", "HTTP://example.com"),
            ("POST", "https://example.com:8443/x"),
            ("GET", "http://user@example.com/"),
        ];
        for (method, target) in ok {
            let head =
                parse_ok(format!("{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
            assert_eq!(head.method.as_str(), *method);
        }
        let head = parse_ok(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n");
        assert_eq!(head.uri.authority().unwrap().as_str(), "example.com:443");
        assert_eq!(head.uri.port_u16(), Some(443));
        let head = parse_ok(b"GET http://example.com/a?b HTTP/1.1\r\n\r\n");
        assert_eq!(head.uri.host(), Some("example.com"));
        assert_eq!(head.uri.path(), "/a");

        let bad: &[(&str, &str)] = &[
            ("GET", "*"),
            ("POST", "*"),
            ("GET", "host:443"),
            ("GET", "example.com"),
            ("CONNECT", "example.com"),
            ("CONNECT", "/"),
            ("CONNECT", "http://example.com:443/"),
            ("CONNECT", "user@example.com:443"),
            ("CONNECT", "*"),
            ("GET", "ftp://example.com/"),
            ("GET", "http:///nohost"),
            ("GET", "http://"),
            ("GET", "a/b"),
            ("GET", "?q"),
            ("GET", "**"),
            ("OPTIONS", "**"),
        ];
        for (method, target) in bad {
            let input = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n");
            let got = parse(input.as_bytes());
            assert!(
                matches!(got, Err(ParseError::BadTarget | ParseError::Malformed)),
                "{method} {target}: {got:?}"
            );
        }
        assert_eq!(parse_err(b"GET * HTTP/1.1\r\n\r\n"), ParseError::BadTarget);
        assert_eq!(
            parse_err(b"GET host:443 HTTP/1.1\r\n\r\n"),
            ParseError::BadTarget
        );
        // Extension methods are fine.
        assert_eq!(
            parse_ok(b"PURGE /x HTTP/1.1\r\n\r\n").method.as_str(),
            "PURGE"
        );
    }

    #[test]
    fn keep_alive_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("1.1", "", true),
            ("1.1", "Connection: close\r\n", false),
            ("1.1", "Connection: Close\r\n", false),
            ("1.1", "Connection: keep-alive\r\n", true),
            ("1.1", "Connection: upgrade, CLOSE\r\n", false),
            ("1.1", "Connection: te\r\nConnection: close\r\n", false),
            ("1.1", "Connection: closed\r\n", true),
            ("1.1", "Connection: keep-alive, close\r\n", false),
            ("1.0", "", false),
            ("1.0", "Connection: keep-alive\r\n", true),
            ("1.0", "Connection: Keep-Alive\r\n", true),
            ("1.0", "Connection: foo,  keep-alive \r\n", true),
            (
                "1.0",
                "Connection: keep-alive\r\nConnection: close\r\n",
                false,
            ),
            ("1.0", "Connection: keep-alives\r\n", false),
            ("1.0", "Keep-Alive: timeout=5\r\n", false),
        ];
        for (version, fields, expected) in cases {
            let input = format!("GET / HTTP/{version}\r\n{fields}\r\n");
            let head = parse_ok(input.as_bytes());
            assert_eq!(head.keep_alive, *expected, "{input:?}");
            let want = if *version == "1.0" {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            assert_eq!(head.version, want);
        }
    }

    #[test]
    fn expect_continue_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("1.1", "Expect: 100-continue\r\n", true),
            ("1.1", "Expect: 100-Continue\r\n", true),
            ("1.1", "Expect:   100-continue  \r\n", true),
            ("1.1", "Expect: 100-continue, foo\r\n", false),
            ("1.1", "Expect: 200-ok\r\n", false),
            ("1.1", "", false),
            ("1.0", "Expect: 100-continue\r\n", false),
        ];
        for (version, fields, expected) in cases {
            let input = format!("PUT /u HTTP/{version}\r\nContent-Length: 1\r\n{fields}\r\n");
            assert_eq!(
                parse_ok(input.as_bytes()).expect_continue,
                *expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn error_status_and_reason() {
        let cases = [
            (ParseError::Malformed, 400, "bad_request"),
            (ParseError::TooLarge, 431, "header_too_large"),
            (ParseError::TooManyHeaders, 431, "header_too_large"),
            (
                ParseError::LengthAndEncoding,
                400,
                "content_length_and_transfer_encoding",
            ),
            (ParseError::BadContentLength, 400, "bad_content_length"),
            (
                ParseError::BadTransferEncoding,
                400,
                "bad_transfer_encoding",
            ),
            (ParseError::BadTarget, 400, "bad_request"),
        ];
        for (e, status, reason) in cases {
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(e.reason(), reason);
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(ChunkError::BadSize.status(), StatusCode::BAD_REQUEST);
        assert_eq!(ChunkError::TrailersTooLarge.reason(), "bad_body");
    }

    /// A small deterministic generator for the hostile-input tests.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn hostile_heads_never_panic_and_split_consistently() {
        let alphabet: &[u8] = b"GETPOS /:*\r\n\t\0,;=\"\\abcHTtp1.0Content-LengthTransfer-Encodingchunked\x7f\xff@?#%";
        let seeds: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        let mut rng = Lcg(7);
        for round in 0..3000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(input.len() + 1);
                let b = alphabet[rng.below(alphabet.len())];
                match rng.below(3) {
                    0 => input.insert(at, b),
                    1 if at < input.len() => input[at] = b,
                    _ if at < input.len() => {
                        input.remove(at);
                    }
                    _ => {}
                }
            }
            let whole = parse(&input).map(|h| h.map(|h| format!("{h:?}")));
            let cut = rng.below(input.len() + 1);
            let mut buf = BytesMut::from(&input[..cut]);
            let split = match parse_request(&mut buf) {
                Ok(None) => {
                    buf.extend_from_slice(&input[cut..]);
                    parse_request(&mut buf).map(|h| h.map(|h| format!("{h:?}")))
                }
                other => other.map(|h| h.map(|h| format!("{h:?}"))),
            };
            assert_eq!(
                whole,
                split,
                "{:?} cut {cut}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn find_lf_matches_naive() {
        for len in 0..40 {
            for at in 0..=len {
                let mut v = vec![b'a'; len];
                if at < len {
                    v[at] = b'\n';
                }
                if at + 3 < len {
                    v[at + 3] = b'\n';
                }
                assert_eq!(
                    find_lf(&v),
                    v.iter().position(|&b| b == b'\n'),
                    "{len} {at}"
                );
            }
        }
        // Bytes that trip naive SWAR tricks (0x0b, 0x8a) are not LF.
        assert_eq!(find_lf(b"\x0b\x8a\x09\x0b\x8a\x0b\x0b\x0b\x0b\n"), Some(9));
    }

    // ------------------------------------------------------------ chunked bodies

    /// Runs the decoder over `input` fed in `pieces`, returning data, trailers and leftover.
    fn decode_pieces(
        pieces: &[&[u8]],
        max: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ChunkError> {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut end = None;
        for piece in pieces {
            buf.extend_from_slice(piece);
            while end.is_none() {
                match decoder.decode(&mut buf, max)? {
                    Some(Chunk::Data(d)) => {
                        assert!(!d.is_empty());
                        assert!(d.len() <= max.max(1));
                        data.extend_from_slice(&d);
                    }
                    Some(Chunk::End(t)) => {
                        assert!(decoder.is_done());
                        end = Some(t);
                    }
                    None => break,
                }
            }
        }
        if end.is_some() {
            let before = buf.clone();
            assert_eq!(decoder.decode(&mut buf, max), Ok(None));
            assert_eq!(buf, before);
        }
        Ok((data, end, buf))
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), ChunkError> {
        decode_pieces(&[input], usize::MAX)
    }

    fn decode_err(input: &[u8]) -> ChunkError {
        match decode_all(input) {
            Err(e) => e,
            Ok(other) => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn chunked_whole_body() {
        let input = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let (data, end, rest) = decode_all(input).unwrap();
        assert_eq!(data, b"hello world");
        assert!(end.unwrap().is_empty());
        assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn chunked_every_split_point() {
        let input: &[u8] = b"5;ext=\"a b\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\nX-T: 2\r\n\r\nNEXT";
        let (data, end, rest) = decode_all(input).unwrap();
        assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
        let end = end.unwrap();
        assert_eq!(end.len(), 2);
        assert_eq!(&rest[..], b"NEXT");
        for cut in 0..=input.len() {
            for max in [1, 3, usize::MAX] {
                let (d, e, r) = decode_pieces(&[&input[..cut], &input[cut..]], max).unwrap();
                assert_eq!(d, data, "cut {cut} max {max}");
                assert_eq!(e.as_ref(), Some(&end), "cut {cut}");
                assert_eq!(r, rest, "cut {cut}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (d, e, r) = decode_pieces(&bytes, 2).unwrap();
        assert_eq!((d, e, r), (data, Some(end), rest));
    }

    #[test]
    fn chunked_data_shares_the_read_buffer() {
        let mut buf = BytesMut::from(&b"4\r\nwxyz\r\n0\r\n\r\n"[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let mut decoder = ChunkedDecoder::default();
        match decoder.decode(&mut buf, 100).unwrap() {
            Some(Chunk::Data(d)) => {
                assert_eq!(&d[..], b"wxyz");
                assert!(range.contains(&(d.as_ptr() as usize)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunked_extensions() {
        let ok = [
            "5;a\r\n",
            "5;a=b\r\n",
            "5 ;a=b\r\n",
            "5\t; a = b ;c\r\n",
            "5;a=\"q\\\"x\"\r\n",
            "5;a=\"\"\r\n",
            "5;a=\"\u{80} \t!\"\r\n",
            "5;a;b=c;d=\"e\"\r\n",
            "5 \r\n",
            "005\r\n",
        ];
        for line in ok {
            let input = format!("{line}hello\r\n0;last=1\r\n\r\n");
            let (data, end, _) =
                decode_all(input.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e:?}"));
            assert_eq!(data, b"hello", "{line:?}");
            assert!(end.is_some());
        }
        let bad = [
            "5;\r\n",
            "5; \r\n",
            "5;=b\r\n",
            "5;a=\r\n",
            "5;a=\"x\r\n",
            "5;a=\x01\r\n",
            "5;a=\"\x00\"\r\n",
            "5;a=\"\x7f\"\r\n",
            "5;a b\r\n",
            "5;a=b c\r\n",
            "5;a=\"x\"y\r\n",
            "5;a\x00\r\n",
            "5;a@b\r\n",
            "5;a=\"\\\x01\"\r\n",
        ];
        for line in bad {
            let input = format!("{line}hello\r\n0\r\n\r\n");
            assert_eq!(
                decode_err(input.as_bytes()),
                ChunkError::BadExtension,
                "{line:?}"
            );
        }
        let long = format!(
            "5;a={}\r\nhello\r\n0\r\n\r\n",
            "b".repeat(MAX_CHUNK_LINE_BYTES)
        );
        assert_eq!(decode_err(long.as_bytes()), ChunkError::ExtensionTooLong);
        // Just under the limit is fine.
        let fits = format!(
            "5;a={}\r\nhello\r\n0\r\n\r\n",
            "b".repeat(MAX_CHUNK_LINE_BYTES - 4)
        );
        assert!(decode_all(fits.as_bytes()).is_ok());
        // A long line arriving slowly is refused once it passes the limit.
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"5;a=");
        let mut result = Ok(None);
        for _ in 0..MAX_CHUNK_LINE_BYTES {
            buf.extend_from_slice(b"x");
            result = decoder.decode(&mut buf, 10);
            if result.is_err() {
                break;
            }
            assert!(buf.is_empty(), "partial size line bytes are consumed");
        }
        assert_eq!(result, Err(ChunkError::ExtensionTooLong));
    }

    #[test]
    fn chunked_sizes() {
        let bad_size = [
            "g\r\n", "\r\n", "-5\r\n", "0x5\r\n", " 5\r\n", "5 6\r\n", "+5\r\n", ";a\r\n", "5g\r\n",
        ];
        for line in bad_size {
            assert_eq!(decode_err(line.as_bytes()), ChunkError::BadSize, "{line:?}");
        }
        assert_eq!(
            decode_err(b"10000000000000000\r\n"),
            ChunkError::SizeOverflow
        );
        assert_eq!(
            decode_err(b"00000000000000001\r\n"),
            ChunkError::SizeOverflow
        );
        // 16 digits fit: the decoder starts reading data.
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nabc"[..]);
        assert_eq!(
            decoder.decode(&mut buf, 100),
            Ok(Some(Chunk::Data(Bytes::from_static(b"abc"))))
        );
        assert_eq!(decoder.decode(&mut buf, 100), Ok(None));
        assert!(!decoder.is_done());
        // Upper-case hex.
        let (data, _, _) = decode_all(b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(data.len(), 10);
    }

    #[test]
    fn chunked_line_endings() {
        let cases: &[&[u8]] = &[
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\rhello\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\rX0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
            b"5\r\nhello\r\n0\r\nX: 1\r\n\n",
            b"5;a=b\n",
            b"5\r\nhello\r\n\r\n0\r\n\r\n",
        ];
        for case in &cases[..cases.len() - 1] {
            assert_eq!(
                decode_err(case),
                ChunkError::MissingCrlf,
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        // An extra CRLF after data is a size line with no size.
        assert_eq!(decode_err(cases[cases.len() - 1]), ChunkError::BadSize);
    }

    #[test]
    fn chunked_trailers() {
        let input = b"3\r\nabc\r\n0\r\nX-A: 1\r\nContent-Length: 5\r\nhost: h\r\nTransfer-Encoding: chunked\r\nX-B:  2 \r\nx-a: 3\r\n\r\nNEXT";
        let (data, end, rest) = decode_all(input).unwrap();
        assert_eq!(data, b"abc");
        let t = end.unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "3"]);
        assert_eq!(t["x-b"], "2");
        assert!(!t.contains_key(header::CONTENT_LENGTH));
        assert!(!t.contains_key(header::HOST));
        assert!(!t.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(&rest[..], b"NEXT");

        for bad in [
            &b"0\r\nbad header\r\n\r\n"[..],
            b"0\r\nX: a\r\n b\r\n\r\n",
            b"0\r\nX : a\r\n\r\n",
            b"0\r\n X: a\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\nX: \0\r\n\r\n",
            b"0\r\n\rX: a\r\n\r\n",
        ] {
            assert_eq!(
                decode_err(bad),
                ChunkError::BadTrailers,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }

        let many: String = (0..MAX_TRAILERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let input = format!("0\r\n{many}\r\n");
        assert_eq!(decode_err(input.as_bytes()), ChunkError::TrailersTooLarge);
        let fits: String = (0..MAX_TRAILERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let input = format!("0\r\n{fits}\r\n");
        assert_eq!(
            decode_all(input.as_bytes()).unwrap().1.unwrap().len(),
            MAX_TRAILERS
        );

        let big = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_TRAILER_BYTES));
        assert_eq!(decode_err(big.as_bytes()), ChunkError::TrailersTooLarge);
        let incomplete = format!("0\r\nX: {}", "a".repeat(MAX_TRAILER_BYTES + 1));
        assert_eq!(
            decode_err(incomplete.as_bytes()),
            ChunkError::TrailersTooLarge
        );
        // Many short lines, incomplete: refused on size too.
        let lines = format!("0\r\n{}", "X: a\r\n".repeat(MAX_TRAILER_BYTES / 6 + 1));
        assert_eq!(decode_err(lines.as_bytes()), ChunkError::TrailersTooLarge);
        // An incomplete trailer section stays in the buffer.
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"0\r\nX: 1\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf, 10), Ok(None));
        assert_eq!(&buf[..], b"X: 1\r\n");
        buf.extend_from_slice(b"\r\nrest");
        match decoder.decode(&mut buf, 10) {
            Ok(Some(Chunk::End(t))) => assert_eq!(t["x"], "1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn chunked_max_is_honoured() {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"a\r\n0123456789\r\n0\r\n\r\n"[..]);
        let mut sizes = Vec::new();
        loop {
            match decoder.decode(&mut buf, 3).unwrap() {
                Some(Chunk::Data(d)) => sizes.push(d.len()),
                Some(Chunk::End(_)) => break,
                None => panic!("stalled"),
            }
        }
        assert_eq!(sizes, [3, 3, 3, 1]);
        // max 0 still makes progress.
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"2\r\nab\r\n0\r\n\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf, 0),
            Ok(Some(Chunk::Data(Bytes::from_static(b"a"))))
        );
    }

    #[test]
    fn chunked_partial_chunk_and_bytes_after_end() {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"8\r\nabc"[..]);
        assert_eq!(
            decoder.decode(&mut buf, 100),
            Ok(Some(Chunk::Data(Bytes::from_static(b"abc"))))
        );
        assert_eq!(decoder.decode(&mut buf, 100), Ok(None));
        buf.extend_from_slice(b"defgh\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            decoder.decode(&mut buf, 100),
            Ok(Some(Chunk::Data(Bytes::from_static(b"defgh"))))
        );
        assert_eq!(
            decoder.decode(&mut buf, 100),
            Ok(Some(Chunk::End(HeaderMap::new())))
        );
        for _ in 0..3 {
            assert_eq!(decoder.decode(&mut buf, 100), Ok(None));
            assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n\r\n");
        }
        assert!(decoder.is_done());
    }

    #[test]
    fn chunked_errors_are_sticky() {
        let mut decoder = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert_eq!(decoder.decode(&mut buf, 10), Err(ChunkError::BadSize));
        buf.clear();
        buf.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(decoder.decode(&mut buf, 10), Err(ChunkError::BadSize));
        assert!(!decoder.is_done());
    }

    #[test]
    fn chunked_roundtrip_with_encoder() {
        let mut rng = Lcg(99);
        for _ in 0..50 {
            let mut wire = Vec::new();
            let mut body = Vec::new();
            for _ in 0..rng.below(6) {
                let len = 1 + rng.below(300);
                let chunk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                encode_chunk_size(chunk.len(), &mut wire);
                wire.extend_from_slice(&chunk);
                wire.extend_from_slice(b"\r\n");
                body.extend_from_slice(&chunk);
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            encode_last_chunk(Some(&trailers), &mut wire);
            let pieces: Vec<&[u8]> = wire.chunks(1 + rng.below(40)).collect();
            let (data, end, rest) = decode_pieces(&pieces, 1 + rng.below(500)).unwrap();
            assert_eq!(data, body);
            assert_eq!(end.unwrap(), trailers);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn hostile_chunked_never_panics() {
        let alphabet: &[u8] = b"0123456789abcdefABCDEFxg;= \t\"\\\r\n\0\x7f\xffX:";
        let mut rng = Lcg(3);
        for _ in 0..5000 {
            let len = rng.below(60);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let whole = decode_all(&input).map(|(d, e, r)| (d, e.is_some(), r));
            let cut = rng.below(input.len() + 1);
            let split = decode_pieces(&[&input[..cut], &input[cut..]], 1 + rng.below(8))
                .map(|(d, e, r)| (d, e.is_some(), r));
            assert_eq!(
                whole,
                split,
                "{:?} cut {cut}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    // ------------------------------------------------------------ responses

    #[test]
    fn response_framing_table() {
        use ResponseFraming as F;
        const V11: Version = Version::HTTP_11;
        const V10: Version = Version::HTTP_10;
        // (head, version, client ka, server ka, status, content-length in, body_len,
        //  framing, keep_alive, content-length out)
        #[allow(clippy::type_complexity)]
        let cases: &[(
            bool,
            Version,
            bool,
            bool,
            u16,
            Option<&str>,
            Option<u64>,
            F,
            bool,
            Option<&str>,
        )] = &[
            (
                false,
                V11,
                true,
                true,
                200,
                None,
                Some(5),
                F::Length(5),
                true,
                Some("5"),
            ),
            (
                false,
                V11,
                true,
                true,
                200,
                None,
                Some(0),
                F::Length(0),
                true,
                Some("0"),
            ),
            (
                false,
                V11,
                true,
                true,
                200,
                Some("5"),
                None,
                F::Length(5),
                true,
                Some("5"),
            ),
            (
                false,
                V11,
                true,
                true,
                200,
                Some("5"),
                Some(5),
                F::Length(5),
                true,
                Some("5"),
            ),
            (
                false,
                V11,
                true,
                true,
                200,
                Some("7"),
                Some(5),
                F::Length(5),
                true,
                Some("5"),
            ),
            (
                false,
                V11,
                true,
                true,
                200,
                Some("x"),
                Some(5),
                F::Length(5),
                true,
                Some("5"),
            ),
            (
                false,
                V11,
                true,
                true,
                200,
                Some("x"),
                None,
                F::Chunked,
                true,
                None,
            ),
            (
                false,
                V11,
                true,
                true,
                200,
                None,
                None,
                F::Chunked,
                true,
                None,
            ),
            (
                false,
                V11,
                false,
                true,
                200,
                None,
                None,
                F::Chunked,
                false,
                None,
            ),
            (
                false,
                V11,
                true,
                false,
                200,
                None,
                None,
                F::Chunked,
                false,
                None,
            ),
            (
                false,
                V10,
                true,
                true,
                200,
                None,
                None,
                F::CloseDelimited,
                false,
                None,
            ),
            (
                false,
                V10,
                true,
                true,
                200,
                None,
                Some(3),
                F::Length(3),
                true,
                Some("3"),
            ),
            (
                false,
                V10,
                false,
                true,
                200,
                Some("3"),
                None,
                F::Length(3),
                false,
                Some("3"),
            ),
            (
                false,
                V11,
                true,
                true,
                204,
                Some("0"),
                Some(0),
                F::None,
                true,
                None,
            ),
            (false, V11, true, true, 204, None, None, F::None, true, None),
            (false, V11, true, true, 101, None, None, F::None, true, None),
            (
                false,
                V11,
                true,
                true,
                103,
                Some("4"),
                None,
                F::None,
                true,
                None,
            ),
            (
                false,
                V11,
                true,
                true,
                304,
                Some("10"),
                Some(0),
                F::None,
                true,
                Some("10"),
            ),
            (
                false,
                V11,
                true,
                true,
                304,
                None,
                Some(0),
                F::None,
                true,
                None,
            ),
            (false, V10, true, true, 304, None, None, F::None, true, None),
            (
                true,
                V11,
                true,
                true,
                200,
                None,
                Some(42),
                F::None,
                true,
                Some("42"),
            ),
            (
                true,
                V11,
                true,
                true,
                200,
                Some("100"),
                Some(0),
                F::None,
                true,
                Some("100"),
            ),
            (true, V11, true, true, 200, None, None, F::None, true, None),
            (true, V10, true, true, 200, None, None, F::None, true, None),
            (
                true,
                V11,
                true,
                true,
                404,
                None,
                Some(9),
                F::None,
                true,
                Some("9"),
            ),
            (
                false,
                V11,
                true,
                true,
                404,
                None,
                Some(9),
                F::Length(9),
                true,
                Some("9"),
            ),
            (
                false,
                V11,
                true,
                true,
                500,
                Some("3, 3"),
                None,
                F::Length(3),
                true,
                Some("3, 3"),
            ),
        ];
        for (i, &(head, version, cka, ska, status, cl, body_len, framing, ka, cl_out)) in
            cases.iter().enumerate()
        {
            let mut headers = HeaderMap::new();
            headers.insert("x-other", HeaderValue::from_static("1"));
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            if let Some(cl) = cl {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_str(cl).unwrap());
            }
            let status = StatusCode::from_u16(status).unwrap();
            let got = response_framing(head, version, cka, ska, status, &mut headers, body_len);
            assert_eq!(got, (framing, ka), "case {i}");
            assert_eq!(
                headers
                    .get(header::CONTENT_LENGTH)
                    .map(|v| v.to_str().unwrap()),
                cl_out,
                "case {i}"
            );
            assert!(!headers.contains_key(header::TRANSFER_ENCODING), "case {i}");
            assert_eq!(headers["x-other"], "1");
        }
    }

    const DATE_VALUE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn encoded(
        status: u16,
        fields: &[(&str, &str)],
        framing: ResponseFraming,
        keep_alive: bool,
        version: Version,
    ) -> String {
        let mut headers = HeaderMap::new();
        for (n, v) in fields {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut dst = Vec::new();
        encode_response_head(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            framing,
            keep_alive,
            version,
            &mut dst,
        );
        String::from_utf8(dst).unwrap()
    }

    #[test]
    fn encoded_head_exact_bytes() {
        let got = encoded(
            200,
            &[
                ("content-type", "text/plain"),
                ("x-multi", "a"),
                ("content-length", "5"),
                ("x-multi", "b"),
                ("date", DATE_VALUE),
            ],
            ResponseFraming::Length(5),
            true,
            Version::HTTP_11,
        );
        assert_eq!(
            got,
            "HTTP/1.1 200 OK\r\n\
             content-type: text/plain\r\n\
             x-multi: a\r\n\
             x-multi: b\r\n\
             content-length: 5\r\n\
             date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             \r\n"
        );

        let got = encoded(
            404,
            &[
                ("content-length", "9"),
                ("transfer-encoding", "gzip"),
                ("date", DATE_VALUE),
            ],
            ResponseFraming::Chunked,
            false,
            Version::HTTP_11,
        );
        assert_eq!(
            got,
            "HTTP/1.1 404 Not Found\r\n\
             date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             transfer-encoding: chunked\r\n\
             connection: close\r\n\
             \r\n"
        );

        let got = encoded(
            200,
            &[("date", DATE_VALUE)],
            ResponseFraming::Length(0),
            true,
            Version::HTTP_10,
        );
        assert_eq!(got, "HTTP/1.1 200 OK\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\nconnection: keep-alive\r\n\r\n");

        let got = encoded(
            200,
            &[("connection", "upgrade"), ("date", DATE_VALUE)],
            ResponseFraming::None,
            false,
            Version::HTTP_10,
        );
        assert_eq!(
            got,
            "HTTP/1.1 200 OK\r\nconnection: upgrade\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );

        let got = encoded(
            599,
            &[("date", DATE_VALUE)],
            ResponseFraming::CloseDelimited,
            false,
            Version::HTTP_10,
        );
        assert_eq!(
            got,
            "HTTP/1.1 599 \r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\nconnection: close\r\n\r\n"
        );

        // Content-Length survives non-chunked framings, e.g. HEAD (None).
        let got = encoded(
            200,
            &[("content-length", "42"), ("date", DATE_VALUE)],
            ResponseFraming::None,
            true,
            Version::HTTP_11,
        );
        assert_eq!(
            got,
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );
    }

    #[test]
    fn encoded_head_adds_date_and_parses_back() {
        let got = encoded(
            204,
            &[("x-a", "1")],
            ResponseFraming::None,
            true,
            Version::HTTP_11,
        );
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut fields);
        assert_eq!(
            resp.parse(got.as_bytes()).unwrap(),
            httparse::Status::Complete(got.len())
        );
        assert_eq!(resp.code, Some(204));
        assert_eq!(resp.reason, Some("No Content"));
        let date = resp.headers.iter().find(|h| h.name == "date").unwrap();
        assert_eq!(date.value.len(), 29);
        httpdate::parse_http_date(std::str::from_utf8(date.value).unwrap()).unwrap();
    }

    #[test]
    fn cached_date_is_an_imf_fixdate_of_now() {
        let a = cached_date();
        let b = cached_date();
        assert_eq!(a.len(), 29);
        assert!(a.ends_with(b" GMT"));
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&a).unwrap()).unwrap();
        let now = SystemTime::now();
        let skew = now.duration_since(parsed).unwrap_or_default();
        assert!(skew < Duration::from_secs(5));
        assert!(b.len() == 29);
        assert_eq!(format_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            format_date(MAX_HTTP_DATE_SECS),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
    }

    #[test]
    fn chunk_encoding() {
        let cases: &[(usize, &str)] = &[
            (1, "1\r\n"),
            (9, "9\r\n"),
            (10, "a\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
            (0xdead_beef, "deadbeef\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ];
        for (len, want) in cases {
            let mut dst = b"prefix".to_vec();
            encode_chunk_size(*len, &mut dst);
            assert_eq!(&dst[6..], want.as_bytes());
        }
        let mut dst = Vec::new();
        encode_last_chunk(None, &mut dst);
        assert_eq!(dst, b"0\r\n\r\n");
        let mut dst = Vec::new();
        encode_last_chunk(Some(&HeaderMap::new()), &mut dst);
        assert_eq!(dst, b"0\r\n\r\n");
        let mut trailers = HeaderMap::new();
        trailers.append("grpc-status", HeaderValue::from_static("0"));
        trailers.append("x-a", HeaderValue::from_static("1"));
        trailers.append("x-a", HeaderValue::from_static("2"));
        let mut dst = Vec::new();
        encode_last_chunk(Some(&trailers), &mut dst);
        assert_eq!(dst, b"0\r\ngrpc-status: 0\r\nx-a: 1\r\nx-a: 2\r\n\r\n");
    }

    #[test]
    fn hex_writer() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            100,
            12345,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut h = Vec::new();
            write_hex(n, &mut h);
            assert_eq!(h, format!("{n:x}").as_bytes());
        }
    }
}
