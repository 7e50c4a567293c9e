//! Where a request on a matched route goes, and why (docs/routing.md#decision-order).
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

/// The first gate that keeps `slot` of a route from taking traffic, in order: killed
/// (config or admin), breaker, health. `None`: the backend may take the request. Stable is
/// never gated. This is the one place the gate order lives: the request path, `explain`,
/// the admin status and the effective split all ask it.
pub fn closed_gate<G: Gates + ?Sized>(
    route_index: usize,
    route: &Route,
    slot: BackendSlot,
    gates: &G,
) -> Option<Reason> {
    if slot.is_stable() {
        return None;
    }
    if route.killed.is_some() || gates.admin_killed(route_index) {
        return Some(Reason::Killed);
    }
    if !gates.breaker_admits(route_index, slot) {
        return Some(Reason::BreakerOpen);
    }
    let upstream = route.backends.get(slot.index()).copied();
    if upstream.is_some_and(|u| !gates.healthy(u)) {
        return Some(Reason::Unhealthy);
    }
    None
}

/// Applies the gates to a candidate: the first that fails sends the request to stable.
pub fn gate<G: Gates + ?Sized>(
    route_index: usize,
    route: &Route,
    decision: Decision,
    gates: &G,
) -> Decision {
    match closed_gate(route_index, route, decision.slot, gates) {
        Some(reason) => decision.to_stable(reason),
        None => decision,
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::collections::HashMap;

    const CONFIG: &str = r#"
version: 1
default_upstream: stable
upstreams:
  stable: {url: "http://127.0.0.1:1"}
  canary: {url: "http://127.0.0.1:2"}
  blue: {url: "http://127.0.0.1:3"}
routes:
  - name: checkout
    identity: [header:x-user-id]
    stable: stable
    split: [{backend: canary, percent: 30.09}]
    overrides:
      force_header: x-force
      identities: {blue: [carol]}
      headers: [{name: x-employee, value: "true", backend: canary}]
  - name: random
    identity: [header:x-user-id]
    missing_identity: random
    stable: stable
    split: [{backend: canary, percent: 100}]
  - name: frozen
    killed: "INC-1"
    identity: [header:x-user-id]
    stable: stable
    split: [{backend: canary, percent: 100}]
    overrides: {identities: {canary: [alice]}}
"#;

    /// Request facts made of headers only.
    struct Headers(HashMap<&'static str, &'static str>);

    impl RequestFacts for Headers {
        fn method(&self) -> &str {
            "GET"
        }
        fn host(&self) -> Option<&str> {
            None
        }
        fn path(&self) -> &str {
            "/"
        }
        fn header(&self, name: &str) -> Option<&str> {
            self.0.get(name).copied()
        }
        fn cookie(&self, _name: &str) -> Option<&str> {
            None
        }
    }

    /// Gates with fixed answers.
    #[derive(Default)]
    struct Fixed {
        admin_killed: bool,
        breaker_open: bool,
        unhealthy: bool,
    }

    impl Gates for Fixed {
        fn admin_killed(&self, _route: usize) -> bool {
            self.admin_killed
        }
        fn breaker_admits(&self, _route: usize, _slot: BackendSlot) -> bool {
            !self.breaker_open
        }
        fn healthy(&self, _upstream: UpstreamId) -> bool {
            !self.unhealthy
        }
    }

    fn decide(
        route: &str,
        identity: Option<&str>,
        headers: &[(&'static str, &'static str)],
        gates: &Fixed,
    ) -> (String, Reason, Option<Bucket>) {
        let config = parse(CONFIG).unwrap();
        let index = config.routes.iter().position(|r| r.name == route).unwrap();
        let r = &config.routes[index];
        let facts = Headers(headers.iter().copied().collect());
        let c = candidate(&config, r, &facts, identity, || 9_999, None);
        let d = gate(index, r, c, gates);
        let name = config.backend(r, d.slot).unwrap().name.clone();
        (name, d.reason, d.bucket)
    }

    /// (route, identity, headers, backend, reason).
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a [(&'static str, &'static str)],
        &'a str,
        Reason,
    );

    #[test]
    fn candidates_follow_force_header_then_allowlist_then_header_override_then_split() {
        let open = Fixed::default();
        // (route, identity, headers, backend, reason): bucket("checkout", "alice") = 3009,
        // bucket("checkout", "bob") = 6439; 30.09 % is buckets 0..=3008.
        let cases: &[Case] = &[
            ("checkout", Some("alice"), &[], "stable", Reason::Stable),
            ("checkout", Some("bob"), &[], "stable", Reason::Stable),
            ("checkout", Some("carol"), &[], "blue", Reason::Identity),
            (
                "checkout",
                Some("carol"),
                &[("x-force", "canary")],
                "canary",
                Reason::ForceHeader,
            ),
            (
                "checkout",
                Some("bob"),
                &[("x-force", " blue ")],
                "blue",
                Reason::ForceHeader,
            ),
            (
                "checkout",
                Some("bob"),
                &[("x-force", "nosuch")],
                "stable",
                Reason::Stable,
            ),
            (
                "checkout",
                Some("bob"),
                &[("x-employee", "true")],
                "canary",
                Reason::Header,
            ),
            (
                "checkout",
                Some("carol"),
                &[("x-employee", "true")],
                "blue",
                Reason::Identity,
            ),
            ("checkout", None, &[], "stable", Reason::MissingIdentity),
            ("random", None, &[], "canary", Reason::Random),
        ];
        for (route, identity, headers, backend, reason) in cases {
            let (got, why, _) = decide(route, *identity, headers, &open);
            assert_eq!(
                (got.as_str(), why),
                (*backend, *reason),
                "{route} {identity:?} {headers:?}"
            );
        }
    }

    #[test]
    fn the_split_takes_buckets_from_zero_up_to_its_exact_share() {
        let open = Fixed::default();
        let config = parse(CONFIG).unwrap();
        let route = &config.routes[0];
        // alice's bucket is 3009: the first bucket past 30.09 %.
        assert_eq!(
            decide("checkout", Some("alice"), &[], &open).1,
            Reason::Stable
        );
        let mut seen = [0; 2];
        for i in 0..200 {
            let id = format!("user-{i}");
            let bucket = bucket_for(&route.key_prefix, id.as_bytes());
            let (backend, reason, got) = decide("checkout", Some(id.as_str()), &[], &open);
            assert_eq!(got, Some(bucket));
            let in_split = bucket < 3009;
            seen[usize::from(in_split)] += 1;
            let want = if in_split {
                ("canary", Reason::Split)
            } else {
                ("stable", Reason::Stable)
            };
            assert_eq!((backend.as_str(), reason), want, "{id} in bucket {bucket}");
        }
        assert!(
            seen[0] > 0 && seen[1] > 0,
            "both sides of the boundary: {seen:?}"
        );
    }

    #[test]
    fn gates_divert_only_non_stable_candidates_in_order_kill_breaker_health() {
        let headers: &[(&'static str, &'static str)] = &[("x-employee", "true")];
        let cases = [
            (
                Fixed {
                    admin_killed: true,
                    breaker_open: true,
                    unhealthy: true,
                },
                Reason::Killed,
            ),
            (
                Fixed {
                    breaker_open: true,
                    unhealthy: true,
                    ..Fixed::default()
                },
                Reason::BreakerOpen,
            ),
            (
                Fixed {
                    unhealthy: true,
                    ..Fixed::default()
                },
                Reason::Unhealthy,
            ),
        ];
        for (gates, want) in &cases {
            let (backend, reason, _) = decide("checkout", Some("bob"), headers, gates);
            assert_eq!((backend.as_str(), reason), ("stable", *want));
            // Stable candidates pass every gate untouched.
            let (backend, reason, _) = decide("checkout", Some("alice"), &[], gates);
            assert_eq!((backend.as_str(), reason), ("stable", Reason::Stable));
        }
    }

    #[test]
    fn a_config_kill_beats_every_override() {
        let open = Fixed::default();
        let (backend, reason, _) = decide("frozen", Some("alice"), &[], &open);
        assert_eq!((backend.as_str(), reason), ("stable", Reason::Killed));
    }

    #[test]
    fn closed_gate_names_the_first_failing_gate_and_never_gates_stable() {
        let config = parse(CONFIG).unwrap();
        let route = &config.routes[0];
        let all = Fixed {
            admin_killed: true,
            breaker_open: true,
            unhealthy: true,
        };
        assert_eq!(closed_gate(0, route, BackendSlot::STABLE, &all), None);
        assert_eq!(
            closed_gate(0, route, BackendSlot(1), &all),
            Some(Reason::Killed)
        );
        assert_eq!(
            closed_gate(0, route, BackendSlot(1), &Fixed::default()),
            None
        );
    }
}
