//! Header rewriting between client and upstream (docs/proxying.md): hop-by-hop headers
//! dropped per RFC 9110 section 7.6.1, forwarding headers set, Rampart's own headers
//! stripped from the client and set for the upstream.

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE,
};

/// `x-rampart-route`, sent to upstreams.
pub static X_RAMPART_ROUTE: HeaderName = HeaderName::from_static("x-rampart-route");
/// `x-rampart-backend`, sent to upstreams.
pub static X_RAMPART_BACKEND: HeaderName = HeaderName::from_static("x-rampart-backend");
/// `x-rampart-error`, on responses Rampart makes itself.
pub static X_RAMPART_ERROR: HeaderName = HeaderName::from_static("x-rampart-error");
/// `x-request-id`, generated when absent.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-for`, appended.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`, set.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `traceparent`, passed through and logged.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
static TRAILER: HeaderName = HeaderName::from_static("trailer");

/// Removes hop-by-hop headers: those named by `Connection`, and the fixed set.
///
/// `keep_te_trailers` keeps `te: trailers` (gRPC needs it end to end over HTTP/2).
///
/// Runs twice per proxied request (request and response), so the common cases cost no
/// allocation: the names `Connection` lists are removed straight from its own (owned)
/// values, and one pass over the header names skips the fixed set when none is present.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    if let Entry::Occupied(entry) = headers.entry(CONNECTION) {
        let (_, mut values) = entry.remove_entry_mult();
        let first = values.next();
        // Almost always one value, so this stays empty and does not allocate.
        let rest: Vec<HeaderValue> = values.by_ref().collect();
        drop(values);
        for value in first.iter().chain(&rest) {
            let Ok(text) = value.to_str() else { continue };
            for name in text.split(',') {
                // An invalid name matches no header: nothing is removed, as before.
                headers.remove(name.trim());
            }
        }
    }
    if !headers.keys().any(is_fixed_hop_by_hop) {
        return;
    }
    let te_trailers = keep_te_trailers
        && headers
            .get(TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &TRAILER,
    ] {
        headers.remove(name);
    }
    headers.remove(TE);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether `name` is one of the hop-by-hop headers removed whatever `Connection` says.
fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    is_fixed_hop_by_hop_name(name.as_str().as_bytes())
}

/// The same for a field name in any letter case, as read off the wire (Rampart's client
/// drops these from a response head as it reads it). Runs for every field of every request
/// and response: most names are ruled out by their length at the first comparison.
pub(crate) fn is_fixed_hop_by_hop_name(name: &[u8]) -> bool {
    [
        "te",
        "transfer-encoding",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// Appends `peer` to `x-forwarded-for` (one comma-separated header).
pub fn append_forwarded_for(headers: &mut HeaderMap, peer: &str) {
    let existing: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if existing.is_empty() {
        HeaderValue::from_str(peer)
    } else {
        HeaderValue::from_str(&format!("{}, {peer}", existing.join(", ")))
    };
    if let Ok(value) = value {
        headers.insert(&X_FORWARDED_FOR, value);
    }
}

/// What the upstream request carries besides the client's own headers.
pub struct Forwarding<'a> {
    /// The matched route's name (`x-rampart-route`; `_default` when none matched).
    pub route: &'a HeaderValue,
    /// The client's address as text, appended to `x-forwarded-for`.
    pub peer: &'a str,
    /// Whether the client connection is TLS (`x-forwarded-proto`).
    pub tls: bool,
    /// The protocol of an HTTP/1.1 upgrade the client asked for, kept across the
    /// hop-by-hop strip.
    pub upgrade: Option<&'a HeaderValue>,
    /// The request target's authority (absolute form or HTTP/2 `:authority`), which
    /// becomes `Host` when the client sent none.
    pub authority: Option<&'a http::uri::Authority>,
}

/// Rewrites the client's request headers for the upstream (docs/proxying.md#headers):
/// hop-by-hop headers dropped (`te: trailers` kept), an upgrade re-declared, the client's
/// `x-rampart-*` replaced by Rampart's route, `x-forwarded-for` appended,
/// `x-forwarded-proto` set, `x-request-id` generated when absent, `Host` from the
/// authority when absent. Pure: no I/O, no clock.
pub fn rewrite_request_headers(h: &mut HeaderMap, f: &Forwarding<'_>) {
    strip_hop_by_hop(h, true);
    if let Some(protocol) = f.upgrade {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, protocol.clone());
    }
    h.remove(&X_RAMPART_BACKEND);
    h.insert(&X_RAMPART_ROUTE, f.route.clone());
    append_forwarded_for(h, f.peer);
    h.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(if f.tls { "https" } else { "http" }),
    );
    if !h.contains_key(&X_REQUEST_ID) {
        h.insert(&X_REQUEST_ID, new_request_id());
    }
    if !h.contains_key(HOST) {
        if let Some(host) = f
            .authority
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            h.insert(HOST, host);
        }
    }
}

