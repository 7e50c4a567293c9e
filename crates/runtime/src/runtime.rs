//! The runtime: loads a config, publishes it as a snapshot, binds the listeners, serves,
//! reloads when the file changes (or on SIGHUP, or at the periodic check), and drains on
//! SIGTERM (docs/reload.md, docs/proxying.md#shutdown-and-signals). Every apply or
//! rejection is a [`ConfigEvent`] sent to the subscribers registered at start; the runtime
//! knows nothing of the admin API or the audit log.

use crate::events::{routes_changed, AppliedConfig, Cause, ConfigEvent, ConfigSubscriber};
use crate::events::{RejectedConfig, ReloadMetrics};
use prometheus::Registry;
use rampart_admin::metrics_server::{self, Readiness};
use rampart_core::config::{self, Config, ConfigErrors};
use rampart_proxy::handler::ProxyState;
use rampart_proxy::tls::ReloadingCert;
use rampart_proxy::upstream::UpstreamError;
use rampart_proxy::{Metrics, Snapshot, SnapshotSource};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid UTF-8.
    #[error("{path}: not UTF-8 text")]
    NotUtf8 {
        /// The file.
        path: String,
    },
    /// A listener override in the environment (docs/inject.md#ports) is not an address.
    #[error("{var}={value:?}: not a listen address (host:port)")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A listener override in the environment lands on an address another of the config's
    /// listeners uses (the file's own listeners were checked against each other already).
    #[error("{var}={value}: collides with {field} {addr}; pick ports that differ (docs/inject.md#ports)")]
    EnvCollision {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: SocketAddr,
        /// The config field it collides with.
        field: &'static str,
        /// That field's address.
        addr: SocketAddr,
    },
    /// The file parsed or validated with errors.
    #[error("{}", .errors.render(.path))]
    Invalid {
        /// The file.
        path: String,
        /// Every error found.
        errors: ConfigErrors,
    },
}

/// A parsed, valid config and where it came from: what [`crate::start`] and
/// [`Runtime::apply`] take, so nothing unvalidated can be applied.
pub struct Loaded {
    /// The config.
    pub config: Config,
    /// Its file and sha256.
    pub source: SnapshotSource,
    /// The file's bytes, kept as the last good config.
    pub bytes: Vec<u8>,
}

/// Name of the last good config inside `state_dir`.
pub(crate) const LAST_GOOD_FILE: &str = "last-good.yaml";

/// The `state_dir` an invalid config file names, if its YAML still says it (or, when the
/// YAML itself is broken, a top-level `state_dir:` line does); else `$RAMPART_STATE_DIR`.
/// Used to find the last good config when the file is broken.
pub fn state_dir_of_invalid(path: &Path) -> Option<PathBuf> {
    #[derive(serde::Deserialize)]
    struct OnlyStateDir {
        state_dir: Option<String>,
    }
    let text = std::fs::read_to_string(path).ok();
    let from_file = text.as_deref().and_then(|text| {
        match serde_saphyr::from_str::<OnlyStateDir>(text) {
            Ok(c) => c.state_dir,
            // A syntax error anywhere (the commonest broken file) fails the whole parse.
            Err(_) => state_dir_line(text),
        }
    });
    from_file
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("RAMPART_STATE_DIR").map(PathBuf::from))
}

/// The value of a top-level `state_dir: VALUE` line (comment and quotes stripped).
fn state_dir_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix("state_dir:")?;
        let value = value.split(" #").next().unwrap_or(value).trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The last good config kept in `state_dir`, if there is a valid one.
pub fn load_last_good(state_dir: &Path) -> Option<Loaded> {
    load(&state_dir.join(LAST_GOOD_FILE)).ok()
}

/// Writes `bytes` as the last good config, atomically (temp file, fsync, rename).
fn persist_last_good(state_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{LAST_GOOD_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(LAST_GOOD_FILE))
}

/// Reads, parses and validates a config file: the one way `run`, `check`, `explain`, the
/// demo and a reload read one.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_bytes(path, bytes)
}

