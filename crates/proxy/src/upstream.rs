//! One upstream at run time: its pooled client, its bulkhead and in-flight gauge, its health.
//!
//! Kept across config reloads while the upstream's settings are unchanged, so its pool of
//! keep-alive connections and its in-flight count survive a reload.

use crate::body::ReqBody;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntGauge;
use rampart_core::config::{Protocol, Upstream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why an upstream cannot be used with this build.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL's authority did not parse as an HTTP authority.
    #[error("upstream {name:?}: invalid authority {authority:?}")]
    Authority {
        /// Upstream name.
        name: String,
        /// The authority text.
        authority: String,
    },
}

/// The pooled HTTP client of one upstream.
pub type UpstreamClient = Client<HttpConnector, ReqBody>;

/// An upstream's run-time state.
pub struct UpstreamRuntime {
    /// Its settings, as in the config it was built from.
    pub config: Upstream,
    /// URI scheme of requests sent to it.
    pub scheme: Scheme,
    /// URI authority of requests sent to it.
    pub authority: Authority,
    /// The keep-alive pool.
    pub client: UpstreamClient,
    inflight: AtomicU32,
    inflight_gauge: IntGauge,
    healthy: AtomicBool,
}

impl UpstreamRuntime {
    /// Builds the client for `config`; `inflight_gauge` is its `rampart_upstream_inflight` series.
    pub fn new(
        config: Upstream,
        inflight_gauge: IntGauge,
    ) -> Result<UpstreamRuntime, UpstreamError> {
        let authority = Authority::from_maybe_shared(bytes::Bytes::from(config.authority.clone()))
            .map_err(|_| UpstreamError::Authority {
                name: config.name.clone(),
                authority: config.authority.clone(),
            })?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if config.protocol == Protocol::H2c {
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        let scheme = Scheme::HTTP;
        Ok(UpstreamRuntime {
            config,
            scheme,
            authority,
            client,
            inflight: AtomicU32::new(0),
            inflight_gauge,
            healthy: AtomicBool::new(true),
        })
    }

    /// Takes an in-flight slot if the bulkhead has room (always, without `max_inflight`).
    pub fn try_acquire(self: &Arc<Self>) -> Option<InflightGuard> {
        let limit = self.config.max_inflight.unwrap_or(u32::MAX);
        let previous = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        let _ = previous;
        self.inflight_gauge.inc();
        Some(InflightGuard {
            upstream: Arc::clone(self),
        })
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// Whether the upstream passes its health checks (true without a health check).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records the health checker's verdict.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }
}

/// An in-flight slot of an upstream, freed on drop (when the response body ends).
pub struct InflightGuard {
    upstream: Arc<UpstreamRuntime>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.upstream.inflight.fetch_sub(1, Ordering::AcqRel);
        self.upstream.inflight_gauge.dec();
    }
}