/// A fresh request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let bits = fastrand::u128(..);
    for (i, slot) in out.iter_mut().enumerate() {
        let nibble = (bits >> (i * 4)) & 0xf;
        *slot = HEX[nibble as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), for logs.
pub fn trace_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(&TRACEPARENT)?.to_str().ok()?;
    let id = value.split('-').nth(1)?;
    (id.len() == 32).then_some(id)
}

/// RFC 9112 section 3.2: a request with more than one `Host`, or an HTTP/1.1 request
/// without one, is refused; an absolute-form target's authority replaces `Host`. Returns
/// the refusal reason.
pub fn check_host<B>(request: &mut http::Request<B>) -> Result<(), &'static str> {
    let (present, duplicate) = {
        let mut hosts = request.headers().get_all(HOST).iter();
        (hosts.next().cloned(), hosts.next().is_some())
    };
    if duplicate {
        return Err("duplicate_host");
    }
    match (request.uri().authority(), present) {
        (Some(authority), Some(host)) if host.as_bytes() != authority.as_str().as_bytes() => {
            if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(HOST, value);
            }
            Ok(())
        }
        (Some(_), _) => Ok(()),
        (None, None) if request.version() == http::Version::HTTP_11 => Err("missing_host"),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rewrite(h: &mut HeaderMap, upgrade: Option<&HeaderValue>, authority: Option<&str>) {
        let route = HeaderValue::from_static("checkout");
        let authority = authority.map(|a| a.parse::<http::uri::Authority>().unwrap());
        rewrite_request_headers(
            h,
            &Forwarding {
                route: &route,
                peer: "10.0.0.7",
                tls: true,
                upgrade,
                authority: authority.as_ref(),
            },
        );
    }

    #[test]
    fn the_upstream_head_carries_rampart_headers_in_place_of_the_clients() {
        let mut h = HeaderMap::new();
        h.insert(&X_RAMPART_ROUTE, HeaderValue::from_static("forged"));
        h.insert(&X_RAMPART_BACKEND, HeaderValue::from_static("canary"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        h.insert(HOST, HeaderValue::from_static("shop.example"));
        rewrite(&mut h, None, Some("other.example"));
        assert_eq!(h[&X_RAMPART_ROUTE], "checkout");
        assert!(
            h.get(&X_RAMPART_BACKEND).is_none(),
            "set per attempt, not here"
        );
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.1, 10.0.0.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[HOST], "shop.example", "a Host the client sent is kept");
        assert_eq!(h[&X_REQUEST_ID].len(), 32);
    }

    #[test]
    fn a_client_request_id_is_kept_and_a_missing_host_comes_from_the_authority() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        rewrite(&mut h, None, Some("shop.example:8080"));
        assert_eq!(h[&X_REQUEST_ID], "abc");
        assert_eq!(h[HOST], "shop.example:8080");
    }

    #[test]
    fn an_upgrade_survives_the_hop_by_hop_strip_and_te_trailers_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade, keep-alive"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let protocol = HeaderValue::from_static("websocket");
        rewrite(&mut h, Some(&protocol), None);
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[TE], "trailers");
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(HOST).is_none());
    }

    #[test]
    fn connection_named_headers_and_fixed_hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(TE).is_none());
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn names_from_every_connection_value_are_removed_whatever_their_case() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("keep-alive, X-One"));
        h.append(CONNECTION, HeaderValue::from_static(" x-two ,,"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn headers_without_hop_by_hop_names_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", HeaderValue::from_static("alice"));
        h.append("accept", HeaderValue::from_static("a"));
        h.append("accept", HeaderValue::from_static("b"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h, before);
    }

    #[test]
    fn te_named_by_connection_is_dropped_even_for_http2_upstreams() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("te"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, true);
        assert!(h.get(TE).is_none());
    }

    #[test]
    fn te_trailers_survives_for_http2_upstreams() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers, deflate"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(TE), Some(&HeaderValue::from_static("trailers")));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "127.0.0.1");
        assert_eq!(
            h.get(&X_FORWARDED_FOR),
            Some(&HeaderValue::from_static("127.0.0.1"))
        );
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        append_forwarded_for(&mut h, "192.0.2.1");
        assert_eq!(
            h.get(&X_FORWARDED_FOR),
            Some(&HeaderValue::from_static("127.0.0.1, 10.0.0.1, 192.0.2.1"))
        );
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_request_id());
    }
}
