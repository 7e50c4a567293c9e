//! Config events: what the runtime tells the rest of the process after it applied or
//! rejected a config, and why it looked (a typed [`Cause`]). The audit log, the reload
//! metrics and the admin API's config history are subscribers registered at start
//! ([`crate::StartOptions::config_subscribers`]); the runtime knows none of them, so the
//! control plane has no circle (docs/decisions.md#the-control-plane-is-a-library).

use prometheus::{IntCounterVec, IntGauge};
use rampart_core::config::{Config, Route};
use rampart_proxy::Snapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a config was applied or rejected: the trigger, carried as an argument of
/// [`crate::Runtime::apply`] and [`crate::Runtime::reload`] instead of state on the side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The process started (on the file's config, or on the last good one).
    Start,
    /// The config file's directory changed (inotify through `notify`).
    FileChange,
    /// The process received SIGHUP.
    Sighup,
    /// The periodic check found the file's content changed (a missed file event).
    Periodic,
    /// An operator rolled back through the admin API.
    AdminRollback,
    /// A rollback pinned before a restart was applied again at start.
    PinnedRollback,
}

impl Cause {
    /// The cause's name in logs (`start`, `file_change`, `sighup`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::FileChange => "file_change",
            Cause::Sighup => "sighup",
            Cause::Periodic => "periodic",
            Cause::AdminRollback => "admin_rollback",
            Cause::PinnedRollback => "pinned_rollback",
        }
    }

    /// The `cause` of a `config.applied` audit entry (docs/audit.md#entries): the three
    /// triggers of a reload of the file are one cause there.
    pub fn audit_cause(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::FileChange | Cause::Sighup | Cause::Periodic => "reload",
            Cause::AdminRollback => "rollback",
            Cause::PinnedRollback => "pinned_rollback",
        }
    }

    /// Whether the config came from re-reading the file (which lifts a rollback pin).
    pub fn is_file_reload(self) -> bool {
        matches!(self, Cause::FileChange | Cause::Sighup | Cause::Periodic)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One route that differs between the outgoing and the incoming config, as the audit log
/// records it (`routes_changed`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RouteChange {
    /// A route the old config did not have, with its split in percent.
    Added {
        /// The route.
        route: String,
        /// `{backend: percent}`.
        split: BTreeMap<String, f64>,
    },
    /// A route the new config no longer has.
    Removed {
        /// The route.
        route: String,
    },
    /// The configured split changed.
    Split {
        /// The route.
        route: String,
        /// Before, `{backend: percent}`.
        from: BTreeMap<String, f64>,
        /// After.
        to: BTreeMap<String, f64>,
    },
    /// The config kill (`killed:`) changed.
    Killed {
        /// The route.
        route: String,
        /// The reason before (none: not killed).
        from: Option<String>,
        /// The reason after.
        to: Option<String>,
    },
}

/// `{backend: percent}` of a route's configured split (stable gets the rest).
fn split_of(config: &Config, route: &Route) -> BTreeMap<String, f64> {
    route
        .shares(None)
        .into_iter()
        .filter_map(|(slot, share)| {
            let name = config.backend(route, slot)?.name.clone();
            Some((name, f64::from(share.buckets()) / 100.0))
        })
        .collect()
}

/// The routes that differ between two configs: added, removed, split or kill changed.
pub(crate) fn routes_changed(old: &Config, new: &Config) -> Vec<RouteChange> {
    let mut changes = Vec::new();
    for route in &new.routes {
        match old.route(&route.name) {
            None => changes.push(RouteChange::Added {
                route: route.name.clone(),
                split: split_of(new, route),
            }),
            Some(before) => {
                let (from, to) = (split_of(old, before), split_of(new, route));
                if from != to {
                    changes.push(RouteChange::Split {
                        route: route.name.clone(),
                        from,
                        to,
                    });
                }
                if before.killed != route.killed {
                    changes.push(RouteChange::Killed {
                        route: route.name.clone(),
                        from: before.killed.clone(),
                        to: route.killed.clone(),
                    });
                }
            }
        }
    }
    for route in &old.routes {
        if new.route(&route.name).is_none() {
            changes.push(RouteChange::Removed {
                route: route.name.clone(),
            });
        }
    }
    changes
}

