//! Rampart's data plane: its own HTTP/1.1 server and client ([`h1`]), hyper 1 for HTTP/2
//! and hyper-util's pooled client for the rest, wired to the core's decision.
//!
//! A request flows: listener -> [`facts`] (what the core needs to know) -> one
//! [`snapshot`] load -> core route match, identity and decision -> upstream client ->
//! outcome into metrics. Nothing on that path formats a label: metric handles and upstream
//! clients are resolved once per config in [`snapshot::Snapshot`]. The one lock is an
//! upstream's idle-connection list, taken uncontended twice per request (checkout and
//! return), as hyper-util's pool does.

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
