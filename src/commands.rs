//! One function per command; each returns the process's exit code (docs/cli.md).

use crate::cli::{Cli, Command};
use rampart_core::decision::{self, NoGates};
use rampart_runtime::runtime::{self, LoadError};
use rampart_runtime::{StartError, StartOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

/// Exit code for an invalid config.
const EXIT_INVALID: u8 = 1;
/// Exit code when a listener cannot bind.
const EXIT_BIND: u8 = 3;

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config } => run(config),
        Command::Check { config } => check(&config),
        Command::Explain {
            config,
            route,
            identity,
            json,
        } => explain(&config, &route, &identity, json),
        Command::Demo { seconds, logs } => crate::demo::run(seconds, logs.as_deref()),
        Command::Audit {
            command: crate::cli::AuditCommand::Verify { file, head },
        } => audit_verify(&file, head.as_deref()),
        Command::Status(args) => crate::status::run(&args),
        Command::DemoUpstream {
            listen,
            version_label,
            fail_rate,
            delay_ms,
        } => crate::demo_upstream::run(listen, version_label, fail_rate, delay_ms),
        Command::Inject {
            config,
            kube_version,
            image,
            files,
        } => crate::inject_cmd::run(config, kube_version, image, files),
        Command::Injector {
            listen,
            tls_cert,
            tls_key,
            kube_version,
            image,
            config,
        } => crate::injector::run(crate::injector::Settings {
            listen,
            tls_cert,
            tls_key,
            options: rampart_inject::Options {
                config,
                kube_version,
                image,
            },
        }),
    }
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("RAMPART_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/rampart/rampart.yaml"))
}

fn worker_threads(configured: Option<usize>) -> usize {
    configured.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Builds the tokio runtime for `threads` data-plane workers: a single-threaded runtime
/// when one CPU is all the sidecar gets, so no work hops between threads.
pub fn tokio_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn run(flag: Option<PathBuf>) -> ExitCode {
    let path = config_path(flag);
    let (loaded, started_on_last_good) = match load_and_prepare(&path) {
        Ok(l) => (l, None),
        Err(e) => {
            eprintln!("{e}");
            // Any failure to apply the file (not only a parse error) starts the last good
            // config, if it still builds: a pod never crash-loops on a file `check` passed.
            let last_good = runtime::state_dir_of_invalid(&path)
                .and_then(|dir| runtime::load_last_good(&dir))
                .filter(|l| runtime::prepare(l).is_ok());
            match last_good {
                Some(l) => {
                    tracing::error!(
                        error = %e,
                        last_good = %l.source.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                        sha256 = %l.source.sha256,
                        "INVALID CONFIG AT START: serving the last good config from state_dir until the file is fixed"
                    );
                    (l, Some(e.to_string()))
                }
                None => {
                    tracing::error!(error = %e, "invalid config at start and no last good config in state_dir");
                    return ExitCode::from(EXIT_INVALID);
                }
            }
        }
    };
    let threads = worker_threads(loaded.config.threads);
    let tokio = match tokio_runtime(threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio.block_on(async move {
        tracing::info!(file = %path.display(), sha256 = %loaded.source.sha256, threads, "config loaded");
        let options = StartOptions {
            config_path: Some(path),
            started_on_last_good,
            handle_signals: true,
            ..StartOptions::default()
        };
        let running = match rampart_runtime::start(loaded, options).await {
            Ok(r) => r,
            Err(e @ StartError::Tls(_)) => {
                eprintln!("rampart: {e}");
                tracing::error!(error = %e, "cannot load the TLS certificate");
                return ExitCode::from(EXIT_INVALID);
            }
            Err(e @ StartError::Bind(_)) => {
                eprintln!("rampart: {e}");
                tracing::error!(error = %e, "listener cannot bind");
                return ExitCode::from(EXIT_BIND);
            }
            Err(e) => {
                eprintln!("rampart: {e}");
                return ExitCode::FAILURE;
            }
        };
        match running.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rampart: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `rampart audit verify FILE [--head HASH]`: 0 intact, 1 with the first bad line.
fn audit_verify(file: &Path, head: Option<&str>) -> ExitCode {
    match rampart_admin::audit::verify(file, head) {
        Ok(report) => {
            for line in &report.torn_acknowledged {
                println!(
                    "note: {}: line {line}: torn by a crash and acknowledged by the writer",
                    file.display()
                );
            }
            println!(
                "ok: {} entries, chain intact; last hash {}",
                report.entries, report.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(1)
        }
    }
}

/// Whether `file` sits in a Kubernetes ConfigMap volume (its directory has `..data`),
/// where kubelet's symlink swap delivers updates.
fn in_configmap_dir(file: &Path) -> bool {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join("..data").exists()
}

/// Loads `path` and builds everything `run` builds from it before serving
/// ([`runtime::prepare`]); the error is the text to print.
fn load_and_prepare(path: &Path) -> Result<runtime::Loaded, String> {
    let loaded = runtime::load(path).map_err(|e| e.to_string())?;
    runtime::prepare(&loaded).map_err(|e| format!("{}: {e:#}", path.display()))?;
    Ok(loaded)
}

fn check(path: &Path) -> ExitCode {
    match load_and_prepare(path) {
        Ok(loaded) => {
            let config = &loaded.config;
            println!(
                "ok: {} routes, {} upstreams",
                config.routes.len(),
                config.upstreams.len()
            );
            for warning in config.warnings(SystemTime::now()) {
                println!("warning: {}: {warning}", path.display());
            }
            if !in_configmap_dir(path) {
                println!(
                    "warning: {}: not in a ConfigMap-style directory (no ..data beside it); in Kubernetes mount the ConfigMap as a directory, without subPath, or updates will not arrive",
                    path.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn explain(path: &Path, route: &str, identity: &str, json: bool) -> ExitCode {
    let loaded = match runtime::load(path) {
        Ok(l) => l,
        Err(
            e @ (LoadError::Invalid { .. }
            | LoadError::Read { .. }
            | LoadError::NotUtf8 { .. }
            | LoadError::Env { .. }
            | LoadError::EnvCollision { .. }),
        ) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let config = &loaded.config;
    let Some(decision) = decision::explain(config, route, identity, &NoGates, None) else {
        let known: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        eprintln!(
            "rampart: unknown route {route:?} (routes: {})",
            known.join(", ")
        );
        return ExitCode::from(EXIT_INVALID);
    };
    let backend = config
        .route(route)
        .and_then(|r| config.backend(r, decision.slot))
        .map(|u| u.name.as_str())
        .unwrap_or("");
    let bucket = decision
        .bucket
        .map(|b| b.to_string())
        .unwrap_or_else(|| "-".to_string());
    if json {
        let object = serde_json::json!({
            "route": route,
            "bucket": decision.bucket,
            "backend": backend,
            "reason": decision.reason.as_str(),
        });
        println!("{object}");
    } else {
        println!(
            "route={route} bucket={bucket} backend={backend} reason={}",
            decision.reason.as_str()
        );
    }
    ExitCode::SUCCESS
}
