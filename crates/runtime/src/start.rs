//! The one wiring: [`start`] binds the listeners of a loaded config, builds the runtime with
//! its subscribers, starts the admin API, and serves in a task of its own. `rampart run`
//! and `rampart demo` both start through it.

use crate::admin_control::{self, RuntimeAdmin};
use crate::events::ConfigSubscriber;
use crate::fleet::{FleetMetrics, Prometheus};
use crate::runtime::{self, BindError, Command, Loaded, NewRuntimeError, Runtime, ServeError};
use crate::runtime::{Signals, TlsSetupError};
use rampart_proxy::publish::EventSink;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How to start: what `rampart run` and the demo choose differently.
#[derive(Default)]
pub struct StartOptions {
    /// The config file: watched, re-read on SIGHUP and at the periodic check, and the file
    /// a rollback pins against. `None` for a config with no file (a test's): no reloads.
    pub config_path: Option<PathBuf>,
    /// The file could not be used at start and `loaded` is the last good config from
    /// `state_dir`: the rejection's text (reported as a [`crate::Cause::Start`] rejection).
    pub started_on_last_good: Option<String>,
    /// Turn SIGTERM and SIGINT into a drain (a second one skips it) and SIGHUP into a
    /// reload, installed before the process reports ready.
    pub handle_signals: bool,
    /// Config event subscribers, after the reload metrics and the admin state.
    pub config_subscribers: Vec<Arc<dyn ConfigSubscriber>>,
    /// Data-plane event subscribers (breaker transitions, rollout verdicts), after the
    /// admin state's.
    pub proxy_events: Vec<EventSink>,
    /// Who answers the fleet analysis' queries (`rollout.prometheus`); `None` is the real
    /// [`Prometheus`]. A test passes canned answers here to drive fleet verdicts through
    /// the same wiring as `rampart run`.
    pub fleet_metrics: Option<Arc<dyn FleetMetrics>>,
}

/// Why the process could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener's certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// A listener could not bind.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The runtime could not be built around the config.
    #[error(transparent)]
    Runtime(#[from] NewRuntimeError),
    /// A signal handler could not be installed.
    #[error("installing the {signal} handler: {source}")]
    Signal {
        /// Which signal.
        signal: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A started runtime, serving in its own task: the handle its starter keeps to read its
/// addresses and state, ask for a reload, and stop it.
pub struct Running {
    runtime: Arc<Runtime>,
    proxy_addr: SocketAddr,
    metrics_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// The runtime (snapshot, metrics, readiness): to apply a config or read state.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The data-plane listener's address (the port the OS picked for `:0`).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The admin API's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Asks for a reload of the config file, as SIGHUP does.
    pub fn reload(&self, cause: crate::Cause) {
        let _ = self.commands.send(Command::Reload(cause));
    }

    /// Waits until serving ends (after a stop and its drain).
    pub async fn wait(self) -> Result<(), ServeError> {
        let Running { task, commands, .. } = self;
        let result = task.await;
        drop(commands);
        result?
    }

    /// Stops at once, skipping the drain (the demo between its acts), and waits.
    pub async fn stop_now(self) -> Result<(), ServeError> {
        let _ = self.commands.send(Command::Stop);
        let _ = self.commands.send(Command::Stop);
        self.wait().await
    }
}

/// Starts everything `rampart run` runs for `loaded`: binds the data-plane, metrics and
/// admin listeners (and TLS), builds the [`Runtime`] with the admin state and `options`'
/// subscribers, re-applies a pinned rollback, starts health checks, fleet analysis, reload
/// triggers and the rollout ticker, and serves in a task of its own.
pub async fn start(loaded: Loaded, options: StartOptions) -> Result<Running, StartError> {
    let tls = runtime::tls_setup(&loaded.config)?;
    let bound = runtime::bind(&loaded.config, tls).await?;
    let admin_listener = admin_control::bind(&loaded.config).await?;
    let proxy_addr = bound.proxy.local_addr().map_err(|source| BindError {
        what: "listen",
        addr: loaded.config.listen,
        source,
    })?;
    let metrics_addr = bound.metrics.local_addr().map_err(|source| BindError {
        what: "metrics_listen",
        addr: loaded.config.metrics_listen,
        source,
    })?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (commands, commands_rx) = mpsc::unbounded_channel();
    let signals = if options.handle_signals {
        Some(install_signals()?)
    } else {
        None
    };

    // Read before the runtime overwrites last-good.yaml.
    let admin = Arc::new(RuntimeAdmin::new(&loaded));
    let mut subscribers: Vec<Arc<dyn ConfigSubscriber>> = vec![Arc::clone(&admin) as _];
    subscribers.extend(options.config_subscribers);
    let runtime = Arc::new(Runtime::new(loaded, subscribers)?);
    runtime.state.subscribe(admin.proxy_event_sink());
    for sink in options.proxy_events {
        runtime.state.subscribe(sink);
    }
    if let (Some(error), Some(path)) = (options.started_on_last_good, &options.config_path) {
        runtime.started_on_last_good(path, error);
    }
    admin.start(&runtime);

    let admin_server = admin_listener.map(|listener| {
        admin_control::spawn(
            &runtime,
            &admin,
            listener,
            options.config_path.clone().unwrap_or_default(),
            bound.tls.clone(),
        )
    });
    let task = tokio::spawn(runtime::serve(
        Arc::clone(&runtime),
        bound,
        options.config_path,
        commands_rx,
        signals,
        admin_server,
        options
            .fleet_metrics
            .unwrap_or_else(|| Arc::new(Prometheus::new())),
    ));
    Ok(Running {
        runtime,
        proxy_addr,
        metrics_addr,
        admin_addr,
        commands,
        task,
    })
}

/// Installs the SIGTERM, SIGINT and SIGHUP handlers; the serving loop turns them into
/// [`Command`]s.
fn install_signals() -> Result<Signals, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|source| StartError::Signal {
            signal: name,
            source,
        })
    };
    Ok(Signals {
        term: install(SignalKind::terminate(), "SIGTERM")?,
        int: install(SignalKind::interrupt(), "SIGINT")?,
        hup: install(SignalKind::hangup(), "SIGHUP")?,
    })
}
