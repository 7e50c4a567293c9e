//! One applied config with everything the request path needs resolved in advance: upstream
//! clients, metric handles, header values. Published whole through one `ArcSwap`, so a
//! request sees the old snapshot or the new one, never a mix.

use crate::failure::FallbackReason;
use crate::metrics::Metrics;
use crate::rollout::RolloutRuntime;
use crate::upstream::{UpstreamError, UpstreamRuntime};
use http::HeaderValue;
use prometheus::{Histogram, IntCounter, IntGauge};
use rampart_core::breaker::{Breaker, BreakerState};
use rampart_core::config::BreakerConfig;
use rampart_core::config::{BackendSlot, Config, Route};
use rampart_core::rollout::RolloutState;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
}

impl BackendMetrics {
    fn new(metrics: &Metrics, route: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            requests: CODE_CLASSES
                .map(|class| metrics.requests.with_label_values(&[route, backend, class])),
            duration: metrics.duration.with_label_values(&[route, backend]),
        }
    }
}

/// One backend of one route at run time: names, metric handles, and its breaker.
pub struct SlotRuntime {
    /// The backend's name as a header value (`x-rampart-backend`).
    pub name: HeaderValue,
    /// The backend's name.
    pub name_str: String,
    /// Request metrics.
    pub metrics: BackendMetrics,
    /// `rampart_upstream_attempts_total{outcome="ok"}` (real backends only, never `_rampart`).
    pub attempt_ok: IntCounter,
    /// `rampart_upstream_attempts_total{outcome="error"}`.
    pub attempt_error: IntCounter,
    /// `rampart_bulkhead_rejections_total{route,backend}`.
    pub bulkhead_rejections: IntCounter,
    /// The breaker of a non-stable backend on a route with `breaker:`.
    pub breaker: Option<Arc<Breaker>>,
    /// `rampart_breaker_state` per state, in [`BreakerState::ALL`] order.
    pub breaker_state: Option<[IntGauge; 3]>,
    /// `rampart_breaker_transitions_total` per state entered, in [`BreakerState::ALL`] order.
    pub breaker_transitions: Option<[IntCounter; 3]>,
    /// `rampart_fallbacks_total{from=this backend}` per reason, in [`FallbackReason::ALL`]
    /// order.
    pub fallbacks: [IntCounter; FallbackReason::COUNT],
}

impl SlotRuntime {
    /// Sets the state gauges to the breaker's current state.
    pub fn publish_breaker_state(&self) {
        if let (Some(breaker), Some(gauges)) = (&self.breaker, &self.breaker_state) {
            let now = breaker.state();
            for (state, gauge) in BreakerState::ALL.iter().zip(gauges) {
                gauge.set(i64::from(*state == now));
            }
        }
    }
}

/// A route's run-time handles, indexed by backend slot.
pub struct RouteRuntime {
    /// Route label (`_default` for unmatched requests).
    pub name: HeaderValue,
    /// The route's name.
    pub name_str: String,
    /// Per backend slot.
    pub slots: Vec<SlotRuntime>,
    /// Metrics of Rampart's own responses on this route.
    pub own: BackendMetrics,
    /// The route's rollout, when it has a `rollout` block.
    pub rollout: Option<Arc<RolloutRuntime>>,
}

