//! The config file's serde surface: what a user may write, nothing more.
//!
//! These structs mirror docs/config.md field for field and reject unknown fields. They are
//! never used to route: [`super::validate`] turns them into [`super::Config`]. Fields that
//! need a semantic check keep their source position ([`Spanned`]) so the check can point at
//! the line and column.
//!
//! Adding a field: declare it here as usual (`pub max_connections: Option<Spanned<u32>>`,
//! `Option<DurationValue>`, a `#[serde(rename_all = "lowercase")]` enum, a nested
//! `#[serde(deny_unknown_fields)]` struct), then check and convert it in `validate.rs`,
//! reporting with the field's path. Nothing else: [`super::lenient`] reads these structs
//! through serde, so the new field's unknown-field, wrong-type and missing-field errors are
//! reported with the others, and a semantic error about a value already reported as
//! malformed is left out. A new value type that parses its own text (as [`DurationValue`]
//! and [`Percent`] do) should accept [`super::lenient`]'s placeholder in `visit_bytes`, so
//! a bad value of it does not hide its neighbours' errors.

pub use super::lenient::{Location, Spanned};
use super::values::{DurationValue, Percent};
use indexmap::IndexMap;
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: Spanned<u32>,
    pub listen: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawTls>>,
    pub metrics_listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub admin_tokens_file: Option<Spanned<String>>,
    pub ofrep_listen: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub threads: Option<Spanned<usize>>,
    pub access_log: Option<RawAccessLog>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub drain: Option<RawDrain>,
    pub limits: Option<Spanned<RawLimits>>,
    /// The same as `limits.max_connections`, at the top level where the name alone is
    /// looked for; setting both is an error.
    pub max_connections: Option<Spanned<u32>>,
    pub default_upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub upstreams: IndexMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `tls:` on the data-plane listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
}

/// `access_log:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub sample: Option<Spanned<f64>>,
}

/// `drain:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrain {
    pub delay: Option<DurationValue>,
    pub timeout: Option<DurationValue>,
}

/// `limits:`: what clients of the data plane may hold (docs/config.md#limits).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<u32>>,
    pub listen_backlog: Option<Spanned<u32>>,
    pub header_timeout: Option<Spanned<DurationValue>>,
    pub keepalive_timeout: Option<Spanned<DurationValue>>,
    pub h2_idle_timeout: Option<Spanned<DurationValue>>,
    pub send_timeout: Option<Spanned<DurationValue>>,
    pub h2_max_concurrent_streams: Option<Spanned<u32>>,
}

/// One entry of `upstreams:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Spanned<String>,
    pub ca_file: Option<String>,
    pub protocol: Option<Spanned<RawProtocol>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub connect_timeout: Option<Spanned<DurationValue>>,
    pub request_timeout: Option<Spanned<DurationValue>>,
    pub idle_timeout: Option<Spanned<DurationValue>>,
    pub max_inflight: Option<Spanned<u32>>,
    pub pool: Option<Spanned<RawPool>>,
}

/// `pool:` of an upstream: its idle keep-alive connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_idle: Option<u32>,
    pub idle_timeout: Option<DurationValue>,
}

/// `protocol:` of an upstream.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawProtocol {
    Http1,
    H2,
    H2c,
}

/// `health_check:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<DurationValue>,
    pub timeout: Option<DurationValue>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

/// One entry of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub salt: Option<Spanned<String>>,
    pub kind: Option<RawKind>,
    pub owner: Option<String>,
    pub expires: Option<Spanned<String>>,
    pub killed: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub match_: Option<RawMatch>,
    pub identity: Option<Vec<Spanned<String>>>,
    pub missing_identity: Option<RawMissingIdentity>,
    pub stable: Option<Spanned<String>>,
    pub split: Option<Vec<Spanned<RawSplitEntry>>>,
    pub overrides: Option<RawOverrides>,
    pub breaker: Option<Spanned<RawBreaker>>,
    pub fallback: Option<RawFallback>,
    pub rollout: Option<Spanned<RawRollout>>,
}

/// `kind:` of a route.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawKind {
    Canary,
    Experiment,
    Toggle,
    Gate,
}

/// `match:` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path_prefix: Option<Spanned<String>>,
    pub hosts: Option<Vec<Spanned<String>>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub headers: Option<IndexMap<String, Spanned<String>>>,
}

/// `missing_identity:` of a route.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawMissingIdentity {
    Stable,
    Random,
}

/// One entry of `split:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplitEntry {
    pub backend: Spanned<String>,
    pub percent: Option<Spanned<Percent>>,
}

/// `overrides:` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverrides {
    pub force_header: Option<Spanned<String>>,
    pub identities: Option<IndexMap<String, Spanned<Vec<String>>>>,
    pub headers: Option<Vec<Spanned<RawHeaderOverride>>>,
}

/// One entry of `overrides.headers:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOverride {
    pub name: Spanned<String>,
    pub value: String,
    pub backend: Spanned<String>,
}

/// `breaker:` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub window: Option<Spanned<DurationValue>>,
    pub min_requests: Option<u32>,
    pub max_error_rate: Option<Spanned<f64>>,
    pub consecutive_errors: Option<u32>,
    pub max_latency: Option<Spanned<RawMaxLatency>>,
    pub open_for: Option<Spanned<DurationValue>>,
    pub max_open_for: Option<Spanned<DurationValue>>,
    pub half_open_requests: Option<Spanned<u32>>,
    pub grpc_error_codes: Option<Vec<Spanned<u32>>>,
}

/// `breaker.max_latency:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaxLatency {
    pub quantile: Spanned<f64>,
    pub threshold: DurationValue,
}

/// `fallback:` of a route.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawFallback {
    Never,
    ConnectFailure,
    Idempotent,
}

/// `rollout:` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub steps: Spanned<Vec<Spanned<Percent>>>,
    pub step_interval: Spanned<DurationValue>,
    pub started_at: Option<Spanned<String>>,
    pub min_requests: Option<u32>,
    pub max_error_rate_increase: Option<Spanned<f64>>,
    pub max_latency_ratio: Option<Spanned<f64>>,
    pub on_failure: Option<RawOnFailure>,
    pub prometheus: Option<Spanned<RawPrometheus>>,
}

/// `rollout.on_failure:`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawOnFailure {
    Rollback,
    Pause,
}

/// `rollout.prometheus:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    pub url: Spanned<String>,
    pub selector: String,
    pub delay: Option<Spanned<DurationValue>>,
}