/// Parses and validates a config file's bytes, for bytes already read (a reload that
/// hashed them first, a test's config).
pub fn parse_bytes(path: &Path, bytes: Vec<u8>) -> Result<Loaded, LoadError> {
    let display = path.display().to_string();
    let text = std::str::from_utf8(&bytes).map_err(|_| LoadError::NotUtf8 {
        path: display.clone(),
    })?;
    let mut config = config::parse(text).map_err(|errors| LoadError::Invalid {
        path: display.clone(),
        errors,
    })?;
    apply_listen_overrides(&mut config)?;
    Ok(Loaded {
        config,
        source: SnapshotSource {
            sha256: config::sha256_hex(&bytes),
            path: Some(path.to_path_buf()),
        },
        bytes,
    })
}

/// `RAMPART_LISTEN` and `RAMPART_METRICS_LISTEN`, when set, replace the file's `listen` and
/// `metrics_listen`: the injected sidecar's ports are decided by its pod spec, whatever the
/// ConfigMap says (docs/inject.md#ports). Applied to every load, so reloads compare like
/// with like.
fn apply_listen_overrides(config: &mut Config) -> Result<(), LoadError> {
    for (var, slot) in [
        ("RAMPART_LISTEN", &mut config.listen),
        ("RAMPART_METRICS_LISTEN", &mut config.metrics_listen),
    ] {
        if let Some(value) = std::env::var_os(var) {
            let value = value.to_string_lossy().into_owned();
            *slot = value
                .trim()
                .parse::<SocketAddr>()
                .map_err(|_| LoadError::Env { var, value })?;
        }
    }
    // The same rule validation applies to the file's listeners: same port, and the same
    // address or either one unspecified.
    let clash = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    let others = [
        ("listen", Some(config.listen)),
        ("metrics_listen", Some(config.metrics_listen)),
        ("admin_listen", config.admin_listen),
        ("ofrep_listen", config.ofrep_listen),
    ];
    for (var, field, value) in [
        ("RAMPART_LISTEN", "listen", config.listen),
        (
            "RAMPART_METRICS_LISTEN",
            "metrics_listen",
            config.metrics_listen,
        ),
    ] {
        if std::env::var_os(var).is_none() {
            continue;
        }
        for (other, addr) in others {
            let Some(addr) = addr else { continue };
            if other != field && clash(value, addr) {
                return Err(LoadError::EnvCollision {
                    var,
                    value,
                    field: other,
                    addr,
                });
            }
        }
    }
    Ok(())
}

/// Why a valid config could still not be served: what [`prepare`] found.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A metric could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The snapshot could not be built (an upstream's URL, TLS roots or `ca_file`).
    #[error("building the snapshot: {0}")]
    Snapshot(#[from] UpstreamError),
    /// The listener's certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Builds, and throws away, everything `run` builds from a config before it serves: the
/// snapshot (upstream clients: authorities, TLS roots and `ca_file`s) and the listener's
/// TLS certificate. `check` runs it so that it refuses what `run` would refuse at start,
/// and `run` so that a file it cannot apply sends it to the last good config.
pub fn prepare(loaded: &Loaded) -> Result<(), PrepareError> {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry)?;
    Snapshot::build(
        Arc::new(loaded.config.clone()),
        loaded.source.clone(),
        &metrics,
        None,
        &std::collections::HashMap::new(),
    )?;
    tls_setup(&loaded.config)?;
    Ok(())
}

/// The running data plane's shared pieces: what the serving tasks, the admin API, OFREP and
/// the demo's narration hold on to, and what applies a new config ([`Runtime::apply`]).
pub struct Runtime {
    /// The proxy's state (snapshot and metrics).
    pub state: Arc<ProxyState>,
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `/readyz`: set once serving, cleared when a drain starts.
    pub readiness: Arc<Readiness>,
    /// Where state lives; fixed at start (a reload that changes it warns).
    pub state_dir: Option<PathBuf>,
    /// sha256 of the config file as last read (valid or not), so an unchanged file is
    /// neither re-applied nor re-rejected by every periodic check.
    last_seen: std::sync::Mutex<String>,
    /// Who hears of every apply and rejection: the reload metrics first, then those
    /// registered at start (admin state and audit log, tests).
    subscribers: Vec<Arc<dyn ConfigSubscriber>>,
}

