//! The core's view of an HTTP request ([`RequestFacts`]) over `http::request::Parts`,
//! borrowing everything: no allocation per request.
//!
//! Header and cookie values are read as UTF-8, as identities are bucketed
//! (docs/routing.md#identity): a client that sends `x-user-id: bücher` as UTF-8 bytes (HTTP's
//! obs-text) gets the bucket of `bücher`, the one an OFREP `targetingKey` of `bücher` gets. A
//! value that is not UTF-8 counts as absent.

use http::header::{HeaderValue, COOKIE, HOST};
use http::request::Parts;
use rampart_core::matching::RequestFacts;

/// Borrowed facts of one request.
pub struct HttpFacts<'a> {
    parts: &'a Parts,
}

impl<'a> HttpFacts<'a> {
    /// Facts of the request whose head is `parts`.
    pub fn new(parts: &'a Parts) -> Self {
        HttpFacts { parts }
    }
}

impl RequestFacts for HttpFacts<'_> {
    fn method(&self) -> &str {
        self.parts.method.as_str()
    }

    fn host(&self) -> Option<&str> {
        self.parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| self.parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
    }

    fn path(&self) -> &str {
        self.parts.uri.path()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).and_then(utf8)
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        // HTTP/2 may split cookies over several headers; the first cookie of the name wins.
        for value in self.parts.headers.get_all(COOKIE) {
            let Some(text) = utf8(value) else { continue };
            for pair in text.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k.trim() == name {
                        return Some(v.trim());
                    }
                }
            }
        }
        None
    }
}

/// A header value as text: its bytes when they are UTF-8 (visible ASCII always is).
fn utf8(value: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(value.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rampart_core::config::IdentitySource;
    use rampart_core::identity;

    fn parts(headers: &[(&str, &[u8])]) -> Parts {
        let mut request = http::Request::get("/checkout");
        for (name, value) in headers {
            request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn utf8_header_values_are_read_as_their_text() {
        let p = parts(&[
            ("x-user-id", "  bücher-🚀 ".as_bytes()),
            ("x-ascii", b"plain"),
        ]);
        let facts = HttpFacts::new(&p);
        assert_eq!(facts.header("x-user-id"), Some("  bücher-🚀 "));
        assert_eq!(facts.header("x-ascii"), Some("plain"));
        // Found by the ofrep_body fuzz target: the same identity as an OFREP targetingKey
        // and as a header must give the same bucket.
        let id = identity::extract(&[IdentitySource::Header("x-user-id".into())], &facts, None);
        assert_eq!(
            id.map(|i| i.as_str().to_string()),
            Some("bücher-🚀".to_string())
        );
    }

    #[test]
    fn values_that_are_not_utf8_count_as_absent() {
        let p = parts(&[("x-user-id", b"caf\xe9"), ("cookie", b"sid=caf\xe9")]);
        let facts = HttpFacts::new(&p);
        assert_eq!(facts.header("x-user-id"), None);
        assert_eq!(facts.cookie("sid"), None);
    }

    #[test]
    fn utf8_cookies_are_read_and_the_first_of_a_name_wins() {
        let p = parts(&[
            ("cookie", "theme=dark; sid=jürgen".as_bytes()),
            ("cookie", b"sid=second"),
        ]);
        let facts = HttpFacts::new(&p);
        assert_eq!(facts.cookie("sid"), Some("jürgen"));
        assert_eq!(facts.cookie("theme"), Some("dark"));
        assert_eq!(facts.cookie("missing"), None);
    }
}
