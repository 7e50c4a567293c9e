//! Active health checks (docs/config.md, `health_check`): one task per upstream that has a
//! check, probing `GET path` every `interval`. `unhealthy_after` failures in a row mark it
//! unhealthy, `healthy_after` successes in a row healthy again. An unhealthy non-stable
//! backend gets 0 % (the decision's health gate); a stable backend keeps its traffic, since
//! there is nowhere safer to send it, and that is logged and counted.
//!
//! The task lives as long as the upstream's run-time object: a reload that keeps the
//! upstream keeps its checker and its verdict; one that changes or removes it lets the old
//! task end when the last request using the old object is done.

use crate::body::ReqBody;
use crate::handler::ProxyState;
use crate::upstream::UpstreamRuntime;
use bytes::Bytes;
use http::{Request, Uri};
use std::sync::{Arc, Weak};

/// Starts the checkers of every upstream of the applied snapshot that has a health check
/// and no checker yet. Call after each applied config, inside the tokio runtime.
pub fn start_checkers(state: &Arc<ProxyState>) {
    let snapshot = state.snapshot.load_full();
    for upstream in &snapshot.upstreams {
        if upstream.config.health_check.is_some() && upstream.claim_checker() {
            let weak = Arc::downgrade(upstream);
            let state = Arc::downgrade(state);
            tokio::spawn(check_loop(weak, state));
        }
    }
}

async fn check_loop(upstream: Weak<UpstreamRuntime>, state: Weak<ProxyState>) {
    let mut failures: u32 = 0;
    let mut successes: u32 = 0;
    loop {
        let Some(up) = upstream.upgrade() else { return };
        let Some(check) = up.config.health_check.clone() else {
            return;
        };
        let ok = probe(&up, &check.path, check.timeout).await;
        if let Some(state) = state.upgrade() {
            let result = if ok { "pass" } else { "fail" };
            state
                .metrics
                .health_checks
                .with_label_values(&[&up.config.name, result])
                .inc();
            if ok {
                successes = successes.saturating_add(1);
                failures = 0;
                if !up.is_healthy() && successes >= check.healthy_after {
                    up.set_healthy(true);
                    tracing::warn!(upstream = %up.config.name, successes, "upstream passes its health checks again: healthy");
                    changed(&state, &up);
                }
            } else {
                failures = failures.saturating_add(1);
                successes = 0;
                if up.is_healthy() && failures >= check.unhealthy_after {
                    up.set_healthy(false);
                    let stable = is_stable_somewhere(&state, &up);
                    if stable {
                        tracing::error!(upstream = %up.config.name, failures, "a stable upstream fails its health checks: it keeps its traffic (there is nowhere safer to send it)");
                    } else {
                        tracing::warn!(upstream = %up.config.name, failures, "upstream fails its health checks: its routes' share goes to stable");
                    }
                    changed(&state, &up);
                }
            }
        }
        let interval = check.interval;
        drop(up);
        tokio::time::sleep(interval).await;
    }
}

async fn probe(up: &UpstreamRuntime, path: &str, timeout: std::time::Duration) -> bool {
    let uri = Uri::builder()
        .scheme(up.scheme.clone())
        .authority(up.authority.clone())
        .path_and_query(path)
        .build();
    let Ok(uri) = uri else { return false };
    let request = Request::get(uri)
        .header(http::header::USER_AGENT, "rampart-health-check")
        .body(ReqBody::buffered(Bytes::new()));
    let Ok(request) = request else { return false };
    match tokio::time::timeout(timeout, up.client.request(request)).await {
        Ok(Ok(response)) => response.status().is_success(),
        _ => false,
    }
}

fn changed(state: &ProxyState, up: &UpstreamRuntime) {
    state
        .metrics
        .upstream_healthy
        .with_label_values(&[&up.config.name])
        .set(i64::from(up.is_healthy()));
    state.publish_all_splits();
}

fn is_stable_somewhere(state: &ProxyState, up: &UpstreamRuntime) -> bool {
    let snapshot = state.snapshot.load();
    let config = &snapshot.config;
    let Some(id) = config.upstream_id(&up.config.name) else {
        return false;
    };
    config.default_upstream == id
        || config
            .routes
            .iter()
            .any(|r| r.backends.first() == Some(&id))
}
