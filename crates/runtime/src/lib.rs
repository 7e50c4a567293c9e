//! Rampart's control plane as a library: everything `rampart run` does between parsing the
//! command line and exiting, so tests and the demo call the same wiring.
//!
//! The pipeline, in one line: file -> [`load`] ([`Loaded`]) -> [`start`] (listeners bound,
//! [`Runtime`] built, admin API, health checks, fleet analysis, reload triggers) ->
//! [`Running`] -> [`Running::wait`] (drained on stop). Every apply or rejection of a config
//! is a [`ConfigEvent`] with its [`Cause`], sent to the [`ConfigSubscriber`]s registered at
//! start (the reload metrics, the admin state and audit log, a test's recorder).
//!
//! The public surface, all a caller needs:
//! - [`load`], [`parse_bytes`] -> [`Loaded`]; [`prepare`] builds what `run` builds from it
//!   and throws it away (`rampart check`);
//! - [`start`] with [`StartOptions`] (config file, signals, [`ConfigSubscriber`]s, data-plane
//!   event sinks, a [`FleetMetrics`] in place of [`Prometheus`]) -> [`Running`];
//! - [`Runtime::apply`]`(loaded, cause)` and [`Runtime::reload`]`(path, cause)`, each
//!   ending in one [`ConfigEvent`];
//! - [`fleet`]: the fleet analysis' queries, shared with `rampart status --prometheus`;
//! - [`watch`]: the file watcher behind reloads, shared with `rampart injector`'s
//!   certificate reload.
//!
//! Errors are typed ([`LoadError`], [`PrepareError`], [`StartError`], [`ApplyError`],
//! [`ServeError`]); `anyhow` stays in the binary.
//!
//! Dependencies point one way: core <- proxy, admin, ofrep <- runtime <- the `rampart`
//! binary (docs/decisions.md#the-control-plane-is-a-library).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The admin API's state and operations, OFREP and rollout persistence are parts of the
// wiring `start` builds; nothing outside needs them one by one.
mod admin_control;
pub mod events;
pub mod fleet;
mod ofrep;
mod rollout_store;
pub mod runtime;
mod start;
pub mod watch;

pub use events::{Cause, ConfigEvent, ConfigSubscriber};
pub use fleet::{FleetMetrics, Prometheus};
pub use runtime::{load, parse_bytes, prepare, ApplyError, LoadError, Loaded, PrepareError};
pub use runtime::{Runtime, ServeError};
pub use start::{start, Running, StartError, StartOptions};
