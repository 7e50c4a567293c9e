//! From YAML text to a [`Config`]: the serde pass, then every semantic check, collecting
//! all errors with their field paths and positions instead of stopping at the first.

use super::error::{ConfigError, ConfigErrors};
use super::lenient::{Location, Spanned};
use super::model::*;
use super::raw::*;
use super::values::{DurationValue, Percent};
use crate::bucket::key_prefix;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A route's backends as they are named: slot 0 is stable, then each new upstream gets the
/// next slot.
struct Backends(Vec<UpstreamId>);

impl Backends {
    /// The slot of `id`, added if it is new.
    fn slot(&mut self, id: UpstreamId) -> BackendSlot {
        match self.0.iter().position(|b| *b == id) {
            Some(i) => BackendSlot(u8::try_from(i).unwrap_or(u8::MAX)),
            None => {
                self.0.push(id);
                BackendSlot(u8::try_from(self.0.len() - 1).unwrap_or(u8::MAX))
            }
        }
    }
}

/// Idle keep-alive connections kept per upstream unless `pool.max_idle` says otherwise.
const DEFAULT_POOL_MAX_IDLE: usize = 128;
/// How long an idle upstream connection is kept unless `pool.idle_timeout` says otherwise.
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Parses and validates a config file's text.
///
/// Every error is returned, type errors and semantic ones together (see
/// [`super::lenient`]); a semantic error about a value that was already reported as
/// malformed is left out.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut read = super::lenient::deserialize::<RawConfig>(text);
    let mut v = Validator::default();
    let config = read.value.take().and_then(|raw| v.config(raw));
    let mut errors = std::mem::take(&mut read.errors);
    errors.extend(v.errors.into_iter().filter(|e| !read.is_quiet(&e.path)));
    if errors.is_empty() {
        config.ok_or_else(|| ConfigErrors(Vec::new()))
    } else {
        errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

fn default_listen(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn dur(v: Option<DurationValue>, default: Duration) -> Duration {
    v.map(|d| d.0).unwrap_or(default)
}

fn sdur(v: &Option<Spanned<DurationValue>>, default: Duration) -> Duration {
    v.as_ref().map(|d| d.value.0).unwrap_or(default)
}

fn is_route_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_upstream_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// RFC 9110 token characters, for header names and methods.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Hundredths of a percent as decimal text (`10025` -> `100.25`), for sums above 100.
fn format_hundredths(value: u32) -> String {
    match value % 100 {
        0 => format!("{}", value / 100),
        f if f % 10 == 0 => format!("{}.{}", value / 100, f / 10),
        f => format!("{}.{f:02}", value / 100),
    }
}

fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || !(1970..=9999).contains(&year) {
        return None;
    }
    Some(crate::clock::days_from_civil(year, month, day))
}

struct ParsedUrl {
    scheme: Scheme,
    host: String,
    port: u16,
}

fn parse_upstream_url(url: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!(
            "invalid url {url:?}: must start with http:// or https://"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") || authority.contains(['?', '#', '@']) {
        return Err(format!(
            "invalid url {url:?}: only scheme, host and port are allowed (no path, query or user)"
        ));
    }
    let default_port = if scheme == Scheme::Https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("invalid url {url:?}: unclosed '[' in host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("invalid url {url:?}: bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("invalid url {url:?}: bad host")),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("invalid url {url:?}: bad port {p:?}"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(format!(
            "invalid url {url:?}: host and a non-zero port are required"
        ));
    }
    if !host.is_ascii() {
        // HTTP carries host names as ASCII: an internationalised name must be written in
        // its IDNA form (xn--...), as DNS and the Host header know it.
        return Err(format!(
            "invalid url {url:?}: host {host:?} is not ASCII; write an internationalised name in its IDNA (xn--) form"
        ));
    }
    let bracketed = authority.starts_with('[');
    let allowed = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (bracketed && matches!(b, b':' | b'%'))
    };
    if let Some(bad) = host.bytes().find(|&b| !allowed(b)) {
        return Err(format!(
            "invalid url {url:?}: {:?} is not allowed in a host name",
            char::from(bad)
        ));
    }
    Ok(ParsedUrl {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

impl Validator {
    fn err(&mut self, at: Location, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            line: at.line(),
            column: at.column(),
            path: path.into(),
            message: message.into(),
        });
    }

    fn addr(
        &mut self,
        value: &Option<Spanned<String>>,
        path: &str,
        default: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        match value {
            None => default,
            Some(s) => {
                match s.value.trim().parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        self.err(
                        s.referenced,
                        path,
                        format!("invalid listen address {:?}: expected IP:PORT such as 0.0.0.0:8080", s.value),
                    );
                        default
                    }
                }
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Option<Config> {
        if raw.version.value != 1 {
            self.err(
                raw.version.referenced,
                "version",
                format!(
                    "unsupported version {}: this Rampart reads version 1",
                    raw.version.value
                ),
            );
        }
        let listen = self.addr(&raw.listen, "listen", Some(default_listen(8080)));
        let metrics_listen = self.addr(
            &raw.metrics_listen,
            "metrics_listen",
            Some(default_listen(9090)),
        );
        let admin_listen = self.addr(&raw.admin_listen, "admin_listen", None);
        let tls = raw.tls.as_ref().map(|t| TlsFiles {
            cert_file: PathBuf::from(&t.value.cert_file),
            key_file: PathBuf::from(&t.value.key_file),
        });
        if let (Some(admin), Some(raw_admin)) = (admin_listen, raw.admin_listen.as_ref()) {
            if !admin.ip().is_loopback() && tls.is_none() {
                self.err(
                    raw_admin.referenced,
                    "admin_listen",
                    format!(
                        "{admin} is not a loopback address: the admin API off loopback needs `tls`"
                    ),
                );
            }
        }
        let ofrep_listen = self.addr(&raw.ofrep_listen, "ofrep_listen", None);
        if let (Some(ofrep), Some(raw_ofrep)) = (ofrep_listen, raw.ofrep_listen.as_ref()) {
            if !ofrep.ip().is_loopback() && tls.is_none() {
                self.err(
                    raw_ofrep.referenced,
                    "ofrep_listen",
                    format!(
                        "{ofrep} is not a loopback address: flag evaluation off loopback needs `tls`"
                    ),
                );
            }
        }
        let mut bound: Vec<(&str, SocketAddr)> = Vec::new();
        for (name, addr, raw_addr) in [
            ("listen", listen, &raw.listen),
            ("metrics_listen", metrics_listen, &raw.metrics_listen),
            ("admin_listen", admin_listen, &raw.admin_listen),
            ("ofrep_listen", ofrep_listen, &raw.ofrep_listen),
        ] {
            let Some(addr) = addr else { continue };
            if let Some((other, _)) = bound.iter().find(|(_, a)| {
                a.port() == addr.port()
                    && addr.port() != 0
                    && (a.ip() == addr.ip()
                        || a.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            }) {
                let at = raw_addr
                    .as_ref()
                    .map(|s| s.referenced)
                    .unwrap_or(Location::UNKNOWN);
                self.err(at, name, format!("{addr} is also used by {other}"));
            }
            bound.push((name, addr));
        }
        let threads = raw.threads.as_ref().and_then(|t| {
            if t.value == 0 || t.value > 1024 {
                self.err(
                    t.referenced,
                    "threads",
                    format!("invalid threads {}: must be 1 to 1024", t.value),
                );
                None
            } else {
                Some(t.value)
            }
        });
        let access_log_sample = match raw.access_log.as_ref().and_then(|a| a.sample.as_ref()) {
            None => 0.01,
            Some(s) if (0.0..=1.0).contains(&s.value) => s.value,
            Some(s) => {
                self.err(
                    s.referenced,
                    "access_log.sample",
                    format!("invalid sample {}: must be between 0 and 1", s.value),
                );
                0.0
            }
        };
        let mut trusted_proxies = Vec::new();
        for (i, p) in raw.trusted_proxies.iter().flatten().enumerate() {
            let text = p.value.trim();
            let net = text
                .parse::<IpNet>()
                .ok()
                .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from));
            match net {
                Some(n) => trusted_proxies.push(n.trunc()),
                None => self.err(
                    p.referenced,
                    format!("trusted_proxies[{i}]"),
                    format!("invalid address or CIDR {text:?}"),
                ),
            }
        }
        let drain = Drain {
            delay: dur(
                raw.drain.as_ref().and_then(|d| d.delay),
                Duration::from_secs(5),
            ),
            timeout: dur(
                raw.drain.as_ref().and_then(|d| d.timeout),
                Duration::from_secs(20),
            ),
        };
        let mut limits = raw
            .limits
            .as_ref()
            .map(|l| self.limits(&l.value))
            .unwrap_or_default();
        if let Some(top) = &raw.max_connections {
            let in_limits = raw
                .limits
                .as_ref()
                .is_some_and(|l| l.value.max_connections.is_some());
            if in_limits {
                self.err(
                    top.referenced,
                    "max_connections",
                    "also set as limits.max_connections: keep one",
                );
            } else if (1..=1_000_000).contains(&top.value) {
                limits.max_connections = Some(top.value);
            } else {
                self.err(
                    top.referenced,
                    "max_connections",
                    format!(
                        "invalid max_connections {}: must be 1 to 1000000",
                        top.value
                    ),
                );
            }
        }

        let upstreams = self.upstreams(&raw);
        let ids: HashMap<&str, UpstreamId> = upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| {
                u16::try_from(i)
                    .ok()
                    .map(|i| (u.name.as_str(), UpstreamId(i)))
            })
            .collect();
        let default_upstream = match &raw.default_upstream {
            Some(s) => match ids.get(s.value.as_str()) {
                Some(id) => Some(*id),
                None => {
                    self.err(
                        s.referenced,
                        "default_upstream",
                        format!("unknown upstream {:?}", s.value),
                    );
                    None
                }
            },
            None => match ids.get("stable") {
                Some(id) => Some(*id),
                None => {
                    self.err(
                        Location::UNKNOWN,
                        "default_upstream",
                        "required: no upstream is named \"stable\"",
                    );
                    None
                }
            },
        };
        let mut routes = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, route) in raw.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if let Some(first) = names.get(&route.value.name.value) {
                self.err(
                    route.value.name.referenced,
                    format!("{path}.name"),
                    format!(
                        "duplicate route name {:?} (first at routes[{first}])",
                        route.value.name.value
                    ),
                );
            } else {
                names.insert(route.value.name.value.clone(), i);
            }
            if let Some(r) = self.route(&path, route, &ids, default_upstream) {
                routes.push(r);
            }
        }
        Some(Config {
            version: raw.version.value,
            listen: listen?,
            tls,
            metrics_listen: metrics_listen?,
            admin_listen,
            admin_tokens_file: raw
                .admin_tokens_file
                .as_ref()
                .map(|s| PathBuf::from(&s.value)),
            ofrep_listen,
            state_dir: raw.state_dir.as_ref().map(|s| PathBuf::from(&s.value)),
            threads,
            access_log_sample,
            trusted_proxies,
            drain,
            limits,
            default_upstream: default_upstream?,
            upstreams,
            routes,
        })
    }

    /// `limits:`; out-of-range values are errors and fall back to the default.
    fn limits(&mut self, raw: &RawLimits) -> Limits {
        let defaults = Limits::default();
        let mut count = |value: &Option<Spanned<u32>>, name: &str, min: u32, max: u32| {
            let v = value.as_ref()?;
            if (min..=max).contains(&v.value) {
                Some(v.value)
            } else {
                self.err(
                    v.referenced,
                    format!("limits.{name}"),
                    format!("invalid {name} {}: must be {min} to {max}", v.value),
                );
                None
            }
        };
        let max_connections = count(&raw.max_connections, "max_connections", 1, 1_000_000);
        let listen_backlog = count(&raw.listen_backlog, "listen_backlog", 1, 65_535)
            .unwrap_or(defaults.listen_backlog);
        let h2_max_concurrent_streams = count(
            &raw.h2_max_concurrent_streams,
            "h2_max_concurrent_streams",
            1,
            10_000,
        )
        .unwrap_or(defaults.h2_max_concurrent_streams);
        let mut span = |value: &Option<Spanned<DurationValue>>,
                        name: &str,
                        min: Duration,
                        max: Duration,
                        default: Duration| {
            let Some(v) = value.as_ref() else {
                return default;
            };
            if (min..=max).contains(&v.value.0) {
                v.value.0
            } else {
                self.err(
                    v.referenced,
                    format!("limits.{name}"),
                    format!(
                        "invalid {name} {:?}: must be {} to {}",
                        v.value.0,
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                );
                default
            }
        };
        let ms = Duration::from_millis;
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Limits {
            max_connections,
            listen_backlog,
            header_timeout: span(
                &raw.header_timeout,
                "header_timeout",
                ms(100),
                hours(1),
                defaults.header_timeout,
            ),
            keepalive_timeout: span(
                &raw.keepalive_timeout,
                "keepalive_timeout",
                ms(100),
                hours(1),
                defaults.keepalive_timeout,
            ),
            h2_idle_timeout: span(
                &raw.h2_idle_timeout,
                "h2_idle_timeout",
                ms(100),
                hours(24),
                defaults.h2_idle_timeout,
            ),
            send_timeout: span(
                &raw.send_timeout,
                "send_timeout",
                ms(100),
                hours(1),
                defaults.send_timeout,
            ),
            h2_max_concurrent_streams,
        }
    }

    fn upstreams(&mut self, raw: &RawConfig) -> Vec<Upstream> {
        if raw.upstreams.is_empty() {
            self.err(
                Location::UNKNOWN,
                "upstreams",
                "at least one upstream is required",
            );
        }
        let mut out = Vec::new();
        for (name, spanned) in &raw.upstreams {
            let path = format!("upstreams.{name}");
            let u = &spanned.value;
            if !is_upstream_name(name) {
                self.err(spanned.referenced, &path, format!("invalid upstream name {name:?}: use letters, digits, '-', '_' or '.', not starting with '_'"));
            }
            // A bad url is reported once; the upstream still exists by name, so the routes
            // that name it are not reported as naming an unknown upstream.
            let (parsed, url_ok) = match parse_upstream_url(u.url.value.trim()) {
                Ok(p) => (p, true),
                Err(msg) => {
                    self.err(u.url.referenced, format!("{path}.url"), msg);
                    let unknown = ParsedUrl {
                        scheme: Scheme::Http,
                        host: String::new(),
                        port: 0,
                    };
                    (unknown, false)
                }
            };
            let protocol = match u.protocol.as_ref().map(|p| p.value) {
                None | Some(RawProtocol::Http1) => Protocol::Http1,
                Some(RawProtocol::H2) => Protocol::H2,
                Some(RawProtocol::H2c) => Protocol::H2c,
            };
            if let Some(p) = u.protocol.as_ref().filter(|_| url_ok) {
                if protocol == Protocol::H2 && parsed.scheme == Scheme::Http {
                    self.err(
                        p.referenced,
                        format!("{path}.protocol"),
                        "h2 needs an https:// url; use h2c for cleartext HTTP/2",
                    );
                }
                if protocol == Protocol::H2c && parsed.scheme == Scheme::Https {
                    self.err(
                        p.referenced,
                        format!("{path}.protocol"),
                        "h2c is cleartext; use h2 with an https:// url",
                    );
                }
            }
            if u.ca_file.is_some() && url_ok && parsed.scheme == Scheme::Http {
                self.err(
                    u.url.referenced,
                    format!("{path}.ca_file"),
                    "ca_file needs an https:// url",
                );
            }
            let health_check = u.health_check.as_ref().map(|h| {
                let hc = &h.value;
                let check = HealthCheck {
                    path: hc.path.clone().unwrap_or_else(|| "/healthz".to_string()),
                    interval: dur(hc.interval, Duration::from_secs(5)),
                    timeout: dur(hc.timeout, Duration::from_secs(1)),
                    unhealthy_after: hc.unhealthy_after.unwrap_or(3),
                    healthy_after: hc.healthy_after.unwrap_or(2),
                };
                if !check.path.starts_with('/') {
                    self.err(
                        h.referenced,
                        format!("{path}.health_check.path"),
                        format!("path {:?} must start with '/'", check.path),
                    );
                }
                if check.interval.is_zero()
                    || check.timeout.is_zero()
                    || check.unhealthy_after == 0
                    || check.healthy_after == 0
                {
                    self.err(
                        h.referenced,
                        format!("{path}.health_check"),
                        "interval, timeout, unhealthy_after and healthy_after must be above zero",
                    );
                }
                check
            });
            for (field, value) in [
                ("connect_timeout", &u.connect_timeout),
                ("request_timeout", &u.request_timeout),
                ("idle_timeout", &u.idle_timeout),
            ] {
                if let Some(v) = value {
                    if v.value.0.is_zero() {
                        self.err(
                            v.referenced,
                            format!("{path}.{field}"),
                            "must be above zero",
                        );
                    }
                }
            }
            let max_inflight = u.max_inflight.as_ref().map(|m| {
                if m.value == 0 {
                    self.err(
                        m.referenced,
                        format!("{path}.max_inflight"),
                        "must be at least 1",
                    );
                }
                m.value
            });
            let (pool_max_idle, pool_idle_timeout) = match &u.pool {
                None => (DEFAULT_POOL_MAX_IDLE, DEFAULT_POOL_IDLE_TIMEOUT),
                Some(p) => {
                    let idle_timeout = dur(p.value.idle_timeout, DEFAULT_POOL_IDLE_TIMEOUT);
                    if idle_timeout.is_zero() {
                        self.err(
                            p.referenced,
                            format!("{path}.pool.idle_timeout"),
                            "must be above zero (max_idle: 0 keeps no idle connection)",
                        );
                    }
                    let max_idle = p
                        .value
                        .max_idle
                        .map_or(DEFAULT_POOL_MAX_IDLE, |n| n as usize);
                    (max_idle, idle_timeout)
                }
            };
            let authority = if parsed.host.contains(':') {
                format!("[{}]:{}", parsed.host, parsed.port)
            } else {
                format!("{}:{}", parsed.host, parsed.port)
            };
            out.push(Upstream {
                name: name.clone(),
                url: u.url.value.trim().to_string(),
                scheme: parsed.scheme,
                authority,
                host: parsed.host,
                port: parsed.port,
                ca_file: u.ca_file.as_ref().map(PathBuf::from),
                protocol,
                health_check,
                connect_timeout: sdur(&u.connect_timeout, Duration::from_secs(1)),
                request_timeout: sdur(&u.request_timeout, Duration::from_secs(30)),
                idle_timeout: sdur(&u.idle_timeout, Duration::from_secs(300)),
                max_inflight,
                pool_max_idle,
                pool_idle_timeout,
            });
        }
        if out.len() > usize::from(u16::MAX) {
            self.err(Location::UNKNOWN, "upstreams", "too many upstreams");
        }
        out
    }

    /// Validates one route: each block by its own function, in file order of concern.
    fn route(
        &mut self,
        path: &str,
        spanned: &Spanned<RawRoute>,
        ids: &HashMap<&str, UpstreamId>,
        default_upstream: Option<UpstreamId>,
    ) -> Option<Route> {
        let raw = &spanned.value;
        let at = spanned.referenced;
        let errors_before = self.errors.len();
        let name = raw.name.value.clone();
        if !is_route_name(&name) {
            self.err(
                raw.name.referenced,
                format!("{path}.name"),
                format!("invalid route name {name:?}: use a-z, 0-9, '-' and '_'"),
            );
        }
        let salt = match &raw.salt {
            Some(s) if s.value.is_empty() => {
                self.err(
                    s.referenced,
                    format!("{path}.salt"),
                    "salt must not be empty",
                );
                name.clone()
            }
            Some(s) => s.value.clone(),
            None => name.clone(),
        };
        let kind = match raw.kind {
            None | Some(RawKind::Canary) => RouteKind::Canary,
            Some(RawKind::Experiment) => RouteKind::Experiment,
            Some(RawKind::Toggle) => RouteKind::Toggle,
            Some(RawKind::Gate) => RouteKind::Gate,
        };
        let expires = raw.expires.as_ref().and_then(|e| {
            let day = parse_date(&e.value);
            if day.is_none() {
                self.err(
                    e.referenced,
                    format!("{path}.expires"),
                    format!("invalid date {:?}: expected YYYY-MM-DD", e.value),
                );
            }
            day
        });
        let killed = raw.killed.as_ref().map(|k| {
            if k.value.trim().is_empty() {
                self.err(
                    k.referenced,
                    format!("{path}.killed"),
                    "give the kill a reason (e.g. an incident id)",
                );
            }
            k.value.clone()
        });
        let matcher = self.matcher(path, raw.match_.as_ref());
        let identity = self.identity_sources(path, raw, at);
        let missing_identity = match raw.missing_identity {
            None | Some(RawMissingIdentity::Stable) => MissingIdentity::Stable,
            Some(RawMissingIdentity::Random) => MissingIdentity::Random,
        };
        let fallback = match raw.fallback {
            None | Some(RawFallback::ConnectFailure) => Fallback::ConnectFailure,
            Some(RawFallback::Never) => Fallback::Never,
            Some(RawFallback::Idempotent) => Fallback::Idempotent,
        };
        // Backends: slot 0 is stable, then split backends, then override-only backends.
        let stable = match &raw.stable {
            Some(s) => match ids.get(s.value.as_str()) {
                Some(id) => Some(*id),
                None => {
                    self.err(
                        s.referenced,
                        format!("{path}.stable"),
                        format!("unknown upstream {:?}", s.value),
                    );
                    None
                }
            },
            None => default_upstream,
        };
        let mut backends = Backends(vec![stable.unwrap_or(UpstreamId(0))]);
        let rollout = raw.rollout.as_ref().map(|r| self.rollout(path, r));
        let split = self.split(path, raw, at, ids, kind, rollout.as_ref(), &mut backends);
        let overrides = self.overrides(path, raw, ids, &mut backends);
        if backends.0.len() > usize::from(u8::MAX) {
            self.err(at, path, "too many backends on one route (255 at most)");
        }
        self.shape_rules(path, raw, at, kind, &split, &overrides);
        let breaker = raw.breaker.as_ref().map(|b| self.breaker(path, b));
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Route {
            key_prefix: key_prefix(&salt),
            name,
            salt,
            kind,
            owner: raw.owner.clone(),
            expires,
            expires_text: raw.expires.as_ref().map(|e| e.value.trim().to_string()),
            killed,
            matcher,
            identity,
            missing_identity,
            backends: backends.0,
            split,
            overrides,
            breaker,
            fallback,
            rollout: rollout.filter(|r| !r.steps.is_empty()),
        })
    }

    /// `identity:`: the sources in order (default `client_ip`).
    fn identity_sources(
        &mut self,
        path: &str,
        raw: &RawRoute,
        at: Location,
    ) -> Vec<IdentitySource> {
        match &raw.identity {
            None => vec![IdentitySource::ClientIp],
            Some(list) => {
                let mut sources = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    let text = s.value.trim();
                    let source = if text == "client_ip" {
                        Some(IdentitySource::ClientIp)
                    } else if let Some(h) = text.strip_prefix("header:").filter(|h| is_token(h)) {
                        Some(IdentitySource::Header(h.to_ascii_lowercase()))
                    } else {
                        text.strip_prefix("cookie:")
                            .filter(|c| is_token(c))
                            .map(|c| IdentitySource::Cookie(c.to_string()))
                    };
                    match source {
                        Some(s) => sources.push(s),
                        None => self.err(s.referenced, format!("{path}.identity[{i}]"), format!("invalid identity source {text:?}: expected header:NAME, cookie:NAME or client_ip")),
                    }
                }
                if list.is_empty() {
                    self.err(
                        at,
                        format!("{path}.identity"),
                        "at least one identity source is required",
                    );
                }
                sources
            }
        }
    }

    /// `split:`: each entry's backend and percent (a rollout drives the first entry's),
    /// the sum at most 100 %, a toggle's 0 or 100 %.
    #[allow(clippy::too_many_arguments)]
    fn split(
        &mut self,
        path: &str,
        raw: &RawRoute,
        at: Location,
        ids: &HashMap<&str, UpstreamId>,
        kind: RouteKind,
        rollout: Option<&RolloutConfig>,
        backends: &mut Backends,
    ) -> Vec<SplitEntry> {
        let mut split = Vec::new();
        let mut seen_split = HashSet::new();
        let mut sum: u32 = 0;
        for (i, entry) in raw.split.iter().flatten().enumerate() {
            let epath = format!("{path}.split[{i}]");
            let backend = &entry.value.backend;
            let id = match ids.get(backend.value.as_str()) {
                Some(id) => *id,
                None => {
                    self.err(
                        backend.referenced,
                        format!("{epath}.backend"),
                        format!("unknown upstream {:?}", backend.value),
                    );
                    continue;
                }
            };
            if !seen_split.insert(id) {
                self.err(
                    backend.referenced,
                    format!("{epath}.backend"),
                    format!("backend {:?} appears twice in the split", backend.value),
                );
            }
            let percent = match (&entry.value.percent, i == 0 && rollout.is_some()) {
                (Some(p), true) => {
                    self.err(
                        p.referenced,
                        format!("{epath}.percent"),
                        "a rollout drives this percent through rollout.steps: remove it",
                    );
                    p.value
                }
                (Some(p), false) => p.value,
                (None, true) => rollout
                    .and_then(|r| r.steps.last().copied())
                    .unwrap_or(Percent::ZERO),
                (None, false) => {
                    self.err(
                        entry.referenced,
                        format!("{epath}.percent"),
                        "percent is required",
                    );
                    Percent::ZERO
                }
            };
            sum += u32::from(percent.buckets());
            if kind == RouteKind::Toggle && percent != Percent::ZERO && percent != Percent::FULL {
                let at = entry
                    .value
                    .percent
                    .as_ref()
                    .map(|p| p.referenced)
                    .unwrap_or(entry.referenced);
                self.err(
                    at,
                    format!("{epath}.percent"),
                    format!("a toggle splits 0 or 100 %, not {percent}"),
                );
            }
            split.push(SplitEntry {
                backend: backends.slot(id),
                percent,
            });
        }
        if sum > 10_000 {
            let at = raw
                .split
                .as_ref()
                .and_then(|s| s.first())
                .map(|e| e.referenced)
                .unwrap_or(at);
            let what = if rollout.is_some() {
                " (with the rollout's largest step)"
            } else {
                ""
            };
            self.err(
                at,
                format!("{path}.split"),
                format!(
                    "percents sum to {}{what}, more than 100",
                    format_hundredths(sum)
                ),
            );
        }

        split
    }

    /// `overrides:`: the force header, identity allowlists, header overrides.
    fn overrides(
        &mut self,
        path: &str,
        raw: &RawRoute,
        ids: &HashMap<&str, UpstreamId>,
        backends: &mut Backends,
    ) -> Overrides {
        let mut overrides = Overrides::default();
        if let Some(o) = &raw.overrides {
            if let Some(f) = &o.force_header {
                if is_token(f.value.trim()) {
                    overrides.force_header = Some(f.value.trim().to_ascii_lowercase());
                } else {
                    self.err(
                        f.referenced,
                        format!("{path}.overrides.force_header"),
                        format!("invalid header name {:?}", f.value),
                    );
                }
            }
            let mut pinned: HashMap<&str, &str> = HashMap::new();
            for (backend, list) in o.identities.iter().flatten() {
                let opath = format!("{path}.overrides.identities.{backend}");
                let Some(id) = ids.get(backend.as_str()).copied() else {
                    self.err(
                        list.referenced,
                        opath,
                        format!("unknown upstream {backend:?}"),
                    );
                    continue;
                };
                let s = backends.slot(id);
                for identity in &list.value {
                    if let Some(other) = pinned.insert(identity.as_str(), backend.as_str()) {
                        if other != backend {
                            self.err(
                                list.referenced,
                                &opath,
                                format!("an identity is pinned to both {other:?} and {backend:?}"),
                            );
                        }
                    }
                    overrides.identities.insert(identity.clone(), s);
                }
            }
            for (i, h) in o.headers.iter().flatten().enumerate() {
                let hpath = format!("{path}.overrides.headers[{i}]");
                let name = h.value.name.value.trim();
                if !is_token(name) {
                    self.err(
                        h.value.name.referenced,
                        format!("{hpath}.name"),
                        format!("invalid header name {name:?}"),
                    );
                }
                let Some(id) = ids.get(h.value.backend.value.as_str()).copied() else {
                    self.err(
                        h.value.backend.referenced,
                        format!("{hpath}.backend"),
                        format!("unknown upstream {:?}", h.value.backend.value),
                    );
                    continue;
                };
                overrides.headers.push(HeaderOverride {
                    name: name.to_ascii_lowercase(),
                    value: h.value.value.clone(),
                    backend: backends.slot(id),
                });
            }
        }
        overrides
    }

    /// The shape rules of `kind`: a gate routes by overrides only, an experiment has
    /// variants, a rollout drives a canary's first split entry.
    fn shape_rules(
        &mut self,
        path: &str,
        raw: &RawRoute,
        at: Location,
        kind: RouteKind,
        split: &[SplitEntry],
        overrides: &Overrides,
    ) {
        match kind {
            RouteKind::Gate => {
                if !split.is_empty() {
                    let at = raw
                        .split
                        .as_ref()
                        .and_then(|s| s.first())
                        .map(|e| e.referenced)
                        .unwrap_or(at);
                    self.err(
                        at,
                        format!("{path}.split"),
                        "a gate routes by overrides only: remove the split",
                    );
                }
                if overrides.is_empty() {
                    self.err(
                        at,
                        format!("{path}.overrides"),
                        "a gate needs at least one override",
                    );
                }
            }
            RouteKind::Experiment if raw.split.as_ref().is_none_or(|s| s.is_empty()) => {
                self.err(
                    at,
                    format!("{path}.split"),
                    "an experiment needs one or more variants in its split",
                );
            }
            _ => {}
        }
        if let Some(r) = &raw.rollout {
            if kind != RouteKind::Canary {
                self.err(
                    r.referenced,
                    format!("{path}.rollout"),
                    format!(
                        "rollout is allowed on a canary only, not a {}",
                        kind.as_str()
                    ),
                );
            } else if split.is_empty() {
                self.err(
                    r.referenced,
                    format!("{path}.rollout"),
                    "a rollout drives the first split entry: add one, without a percent",
                );
            }
        }
    }

    fn matcher(&mut self, path: &str, raw: Option<&RawMatch>) -> RouteMatch {
        let mut m = RouteMatch {
            path_prefix: "/".to_string(),
            ..RouteMatch::default()
        };
        let Some(raw) = raw else { return m };
        if let Some(p) = &raw.path_prefix {
            if !p.value.starts_with('/') {
                self.err(
                    p.referenced,
                    format!("{path}.match.path_prefix"),
                    format!("path_prefix {:?} must start with '/'", p.value),
                );
            }
            let trimmed = p.value.trim_end_matches('/');
            m.path_prefix = if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            };
        }
        for (i, h) in raw.hosts.iter().flatten().enumerate() {
            let host = h.value.trim().to_ascii_lowercase();
            let host = match host.rsplit_once(':') {
                Some((name, port))
                    if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    name.to_string()
                }
                _ => host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            };
            if host.is_empty() {
                self.err(
                    h.referenced,
                    format!("{path}.match.hosts[{i}]"),
                    "empty host",
                );
            }
            m.hosts.push(host);
        }
        for (i, method) in raw.methods.iter().flatten().enumerate() {
            let upper = method.value.trim().to_ascii_uppercase();
            if !is_token(&upper) {
                self.err(
                    method.referenced,
                    format!("{path}.match.methods[{i}]"),
                    format!("invalid method {:?}", method.value),
                );
            }
            m.methods.push(upper);
        }
        for (name, value) in raw.headers.iter().flatten() {
            if !is_token(name) {
                self.err(
                    value.referenced,
                    format!("{path}.match.headers.{name}"),
                    format!("invalid header name {name:?}"),
                );
            }
            m.headers
                .push((name.to_ascii_lowercase(), value.value.clone()));
        }
        m
    }

    fn breaker(&mut self, path: &str, spanned: &Spanned<RawBreaker>) -> BreakerConfig {
        let b = &spanned.value;
        let bpath = format!("{path}.breaker");
        let window = sdur(&b.window, Duration::from_secs(30));
        if let Some(w) = &b.window {
            if w.value.0 < Duration::from_millis(100) {
                self.err(
                    w.referenced,
                    format!("{bpath}.window"),
                    "window must be at least 100ms",
                );
            }
        }
        let max_error_rate = match &b.max_error_rate {
            Some(r) if r.value > 0.0 && r.value <= 1.0 => r.value,
            Some(r) => {
                self.err(
                    r.referenced,
                    format!("{bpath}.max_error_rate"),
                    format!("invalid rate {}: must be above 0 and at most 1", r.value),
                );
                1.0
            }
            None => 0.05,
        };
        let max_latency = b.max_latency.as_ref().map(|m| {
            if !(m.value.quantile.value > 0.0 && m.value.quantile.value < 1.0) {
                self.err(
                    m.value.quantile.referenced,
                    format!("{bpath}.max_latency.quantile"),
                    format!(
                        "invalid quantile {}: must be between 0 and 1",
                        m.value.quantile.value
                    ),
                );
            }
            if m.value.threshold.0.is_zero() {
                self.err(
                    m.referenced,
                    format!("{bpath}.max_latency.threshold"),
                    "must be above zero",
                );
            }
            MaxLatency {
                quantile: m.value.quantile.value,
                threshold: m.value.threshold.0,
            }
        });
        let open_for = sdur(&b.open_for, Duration::from_secs(30));
        let max_open_for = sdur(&b.max_open_for, Duration::from_secs(300));
        if open_for.is_zero() {
            let at = b
                .open_for
                .as_ref()
                .map(|o| o.referenced)
                .unwrap_or(spanned.referenced);
            self.err(at, format!("{bpath}.open_for"), "must be above zero");
        }
        if max_open_for < open_for {
            let at = b
                .max_open_for
                .as_ref()
                .or(b.open_for.as_ref())
                .map(|o| o.referenced)
                .unwrap_or(spanned.referenced);
            self.err(
                at,
                format!("{bpath}.max_open_for"),
                "must be at least open_for",
            );
        }
        let half_open_requests = match &b.half_open_requests {
            Some(h) if h.value == 0 => {
                self.err(
                    h.referenced,
                    format!("{bpath}.half_open_requests"),
                    "must be at least 1",
                );
                1
            }
            Some(h) => h.value,
            None => 5,
        };
        let grpc_error_codes = match &b.grpc_error_codes {
            None => vec![2, 4, 8, 13, 14],
            Some(codes) => {
                for (i, c) in codes.iter().enumerate() {
                    if c.value > 16 {
                        self.err(
                            c.referenced,
                            format!("{bpath}.grpc_error_codes[{i}]"),
                            format!("invalid gRPC status {}: codes run 0 to 16", c.value),
                        );
                    }
                }
                codes.iter().map(|c| c.value).collect()
            }
        };
        BreakerConfig {
            window,
            min_requests: b.min_requests.unwrap_or(20),
            max_error_rate,
            consecutive_errors: b.consecutive_errors.unwrap_or(5),
            max_latency,
            open_for,
            max_open_for,
            half_open_requests,
            grpc_error_codes,
        }
    }

    fn rollout(&mut self, path: &str, spanned: &Spanned<RawRollout>) -> RolloutConfig {
        let r = &spanned.value;
        let rpath = format!("{path}.rollout");
        let steps: Vec<Percent> = r.steps.value.iter().map(|s| s.value).collect();
        if steps.is_empty() {
            self.err(
                r.steps.referenced,
                format!("{rpath}.steps"),
                "at least one step is required",
            );
        }
        for (i, pair) in r.steps.value.windows(2).enumerate() {
            if let [a, b] = pair {
                if b.value <= a.value {
                    self.err(
                        b.referenced,
                        format!("{rpath}.steps[{}]", i + 1),
                        format!("steps must rise: {} after {}", b.value, a.value),
                    );
                }
            }
        }
        if let Some(first) = r.steps.value.first() {
            if first.value == Percent::ZERO {
                self.err(
                    first.referenced,
                    format!("{rpath}.steps[0]"),
                    "a step of 0 % sends no traffic to judge",
                );
            }
        }
        if r.step_interval.value.0.is_zero() {
            self.err(
                r.step_interval.referenced,
                format!("{rpath}.step_interval"),
                "must be above zero",
            );
        }
        let started_at = r.started_at.as_ref().and_then(|s| {
            let t = humantime::parse_rfc3339_weak(s.value.trim()).ok();
            if t.is_none() {
                self.err(
                    s.referenced,
                    format!("{rpath}.started_at"),
                    format!(
                        "invalid time {:?}: expected RFC 3339 UTC such as 2026-12-01T10:00:00Z",
                        s.value
                    ),
                );
            }
            t
        });
        let max_error_rate_increase = match &r.max_error_rate_increase {
            Some(v) if (0.0..=1.0).contains(&v.value) => v.value,
            Some(v) => {
                self.err(
                    v.referenced,
                    format!("{rpath}.max_error_rate_increase"),
                    format!("invalid {}: must be between 0 and 1", v.value),
                );
                0.0
            }
            None => 0.01,
        };
        let max_latency_ratio = match &r.max_latency_ratio {
            Some(v) if v.value >= 1.0 && v.value.is_finite() => v.value,
            Some(v) => {
                self.err(
                    v.referenced,
                    format!("{rpath}.max_latency_ratio"),
                    format!("invalid {}: must be at least 1", v.value),
                );
                1.0
            }
            None => 1.5,
        };
        let prometheus = r.prometheus.as_ref().map(|p| {
            let url = p.value.url.value.trim().trim_end_matches('/').to_string();
            if parse_upstream_url(&url).is_err() {
                self.err(
                    p.value.url.referenced,
                    format!("{rpath}.prometheus.url"),
                    format!("invalid url {url:?}: expected http(s)://host:port"),
                );
            }
            PrometheusSource {
                url,
                selector: p.value.selector.clone(),
                delay: sdur(&p.value.delay, Duration::from_secs(60)),
            }
        });
        RolloutConfig {
            steps,
            step_interval: r.step_interval.value.0,
            started_at,
            min_requests: r.min_requests.unwrap_or(100).max(1),
            max_error_rate_increase,
            max_latency_ratio,
            on_failure: match r.on_failure {
                None | Some(RawOnFailure::Rollback) => OnFailure::Rollback,
                Some(RawOnFailure::Pause) => OnFailure::Pause,
            },
            prometheus,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A config with one route whose body is `route` (indented under `- name: r`).
    fn with_route(route: &str) -> String {
        let body: String = route.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "version: 1\ndefault_upstream: stable\nupstreams:\n  stable: {{url: \"http://127.0.0.1:1\"}}\n  canary: {{url: \"http://127.0.0.1:2\"}}\n  blue: {{url: \"http://127.0.0.1:3\"}}\nroutes:\n  - name: r\n{body}"
        )
    }

    /// The (path, message) of every error of a route body.
    fn errors(route: &str) -> Vec<(String, String)> {
        match parse(&with_route(route)) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    /// Asserts a route body gives exactly one error, at `path`, containing `message`.
    fn one_error(route: &str, path: &str, message: &str) {
        let errors = errors(route);
        assert_eq!(errors.len(), 1, "{route}: {errors:?}");
        assert_eq!(errors[0].0, path, "{route}");
        assert!(errors[0].1.contains(message), "{route}: {:?}", errors[0].1);
    }

    #[test]
    fn identity_sources_are_checked_one_by_one() {
        let route = parse(&with_route(
            "identity: [header:X-User, cookie:sid, client_ip]",
        ))
        .unwrap();
        assert_eq!(
            route.routes[0].identity,
            vec![
                IdentitySource::Header("x-user".into()),
                IdentitySource::Cookie("sid".into()),
                IdentitySource::ClientIp
            ]
        );
        one_error(
            "identity: [client_ip, \"header:\"]",
            "routes[0].identity[1]",
            "invalid identity source",
        );
        one_error("identity: []", "routes[0].identity", "at least one");
    }

    #[test]
    fn split_rules_backends_percents_sum_and_toggles() {
        let cases = [
            (
                "split: [{backend: nosuch, percent: 5}]",
                "routes[0].split[0].backend",
                "unknown upstream",
            ),
            (
                "split: [{backend: canary, percent: 5}, {backend: canary, percent: 5}]",
                "routes[0].split[1].backend",
                "appears twice",
            ),
            (
                "split: [{backend: canary}]",
                "routes[0].split[0].percent",
                "required",
            ),
            (
                "split: [{backend: canary, percent: 60}, {backend: blue, percent: 40.01}]",
                "routes[0].split",
                "100.01",
            ),
            (
                "kind: toggle\nsplit: [{backend: canary, percent: 50}]",
                "routes[0].split[0].percent",
                "0 or 100",
            ),
        ];
        for (route, path, message) in cases {
            one_error(route, path, message);
        }
        let ok = parse(&with_route(
            "split: [{backend: canary, percent: 60}, {backend: blue, percent: 40}]",
        ))
        .unwrap();
        let backends = &ok.routes[0].backends;
        assert_eq!(
            backends.len(),
            3,
            "stable, then the split's backends in order"
        );
        assert_eq!(ok.routes[0].split[1].backend, BackendSlot(2));
    }

    #[test]
    fn a_rollout_drives_the_first_entry_and_may_not_be_given_its_percent() {
        let rollout = "rollout: {steps: [10, 50], step_interval: 1m}";
        one_error(
            &format!("split: [{{backend: canary, percent: 5}}]\n{rollout}"),
            "routes[0].split[0].percent",
            "rollout drives this percent",
        );
        one_error(
            &format!("split: [{{backend: canary}}, {{backend: blue, percent: 60}}]\n{rollout}"),
            "routes[0].split",
            "with the rollout's largest step",
        );
        one_error(rollout, "routes[0].rollout", "add one, without a percent");
        one_error(
            &format!("kind: experiment\nsplit: [{{backend: canary}}]\n{rollout}"),
            "routes[0].rollout",
            "canary only",
        );
    }

    #[test]
    fn overrides_name_known_backends_and_pin_an_identity_once() {
        let cases = [
            (
                "overrides: {force_header: \"bad header\"}",
                "routes[0].overrides.force_header",
                "invalid header name",
            ),
            (
                "overrides: {identities: {nosuch: [a]}}",
                "routes[0].overrides.identities.nosuch",
                "unknown upstream",
            ),
            (
                "overrides: {identities: {canary: [a], blue: [a]}}",
                "routes[0].overrides.identities.blue",
                "pinned to both",
            ),
            (
                "overrides: {headers: [{name: x-e, value: \"1\", backend: nosuch}]}",
                "routes[0].overrides.headers[0].backend",
                "unknown upstream",
            ),
        ];
        for (route, path, message) in cases {
            one_error(route, path, message);
        }
        let ok = parse(&with_route("overrides: {identities: {blue: [alice]}, headers: [{name: X-E, value: \"1\", backend: canary}]}")).unwrap();
        let r = &ok.routes[0];
        assert_eq!(r.overrides.identities.get("alice"), Some(&BackendSlot(1)));
        assert_eq!(r.overrides.headers[0].name, "x-e");
        assert_eq!(
            r.overrides.headers[0].backend,
            BackendSlot(2),
            "override-only backends follow"
        );
    }

    #[test]
    fn shapes_gate_and_experiment() {
        one_error("kind: gate\nsplit: [{backend: canary, percent: 5}]\noverrides: {identities: {canary: [a]}}", "routes[0].split", "overrides only");
        one_error("kind: gate", "routes[0].overrides", "at least one override");
        one_error(
            "kind: experiment",
            "routes[0].split",
            "one or more variants",
        );
        assert!(errors("kind: gate\noverrides: {identities: {canary: [a]}}").is_empty());
    }
}