impl RouteRuntime {
    /// The slot's run-time handles.
    pub fn slot(&self, slot: BackendSlot) -> Option<&SlotRuntime> {
        self.slots.get(slot.index())
    }
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
    /// Resolves `config`, reusing upstream clients of `previous` whose settings are
    /// unchanged, and breaker and rollout state of routes and backends whose names are.
    /// `persisted_rollouts` is the rollout state `state_dir` kept, for the first build.
    pub fn build(
        config: Arc<Config>,
        source: SnapshotSource,
        metrics: &Metrics,
        previous: Option<&Snapshot>,
        persisted_rollouts: &HashMap<String, RolloutState>,
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
            .map(|route| route_runtime(&config, metrics, route, previous, persisted_rollouts))
            .collect();
        let default_name = config
            .upstream(config.default_upstream)
            .map(|u| u.name.clone())
            .unwrap_or_default();
        let default_route = RouteRuntime {
            name: HeaderValue::from_static(DEFAULT_ROUTE),
            name_str: DEFAULT_ROUTE.to_string(),
            slots: vec![slot_runtime(metrics, DEFAULT_ROUTE, &default_name, None)],
            own: BackendMetrics::new(metrics, DEFAULT_ROUTE, OWN_BACKEND),
            rollout: None,
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

    /// The upstream of `slot` on route `route`, or the default upstream for a request that
    /// matched no route (`None`).
    pub fn upstream_for_slot(
        &self,
        route: Option<usize>,
        slot: BackendSlot,
    ) -> Option<&Arc<UpstreamRuntime>> {
        match route {
            Some(index) => self.upstream_for(self.config.routes.get(index)?, slot),
            None => self.upstreams.get(self.config.default_upstream.index()),
        }
    }
}

fn slot_runtime(
    metrics: &Metrics,
    route: &str,
    backend: &str,
    breaker: Option<Arc<Breaker>>,
) -> SlotRuntime {
    let breaker_state = breaker.as_ref().map(|_| {
        BreakerState::ALL.map(|state| {
            metrics
                .breaker_state
                .with_label_values(&[route, backend, state.as_str()])
        })
    });
    let breaker_transitions = breaker.as_ref().map(|_| {
        BreakerState::ALL.map(|state| {
            metrics
                .breaker_transitions
                .with_label_values(&[route, backend, state.as_str()])
        })
    });
    let slot = SlotRuntime {
        name: header_value(backend),
        name_str: backend.to_string(),
        metrics: BackendMetrics::new(metrics, route, backend),
        attempt_ok: metrics.attempts.with_label_values(&[route, backend, "ok"]),
        attempt_error: metrics
            .attempts
            .with_label_values(&[route, backend, "error"]),
        bulkhead_rejections: metrics
            .bulkhead_rejections
            .with_label_values(&[route, backend]),
        breaker,
        breaker_state,
        breaker_transitions,
        fallbacks: FallbackReason::ALL.map(|reason| {
            metrics
                .fallbacks
                .with_label_values(&[route, backend, reason.as_str()])
        }),
    };
    slot.publish_breaker_state();
    slot
}

/// The breaker for (route, backend): the previous snapshot's when the names match (state
/// survives a reload), carried over to new settings if they changed.
fn breaker_for(
    previous: Option<&Snapshot>,
    route: &Route,
    backend: &str,
    config: &BreakerConfig,
) -> Arc<Breaker> {
    let old = previous
        .and_then(|p| p.routes.iter().find(|r| r.name_str == route.name))
        .and_then(|r| r.slots.iter().find(|s| s.name_str == backend))
        .and_then(|s| s.breaker.clone());
    match old {
        Some(b) if b.config() == config => b,
        Some(b) => Arc::new(Breaker::carry_over(&b, config.clone())),
        None => Arc::new(Breaker::new(config.clone(), Instant::now())),
    }
}

/// The route's rollout: the previous snapshot's when its block is unchanged; else resumed
/// from the previous state (an edit) or from what `state_dir` kept.
fn rollout_for(
    previous: Option<&Snapshot>,
    route: &Route,
    persisted: &HashMap<String, RolloutState>,
) -> Option<Arc<RolloutRuntime>> {
    let config = route.rollout.as_ref()?;
    let old = previous
        .and_then(|p| p.routes.iter().find(|r| r.name_str == route.name))
        .and_then(|r| r.rollout.clone());
    let canary = route.split.first().map(|e| e.backend);
    if let Some(old) = &old {
        if old.same_block(config) && Some(old.canary_slot) == canary {
            return Some(Arc::clone(old));
        }
    }
    let resumed = match &old {
        Some(old) => old.snapshot().map(|(state, _)| state),
        None => persisted.get(&route.name).cloned(),
    };
    RolloutRuntime::new(route, config, SystemTime::now(), resumed).map(Arc::new)
}

fn route_runtime(
    config: &Config,
    metrics: &Metrics,
    route: &Route,
    previous: Option<&Snapshot>,
    persisted: &HashMap<String, RolloutState>,
) -> RouteRuntime {
    let name = route.name.as_str();
    let slots = route
        .backends
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let backend = config
                .upstream(*id)
                .map(|u| u.name.as_str())
                .unwrap_or_default();
            let breaker = match (&route.breaker, i) {
                (Some(b), i) if i > 0 => Some(breaker_for(previous, route, backend, b)),
                _ => None,
            };
            slot_runtime(metrics, name, backend, breaker)
        })
        .collect();
    RouteRuntime {
        name: header_value(name),
        name_str: name.to_string(),
        slots,
        own: BackendMetrics::new(metrics, name, OWN_BACKEND),
        rollout: rollout_for(previous, route, persisted),
    }
}
