//! The validated, immutable config that everything routes by.
//!
//! A [`Config`] can only be built by [`super::parse`], so holding one means every backend
//! exists, percents fit, names are unique and listeners parse. Upstreams are referred to by
//! [`UpstreamId`] (an index) and a route's backends by [`BackendSlot`] (an index into the
//! route's own backend list, slot 0 being its stable backend), so the request path compares
//! small integers instead of strings.

use super::values::Percent;
use crate::bucket::Bucket;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Index of an upstream in [`Config::upstreams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(pub u16);

impl UpstreamId {
    /// The index as a `usize`, for slice access.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Index of a backend in [`Route::backends`]; slot 0 is always the route's stable backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSlot(pub u8);

impl BackendSlot {
    /// The route's stable backend.
    pub const STABLE: BackendSlot = BackendSlot(0);

    /// The index as a `usize`, for slice access.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Whether this is the route's stable backend.
    pub fn is_stable(self) -> bool {
        self.0 == 0
    }
}

/// The whole validated config (docs/config.md).
#[derive(Debug, Clone)]
pub struct Config {
    /// Schema version; only 1 exists.
    pub version: u32,
    /// Data-plane listener.
    pub listen: SocketAddr,
    /// Downstream TLS on `listen`.
    pub tls: Option<TlsFiles>,
    /// Metrics, health and readiness listener.
    pub metrics_listen: SocketAddr,
    /// Admin API listener; `None` disables the admin API.
    pub admin_listen: Option<SocketAddr>,
    /// Admin bearer tokens file.
    pub admin_tokens_file: Option<PathBuf>,
    /// OpenFeature (OFREP) flag evaluation listener for the application; `None` disables it
    /// (docs/ofrep.md).
    pub ofrep_listen: Option<SocketAddr>,
    /// Where runtime state, the last good config and the audit log live.
    pub state_dir: Option<PathBuf>,
    /// Data-plane worker threads; `None` = the CPUs the process may use.
    pub threads: Option<usize>,
    /// Share of successful requests written to the access log (errors always are).
    pub access_log_sample: f64,
    /// Peers whose `x-forwarded-for` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Graceful shutdown timings.
    pub drain: Drain,
    /// What clients of the data plane may hold: connections, deadlines, streams.
    pub limits: Limits,
    /// Where requests that match no route go.
    pub default_upstream: UpstreamId,
    /// Upstreams, in file order.
    pub upstreams: Vec<Upstream>,
    /// Routes, in file order (first match wins).
    pub routes: Vec<Route>,
}

impl Config {
    /// The upstream behind an id.
    pub fn upstream(&self, id: UpstreamId) -> Option<&Upstream> {
        self.upstreams.get(id.index())
    }

    /// The upstream behind a route's backend slot.
    pub fn backend(&self, route: &Route, slot: BackendSlot) -> Option<&Upstream> {
        route
            .backends
            .get(slot.index())
            .and_then(|id| self.upstream(*id))
    }

    /// The id of the upstream with this name.
    pub fn upstream_id(&self, name: &str) -> Option<UpstreamId> {
        self.upstreams
            .iter()
            .position(|u| u.name == name)
            .and_then(|i| u16::try_from(i).ok())
            .map(UpstreamId)
    }

    /// The route with this name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// `tls:` file paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

/// `drain:` timings for SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// How long to keep serving after SIGTERM while endpoints are removed.
    pub delay: Duration,
    /// How long in-flight requests may take to finish after listeners close.
    pub timeout: Duration,
}

/// `limits:`, the data plane's defences against clients that hold on to resources
/// (docs/config.md#limits, docs/proxying.md#hostile-clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most data-plane connections open at once; `None` = derived from the process's
    /// open-file limit at start. At the cap the listener stops accepting until one closes.
    pub max_connections: Option<u32>,
    /// The data-plane listener's accept queue length (`listen(2)` backlog).
    pub listen_backlog: u32,
    /// From accept to a connection's first complete request head, whatever its protocol.
    pub header_timeout: Duration,
    /// From the end of an HTTP/1.1 response to the next complete request head: how long an
    /// idle keep-alive connection is kept. Longer than the idle timeout of the load
    /// balancers that usually sit in front (60 s), so they close first and never send on a
    /// connection Rampart is closing.
    pub keepalive_timeout: Duration,
    /// An HTTP/2 connection with no open stream for this long gets GOAWAY.
    pub h2_idle_timeout: Duration,
    /// A client that accepts no response bytes for this long is disconnected, and the
    /// upstream slot its response held is released.
    pub send_timeout: Duration,
    /// Concurrent streams one HTTP/2 client connection may open.
    pub h2_max_concurrent_streams: u32,
}

impl Limits {
    /// Default `listen_backlog`.
    pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
    /// Default `header_timeout`.
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default `keepalive_timeout` (nginx's).
    pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
    /// Default `h2_idle_timeout`.
    pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
    /// Default `send_timeout`.
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default `h2_max_concurrent_streams`.
    pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 128;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: None,
            listen_backlog: Limits::DEFAULT_LISTEN_BACKLOG,
            header_timeout: Limits::DEFAULT_HEADER_TIMEOUT,
            keepalive_timeout: Limits::DEFAULT_KEEPALIVE_TIMEOUT,
            h2_idle_timeout: Limits::DEFAULT_H2_IDLE_TIMEOUT,
            send_timeout: Limits::DEFAULT_SEND_TIMEOUT,
            h2_max_concurrent_streams: Limits::DEFAULT_H2_MAX_CONCURRENT_STREAMS,
        }
    }
}

/// Upstream wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (over TLS for https URLs).
    Http1,
    /// HTTP/2 over TLS.
    H2,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
}

/// URL scheme of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

/// One upstream (docs/config.md, `upstreams:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The name routes refer to.
    pub name: String,
    /// The URL as written.
    pub url: String,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port` to connect to (port filled in from the scheme when absent).
    pub authority: String,
    /// Host name or address, without port, for TLS SNI and resolution.
    pub host: String,
    /// Port to connect to.
    pub port: u16,
    /// Extra CA bundle for https upstreams.
    pub ca_file: Option<PathBuf>,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Active health checking.
    pub health_check: Option<HealthCheck>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until response headers arrive.
    pub request_timeout: Duration,
    /// Longest gap between body frames either way.
    pub idle_timeout: Duration,
    /// Bulkhead: most requests in flight at once; `None` = unbounded.
    pub max_inflight: Option<u32>,
    /// Most idle keep-alive connections kept open to it (nginx's `keepalive N`): a burst's
    /// extra connections are closed once idle instead of staying open.
    pub pool_max_idle: usize,
    /// How long an idle keep-alive connection is kept.
    pub pool_idle_timeout: Duration,
}

/// `health_check:` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path probed with GET.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Time allowed for one probe.
    pub timeout: Duration,
    /// Consecutive failures that mark the upstream unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive successes that mark it healthy again.
    pub healthy_after: u32,
}

/// A route's `kind`: inventory and a shape rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// A new version receiving a share, possibly driven by a rollout.
    Canary,
    /// Variants each receiving a share.
    Experiment,
    /// A feature switched on for 0 or 100 %.
    Toggle,
    /// A feature reached only through overrides.
    Gate,
}

impl RouteKind {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Canary => "canary",
            RouteKind::Experiment => "experiment",
            RouteKind::Toggle => "toggle",
            RouteKind::Gate => "gate",
        }
    }
}

/// Where a request whose identity is missing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingIdentity {
    /// To the route's stable backend.
    Stable,
    /// Into a uniformly random bucket (not sticky).
    Random,
}

/// A source of the request's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A header's first value, trimmed (name lowercased).
    Header(String),
    /// A cookie's raw value.
    Cookie(String),
    /// The client's address (see `trusted_proxies`).
    ClientIp,
}

/// When a failed canary attempt is re-sent to stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Never re-send.
    Never,
    /// Re-send when nothing reached the canary (refused or timed-out connection, refused stream).
    ConnectFailure,
    /// Also re-send idempotent requests with small bodies after a 5xx, a reset or a timeout.
    Idempotent,
}

/// One route (docs/config.md, `routes:`).
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name, `[a-z0-9-_]`.
    pub name: String,
    /// Hash salt (defaults to the name).
    pub salt: String,
    /// `salt:` as bytes, the prefix of every bucketing key.
    pub key_prefix: Box<[u8]>,
    /// Inventory kind and shape rule.
    pub kind: RouteKind,
    /// Owning team, for the flag inventory.
    pub owner: Option<String>,
    /// Day (days since the Unix epoch, UTC) from which the route counts as expired.
    pub expires: Option<i64>,
    /// The route's `expires` date as written.
    pub expires_text: Option<String>,
    /// Fleet-wide kill reason; present = every non-stable backend gets 0 %.
    pub killed: Option<String>,
    /// Which requests the route takes.
    pub matcher: RouteMatch,
    /// Identity sources, first present wins.
    pub identity: Vec<IdentitySource>,
    /// Policy for requests with no identity.
    pub missing_identity: MissingIdentity,
    /// The route's backends; slot 0 is stable, then split backends, then override-only ones.
    pub backends: Vec<UpstreamId>,
    /// The split, in file order.
    pub split: Vec<SplitEntry>,
    /// Overrides checked before the split.
    pub overrides: Overrides,
    /// Breaker settings for each non-stable backend.
    pub breaker: Option<BreakerConfig>,
    /// Retry-on-stable policy.
    pub fallback: Fallback,
    /// Progressive rollout of the first split entry.
    pub rollout: Option<RolloutConfig>,
}

impl Route {
    /// The backend slot of an upstream on this route.
    pub fn slot_of(&self, id: UpstreamId) -> Option<BackendSlot> {
        self.backends
            .iter()
            .position(|b| *b == id)
            .and_then(|i| u8::try_from(i).ok())
            .map(BackendSlot)
    }

    /// The split entry (and so the backend) that owns `bucket`, if any; the rest is stable's.
    ///
    /// `first_entry` replaces the first entry's share when a rollout drives it.
    pub fn split_slot(&self, bucket: Bucket, first_entry: Option<Percent>) -> Option<BackendSlot> {
        let mut start: u32 = 0;
        for (i, entry) in self.split.iter().enumerate() {
            let share = match (i, first_entry) {
                (0, Some(p)) => p,
                _ => entry.percent,
            };
            start += u32::from(share.buckets());
            if u32::from(bucket) < start {
                return Some(entry.backend);
            }
        }
        None
    }

    /// The share each backend slot gets from the split as configured (rollout applied when
    /// `first_entry` is given); slot 0 (stable) gets the remainder.
    pub fn shares(&self, first_entry: Option<Percent>) -> Vec<(BackendSlot, Percent)> {
        let mut buckets = vec![0u32; self.backends.len()];
        let mut used = 0u32;
        for (i, entry) in self.split.iter().enumerate() {
            let share = match (i, first_entry) {
                (0, Some(p)) => p,
                _ => entry.percent,
            };
            let b = u32::from(share.buckets());
            used += b;
            if let Some(slot) = buckets.get_mut(entry.backend.index()) {
                *slot += b;
            }
        }
        if let Some(stable) = buckets.first_mut() {
            *stable += 10_000u32.saturating_sub(used);
        }
        buckets
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                let share = Percent::from_buckets(u16::try_from(b).unwrap_or(10_000));
                (BackendSlot(u8::try_from(i).unwrap_or(u8::MAX)), share)
            })
            .collect()
    }
}

/// `match:` of a route.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Path prefix matched by whole segments; `/` matches everything.
    pub path_prefix: String,
    /// Hosts, lowercased, without port; empty = any.
    pub hosts: Vec<String>,
    /// Methods, uppercase; empty = any.
    pub methods: Vec<String>,
    /// Exact header values required (names lowercased).
    pub headers: Vec<(String, String)>,
}

/// One split entry: a backend and its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitEntry {
    /// The backend receiving the share.
    pub backend: BackendSlot,
    /// Its share (for a rollout's first entry: the largest step, until rollout state says).
    pub percent: Percent,
}

/// `overrides:` of a route.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Header whose value names a backend of the route (lowercased name).
    pub force_header: Option<String>,
    /// Identities pinned to a backend.
    pub identities: HashMap<String, BackendSlot>,
    /// Header values that pick a backend, in order.
    pub headers: Vec<HeaderOverride>,
}

impl Overrides {
    /// Whether the route has any override at all (a `gate` must).
    pub fn is_empty(&self) -> bool {
        self.force_header.is_none() && self.identities.is_empty() && self.headers.is_empty()
    }
}

/// One `overrides.headers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOverride {
    /// Header name, lowercased.
    pub name: String,
    /// Exact value.
    pub value: String,
    /// Backend it selects.
    pub backend: BackendSlot,
}

/// `breaker:` of a route (docs/config.md).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Sliding window over which rates and quantiles are computed.
    pub window: Duration,
    /// Attempts in the window below which no rate or latency verdict is given.
    pub min_requests: u32,
    /// Error rate above which the breaker opens.
    pub max_error_rate: f64,
    /// Errors in a row that open the breaker regardless of the window.
    pub consecutive_errors: u32,
    /// Latency quantile and its ceiling.
    pub max_latency: Option<MaxLatency>,
    /// First open interval; doubles on each re-open.
    pub open_for: Duration,
    /// Ceiling of the open interval.
    pub max_open_for: Duration,
    /// Probes let through when half-open; all must pass to close.
    pub half_open_requests: u32,
    /// gRPC status codes counted as errors.
    pub grpc_error_codes: Vec<u32>,
}

