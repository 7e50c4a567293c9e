//! Every Prometheus metric Rampart exports (docs/metrics.md), registered once into the
//! registry the runtime passes in. The request path never looks a label up: it uses handles
//! resolved per config in [`crate::snapshot`].

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Histogram buckets for request latency, in seconds: 0.5 ms to 30 s, about 1.5x apart, so
/// a p99 interpolated by `histogram_quantile` (fleet rollout analysis compares canary and
/// stable p99 at a 1.5x ratio) is not an artifact of coarse buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// Handles to all of Rampart's metric families.
#[derive(Clone)]
pub struct Metrics {
    /// `rampart_requests_total{route,backend,code_class}`: what the client got.
    pub requests: IntCounterVec,
    /// `rampart_request_duration_seconds{route,backend}`: time to response headers.
    pub duration: HistogramVec,
    /// `rampart_upstream_attempts_total{route,backend,outcome}`: every attempt, as the breaker classed it.
    pub attempts: IntCounterVec,
    /// `rampart_split_ratio{route,backend}`: the effective share now, 0..1.
    pub split_ratio: GaugeVec,
    /// `rampart_breaker_state{route,backend,state}`.
    pub breaker_state: IntGaugeVec,
    /// `rampart_breaker_transitions_total{route,backend,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `rampart_fallbacks_total{route,from,reason}`.
    pub fallbacks: IntCounterVec,
    /// `rampart_bulkhead_rejections_total{route,backend}`.
    pub bulkhead_rejections: IntCounterVec,
    /// `rampart_upstream_inflight{upstream}`.
    pub upstream_inflight: IntGaugeVec,
    /// `rampart_upstream_healthy{upstream}`.
    pub upstream_healthy: IntGaugeVec,
    /// `rampart_health_checks_total{upstream,result}`: active health check probes.
    pub health_checks: IntCounterVec,
    /// `rampart_kill_active{route,source}`.
    pub kill_active: IntGaugeVec,
    /// `rampart_rollout_step{route}`.
    pub rollout_step: IntGaugeVec,
    /// `rampart_rollout_status{route,status}`.
    pub rollout_status: IntGaugeVec,
    /// `rampart_malformed_requests_total{reason}`.
    pub malformed: IntCounterVec,
    /// `rampart_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `rampart_config_last_reload_successful`.
    pub config_last_reload_successful: IntGauge,
    /// `rampart_config_info{schema,sha256}`.
    pub config_info: IntGaugeVec,
    /// `rampart_route_expired{route}`.
    pub route_expired: IntGaugeVec,
    /// `rampart_build_info{version}`.
    pub build_info: IntGaugeVec,
    /// `rampart_config_last_reload_timestamp_seconds`: when the applied config was applied.
    pub config_last_reload_timestamp: Gauge,
    /// `rampart_connections_open`: data-plane client connections open now.
    pub connections_open: IntGauge,
    /// `rampart_connections_max`: the `limits.max_connections` in force.
    pub connections_max: IntGauge,
    /// `rampart_connection_cap_reached_total`: times the data-plane listener found
    /// `max_connections` open and paused accepting until one closed.
    pub connection_cap_reached: prometheus::IntCounter,
    /// `rampart_client_timeouts_total{timeout}`: client connections closed by a deadline
    /// (`header_timeout`, `send_timeout`, `h2_idle_timeout`).
    pub client_timeouts: IntCounterVec,
}

/// The `timeout` label values of `rampart_client_timeouts_total`, pre-registered.
pub const CLIENT_TIMEOUTS: &[&str] = &["header_timeout", "send_timeout", "h2_idle_timeout"];

/// Malformed-request reasons, pre-registered so the series exist from the start.
pub const MALFORMED_REASONS: &[&str] = &[
    "content_length_and_transfer_encoding",
    "header_too_large",
    "bad_request",
    "bad_body",
    "duplicate_host",
    "missing_host",
];

