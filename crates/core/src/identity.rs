//! Who is asking: the identity a request is bucketed by (docs/routing.md#identity).
//!
//! Sources are tried in the route's order and the first present one wins. Header values are
//! their first value trimmed (empty = absent), cookies their raw value, and `client_ip` the
//! peer address or, behind trusted proxies, the rightmost untrusted `x-forwarded-for` entry.
//! Nothing here allocates: IPs are formatted into a stack buffer.

use crate::config::IdentitySource;
use crate::matching::RequestFacts;
use ipnet::IpNet;
use std::io::Write;
use std::net::IpAddr;

/// An IP address as text (dotted quad or RFC 5952), held on the stack.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    /// Formats `ip`, turning IPv4-mapped IPv6 addresses into IPv4 first.
    ///
    /// Every proxied request formats its peer for `x-forwarded-for`, so IPv4 (the usual
    /// case) is written digit by digit rather than through `core::fmt`; the text is the
    /// same as `Ipv4Addr`'s `Display`.
    pub fn new(ip: IpAddr) -> IpText {
        let mut buf = [0u8; 48];
        let len = match canonical_ip(ip) {
            IpAddr::V4(v4) => write_ipv4(v4.octets(), &mut buf),
            v6 => {
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                // 48 bytes hold the longest IPv6 text (45), so the write cannot fail.
                let _ = write!(cursor, "{v6}");
                usize::try_from(cursor.position()).unwrap_or(0)
            }
        };
        IpText { buf, len }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

/// Writes `a.b.c.d` in decimal at the start of `buf`; returns its length (at most 15).
fn write_ipv4(octets: [u8; 4], buf: &mut [u8; 48]) -> usize {
    let mut slots = buf.iter_mut();
    let mut len = 0;
    let mut put = |byte: u8| {
        if let Some(slot) = slots.next() {
            *slot = byte;
            len += 1;
        }
    };
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            put(b'.');
        }
        if octet >= 100 {
            put(b'0' + octet / 100);
        }
        if octet >= 10 {
            put(b'0' + octet / 10 % 10);
        }
        put(b'0' + octet % 10);
    }
    len
}

/// A request's identity: borrowed from the request, or an address formatted on the stack.
pub enum Identity<'a> {
    /// A header or cookie value.
    Text(&'a str),
    /// The client's address.
    Ip(IpText),
}

impl Identity<'_> {
    /// The identity as the text that is hashed.
    pub fn as_str(&self) -> &str {
        match self {
            Identity::Text(s) => s,
            Identity::Ip(ip) => ip.as_str(),
        }
    }
}

/// The identity of a request from the first present source, or `None` when all are absent.
pub fn extract<'a, F: RequestFacts + ?Sized>(
    sources: &[IdentitySource],
    facts: &'a F,
    client_ip: Option<IpAddr>,
) -> Option<Identity<'a>> {
    for source in sources {
        let found = match source {
            IdentitySource::Header(name) => facts
                .header(name)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(Identity::Text),
            IdentitySource::Cookie(name) => facts.cookie(name).map(Identity::Text),
            IdentitySource::ClientIp => client_ip.map(|ip| Identity::Ip(IpText::new(ip))),
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `::ffff:a.b.c.d` as the IPv4 address it carries; every other address unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|net| net.contains(&ip))
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// rightmost `x-forwarded-for` address that is not trusted (the leftmost if all are).
///
/// `forwarded_for` yields the values of every `x-forwarded-for` header in order.
pub fn client_ip<'a, I>(peer: IpAddr, forwarded_for: I, proxies: &[IpNet]) -> IpAddr
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: DoubleEndedIterator,
{
    let peer = canonical_ip(peer);
    if proxies.is_empty() || !trusted(peer, proxies) {
        return peer;
    }
    let mut leftmost = peer;
    for value in forwarded_for.into_iter().rev() {
        for entry in value.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_forwarded_ip(entry) else {
                // A value a trusted proxy would never write: stop believing the chain here.
                return leftmost;
            };
            let ip = canonical_ip(ip);
            if !trusted(ip, proxies) {
                return ip;
            }
            leftmost = ip;
        }
    }
    leftmost
}

/// Parses an `x-forwarded-for` entry: a bare address, or `[v6]:port` / `v4:port`.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    entry.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().filter_map(|s| s.parse().ok()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn mapped_ipv6_is_formatted_as_ipv4() {
        assert_eq!(IpText::new(ip("::ffff:10.1.2.3")).as_str(), "10.1.2.3");
        assert_eq!(IpText::new(ip("2001:db8::1")).as_str(), "2001:db8::1");
        let longest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe";
        assert_eq!(IpText::new(ip(longest)).as_str(), longest);
    }

    #[test]
    fn ipv4_text_is_what_display_writes() {
        let mut seed = 0x2545_f491_u32;
        let mut samples = vec![
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [10, 0, 0, 1],
            [100, 20, 3, 40],
        ];
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            samples.push(seed.to_be_bytes());
        }
        for octets in samples {
            let v4 = std::net::Ipv4Addr::from(octets);
            assert_eq!(IpText::new(IpAddr::V4(v4)).as_str(), v4.to_string());
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let proxies = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("192.0.2.1"), ["203.0.113.9"], &proxies),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_ip(ip("192.0.2.1"), ["203.0.113.9"], &[]),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn a_trusted_peer_yields_the_rightmost_untrusted_forwarded_address() {
        let proxies = nets(&["10.0.0.0/8"]);
        let got = client_ip(
            ip("10.0.0.1"),
            ["198.51.100.7, 203.0.113.9, 10.0.0.2"],
            &proxies,
        );
        assert_eq!(got, ip("203.0.113.9"));
        let two_headers = client_ip(ip("10.0.0.1"), ["198.51.100.7", "203.0.113.9"], &proxies);
        assert_eq!(two_headers, ip("203.0.113.9"));
    }

    #[test]
    fn all_trusted_forwarded_addresses_yield_the_leftmost() {
        let proxies = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), ["10.0.0.3, 10.0.0.2"], &proxies),
            ip("10.0.0.3")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), [], &proxies), ip("10.0.0.1"));
    }
}