/// Why a new config could not be applied (the previous one keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Its snapshot could not be built (an upstream's URL, TLS roots or `ca_file`).
    #[error("building the snapshot: {0}")]
    Snapshot(#[from] UpstreamError),
}

/// Why the runtime could not be built around its first config.
#[derive(Debug, thiserror::Error)]
pub enum NewRuntimeError {
    /// A metric could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The first snapshot could not be built.
    #[error("building the first snapshot: {0}")]
    Snapshot(#[from] UpstreamError),
}

impl Runtime {
    /// Builds the runtime around a first config and tells `subscribers` it was applied
    /// ([`Cause::Start`]).
    pub fn new(
        loaded: Loaded,
        subscribers: Vec<Arc<dyn ConfigSubscriber>>,
    ) -> Result<Runtime, NewRuntimeError> {
        let state_dir = loaded.config.state_dir.clone();
        let bytes: Arc<[u8]> = loaded.bytes.into();
        let loaded_sha = loaded.source.sha256.clone();
        let registry = Registry::new();
        let metrics = Metrics::new(&registry)?;
        let config = Arc::new(loaded.config);
        let persisted = state_dir
            .as_deref()
            .map(crate::rollout_store::load)
            .unwrap_or_default();
        let snapshot = Snapshot::build(config, loaded.source, &metrics, None, &persisted)?;
        let mut all: Vec<Arc<dyn ConfigSubscriber>> = vec![Arc::new(ReloadMetrics::new(&metrics))];
        all.extend(subscribers);
        let state = Arc::new(ProxyState::new(snapshot, metrics));
        let first_sha = loaded_sha.clone();
        let runtime = Runtime {
            state,
            registry,
            readiness: Arc::new(Readiness::default()),
            state_dir,
            last_seen: std::sync::Mutex::new(first_sha),
            subscribers: all,
        };
        runtime.notify(&ConfigEvent::Applied(AppliedConfig {
            cause: Cause::Start,
            previous: None,
            snapshot: runtime.state.snapshot.load_full(),
            bytes: Arc::clone(&bytes),
            routes_changed: Vec::new(),
        }));
        runtime.publish_config_metrics(None);
        runtime.keep_last_good(&bytes);
        Ok(runtime)
    }

    /// Sends `event` to every subscriber, in the order they were registered.
    fn notify(&self, event: &ConfigEvent) {
        for subscriber in &self.subscribers {
            subscriber.config_event(event);
        }
    }

    /// Records the config file's content as seen (for a start on the last good config,
    /// so the unchanged broken file is not rejected again at every check).
    pub(crate) fn set_last_seen(&self, file_bytes: &[u8]) {
        if let Ok(mut last) = self.last_seen.lock() {
            *last = config::sha256_hex(file_bytes);
        }
    }

    /// Writes every rollout's state to `state_dir` (after verdicts and operator actions).
    pub(crate) fn persist_rollouts(&self) {
        crate::rollout_store::persist(&self.state, self.state_dir.as_deref());
    }

    /// Stores an applied config's bytes as the last good config in `state_dir`.
    fn keep_last_good(&self, bytes: &[u8]) {
        if let Some(dir) = &self.state_dir {
            if let Err(e) = persist_last_good(dir, bytes) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot keep the last good config in state_dir");
            }
        }
    }

    /// Tells the subscribers the file at `path` was refused (`error`) and the serving config
    /// is not the file's: `rampart_config_last_reload_successful` 0, one rejection, an
    /// audit entry.
    pub(crate) fn reject(&self, cause: Cause, path: &Path, sha256: &str, error: String) {
        self.notify(&ConfigEvent::Rejected(RejectedConfig {
            cause,
            sha256: sha256.to_string(),
            file: Some(path.to_path_buf()),
            error,
        }));
    }

