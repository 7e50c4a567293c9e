//! `rampart demo`: everything in one process, nothing to install. Two embedded upstreams
//! (stable "v1", canary "v2") on loopback ports the OS picks, the real proxy in front of
//! them with a 20 % canary split, and a traffic generator of many distinct identities,
//! with a live summary once a second.

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_runtime::{Runtime, StartOptions};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const DEMO_CONFIG: &str = r#"version: 1
listen: 127.0.0.1:0
metrics_listen: 127.0.0.1:0
default_upstream: stable
access_log: {sample: 0}
upstreams:
  stable: {url: "http://STABLE"}
  canary: {url: "http://CANARY"}
routes:
  - name: checkout
    kind: canary
    owner: team-demo
    match: {path_prefix: /checkout}
    identity: [header:x-user-id]
    split: [{backend: canary, percent: 20}]
    breaker: {window: 5s, min_requests: 20, max_error_rate: 0.2, open_for: 2s, max_open_for: 4s, half_open_requests: 5}
"#;

/// Counters the traffic generator keeps.
#[derive(Default)]
struct Tally {
    stable: AtomicU64,
    canary: AtomicU64,
    errors: AtomicU64,
}

pub(crate) async fn upstream(
    version: &'static str,
    failing: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let failing = Arc::clone(&failing);
            let service = service_fn(move |_req: Request<Incoming>| {
                let status = if failing.load(Ordering::Relaxed) {
                    http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    http::StatusCode::OK
                };
                async move {
                    let mut response =
                        Response::new(Full::new(Bytes::from(format!("hello from {version}\n"))));
                    *response.status_mut() = status;
                    response
                        .headers_mut()
                        .insert("x-version", http::HeaderValue::from_static(version));
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A proxy serving an embedded config on loopback, for the demo's acts.
pub(crate) struct Embedded {
    /// Its runtime (snapshot, metrics, readiness).
    pub runtime: Arc<Runtime>,
    /// The data-plane address.
    pub proxy_addr: SocketAddr,
    /// The metrics address.
    pub metrics_addr: SocketAddr,
    /// Stops it at the end of the act.
    pub stop: Stop,
}

/// Stops an act's proxy at once (no drain: nobody else sends it traffic) and removes its
/// config file.
pub(crate) struct Stop {
    running: rampart_runtime::Running,
    file: PathBuf,
}

impl Stop {
    /// Stops the proxy, waits for it, and removes the act's config file (and the demo's
    /// directory once it is empty).
    pub(crate) async fn now(self) {
        if let Err(e) = self.running.stop_now().await {
            tracing::error!(error = %e, "the demo's proxy did not stop cleanly");
        }
        let _ = std::fs::remove_file(&self.file);
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Writes `text` (listeners on port 0) to `name` in a directory of its own and starts it
/// the way `rampart run` starts a file: loaded from the file, then through the same library
/// entry point ([`rampart_runtime::start`]: health checks, rollout ticker, fleet analysis,
/// admin state, and the file watched and re-read, so an edit during the demo reloads it).
/// Only the signal handlers are left out: Ctrl-C ends the demo, not a drain.
pub(crate) async fn start_embedded(text: &str, name: &str) -> anyhow::Result<Embedded> {
    let dir = std::env::temp_dir().join(format!("rampart-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the demo's directory {}", dir.display()))?;
    let file = dir.join(name);
    std::fs::write(&file, text)
        .with_context(|| format!("writing the demo's config {}", file.display()))?;
    let loaded = rampart_runtime::load(&file)?;
    let options = StartOptions {
        config_path: Some(file.clone()),
        ..StartOptions::default()
    };
    let running = rampart_runtime::start(loaded, options).await?;
    Ok(Embedded {
        runtime: Arc::clone(running.runtime()),
        proxy_addr: running.proxy_addr(),
        metrics_addr: running.metrics_addr(),
        stop: Stop { running, file },
    })
}

/// When the embedded canary fails: from a quarter of the run to a bit past half of it
/// (5 s to 12 s of the default 20 s).
fn failure_window(length: Duration) -> (Duration, Duration) {
    (length / 4, length * 3 / 5)
}

/// The canary breaker's state on the demo route.
pub(crate) fn breaker_state(runtime: &Runtime) -> &'static str {
    let snapshot = runtime.state.snapshot.load();
    snapshot
        .routes
        .first()
        .and_then(|r| r.slots.get(1))
        .and_then(|s| s.breaker.as_ref())
        .map(|b| b.state().as_str())
        .unwrap_or("-")
}

/// Where the demo's JSON logs go.
enum Logs {
    Stderr,
    File(PathBuf),
}

/// Runs the demo (its first act lasts `seconds`) and exits 0. The screen gets the tables
/// and the events between their rows; the JSON logs go to `logs` (`stderr` or a file,
/// by default a new file in the temporary directory, named at the end).
pub fn run(seconds: u64, logs: Option<&str>) -> ExitCode {
    let logs = match logs {
        Some(l) if l.eq_ignore_ascii_case("stderr") => Logs::Stderr,
        Some(path) => Logs::File(PathBuf::from(path)),
        None => Logs::File(std::env::temp_dir().join(format!(
            "rampart-demo-{}-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            std::process::id()
        ))),
    };
    if let Logs::File(path) = &logs {
        if let Err(e) = crate::logging::to_file(path) {
            eprintln!(
                "rampart demo: cannot write the log file {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let tokio = match crate::commands::tokio_runtime(2) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &logs {
        Logs::File(_) => println!(
            "Rampart demo: three acts, about 45 s. The full JSON logs go to a file named at the end."
        ),
        Logs::Stderr => println!("Rampart demo: three acts, about 45 s. The JSON logs go to stderr."),
    }
    println!();
    let result = tokio.block_on(demo(Duration::from_secs(seconds.max(1))));
    crate::logging::flush();
    if let Logs::File(path) = &logs {
        println!();
        println!("Full logs (JSON lines): {}", path.display());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rampart demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(length: Duration) -> anyhow::Result<()> {
    let canary_failing = Arc::new(AtomicBool::new(false));
    let stable = upstream("v1", Arc::new(AtomicBool::new(false))).await?;
    let canary = upstream("v2", Arc::clone(&canary_failing)).await?;
    let text = DEMO_CONFIG
        .replace("STABLE", &stable.to_string())
        .replace("CANARY", &canary.to_string());
    let Embedded {
        runtime,
        proxy_addr,
        metrics_addr,
        stop,
        ..
    } = start_embedded(&text, "demo.yaml").await?;

    let started = Instant::now();
    let story = crate::demo_story::Story::subscribe(&runtime.state, started);
    println!("Act 1: a canary at 20 %, and a failure the breaker catches");
    println!("  stable upstream \"v1\"  http://{stable}");
    println!("  canary upstream \"v2\"  http://{canary}");
    println!("  proxy                 http://{proxy_addr}   (route checkout: /checkout, 20 % canary by x-user-id)");
    println!("  metrics               http://{metrics_addr}/metrics");
    let (fail_at, heal_at) = failure_window(length);
    println!();
    println!(
        "The canary answers 500 from {}s to {}s: watch the breaker take its users back to",
        fail_at.as_secs(),
        heal_at.as_secs()
    );
    println!("stable at once, probe the canary after open_for, and close once it is healthy.");
    println!("Events are printed between the rows, at the second they happened.");
    println!();
    println!(
        "{:>5}  {:>8}  {:>14}  {:>14}  {:>6}  {:<10}  canary",
        "t(s)", "req/s", "to stable v1", "to canary v2", "5xx", "breaker"
    );

    let tally = Arc::new(Tally::default());
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + length;
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let tally = Arc::clone(&tally);
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            let mut n: u64 = worker;
            while Instant::now() < deadline {
                n = n.wrapping_add(8);
                let user = format!("user-{}", fastrand::u32(..100_000));
                let request = Request::get(format!("http://{proxy_addr}/checkout/cart?n={n}"))
                    .header("x-user-id", user)
                    .body(Empty::new());
                let Ok(request) = request else { continue };
                match client.request(request).await {
                    Ok(response) => {
                        let version = response.headers().get("x-version").cloned();
                        let ok = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        match (ok, version.as_ref().map(|v| v.as_bytes())) {
                            (true, Some(b"v2")) => tally.canary.fetch_add(1, Ordering::Relaxed),
                            (true, Some(_)) => tally.stable.fetch_add(1, Ordering::Relaxed),
                            _ => tally.errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Err(_) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Keep the demo light on a shared machine: about 200 requests a second each.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let mut last = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < deadline {
        tick.tick().await;
        let elapsed = started.elapsed();
        // The row describes the second just past; the canary's health changes after it.
        let was_failing = canary_failing.load(Ordering::Relaxed);
        canary_failing.store(elapsed >= fail_at && elapsed < heal_at, Ordering::Relaxed);
        story.print_new();
        let now = (
            tally.stable.load(Ordering::Relaxed),
            tally.canary.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
        );
        // This second's traffic, so the breaker's effect shows at once.
        let (s, c, e) = (now.0 - last.0, now.1 - last.1, now.2 - last.2);
        let total = s + c + e;
        let share = |x: u64| {
            if total == 0 {
                0.0
            } else {
                100.0 * x as f64 / total as f64
            }
        };
        println!(
            "{:>5}  {:>8}  {:>7} {:>5.1}%  {:>7} {:>5.1}%  {:>6}  {:<10}  {}",
            started.elapsed().as_secs(),
            total,
            s,
            share(s),
            c,
            share(c),
            e,
            breaker_state(&runtime),
            if was_failing {
                "failing (500)"
            } else {
                "healthy"
            }
        );
        last = now;
    }
    for w in workers {
        let _ = w.await;
    }
    story.print_new();
    let (s, c, e) = (
        tally.stable.load(Ordering::Relaxed),
        tally.canary.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    let total = (s + c + e).max(1);
    println!();
    println!(
        "done: {} requests, {:.1} % to the canary (configured 20 %), {} errors",
        s + c + e,
        100.0 * c as f64 / total as f64,
        e
    );
    stop.now().await;
    crate::demo_ramp::ramp_act(
        "Act 2: a progressive rollout, 5 -> 25 -> 50 -> 100 %, 2 s steps; the canary stays healthy,\n       so each step's verdict passes and the last one promotes it",
        None,
    )
    .await?;
    crate::demo_ramp::ramp_act(
        "Act 3: the same rollout; the canary starts failing at 25 %. Its breaker sends its users back\n       to stable at once, and the step's verdict then rolls the rollout back to 0 %",
        Some(25),
    )
    .await?;
    Ok(())
}
