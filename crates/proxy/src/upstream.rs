//! One upstream at run time: its pooled client, its bulkhead and in-flight gauge, its health.
//!
//! Kept across config reloads while the upstream's settings are unchanged, so its pool of
//! keep-alive connections and its in-flight count survive a reload.

use crate::body::ReqBody;
use http::uri::{Authority, Scheme};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntGauge;
use rampart_core::config::{Protocol, Scheme as UrlScheme, Upstream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why an upstream cannot be used with this build.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream's TLS settings are unusable (e.g. an unreadable `ca_file`).
    #[error("upstream {name:?}: {source}")]
    Tls {
        /// Upstream name.
        name: String,
        /// What was wrong.
        source: Box<crate::tls::TlsError>,
    },
    /// The URL's authority did not parse as an HTTP authority.
    #[error("upstream {name:?}: invalid authority {authority:?}")]
    Authority {
        /// Upstream name.
        name: String,
        /// The authority text.
        authority: String,
    },
}

/// The pooled HTTP client of one upstream (TLS for https URLs, plain TCP otherwise).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, ReqBody>;

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
    /// Rampart's own HTTP/1.1 client's idle connections, for plain-HTTP/1.1 upstreams:
    /// requests without a body go through it ([`crate::h1::client`]).
    pub h1: Option<Arc<crate::h1::client::H1Pool>>,
    inflight: AtomicU32,
    inflight_gauge: IntGauge,
    healthy: AtomicBool,
    checker: AtomicBool,
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
        let tls = crate::tls::client_config(config.ca_file.as_deref()).map_err(|source| {
            UpstreamError::Tls {
                name: config.name.clone(),
                source: Box::new(source),
            }
        })?;
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        // ALPN offers only the protocol configured, so an h2 upstream is h2 end to end.
        let connector = match config.protocol {
            Protocol::Http1 => https.enable_http1().wrap_connector(connector),
            Protocol::H2 | Protocol::H2c => https.enable_http2().wrap_connector(connector),
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if config.protocol != Protocol::Http1 {
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        let scheme = match config.scheme {
            UrlScheme::Https => Scheme::HTTPS,
            UrlScheme::Http => Scheme::HTTP,
        };
        let h1 = crate::h1::client::H1Pool::for_upstream(&config, &authority);
        Ok(UpstreamRuntime {
            h1,
            config,
            scheme,
            authority,
            client,
            inflight: AtomicU32::new(0),
            inflight_gauge,
            healthy: AtomicBool::new(true),
            checker: AtomicBool::new(false),
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

    /// Claims the right to run this upstream's health checker (true exactly once).
    pub fn claim_checker(&self) -> bool {
        !self.checker.swap(true, Ordering::AcqRel)
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
