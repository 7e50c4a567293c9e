//! Where a request on a matched route goes, and why (SPEC section 3).
//!
//! First a candidate: force header -> identity allowlist -> header overrides -> split by
//! bucket. Then, for a candidate that is not the route's stable backend, the gates in order:
//! killed (config or admin) -> breaker open -> health check failing. The first gate that
//! fails replaces the candidate with stable and names the reason. (The last gate, the
//! bulkhead, holds a permit for the request's life, so the proxy applies it with
//! [`Decision::to_stable`].) A kill beats every override; stable is never replaced.

use crate::bucket::{bucket_for, Bucket};
use crate::config::{BackendSlot, Config, MissingIdentity, Percent, Route, UpstreamId};
use crate::matching::RequestFacts;

/// Why a request went where it went; the `reason` of `explain` and of access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The force header named a backend of the route.
    ForceHeader,
    /// The identity is on an allowlist.
    Identity,
    /// A header override matched.
    Header,
    /// The bucket falls in a split entry's range.
    Split,
    /// The bucket falls outside every split entry: stable's share.
    Stable,
    /// No identity source was present (`missing_identity: stable`).
    MissingIdentity,
    /// No identity was present and a random bucket was drawn (`missing_identity: random`).
    Random,
    /// The route is killed (config `killed` or admin kill).
    Killed,
    /// The candidate's breaker is open (or half-open with no probe slot left).
    BreakerOpen,
    /// The candidate's upstream fails its health check.
    Unhealthy,
    /// The candidate's upstream is at `max_inflight`.
    Bulkhead,
}

impl Reason {
    /// The reason's name in explain output, logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ForceHeader => "force_header",
            Reason::Identity => "identity",
            Reason::Header => "header",
            Reason::Split => "split",
            Reason::Stable => "stable",
            Reason::MissingIdentity => "missing_identity",
            Reason::Random => "random",
            Reason::Killed => "killed",
            Reason::BreakerOpen => "breaker_open",
            Reason::Unhealthy => "unhealthy",
            Reason::Bulkhead => "bulkhead",
        }
    }
}

/// The outcome of a decision: a backend slot of the route, the bucket if one was computed,
/// the reason, and the candidate that a gate may have replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The backend the request goes to.
    pub slot: BackendSlot,
    /// The bucket of the request's identity (or of the random draw), if any.
    pub bucket: Option<Bucket>,
    /// Why.
    pub reason: Reason,
    /// The backend chosen before the gates; differs from `slot` when a gate diverted it.
    pub candidate: BackendSlot,
}

impl Decision {
    /// Whether a gate diverted the candidate to stable.
    pub fn diverted(&self) -> bool {
        self.slot != self.candidate
    }

    /// The same decision diverted to stable for `reason` (used for the bulkhead gate).
    pub fn to_stable(self, reason: Reason) -> Decision {
        Decision {
            slot: BackendSlot::STABLE,
            reason,
            ..self
        }
    }
}

/// Runtime state the gates consult: admin kills, breakers, health. The proxy implements it
/// over its shared state; [`NoGates`] is the static view (`rampart explain`).
pub trait Gates {
    /// Whether an operator killed the route on this replica.
    fn admin_killed(&self, route: usize) -> bool;
    /// Whether the breaker of (route, slot) lets this request through. May take a
    /// half-open probe slot, so it is asked once per request and only for a candidate.
    fn breaker_admits(&self, route: usize, slot: BackendSlot) -> bool;
    /// Whether the upstream passes its health checks (true when it has none).
    fn healthy(&self, upstream: UpstreamId) -> bool;
}

/// Gates that never close: the decision from config alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoGates;

impl Gates for NoGates {
    fn admin_killed(&self, _route: usize) -> bool {
        false
    }
    fn breaker_admits(&self, _route: usize, _slot: BackendSlot) -> bool {
        true
    }
    fn healthy(&self, _upstream: UpstreamId) -> bool {
        true
    }
}