    /// The process started on the last good config because the file at `path` is invalid:
    /// the rejection is reported, and the broken file is remembered as seen so the periodic
    /// check does not reject it again until it changes.
    pub(crate) fn started_on_last_good(&self, path: &Path, error: String) {
        let bytes = std::fs::read(path).unwrap_or_default();
        self.set_last_seen(&bytes);
        self.reject(Cause::Start, path, &config::sha256_hex(&bytes), error);
    }

    /// Applies a new valid config: builds its snapshot (reusing unchanged upstream pools),
    /// tells the subscribers why (`cause`), and swaps it in whole. On error nothing
    /// changed: the serving snapshot stays.
    pub fn apply(&self, loaded: Loaded, cause: Cause) -> Result<(), ApplyError> {
        let previous = self.state.snapshot.load_full();
        let bytes: Arc<[u8]> = loaded.bytes.into();
        let snapshot = Snapshot::build(
            Arc::new(loaded.config),
            loaded.source,
            &self.state.metrics,
            Some(&previous),
            &std::collections::HashMap::new(),
        )?;
        for warning in restart_only_changes(&previous.config, &snapshot.config) {
            tracing::warn!(
                field = warning,
                "this setting changes only at restart; the rest of the new config is applied"
            );
        }
        let snapshot = Arc::new(snapshot);
        // Audited before it serves: whatever status shows is already in the audit log.
        self.notify(&ConfigEvent::Applied(AppliedConfig {
            cause,
            routes_changed: routes_changed(&previous.config, &snapshot.config),
            previous: Some(Arc::clone(&previous)),
            snapshot: Arc::clone(&snapshot),
            bytes: Arc::clone(&bytes),
        }));
        self.state.snapshot.store(Arc::clone(&snapshot));
        self.publish_config_metrics(Some(&previous.config));
        rampart_proxy::health::start_checkers(&self.state);
        self.keep_last_good(&bytes);
        Ok(())
    }

    /// Re-reads `path` and applies it if its content changed since the last look and it
    /// is valid; an invalid or unreadable file is rejected (logged with its errors and
    /// counted) and the applied config keeps serving. `cause` says what made it look.
    pub fn reload(&self, path: &Path, cause: Cause) {
        let bytes = std::fs::read(path);
        let seen = match &bytes {
            Ok(b) => config::sha256_hex(b),
            Err(_) => "unreadable".to_string(),
        };
        {
            let Ok(mut last) = self.last_seen.lock() else {
                return;
            };
            if *last == seen {
                return;
            }
            *last = seen.clone();
        }
        if seen == self.state.snapshot.load().source.sha256 {
            // The file is back to what is serving (a revert after a rejected edit, or the
            // last good config restored after a start on it): nothing to apply, but the
            // file and the running config agree again.
            if self.state.metrics.config_last_reload_successful.get() != 1 {
                self.state.metrics.config_last_reload_successful.set(1);
                tracing::info!(sha256 = %seen, file = %path.display(), "the config file matches the serving config again");
            }
            return;
        }
        let result = bytes
            .map_err(|source| LoadError::Read {
                path: path.display().to_string(),
                source,
            })
            .and_then(|b| parse_bytes(path, b));
        match result {
            Ok(loaded) => match self.apply(loaded, cause) {
                Ok(()) => {
                    tracing::info!(sha256 = %seen, file = %path.display(), %cause, "config applied")
                }
                Err(e) => {
                    tracing::error!(error = %e, file = %path.display(), %cause, "config rejected; the last good config keeps serving");
                    self.reject(cause, path, &seen, e.to_string());
                }
            },
            Err(e) => {
                tracing::error!(error = %e, file = %path.display(), %cause, "config rejected; the last good config keeps serving");
                self.reject(cause, path, &seen, e.to_string());
            }
        }
    }

