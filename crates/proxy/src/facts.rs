//! The core's view of an HTTP request ([`RequestFacts`]) over `http::request::Parts`,
//! borrowing everything: no allocation per request.

use http::header::{COOKIE, HOST};
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
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        // HTTP/2 may split cookies over several headers; the first cookie of the name wins.
        for value in self.parts.headers.get_all(COOKIE) {
            let Ok(text) = value.to_str() else { continue };
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
