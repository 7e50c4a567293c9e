//! OpenFeature Remote Evaluation Protocol (OFREP) for Rampart: an application asks its
//! sidecar which backend a user gets, and gets the proxy's own answer (docs/ofrep.md).
//!
//! This crate is the HTTP surface only: it parses requests ([`context`]), shapes answers
//! and errors as the OFREP OpenAPI document does ([`answer`]), computes bulk ETags and
//! serves the listener ([`server`]). The decision itself comes from the runtime through the
//! [`Evaluator`] trait, over the live snapshot, so there is one evaluator for traffic and
//! for flags.

#![forbid(unsafe_code)]

pub mod answer;
pub mod context;
pub mod live;
pub mod server;

pub use context::EvalContext;
use rampart_core::decision::Decision;

/// One flag's evaluation as the proxy would decide it for this context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The route's name (the flag key and the metric's `route` label).
    pub route: String,
    /// The backend the proxy would send this request to (the answer's `variant`).
    pub backend: String,
    /// Whether the route is a `toggle` (its flag resolves as a boolean).
    pub toggle: bool,
    /// Whether the route is killed now (config or admin): the answer is `DISABLED`.
    pub killed: bool,
    /// The decision: slot, bucket, Rampart's reason and the candidate before the gates.
    pub decision: Decision,
    /// The candidate's backend name when a gate diverted it to stable.
    pub candidate: Option<String>,
}

/// Why one flag could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// No route has that name.
    #[error("no route is named {0:?}")]
    NotFound(String),
    /// The route draws a random bucket without an identity (`missing_identity: random`):
    /// no answer would hold for the next request, so a targeting key is required.
    #[error("route {0:?} buckets by identity and draws a random bucket without one: send context.targetingKey")]
    TargetingKeyMissing(String),
}

/// Every flag evaluated on one snapshot, with what the answers depend on besides the context.
#[derive(Debug, Clone)]
pub struct Bulk {
    /// One result per route, in config order: the route's name and its evaluation.
    pub flags: Vec<(String, Result<Evaluation, FlagError>)>,
    /// The config's sha256 and a digest of the runtime state the gates read (kills,
    /// breakers, health, rollout steps): part of the bulk ETag.
    pub version: String,
}

/// The decision behind the endpoint, implemented by `crates/runtime` over its live state.
///
/// Both methods must not change what they read: no breaker probe slot is taken, no
/// bulkhead permit, nothing counted as traffic.
pub trait Evaluator: Send + Sync + 'static {
    /// Whether a route is named `route` now.
    fn knows(&self, route: &str) -> bool;
    /// The route named `route`, decided for `context`.
    fn evaluate(&self, route: &str, context: &EvalContext) -> Result<Evaluation, FlagError>;
    /// Every route, decided for `context` on one snapshot.
    fn evaluate_all(&self, context: &EvalContext) -> Bulk;
}