    /// Sets the config-derived gauges: info, expiry, kills, split ratios.
    fn publish_config_metrics(&self, previous: Option<&Config>) {
        let metrics = &self.state.metrics;
        let snapshot = self.state.snapshot.load();
        let config = &snapshot.config;
        metrics.config_info.reset();
        metrics
            .config_info
            .with_label_values(&[&config.version.to_string(), &snapshot.source.sha256])
            .set(1);
        let now = SystemTime::now();
        metrics.config_last_reload_timestamp.set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        if previous.is_some() {
            metrics.route_expired.reset();
        }
        self.refresh_expiry(now);
        self.publish_kills();
        self.state.publish_all_splits();
    }

    /// Sets `rampart_route_expired` for every route at `now`; run at each apply and by the
    /// periodic check, so a flag expires at 00:00 UTC of its day without a reload; each
    /// time a route turns expired (at start, at a reload, at midnight) it is logged.
    pub(crate) fn refresh_expiry(&self, now: SystemTime) {
        let metrics = &self.state.metrics;
        let snapshot = self.state.snapshot.load();
        let expired: Vec<&str> = snapshot
            .config
            .expired_routes(now)
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        for route in &snapshot.config.routes {
            let gauge = metrics.route_expired.with_label_values(&[&route.name]);
            let now_expired = expired.contains(&route.name.as_str());
            if now_expired && gauge.get() == 0 {
                tracing::warn!(
                    route = %route.name,
                    owner = route.owner.as_deref().unwrap_or("none"),
                    expires = route.expires_text.as_deref().unwrap_or(""),
                    "expired route: remove the flag or move its date"
                );
            }
            gauge.set(i64::from(now_expired));
        }
    }

    /// Sets `rampart_kill_active{route,source}` for every route.
    pub(crate) fn publish_kills(&self) {
        let metrics = &self.state.metrics;
        let snapshot = self.state.snapshot.load();
        let admin = self.state.admin_kills.load();
        metrics.kill_active.reset();
        for route in &snapshot.config.routes {
            let config_kill = route.killed.is_some();
            metrics
                .kill_active
                .with_label_values(&[&route.name, "config"])
                .set(i64::from(config_kill));
            metrics
                .kill_active
                .with_label_values(&[&route.name, "admin"])
                .set(i64::from(admin.contains(&route.name)));
        }
    }
}

/// Names of settings that differ between two configs but apply only at restart.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen != new.listen {
        changed.push("listen");
    }
    if old.metrics_listen != new.metrics_listen {
        changed.push("metrics_listen");
    }
    if old.admin_listen != new.admin_listen {
        changed.push("admin_listen");
    }
    if old.ofrep_listen != new.ofrep_listen {
        changed.push("ofrep_listen");
    }
    if old.threads != new.threads {
        changed.push("threads");
    }
    if old.state_dir != new.state_dir {
        changed.push("state_dir");
    }
    if old.tls != new.tls {
        changed.push("tls");
    }
    if old.limits.max_connections != new.limits.max_connections {
        changed.push("limits.max_connections");
    }
    if old.limits.listen_backlog != new.limits.listen_backlog {
        changed.push("limits.listen_backlog");
    }
    changed
}

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} on {addr}: {source}")]
pub struct BindError {
    /// Which listener.
    pub what: &'static str,
    /// Its address.
    pub addr: SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// Listeners bound and ready to serve.
pub(crate) struct Bound {
    /// The data-plane listener.
    pub(crate) proxy: TcpListener,
    /// The metrics listener.
    pub(crate) metrics: TcpListener,
    /// TLS on the data-plane listener, when `tls` is set.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The data plane's certificate, re-read when its files change.
    pub(crate) cert: Option<Arc<ReloadingCert>>,
    /// The OFREP flag evaluation listener, when `ofrep_listen` is set (docs/ofrep.md).
    pub(crate) ofrep: Option<TcpListener>,
}

/// Why the listener's TLS could not be set up at start.
#[derive(Debug, thiserror::Error)]
#[error("tls: {0}")]
pub struct TlsSetupError(#[from] rampart_proxy::tls::TlsError);

/// Loads the data plane's certificate and builds its TLS acceptor, if `tls` is set.
pub(crate) fn tls_setup(
    config: &Config,
) -> Result<(Option<TlsAcceptor>, Option<Arc<ReloadingCert>>), TlsSetupError> {
    let Some(files) = &config.tls else {
        return Ok((None, None));
    };
    let cert = Arc::new(ReloadingCert::new(
        files.cert_file.clone(),
        files.key_file.clone(),
    )?);
    let server_config = rampart_proxy::tls::server_config(Arc::clone(&cert))?;
    Ok((Some(TlsAcceptor::from(server_config)), Some(cert)))
}

/// Re-reads the certificate; a bad new pair is refused and the old one keeps serving.
fn reload_cert(cert: &ReloadingCert) {
    match cert.reload() {
        Ok(true) => {
            tracing::info!(cert = %cert.files().0.display(), "TLS certificate reloaded: new connections get the new one")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "new TLS certificate refused; the old one keeps serving")
        }
    }
}

/// Binds the data-plane and metrics listeners of `config`.
pub(crate) async fn bind(
    config: &Config,
    tls: (Option<TlsAcceptor>, Option<Arc<ReloadingCert>>),
) -> Result<Bound, BindError> {
    let proxy = rampart_proxy::server::bind(config.listen, config.limits.listen_backlog).map_err(
        |source| BindError {
            what: "listen",
            addr: config.listen,
            source,
        },
    )?;
    let metrics = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| BindError {
            what: "metrics_listen",
            addr: config.metrics_listen,
            source,
        })?;
    let ofrep = crate::ofrep::bind(config).await?;
    Ok(Bound {
        proxy,
        metrics,
        tls: tls.0,
        cert: tls.1,
        ofrep,
    })
}

