//! One applied config with everything the request path needs resolved in advance: upstream
//! clients, metric handles, header values. Published whole through one `ArcSwap`, so a
//! request sees the old snapshot or the new one, never a mix.

use crate::metrics::Metrics;
use crate::upstream::{UpstreamError, UpstreamRuntime};
use http::HeaderValue;
use prometheus::{Histogram, IntCounter};
use rampart_core::config::{BackendSlot, Config, Route};
use std::path::PathBuf;
use std::sync::Arc;

/// Route label of requests that match no route.
pub const DEFAULT_ROUTE: &str = "_default";
/// Backend label of responses Rampart made itself.
pub const OWN_BACKEND: &str = "_rampart";

/// Where a config came from.
#[derive(Debug, Clone, Default)]
pub struct SnapshotSource {
    /// Lowercase hex sha256 of the file's bytes.
    pub sha256: String,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
}

/// Index into a class-per-slot counter array: 1xx..5xx, then `error`.
pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Class index of a status code for [`CODE_CLASSES`].
pub fn code_class_index(status: u16) -> usize {
    match status / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        5 => 4,
        _ => 5,
    }
}

/// Metric handles of one (route, backend).
pub struct BackendMetrics {
    /// `rampart_requests_total` per code class.
    pub requests: [IntCounter; 6],
    /// `rampart_request_duration_seconds`.
    pub duration: Histogram,
    /// `rampart_upstream_attempts_total{outcome="ok"}`.
    pub attempt_ok: IntCounter,
    /// `rampart_upstream_attempts_total{outcome="error"}`.
    pub attempt_error: IntCounter,
}

impl BackendMetrics {
    fn new(metrics: &Metrics, route: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            requests: CODE_CLASSES
                .map(|class| metrics.requests.with_label_values(&[route, backend, class])),
            duration: metrics.duration.with_label_values(&[route, backend]),
            attempt_ok: metrics.attempts.with_label_values(&[route, backend, "ok"]),
            attempt_error: metrics
                .attempts
                .with_label_values(&[route, backend, "error"]),
        }
    }
}

/// A route's run-time handles, indexed by backend slot.
pub struct RouteRuntime {
    /// Route label (`_default` for unmatched requests).
    pub name: HeaderValue,
    /// Per backend slot: metrics.
    pub backends: Vec<BackendMetrics>,
    /// Per backend slot: the backend's name as a header value.
    pub backend_names: Vec<HeaderValue>,
    /// Per backend slot: `rampart_bulkhead_rejections_total`.
    pub bulkhead_rejections: Vec<IntCounter>,
    /// Metrics of Rampart's own responses on this route.
    pub own: BackendMetrics,
}

/// An applied config and its resolved run-time pieces.
pub struct Snapshot {
    /// The validated config.
    pub config: Arc<Config>,
    /// Where it came from.
    pub source: SnapshotSource,
    /// Upstreams by [`rampart_core::config::UpstreamId`].
    pub upstreams: Vec<Arc<UpstreamRuntime>>,
    /// Routes by index.
    pub routes: Vec<RouteRuntime>,
    /// Unmatched requests: route `_default`, slot 0 = the default upstream.
    pub default_route: RouteRuntime,
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("invalid"))
}

impl Snapshot {
    /// Resolves `config`, reusing upstream clients of `previous` whose settings are unchanged.
    pub fn build(
        config: Arc<Config>,
        source: SnapshotSource,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, UpstreamError> {
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for upstream in &config.upstreams {
            let reused =
                previous.and_then(|p| p.upstreams.iter().find(|u| u.config == *upstream).cloned());
            let runtime = match reused {
                Some(r) => r,
                None => Arc::new(UpstreamRuntime::new(
                    upstream.clone(),
                    metrics
                        .upstream_inflight
                        .with_label_values(&[&upstream.name]),
                )?),
            };
            metrics
                .upstream_healthy
                .with_label_values(&[&upstream.name])
                .set(i64::from(runtime.is_healthy()));
            upstreams.push(runtime);
        }
        let routes = config
            .routes
            .iter()
            .map(|route| route_runtime(&config, metrics, route))
            .collect();
        let default_name = config
            .upstream(config.default_upstream)
            .map(|u| u.name.clone())
            .unwrap_or_default();
        let default_route = RouteRuntime {
            name: HeaderValue::from_static(DEFAULT_ROUTE),
            backends: vec![BackendMetrics::new(metrics, DEFAULT_ROUTE, &default_name)],
            backend_names: vec![header_value(&default_name)],
            bulkhead_rejections: vec![metrics
                .bulkhead_rejections
                .with_label_values(&[DEFAULT_ROUTE, &default_name])],
            own: BackendMetrics::new(metrics, DEFAULT_ROUTE, OWN_BACKEND),
        };
        Ok(Snapshot {
            config,
            source,
            upstreams,
            routes,
            default_route,
        })
    }

    /// The upstream runtime behind a route's backend slot.
    pub fn upstream_for(&self, route: &Route, slot: BackendSlot) -> Option<&Arc<UpstreamRuntime>> {
        let id = route.backends.get(slot.index())?;
        self.upstreams.get(id.index())
    }
}

fn route_runtime(config: &Config, metrics: &Metrics, route: &Route) -> RouteRuntime {
    let name = route.name.as_str();
    let backend_names: Vec<&str> = route
        .backends
        .iter()
        .map(|id| {
            config
                .upstream(*id)
                .map(|u| u.name.as_str())
                .unwrap_or_default()
        })
        .collect();
    RouteRuntime {
        name: header_value(name),
        backends: backend_names
            .iter()
            .map(|b| BackendMetrics::new(metrics, name, b))
            .collect(),
        backend_names: backend_names.iter().map(|b| header_value(b)).collect(),
        bulkhead_rejections: backend_names
            .iter()
            .map(|b| metrics.bulkhead_rejections.with_label_values(&[name, b]))
            .collect(),
        own: BackendMetrics::new(metrics, name, OWN_BACKEND),
    }
}
