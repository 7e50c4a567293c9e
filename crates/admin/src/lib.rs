//! Rampart's control surfaces: the metrics listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! The listener is read-only and unauthenticated by design (SPEC section 2): it exposes
//! nothing but what Prometheus and the kubelet need.

#![forbid(unsafe_code)]

pub mod metrics_server;
