//! The one decision function: where a request (or a question about an identity) goes on
//! the live snapshot, and why.
//!
//! The request path, the admin API's `explain` and status, the effective split published
//! in `rampart_split_ratio`, the OpenFeature endpoint and the decision bench all call
//! [`ProxyState::decide_on_route`] (or [`ProxyState::decide_request`], which first matches
//! the route and extracts the identity). They differ only in their [`Probe`]: a request
//! takes a half-open breaker's probe slot, a question only peeks at the breaker's state.
//! The order of candidates and gates lives in `rampart_core::decision`.

use crate::facts::HttpFacts;
use crate::handler::ProxyState;
use crate::headers;
use crate::snapshot::Snapshot;
use rampart_core::breaker::{Admission, BreakerState};
use rampart_core::config::{BackendSlot, UpstreamId};
use rampart_core::decision::{self, Decision, Gates, Reason};
use rampart_core::identity;
use rampart_core::matching::{match_route, RequestFacts};
use std::cell::Cell;
use std::net::IpAddr;
use std::time::Instant;

/// How a decision treats a half-open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A real request: it may take one of the half-open probe slots (and moves an open
    /// breaker whose interval ended to half-open).
    Take,
    /// A question (explain, status, OpenFeature): only a closed breaker admits, and
    /// nothing changes.
    Peek,
}

/// A decision with what the request path needs to record its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// Index of the matched route; `None` for the default upstream.
    pub route: Option<usize>,
    /// Where and why.
    pub decision: Decision,
    /// What the breaker said (a probe's outcome decides a half-open breaker).
    pub admission: Admission,
}

/// The gates over the live state: admin kills, breakers, health.
pub struct LiveGates<'a> {
    state: &'a ProxyState,
    snapshot: &'a Snapshot,
    now: Instant,
    probe: Probe,
    admission: Cell<Admission>,
}

impl<'a> LiveGates<'a> {
    /// Gates of `snapshot` at `now`.
    pub fn new(state: &'a ProxyState, snapshot: &'a Snapshot, now: Instant, probe: Probe) -> Self {
        LiveGates {
            state,
            snapshot,
            now,
            probe,
            admission: Cell::new(Admission::Admitted),
        }
    }

    /// What the breaker said for the last candidate asked about.
    pub fn admission(&self) -> Admission {
        self.admission.get()
    }
}

impl Gates for LiveGates<'_> {
    fn admin_killed(&self, route: usize) -> bool {
        let kills = self.state.admin_kills.load();
        !kills.is_empty()
            && self
                .snapshot
                .config
                .routes
                .get(route)
                .is_some_and(|r| kills.contains(&r.name))
    }

    fn breaker_admits(&self, route: usize, slot: BackendSlot) -> bool {
        let Some(breaker) = self
            .snapshot
            .routes
            .get(route)
            .and_then(|rt| rt.slot(slot))
            .and_then(|s| s.breaker.as_ref())
        else {
            return true;
        };
        match self.probe {
            Probe::Peek => breaker.state() == BreakerState::Closed,
            Probe::Take => {
                let (admission, transition) = breaker.admit(self.now);
                if let Some(t) = transition {
                    self.state.breaker_transition(self.snapshot, route, slot, t);
                }
                self.admission.set(admission);
                admission.admitted()
            }
        }
    }

    fn healthy(&self, upstream: UpstreamId) -> bool {
        self.snapshot
            .upstreams
            .get(upstream.index())
            .is_none_or(|u| u.is_healthy())
    }
}

/// The decision for a request that matched no route.
pub fn default_decision() -> Decision {
    Decision {
        slot: BackendSlot::STABLE,
        bucket: None,
        reason: Reason::Stable,
        candidate: BackendSlot::STABLE,
    }
}

impl ProxyState {
    /// The decision on route `route_index` for a request with `facts` and `identity`
    /// (already extracted): candidate (force header, allowlist, header overrides, split
    /// with the rollout's current share), then the gates at `now`.
    pub fn decide_on_route<F: RequestFacts + ?Sized>(
        &self,
        snapshot: &Snapshot,
        route_index: usize,
        facts: &F,
        identity: Option<&str>,
        probe: Probe,
        now: Instant,
    ) -> Option<(Decision, Admission)> {
        let route = snapshot.config.routes.get(route_index)?;
        let first_entry = snapshot
            .routes
            .get(route_index)
            .and_then(|rt| rt.rollout.as_ref())
            .map(|r| r.first_entry());
        let candidate = decision::candidate(
            &snapshot.config,
            route,
            facts,
            identity,
            || fastrand::u16(..rampart_core::bucket::BUCKETS),
            first_entry,
        );
        let gates = LiveGates::new(self, snapshot, now, probe);
        let decided = decision::gate(route_index, route, candidate, &gates);
        Some((decided, gates.admission()))
    }

    /// The decision for a request: route match, client address (through trusted
    /// proxies), identity, then [`ProxyState::decide_on_route`] taking a probe slot.
    pub fn decide_request(
        &self,
        snapshot: &Snapshot,
        parts: &http::request::Parts,
        peer: IpAddr,
        now: Instant,
    ) -> Decided {
        let config = &snapshot.config;
        let facts = HttpFacts::new(parts);
        let unmatched = Decided {
            route: None,
            decision: default_decision(),
            admission: Admission::Admitted,
        };
        let Some(index) = match_route(config, &facts) else {
            return unmatched;
        };
        let Some(route) = config.routes.get(index) else {
            return unmatched;
        };
        let xff = parts
            .headers
            .get_all(&headers::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let client_ip = identity::client_ip(peer, xff, &config.trusted_proxies);
        let id = identity::extract(&route.identity, &facts, Some(client_ip));
        match self.decide_on_route(
            snapshot,
            index,
            &facts,
            id.as_ref().map(|i| i.as_str()),
            Probe::Take,
            now,
        ) {
            Some((decision, admission)) => Decided {
                route: Some(index),
                decision,
                admission,
            },
            None => unmatched,
        }
    }

    /// The decision for `identity` on the route named `route_name`, with request `facts`
    /// (headers for overrides; [`decision::IdentityOnly`] for none), without side effects:
    /// what `explain`, the admin status and the OpenFeature endpoint answer. `None` for an
    /// unknown route.
    pub fn explain<F: RequestFacts + ?Sized>(
        &self,
        snapshot: &Snapshot,
        route_name: &str,
        identity: &str,
        facts: &F,
    ) -> Option<(usize, Decision)> {
        let index = snapshot
            .config
            .routes
            .iter()
            .position(|r| r.name == route_name)?;
        let (decision, _) = self.decide_on_route(
            snapshot,
            index,
            facts,
            Some(identity),
            Probe::Peek,
            Instant::now(),
        )?;
        Some((index, decision))
    }

    /// Whether backend `slot` of route `route_index` may take traffic now (stable always
    /// may): the gates of the decision, peeked. `None` when it may, else the gate that
    /// keeps it out.
    pub fn closed_gate(
        &self,
        snapshot: &Snapshot,
        route_index: usize,
        slot: BackendSlot,
    ) -> Option<Reason> {
        let route = snapshot.config.routes.get(route_index)?;
        let gates = LiveGates::new(self, snapshot, Instant::now(), Probe::Peek);
        decision::closed_gate(route_index, route, slot, &gates)
    }
}
