//! Rampart's control surfaces: the metrics listener (`/metrics`, `/healthz`, `/readyz`), and
//! the admin API with its tokens and tamper-evident audit log (docs/admin.md, docs/audit.md).
//!
//! The metrics listener is read-only and unauthenticated by design (docs/config.md): it
//! exposes nothing but what Prometheus and the kubelet need. The admin API changes what
//! this replica does, so every call is authenticated, authorised by role and audited; it
//! reaches the running proxy only through the [`api::AdminControl`] trait the control
//! plane (`crates/runtime`) implements.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod metrics_server;
pub mod status;
pub mod tokens;