/// The candidate backend for a request on `route` (no gates yet).
///
/// `identity` is the extracted identity, `random_bucket` draws a bucket for
/// `missing_identity: random`, and `first_entry` is the rollout-driven share of the first
/// split entry, if a rollout drives it.
pub fn candidate<F: RequestFacts + ?Sized>(
    config: &Config,
    route: &Route,
    facts: &F,
    identity: Option<&str>,
    random_bucket: impl FnOnce() -> Bucket,
    first_entry: Option<Percent>,
) -> Decision {
    let bucket = identity.map(|id| bucket_for(&route.key_prefix, id.as_bytes()));
    let decided = |slot: BackendSlot, reason: Reason, bucket: Option<Bucket>| Decision {
        slot,
        bucket,
        reason,
        candidate: slot,
    };
    if let Some(name) = route.overrides.force_header.as_deref() {
        if let Some(value) = facts.header(name) {
            if let Some(slot) = slot_named(config, route, value.trim()) {
                return decided(slot, Reason::ForceHeader, bucket);
            }
        }
    }
    if let Some(id) = identity {
        if let Some(slot) = route.overrides.identities.get(id) {
            return decided(*slot, Reason::Identity, bucket);
        }
    }
    for o in &route.overrides.headers {
        if facts.header(&o.name) == Some(o.value.as_str()) {
            return decided(o.backend, Reason::Header, bucket);
        }
    }
    let (bucket, missing_reason) = match (bucket, route.missing_identity) {
        (Some(b), _) => (b, None),
        (None, MissingIdentity::Stable) => {
            return decided(BackendSlot::STABLE, Reason::MissingIdentity, None)
        }
        (None, MissingIdentity::Random) => (random_bucket(), Some(Reason::Random)),
    };
    match route.split_slot(bucket, first_entry) {
        Some(slot) => decided(slot, missing_reason.unwrap_or(Reason::Split), Some(bucket)),
        None => decided(
            BackendSlot::STABLE,
            missing_reason.unwrap_or(Reason::Stable),
            Some(bucket),
        ),
    }
}

/// Applies the gates to a candidate: the first that fails sends the request to stable.
pub fn gate<G: Gates + ?Sized>(
    route_index: usize,
    route: &Route,
    decision: Decision,
    gates: &G,
) -> Decision {
    if decision.slot.is_stable() {
        return decision;
    }
    if route.killed.is_some() || gates.admin_killed(route_index) {
        return decision.to_stable(Reason::Killed);
    }
    if !gates.breaker_admits(route_index, decision.slot) {
        return decision.to_stable(Reason::BreakerOpen);
    }
    let upstream = route.backends.get(decision.slot.index()).copied();
    if upstream.is_some_and(|u| !gates.healthy(u)) {
        return decision.to_stable(Reason::Unhealthy);
    }
    decision
}

/// The route's backend slot whose upstream is named `name`.
pub fn slot_named(config: &Config, route: &Route, name: &str) -> Option<BackendSlot> {
    route
        .backends
        .iter()
        .position(|id| config.upstream(*id).is_some_and(|u| u.name == name))
        .and_then(|i| u8::try_from(i).ok())
        .map(BackendSlot)
}

/// Facts of a request that has nothing but an identity: what `explain` asks about.
pub struct IdentityOnly;

impl RequestFacts for IdentityOnly {
    fn method(&self) -> &str {
        "GET"
    }
    fn host(&self) -> Option<&str> {
        None
    }
    fn path(&self) -> &str {
        "/"
    }
    fn header(&self, _name: &str) -> Option<&str> {
        None
    }
    fn cookie(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// The decision for `identity` on the route named `route_name`, as `explain` reports it:
/// allowlist, split and gates, with no request headers.
pub fn explain<G: Gates + ?Sized>(
    config: &Config,
    route_name: &str,
    identity: &str,
    gates: &G,
    first_entry: Option<Percent>,
) -> Option<Decision> {
    let index = config.routes.iter().position(|r| r.name == route_name)?;
    let route = config.routes.get(index)?;
    let c = candidate(
        config,
        route,
        &IdentityOnly,
        Some(identity),
        || 0,
        first_entry,
    );
    Some(gate(index, route, c, gates))
}
