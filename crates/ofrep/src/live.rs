//! The [`Evaluator`] that answers OFREP from a running proxy's shared state with the proxy's
//! own decision (docs/ofrep.md). It lives here, beside the protocol, so the listener in
//! `rampart-runtime` and the `ofrep_body` fuzz target evaluate with the same code.
//!
//! Every decision goes through [`decide`], the one place that calls the decision code. It
//! peeks: no breaker probe slot is taken, no bulkhead permit, nothing is counted as traffic.

use crate::{Bulk, EvalContext, Evaluation, Evaluator, FlagError};
use rampart_core::config::{MissingIdentity, RouteKind};
use rampart_core::decision::Decision;
use rampart_core::identity;
use rampart_proxy::decide::Probe;
use rampart_proxy::facts::HttpFacts;
use rampart_proxy::handler::ProxyState;
use rampart_proxy::Snapshot;
use std::fmt::Write as _;
use std::sync::Arc;

/// The decision for one route, as the proxy would make it now for a request with these
/// headers (`facts`) and this identity. The only call into the decision code.
fn decide(
    state: &ProxyState,
    snapshot: &Snapshot,
    route_index: usize,
    facts: &HttpFacts<'_>,
    identity: Option<&str>,
) -> Option<Decision> {
    // The proxy's own decision function, peeking: no probe slot taken, no bulkhead permit,
    // the rollout's current step applied. A random draw happens only without an identity
    // on a `missing_identity: random` route; [`evaluate_route`] refuses that answer.
    state
        .decide_on_route(
            snapshot,
            route_index,
            facts,
            identity,
            Probe::Peek,
            std::time::Instant::now(),
        )
        .map(|(decision, _)| decision)
}

/// Evaluates the route at `route_index` of `snapshot` for `context`.
fn evaluate_route(
    state: &ProxyState,
    snapshot: &Snapshot,
    route_index: usize,
    context: &EvalContext,
) -> Result<Evaluation, FlagError> {
    let config = &snapshot.config;
    let Some(route) = config.routes.get(route_index) else {
        return Err(FlagError::NotFound(String::new()));
    };
    let facts = HttpFacts::new(&context.request);
    // The targeting key is the identity, as if it were the first identity source present;
    // without one, the route's header and cookie sources are read from the context.
    let extracted = match &context.targeting_key {
        Some(_) => None,
        None => identity::extract(&route.identity, &facts, None),
    };
    let identity = context
        .targeting_key
        .as_deref()
        .or(extracted.as_ref().map(|i| i.as_str()));
    let Some(decision) = decide(state, snapshot, route_index, &facts, identity) else {
        return Err(FlagError::NotFound(route.name.clone()));
    };
    if identity.is_none()
        && route.missing_identity == MissingIdentity::Random
        && decision.bucket.is_some()
    {
        return Err(FlagError::TargetingKeyMissing(route.name.clone()));
    }
    let name = |slot| {
        config
            .backend(route, slot)
            .map(|u| u.name.clone())
            .unwrap_or_default()
    };
    Ok(Evaluation {
        route: route.name.clone(),
        backend: name(decision.slot),
        toggle: route.kind == RouteKind::Toggle,
        killed: state.kill_source(route).is_some(),
        candidate: decision.diverted().then(|| name(decision.candidate)),
        decision,
    })
}

/// What the answers depend on besides the context: the config's sha256, then per route
/// the admin kill and the rollout's current share, and per backend its breaker state and
/// health. Any change of these changes the bulk ETag (docs/ofrep.md#bulk-evaluation-and-its-etag).
fn state_version(state: &ProxyState, snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(64 + snapshot.config.routes.len() * 16);
    out.push_str(&snapshot.source.sha256);
    let admin_kills = state.admin_kills.load();
    for (index, route) in snapshot.config.routes.iter().enumerate() {
        let rt = snapshot.routes.get(index);
        let rollout = rt
            .and_then(|r| r.rollout.as_ref())
            .map(|r| r.first_entry().buckets());
        let _ = write!(
            out,
            ";{}:{}",
            u8::from(admin_kills.contains(&route.name)),
            rollout.map(i64::from).unwrap_or(-1)
        );
        for (slot_index, _) in route.backends.iter().enumerate() {
            let slot = rampart_core::config::BackendSlot(u8::try_from(slot_index).unwrap_or(0));
            let breaker = rt
                .and_then(|r| r.slot(slot))
                .and_then(|s| s.breaker.as_ref())
                .map(|b| b.state().as_str())
                .unwrap_or("-");
            let healthy = snapshot
                .upstream_for(route, slot)
                .is_none_or(|u| u.is_healthy());
            let _ = write!(out, ",{breaker}/{}", u8::from(healthy));
        }
    }
    out
}

/// [`Evaluator`] over the running proxy's shared state.
pub struct LiveEvaluator {
    state: Arc<ProxyState>,
}

impl LiveEvaluator {
    /// Answers from `state`, the same shared state the proxy routes requests with.
    pub fn new(state: Arc<ProxyState>) -> LiveEvaluator {
        LiveEvaluator { state }
    }
}

impl Evaluator for LiveEvaluator {
    fn knows(&self, route: &str) -> bool {
        self.state.snapshot.load().config.route(route).is_some()
    }

    fn evaluate(&self, route: &str, context: &EvalContext) -> Result<Evaluation, FlagError> {
        let snapshot = self.state.snapshot.load();
        let Some(index) = snapshot.config.routes.iter().position(|r| r.name == route) else {
            return Err(FlagError::NotFound(route.to_string()));
        };
        evaluate_route(&self.state, &snapshot, index, context)
    }

    fn evaluate_all(&self, context: &EvalContext) -> Bulk {
        let snapshot = self.state.snapshot.load_full();
        // Read before the answers: a change while they are computed then gives the next
        // request a different tag, never the same tag over newer answers.
        let version = state_version(&self.state, &snapshot);
        let flags = snapshot
            .config
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                (
                    route.name.clone(),
                    evaluate_route(&self.state, &snapshot, index, context),
                )
            })
            .collect();
        Bulk { flags, version }
    }
}