/// A config now serving (sent just before the snapshot is swapped in, so whatever status
/// shows is already in the audit log).
#[derive(Clone)]
pub struct AppliedConfig {
    /// Why it was applied.
    pub cause: Cause,
    /// The config serving until now; `None` at start.
    pub previous: Option<Arc<Snapshot>>,
    /// The new snapshot (its `source` has the sha256 and the file).
    pub snapshot: Arc<Snapshot>,
    /// The file's bytes, so a subscriber can keep it to apply it again (rollback).
    pub bytes: Arc<[u8]>,
    /// The routes that changed (empty at start).
    pub routes_changed: Vec<RouteChange>,
}

impl AppliedConfig {
    /// sha256 of the applied config's bytes.
    pub fn sha256(&self) -> &str {
        &self.snapshot.source.sha256
    }
}

/// A config that was read and refused: the previous one keeps serving.
#[derive(Debug, Clone)]
pub struct RejectedConfig {
    /// Why the file was looked at.
    pub cause: Cause,
    /// sha256 of the file's bytes (`unreadable` if it could not be read).
    pub sha256: String,
    /// The file.
    pub file: Option<PathBuf>,
    /// Every error, as one text.
    pub error: String,
}

/// What happened to a config.
#[derive(Clone)]
pub enum ConfigEvent {
    /// A config was applied.
    Applied(AppliedConfig),
    /// A config was rejected.
    Rejected(RejectedConfig),
}

impl ConfigEvent {
    /// The cause of the apply or rejection.
    pub fn cause(&self) -> Cause {
        match self {
            ConfigEvent::Applied(a) => a.cause,
            ConfigEvent::Rejected(r) => r.cause,
        }
    }

    /// The sha256 of the config applied, or of the file rejected.
    pub fn sha256(&self) -> &str {
        match self {
            ConfigEvent::Applied(a) => a.sha256(),
            ConfigEvent::Rejected(r) => &r.sha256,
        }
    }
}

/// Receives every [`ConfigEvent`], synchronously, in order, on the thread that applied or
/// rejected the config. Keep it short: a reload waits for it.
pub trait ConfigSubscriber: Send + Sync {
    /// Called once per event.
    fn config_event(&self, event: &ConfigEvent);
}

impl<F: Fn(&ConfigEvent) + Send + Sync> ConfigSubscriber for F {
    fn config_event(&self, event: &ConfigEvent) {
        self(event)
    }
}

/// The reload metrics as a subscriber: `rampart_config_reloads_total{result}` and
/// `rampart_config_last_reload_successful` (docs/metrics.md). Registered by every runtime.
pub(crate) struct ReloadMetrics {
    reloads: IntCounterVec,
    last_successful: IntGauge,
}

impl ReloadMetrics {
    /// Over the proxy's metric handles.
    pub(crate) fn new(metrics: &rampart_proxy::Metrics) -> ReloadMetrics {
        ReloadMetrics {
            reloads: metrics.config_reloads.clone(),
            last_successful: metrics.config_last_reload_successful.clone(),
        }
    }
}

impl ConfigSubscriber for ReloadMetrics {
    fn config_event(&self, event: &ConfigEvent) {
        match event {
            ConfigEvent::Applied(_) => {
                self.reloads.with_label_values(&["applied"]).inc();
                self.last_successful.set(1);
            }
            ConfigEvent::Rejected(_) => {
                self.reloads.with_label_values(&["rejected"]).inc();
                self.last_successful.set(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_reload_triggers_are_one_audit_cause_and_lift_a_pin() {
        for cause in [Cause::FileChange, Cause::Sighup, Cause::Periodic] {
            assert_eq!(cause.audit_cause(), "reload");
            assert!(cause.is_file_reload());
        }
        for cause in [Cause::Start, Cause::AdminRollback, Cause::PinnedRollback] {
            assert!(!cause.is_file_reload(), "{cause}");
        }
        assert_eq!(Cause::AdminRollback.audit_cause(), "rollback");
    }

    #[test]
    fn a_route_change_serializes_as_the_audit_log_records_it() {
        let change = RouteChange::Split {
            route: "checkout".into(),
            from: BTreeMap::from([("canary".to_string(), 5.0)]),
            to: BTreeMap::from([("canary".to_string(), 25.0)]),
        };
        assert_eq!(
            serde_json::to_value(&change).ok(),
            Some(serde_json::json!({
                "route": "checkout", "change": "split",
                "from": {"canary": 5.0}, "to": {"canary": 25.0}
            }))
        );
    }
}
