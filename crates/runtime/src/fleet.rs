//! Fleet-wide rollout analysis (docs/rollout.md#fleet-wide-analysis): with
//! `rollout.prometheus`, the verdict at boundary t_k comes from instant queries pinned to
//! `time = t_k` over the step, summed over `selector` across the whole fleet, evaluated at
//! t_k + delay. The same query at the same
//! time gives every replica the same numbers, hence the same verdict; a replica that starts
//! late replays the past boundaries one by one and lands on the same step.
//!
//! NaN or empty answers are data (too little traffic: inconclusive, the next boundary
//! judges again). An unreachable Prometheus is not: the same boundary is queried again a
//! few seconds later, so no replica moves past a boundary the others judged differently.
//!
//! The queries go through [`FleetMetrics`], so a test can answer them instead of a real
//! Prometheus; [`Prometheus`] is the real one.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rampart_core::rollout::{RolloutEvent, SideFigures, StepFigures};
use rampart_proxy::handler::ProxyState;
use rampart_proxy::rollout::{FleetQuery, RolloutRuntime};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often due boundaries are looked for (and an unreachable Prometheus retried).
const POLL: Duration = Duration::from_secs(2);
/// Longest one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fleet query gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The request failed or timed out.
    #[error("prometheus unreachable: {0}")]
    Unreachable(String),
    /// Prometheus answered with an error or something that is not a vector.
    #[error("prometheus answered {0}")]
    Bad(String),
}

/// An HTTP/1.1 client for `http://` and `https://` URLs (Prometheus, and the admin API for
/// `rampart status`).
pub type PromClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// What a [`FleetMetrics`] query resolves to: the value, `None` for an empty vector.
pub type Answer<'a> = Pin<Box<dyn Future<Output = Result<Option<f64>, FleetError>> + Send + 'a>>;

/// Answers the fleet's instant queries: Prometheus in production, canned answers in tests
/// (so a fleet verdict can be tested without a Prometheus). A trait object, so that
/// [`crate::StartOptions::fleet_metrics`] can carry one.
pub trait FleetMetrics: Send + Sync + 'static {
    /// One instant query against the Prometheus at `base`, evaluated at `at`: the first
    /// sample's value (NaN included, as Prometheus sends it), `None` for an empty vector.
    fn instant<'a>(&'a self, base: &'a str, query: &'a str, at: SystemTime) -> Answer<'a>;
}

/// The real [`FleetMetrics`]: HTTP instant queries to Prometheus' `/api/v1/query`.
#[derive(Clone)]
pub struct Prometheus {
    client: Option<PromClient>,
}

impl Prometheus {
    /// Trusting the system roots; without a TLS config every query is unreachable.
    pub fn new() -> Prometheus {
        let client = client_with(None);
        if let Err(e) = &client {
            tracing::error!(error = %e, "cannot build the Prometheus client; fleet rollouts will not advance");
        }
        Prometheus {
            client: client.ok(),
        }
    }
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus::new()
    }
}

impl FleetMetrics for Prometheus {
    fn instant<'a>(&'a self, base: &'a str, query: &'a str, at: SystemTime) -> Answer<'a> {
        Box::pin(async move {
            let Some(client) = &self.client else {
                return Err(FleetError::Unreachable("no HTTP client".into()));
            };
            instant(client, base, query, at).await
        })
    }
}

/// The client, trusting the system roots plus `ca_file` (a private CA) if given. Public so
/// that `rampart status --prometheus` reads the fleet with the client the replicas use.
pub fn client_with(
    ca_file: Option<&std::path::Path>,
) -> Result<PromClient, rampart_proxy::tls::TlsError> {
    let tls = rampart_proxy::tls::client_config(ca_file)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (`__name__` included when Prometheus sends it).
    pub labels: std::collections::BTreeMap<String, String>,
    /// The value (NaN is a value, as Prometheus sends it).
    pub value: f64,
}