/// `breaker.max_latency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxLatency {
    /// Quantile in (0, 1), e.g. 0.99.
    pub quantile: f64,
    /// Latency (to response headers) the quantile must stay under.
    pub threshold: Duration,
}

/// `rollout.on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Percent 0, status aborted.
    Rollback,
    /// Hold the current step, status paused.
    Pause,
}

/// `rollout:` of a route (docs/config.md).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Percents the first split entry moves through.
    pub steps: Vec<Percent>,
    /// Shortest duration of a step.
    pub step_interval: Duration,
    /// Shared schedule start for fleets.
    pub started_at: Option<SystemTime>,
    /// Canary attempts per step before a verdict.
    pub min_requests: u32,
    /// Largest allowed canary error rate minus stable's.
    pub max_error_rate_increase: f64,
    /// Largest allowed canary p99 / stable p99.
    pub max_latency_ratio: f64,
    /// What a failed verdict does.
    pub on_failure: OnFailure,
    /// Fleet-wide analysis source.
    pub prometheus: Option<PrometheusSource>,
}

/// `rollout.prometheus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusSource {
    /// Base URL of the Prometheus HTTP API.
    pub url: String,
    /// Label selector narrowing the queries to this service.
    pub selector: String,
    /// How long after a boundary the verdict is computed.
    pub delay: Duration,
}
