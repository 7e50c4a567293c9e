//! Rampart's control plane as a library: everything `rampart run` does between parsing the
//! command line and exiting, so tests and the demo call the same wiring.
//!
//! The pipeline, in one line: file -> [`load`] ([`Loaded`]) -> [`start`] (listeners bound,
//! [`Runtime`] built, admin API, health checks, fleet analysis, reload triggers) ->
//! [`Running`] -> [`Running::wait`] (drained on stop). Every apply or rejection of a config
//! is a [`ConfigEvent`] with its [`Cause`], sent to the [`ConfigSubscriber`]s registered at
//! start (the reload metrics, the admin state and audit log, a test's recorder).
//!
//! Dependencies point one way: core <- proxy, admin <- runtime <- the `rampart` binary
//! (docs/decisions.md#the-control-plane-is-a-library).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin_control;
pub mod events;
pub mod fleet;
pub mod ofrep;
pub mod rollout_store;
pub mod runtime;
mod start;
pub mod watch;

pub use events::{Cause, ConfigEvent, ConfigSubscriber};
pub use runtime::{load, parse_bytes, ApplyError, LoadError, Loaded, Runtime};
pub use start::{start, Running, StartError, StartOptions};
