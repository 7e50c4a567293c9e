//! Which route a request belongs to: first match in file order (docs/routing.md#matching).

use crate::config::{Config, RouteMatch};

/// What route matching needs to know about a request; the proxy implements it over HTTP.
pub trait RequestFacts {
    /// Method, e.g. `GET`.
    fn method(&self) -> &str;
    /// Host from `:authority` or `Host`, possibly with a port.
    fn host(&self) -> Option<&str>;
    /// The path, without query.
    fn path(&self) -> &str;
    /// First value of a header (lowercase name), if present and valid UTF-8.
    fn header(&self, name: &str) -> Option<&str>;
    /// Raw value of the first cookie with this name.
    fn cookie(&self, name: &str) -> Option<&str>;
}

/// Index of the first route of `config` that takes the request, or `None` for the default.
pub fn match_route<F: RequestFacts + ?Sized>(config: &Config, facts: &F) -> Option<usize> {
    config
        .routes
        .iter()
        .position(|route| matches(&route.matcher, facts))
}

/// Whether one route's `match` block takes the request.
pub fn matches<F: RequestFacts + ?Sized>(m: &RouteMatch, facts: &F) -> bool {
    path_matches(&m.path_prefix, facts.path())
        && (m.methods.is_empty() || m.methods.iter().any(|x| x == facts.method()))
        && (m.hosts.is_empty() || facts.host().is_some_and(|h| host_matches(&m.hosts, h)))
        && m.headers
            .iter()
            .all(|(name, value)| facts.header(name) == Some(value.as_str()))
}

/// Whole-segment prefix match: `/checkout` takes `/checkout` and `/checkout/x`, not
/// `/checkoutx`. The prefix is stored without a trailing slash (`/` alone takes all).
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Case-insensitive host match ignoring any port on the request's host.
pub fn host_matches(hosts: &[String], request_host: &str) -> bool {
    let host = strip_port(request_host);
    let host = host.strip_suffix('.').unwrap_or(host);
    hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_matches_whole_segments_only() {
        assert!(path_matches("/checkout", "/checkout"));
        assert!(path_matches("/checkout", "/checkout/"));
        assert!(path_matches("/checkout", "/checkout/x"));
        assert!(!path_matches("/checkout", "/checkoutx"));
        assert!(!path_matches("/checkout", "/check"));
        assert!(path_matches("/", "/anything"));
    }

    #[test]
    fn hosts_match_case_insensitively_without_port() {
        let hosts = vec!["shop.example.com".to_string(), "::1".to_string()];
        assert!(host_matches(&hosts, "Shop.Example.COM:8443"));
        assert!(host_matches(&hosts, "shop.example.com"));
        assert!(host_matches(&hosts, "[::1]:80"));
        assert!(!host_matches(&hosts, "example.com"));
    }
}