/// `{a="b", c="d"}` plus Rampart's own matchers, as one label matcher block. Public so that
/// `rampart status --prometheus` selects series exactly as the fleet analysis does.
pub fn matchers(selector: &str, extra: &[(&str, &str)]) -> String {
    let inner = selector
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim();
    let mut parts: Vec<String> = Vec::new();
    if !inner.is_empty() {
        parts.push(inner.to_string());
    }
    for (k, v) in extra {
        parts.push(format!(
            "{k}=\"{}\"",
            v.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    format!("{{{}}}", parts.join(","))
}

/// One instant query at `at`: the single sample's value, `None` for an empty vector.
async fn instant(
    client: &PromClient,
    base: &str,
    query: &str,
    at: SystemTime,
) -> Result<Option<f64>, FleetError> {
    Ok(instant_vector(client, base, query, at)
        .await?
        .first()
        .map(|s| s.value))
}

/// One instant query at `at`: every sample of the answer, with its labels (what `rampart
/// status --prometheus` needs; the analysis itself needs only the first value).
pub async fn instant_vector(
    client: &PromClient,
    base: &str,
    query: &str,
    at: SystemTime,
) -> Result<Vec<Sample>, FleetError> {
    let time = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let url = format!(
        "{base}/api/v1/query?query={}&time={time:.3}",
        utf8_percent_encode(query, NON_ALPHANUMERIC)
    );
    let request = http::Request::get(&url)
        .body(Empty::<Bytes>::new())
        .map_err(|e| FleetError::Bad(e.to_string()))?;
    let response = tokio::time::timeout(QUERY_TIMEOUT, client.request(request))
        .await
        .map_err(|_| FleetError::Unreachable("timed out".into()))?
        .map_err(|e| FleetError::Unreachable(e.to_string()))?;
    let status = response.status();
    let body = tokio::time::timeout(QUERY_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| FleetError::Unreachable("timed out reading".into()))?
        .map_err(|e| FleetError::Unreachable(e.to_string()))?
        .to_bytes();
    if status.is_server_error() {
        return Err(FleetError::Unreachable(format!("HTTP {status}")));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| FleetError::Bad(e.to_string()))?;
    if json["status"] != "success" {
        return Err(FleetError::Bad(format!("HTTP {status}: {}", json["error"])));
    }
    let Some(result) = json["data"]["result"].as_array() else {
        return Err(FleetError::Bad("no result vector".into()));
    };
    result
        .iter()
        .map(|sample| {
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| FleetError::Bad("sample without a value".into()))?;
            let labels = sample["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            Ok(Sample { labels, value })
        })
        .collect()
}

fn count(v: Option<f64>) -> u64 {
    match v {
        Some(x) if x.is_finite() && x > 0.0 => x.round() as u64,
        _ => 0,
    }
}

async fn side(
    client: &dyn FleetMetrics,
    q: &FleetQuery,
    selector: &[(&str, &str)],
) -> Result<SideFigures, FleetError> {
    let base = q.source.url.as_str();
    let window = format!("{}s", q.window.as_secs().max(1));
    let sel = matchers(&q.source.selector, selector);
    let mut with_error = selector.to_vec();
    with_error.push(("outcome", "error"));
    let sel_err = matchers(&q.source.selector, &with_error);
    let requests = client
        .instant(
            base,
            &format!("sum(increase(rampart_upstream_attempts_total{sel}[{window}]))"),
            q.boundary,
        )
        .await?;
    let errors = client
        .instant(
            base,
            &format!("sum(increase(rampart_upstream_attempts_total{sel_err}[{window}]))"),
            q.boundary,
        )
        .await?;
    let p99 = client
        .instant(
        base,
        &format!("histogram_quantile(0.99, sum by (le) (increase(rampart_request_duration_seconds_bucket{sel}[{window}])))"),
        q.boundary,
    )
    .await?;
    Ok(SideFigures {
        requests: count(requests),
        errors: count(errors),
        p99: p99
            .filter(|x| x.is_finite() && *x >= 0.0)
            .map(Duration::from_secs_f64),
    })
}

/// The fleet's figures for one route's step ending at `q.boundary`.
async fn step_figures(
    client_: &dyn FleetMetrics,
    q: &FleetQuery,
    route: &str,
    canary: &str,
    stable: &str,
) -> Result<StepFigures, FleetError> {
    let canary_side = side(client_, q, &[("route", route), ("backend", canary)]).await?;
    let stable_side = side(client_, q, &[("route", route), ("backend", stable)]).await?;
    let window = format!("{}s", q.window.as_secs().max(1));
    let opened = client_
        .instant(
            &q.source.url,
            &format!(
                "sum(increase(rampart_breaker_transitions_total{}[{window}]))",
                matchers(
                    &q.source.selector,
                    &[("route", route), ("backend", canary), ("to", "open")]
                )
            ),
            q.boundary,
        )
        .await?;
    Ok(StepFigures {
        canary: canary_side,
        stable: stable_side,
        breaker_opened: count(opened) > 0,
    })
}

/// Runs the fleet verdict of `rollout` for `query` (from [`RolloutRuntime::fleet_due`]) at
/// `now`: queries the figures, then applies them. `Ok(None)` when the boundary is no
/// longer the pending one; an error when Prometheus gave no answer (the step holds).
/// Public so a test can judge one boundary with canned answers, without the poll loop.
pub async fn judge(
    metrics: &dyn FleetMetrics,
    rollout: &RolloutRuntime,
    query: &FleetQuery,
    canary: &str,
    stable: &str,
    now: SystemTime,
) -> Result<Option<RolloutEvent>, FleetError> {
    let figures = step_figures(metrics, query, &rollout.route, canary, stable).await?;
    Ok(rollout.tick_with(now, query, figures))
}

/// Looks for due fleet verdicts every [`POLL`] and applies them to the serving snapshot of
/// `state`, keeping rollout progress in `state_dir`; runs until the process ends. Cheap
/// when no route has `rollout.prometheus`. Started by [`crate::start`].
pub(crate) async fn run(
    state: Arc<ProxyState>,
    state_dir: Option<PathBuf>,
    metrics: Arc<dyn FleetMetrics>,
) {
    let state_dir: Arc<Option<PathBuf>> = Arc::new(state_dir);
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let snapshot = state.snapshot.load_full();
        for (index, rt) in snapshot.routes.iter().enumerate() {
            let Some(rollout) = rt.rollout.clone() else {
                continue;
            };
            let Some(query) = rollout.fleet_due(SystemTime::now()) else {
                continue;
            };
            let Some(route) = snapshot.config.routes.get(index) else {
                continue;
            };
            let canary = rt
                .slot(rollout.canary_slot)
                .map(|s| s.name_str.clone())
                .unwrap_or_default();
            let stable = rt
                .slot(rampart_core::config::BackendSlot::STABLE)
                .map(|s| s.name_str.clone())
                .unwrap_or_default();
            let name = route.name.clone();
            if let Ok(mut set) = in_flight.lock() {
                if !set.insert(name.clone()) {
                    continue;
                }
            }
            let (metrics, state, state_dir, in_flight) = (
                Arc::clone(&metrics),
                Arc::clone(&state),
                Arc::clone(&state_dir),
                Arc::clone(&in_flight),
            );
            tokio::spawn(async move {
                match judge(
                    metrics.as_ref(),
                    &rollout,
                    &query,
                    &canary,
                    &stable,
                    SystemTime::now(),
                )
                .await
                {
                    Ok(Some(event)) => {
                        let snapshot = state.snapshot.load_full();
                        if let Some(i) = snapshot.config.routes.iter().position(|r| r.name == name)
                        {
                            state.report_rollout(&snapshot, i, event);
                        }
                        crate::rollout_store::persist(&state, state_dir.as_deref());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(route = %name, error = %e, "fleet rollout analysis: query failed; the step holds and the same boundary is queried again")
                    }
                }
                if let Ok(mut set) = in_flight.lock() {
                    set.remove(&name);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_and_own_matchers_form_one_block() {
        assert_eq!(
            matchers(r#"{namespace="shop", app="checkout"}"#, &[("route", "r")]),
            r#"{namespace="shop", app="checkout",route="r"}"#
        );
        assert_eq!(matchers("", &[("a", "x\"y")]), r#"{a="x\"y"}"#);
    }
}