/// What the process asks of a running runtime (from signals, or from a library caller
/// such as the demo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Re-read the config file (SIGHUP).
    Reload(Cause),
    /// Stop: the first one drains (docs/proxying.md#shutdown-and-signals), a second skips
    /// what is left.
    Stop,
}

/// SIGTERM, SIGINT and SIGHUP, installed before the process reports ready and handled in
/// the serving loop itself: no task between the signal and the drain, so `/readyz` turns
/// 503 as soon as the loop sees the signal.
pub(crate) struct Signals {
    pub(crate) term: tokio::signal::unix::Signal,
    pub(crate) int: tokio::signal::unix::Signal,
    pub(crate) hup: tokio::signal::unix::Signal,
}

/// The next command, from a caller or from a signal.
async fn next_command(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    signals: &mut Option<Signals>,
) -> Option<Command> {
    let signal = async {
        match signals {
            Some(s) => tokio::select! {
                _ = s.term.recv() => Command::Stop,
                _ = s.int.recv() => Command::Stop,
                _ = s.hup.recv() => Command::Reload(Cause::Sighup),
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        command = commands.recv() => command,
        command = signal => Some(command),
    }
}

/// Why serving ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data-plane listener's task panicked or was cancelled.
    #[error("the proxy listener task failed: {0}")]
    ProxyTask(#[from] tokio::task::JoinError),
    /// The OFREP listener's metrics could not be registered (docs/ofrep.md).
    #[error("starting the OFREP listener: {0}")]
    Ofrep(#[from] prometheus::Error),
}

/// Serves until a [`Command::Stop`], then drains (docs/proxying.md#shutdown-and-signals);
/// reloads on [`Command::Reload`], when the file changes and at the periodic check.
pub(crate) async fn serve(
    runtime: Arc<Runtime>,
    bound: Bound,
    config_path: Option<PathBuf>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut signals: Option<Signals>,
    admin: Option<crate::admin_control::AdminServer>,
    fleet_metrics: Arc<dyn crate::fleet::FleetMetrics>,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_task = tokio::spawn(metrics_server::serve(
        bound.metrics,
        runtime.registry.clone(),
        Arc::clone(&runtime.readiness),
        stopped(stop_rx.clone()),
    ));
    let (proxy_stop_tx, proxy_stop_rx) = watch::channel(false);
    let acceptor = bound.tls.clone();
    let proxy_task = tokio::spawn(rampart_proxy::server::serve(
        bound.proxy,
        Arc::clone(&runtime.state),
        acceptor,
        stopped(proxy_stop_rx),
    ));
    let _config_watcher = config_path.clone().and_then(|path| {
        let runtime = Arc::clone(&runtime);
        let watched = path.clone();
        crate::watch::spawn("config", &[&watched], move || {
            runtime.reload(&path, Cause::FileChange)
        })
    });
    let _cert_watcher = bound.cert.clone().and_then(|cert| {
        let (c, k) = cert.files();
        let (c, k) = (c.to_path_buf(), k.to_path_buf());
        crate::watch::spawn("tls certificate", &[&c, &k], move || reload_cert(&cert))
    });
    rampart_proxy::health::start_checkers(&runtime.state);
    let ofrep = match bound.ofrep {
        Some(listener) => Some(crate::ofrep::spawn(&runtime, listener, bound.tls.clone())?),
        None => None,
    };
    let fleet = tokio::spawn(crate::fleet::run(
        Arc::clone(&runtime.state),
        runtime.state_dir.clone(),
        fleet_metrics,
    ));
    runtime.readiness.set(true);
    tracing::info!(
        listen = %runtime.state.snapshot.load().config.listen,
        metrics_listen = %runtime.state.snapshot.load().config.metrics_listen,
        "rampart is serving"
    );

    let periodic = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Some(path) = &config_path {
                runtime.reload(path, Cause::Periodic);
            }
            runtime.refresh_expiry(std::time::SystemTime::now());
            if let Some(cert) = &bound.cert {
                reload_cert(cert);
            }
        }
    };
    tokio::pin!(periodic);
    let rollouts = async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tick.tick().await;
            if runtime.state.tick_rollouts(std::time::SystemTime::now()) {
                runtime.persist_rollouts();
            }
        }
    };
    tokio::pin!(rollouts);
    loop {
        tokio::select! {
            command = next_command(&mut commands, &mut signals) => match command {
                Some(Command::Reload(cause)) => {
                    if let Some(path) = &config_path {
                        if cause == Cause::Sighup {
                            tracing::info!(file = %path.display(), "SIGHUP: reloading the config");
                        } else {
                            tracing::info!(file = %path.display(), %cause, "reloading the config");
                        }
                        runtime.reload(path, cause);
                    }
                }
                // Every sender gone: nobody can ask to stop any more, so stop now.
                Some(Command::Stop) | None => break,
            },
            _ = &mut periodic => {}
            _ = &mut rollouts => {}
        }
    }

    // Drain: unready at once, keep serving for `delay` while endpoints are removed, then
    // close listeners and let in-flight requests finish for up to `timeout`. A second
    // stop (SIGTERM or SIGINT) skips what is left.
    let drain = runtime.state.snapshot.load().config.drain;
    runtime.readiness.set(false);
    tracing::info!(delay = ?drain.delay, timeout = ?drain.timeout, "shutdown requested: draining");
    let skip = async {
        loop {
            if matches!(
                next_command(&mut commands, &mut signals).await,
                Some(Command::Stop) | None
            ) {
                break;
            }
        }
    };
    tokio::pin!(skip);
    let skipped = tokio::select! {
        _ = tokio::time::sleep(drain.delay) => false,
        _ = &mut skip => true,
    };
    let _ = proxy_stop_tx.send(true);
    let graceful = proxy_task.await?;
    if !skipped {
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all in-flight requests finished"),
            _ = tokio::time::sleep(drain.timeout) => tracing::warn!("drain timeout reached; closing the remaining connections"),
            _ = &mut skip => tracing::warn!("second signal: skipping the rest of the drain"),
        }
    }
    fleet.abort();
    if let Some(ofrep) = ofrep {
        ofrep.stop().await;
    }
    if let Some(admin) = admin {
        admin.stop().await;
    }
    let _ = stop_tx.send(true);
    let _ = metrics_task.await;
    tracing::info!("rampart stopped");
    Ok(())
}
