//! OpenFeature flag evaluation for the application beside the proxy (docs/ofrep.md): the
//! `ofrep_listen` listener, answered by [`LiveEvaluator`] from the live snapshot with the
//! proxy's own decision.

use crate::runtime::{BindError, Runtime};
use rampart_core::config::Config;
use rampart_ofrep::live::LiveEvaluator;
use rampart_ofrep::server::{Ofrep, OfrepMetrics};
use std::sync::Arc;
use tokio::net::TcpListener;

/// The running OFREP listener.
pub struct OfrepServer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl OfrepServer {
    /// Stops accepting; connections in progress finish on their own.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `ofrep_listen` if it is set.
pub async fn bind(config: &Config) -> Result<Option<TcpListener>, BindError> {
    let Some(addr) = config.ofrep_listen else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| BindError {
            what: "ofrep_listen",
            addr,
            source,
        })
}

/// Serves OFREP on `listener` over `runtime`, counting into its registry. `tls` is the
/// data plane's TLS acceptor, used when the listener is off loopback (validation refuses
/// such a listener without `tls`).
pub fn spawn(
    runtime: &Runtime,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<OfrepServer, prometheus::Error> {
    let metrics = OfrepMetrics::new(&runtime.registry)?;
    let evaluator = Arc::new(LiveEvaluator::new(Arc::clone(&runtime.state)));
    let ofrep = Arc::new(Ofrep::new(evaluator, metrics));
    let off_loopback = listener.local_addr().is_ok_and(|a| !a.ip().is_loopback());
    let tls = tls.filter(|_| off_loopback);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(ofrep_listen = %addr, tls = tls.is_some(), "OpenFeature flag evaluation (OFREP) listening");
    }
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(rampart_ofrep::server::serve(
        listener,
        ofrep,
        tls,
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    Ok(OfrepServer { stop, task })
}
