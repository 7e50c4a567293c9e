//! Rampart's pure core: everything Rampart decides, with no I/O and no async runtime.
//!
//! The proxy, admin and binary crates feed this crate facts (a parsed request, the clock,
//! outcomes of upstream attempts) and act on its answers. Keeping the decisions here means
//! they are tested without sockets and agree on every replica that runs the same config.
//!
//! Pipeline of a config: YAML text -> [`config::raw`] serde structs -> [`config::validate`]
//! (collects every error with its path and position) -> an immutable [`config::Config`].
//! Pipeline of a request: [`matching`] picks the route, [`identity`] extracts who is asking,
//! [`bucket`] hashes it, [`decision`] picks the backend and names the reason.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod bucket;
pub mod clock;
pub mod config;
pub mod decision;
pub mod identity;
pub mod matching;
pub mod rollout;
