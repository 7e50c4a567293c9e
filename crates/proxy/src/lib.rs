//! Rampart's data plane: a hyper 1 server and pooled hyper-util clients wired to the
//! core's decision.
//!
//! A request flows: listener -> [`facts`] (what the core needs to know) -> one
//! [`snapshot`] load -> core route match, identity and decision -> upstream client ->
//! outcome into metrics. Nothing on that path takes a lock or formats a label: metric
//! handles and upstream clients are resolved once per config in [`snapshot::Snapshot`].

#![forbid(unsafe_code)]

pub mod body;
pub mod completion;
pub mod connection;
pub mod decide;
pub mod facts;
pub mod failure;
pub mod h1;
pub mod handler;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod publish;
pub mod rollout;
pub mod server;
pub mod snapshot;
pub mod ticking;
pub mod tls;
pub mod upstream;
pub mod watched_io;

pub use handler::ProxyState;
pub use metrics::Metrics;
pub use snapshot::{Snapshot, SnapshotSource};