impl Metrics {
    /// Creates every family and registers it into `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        fn counter(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        fn gauge(
            r: &Registry,
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        }
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rampart_request_duration_seconds",
                "Time from request headers received to response headers sent, by route and backend.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "backend"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let split_ratio = GaugeVec::new(
            Opts::new(
                "rampart_split_ratio",
                "Effective share of the route's buckets each backend gets now, 0..1.",
            ),
            &["route", "backend"],
        )?;
        registry.register(Box::new(split_ratio.clone()))?;
        let config_last_reload_successful = IntGauge::new(
            "rampart_config_last_reload_successful",
            "1 if the last config load or reload was applied, 0 if it was rejected.",
        )?;
        registry.register(Box::new(config_last_reload_successful.clone()))?;
        let config_last_reload_timestamp = Gauge::new(
            "rampart_config_last_reload_timestamp_seconds",
            "Unix time of the last applied config.",
        )?;
        registry.register(Box::new(config_last_reload_timestamp.clone()))?;
        let connections_open = IntGauge::new(
            "rampart_connections_open",
            "Data-plane client connections open now.",
        )?;
        registry.register(Box::new(connections_open.clone()))?;
        let connections_max = IntGauge::new(
            "rampart_connections_max",
            "The data plane's connection cap (limits.max_connections) in force.",
        )?;
        registry.register(Box::new(connections_max.clone()))?;
        let connection_cap_reached = prometheus::IntCounter::new(
            "rampart_connection_cap_reached_total",
            "Times the data-plane listener found max_connections connections open and paused accepting until one closed.",
        )?;
        registry.register(Box::new(connection_cap_reached.clone()))?;
        let m = Metrics {
            requests: counter(registry, "rampart_requests_total", "Requests answered, by route, the backend that answered and the class of what the client got.", &["route", "backend", "code_class"])?,
            duration,
            attempts: counter(registry, "rampart_upstream_attempts_total", "Upstream attempts, retries included, as the breaker classed them.", &["route", "backend", "outcome"])?,
            split_ratio,
            breaker_state: gauge(registry, "rampart_breaker_state", "1 for the breaker's current state of each (route, backend).", &["route", "backend", "state"])?,
            breaker_transitions: counter(registry, "rampart_breaker_transitions_total", "Breaker state changes, by the state entered.", &["route", "backend", "to"])?,
            fallbacks: counter(registry, "rampart_fallbacks_total", "Requests re-sent to the route's stable backend after a failed attempt.", &["route", "from", "reason"])?,
            bulkhead_rejections: counter(registry, "rampart_bulkhead_rejections_total", "Requests turned away from a backend at max_inflight.", &["route", "backend"])?,
            upstream_inflight: gauge(registry, "rampart_upstream_inflight", "Requests in flight to each upstream.", &["upstream"])?,
            upstream_healthy: gauge(registry, "rampart_upstream_healthy", "1 if the upstream passes its health checks (or has none).", &["upstream"])?,
            health_checks: counter(registry, "rampart_health_checks_total", "Active health check probes, by upstream and result (pass, fail).", &["upstream", "result"])?,
            kill_active: gauge(registry, "rampart_kill_active", "1 while the route is killed, by the kill's source.", &["route", "source"])?,
            rollout_step: gauge(registry, "rampart_rollout_step", "Index of the rollout's current step.", &["route"])?,
            rollout_status: gauge(registry, "rampart_rollout_status", "1 for the rollout's current status.", &["route", "status"])?,
            malformed: counter(registry, "rampart_malformed_requests_total", "Requests refused as malformed before reaching any upstream.", &["reason"])?,
            config_reloads: counter(registry, "rampart_config_reloads_total", "Config loads and reloads, applied or rejected.", &["result"])?,
            config_last_reload_successful,
            config_info: gauge(registry, "rampart_config_info", "The applied config's schema version and sha256; value 1.", &["schema", "sha256"])?,
            route_expired: gauge(registry, "rampart_route_expired", "1 once the route's expires date has begun.", &["route"])?,
            build_info: gauge(registry, "rampart_build_info", "Rampart's version; value 1.", &["version"])?,
            config_last_reload_timestamp,
            connections_open,
            connections_max,
            connection_cap_reached,
            client_timeouts: counter(registry, "rampart_client_timeouts_total", "Client connections closed by a deadline, by which one (header_timeout, send_timeout, h2_idle_timeout).", &["timeout"])?,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for reason in MALFORMED_REASONS {
            m.malformed.with_label_values(&[reason]);
        }
        for timeout in CLIENT_TIMEOUTS {
            m.client_timeouts.with_label_values(&[timeout]);
        }
        for result in ["applied", "rejected"] {
            m.config_reloads.with_label_values(&[result]);
        }
        Ok(m)
    }
}
