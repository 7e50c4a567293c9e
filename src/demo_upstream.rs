//! `rampart demo-upstream`: a tiny HTTP/1.1 upstream for the compose stack, the Helm
//! chart's example and the deploy tests, so none of them needs a third-party app image.
//!
//! Every path answers 200 with `hello from VERSION` and an `x-version` header, except:
//! - `GET /healthz`: always 200 (a bad canary that still passes health checks is exactly
//!   what the breaker is for);
//! - `GET /control`: the current fault settings as JSON;
//! - `POST /control?fail_rate=0.5&delay_ms=200`: changes the fault settings at run time
//!   (either parameter may be left out), so a test can turn a healthy canary bad and heal it
//!   without a restart.
//!
//! A fault answers 500 for a `fail_rate` share of requests, and waits `delay_ms` before every
//! answer (failures included). SIGTERM or SIGINT stops it with exit 0, so it behaves as PID 1
//! in a container.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Exit code when the listener cannot bind (the same as `rampart run`).
const EXIT_BIND: u8 = 3;

/// Longest delay the control endpoint or the flag accepts: ten minutes.
const MAX_DELAY_MS: u64 = 600_000;

/// Parses `--fail-rate`: a share between 0.0 and 1.0.
pub fn parse_fail_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{rate} is not between 0.0 and 1.0"));
    }
    Ok(rate)
}

/// Parses `--delay-ms`: whole milliseconds, at most ten minutes.
pub fn parse_delay_ms(text: &str) -> Result<u64, String> {
    let ms: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))?;
    if ms > MAX_DELAY_MS {
        return Err(format!("{ms} ms is over the limit of {MAX_DELAY_MS} ms"));
    }
    Ok(ms)
}

/// The fault settings, changed at run time by `POST /control`.
struct Faults {
    /// `fail_rate` as `f64` bits.
    fail_rate: AtomicU64,
    delay_ms: AtomicU64,
}

impl Faults {
    fn fail_rate(&self) -> f64 {
        f64::from_bits(self.fail_rate.load(Ordering::Relaxed))
    }

    fn set_fail_rate(&self, rate: f64) {
        self.fail_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    fn json(&self, version: &str) -> String {
        serde_json::json!({
            "version": version,
            "fail_rate": self.fail_rate(),
            "delay_ms": self.delay_ms.load(Ordering::Relaxed),
        })
        .to_string()
            + "\n"
    }
}

struct Upstream {
    version: String,
    faults: Faults,
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Applies `fail_rate=..&delay_ms=..` from a control request's query; all or nothing.
fn control(upstream: &Upstream, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut rate = None;
    let mut delay = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let parsed = match key {
            "fail_rate" => parse_fail_rate(value).map(|r| rate = Some(r)),
            "delay_ms" => parse_delay_ms(value).map(|d| delay = Some(d)),
            other => Err(format!(
                "unknown parameter {other:?}: use fail_rate and delay_ms"
            )),
        };
        if let Err(message) = parsed {
            return answer(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{key}: {message}\n"),
            );
        }
    }
    if let Some(rate) = rate {
        upstream.faults.set_fail_rate(rate);
    }
    if let Some(delay) = delay {
        upstream.faults.delay_ms.store(delay, Ordering::Relaxed);
    }
    tracing::info!(
        version = %upstream.version,
        fail_rate = upstream.faults.fail_rate(),
        delay_ms = upstream.faults.delay_ms.load(Ordering::Relaxed),
        "demo-upstream faults changed"
    );
    answer(
        StatusCode::OK,
        "application/json",
        upstream.faults.json(&upstream.version),
    )
}

async fn respond(upstream: Arc<Upstream>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (_, "/healthz") => {
            return answer(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
        }
        (&Method::POST, "/control") => return control(&upstream, request.uri().query()),
        (&Method::GET, "/control") => {
            return answer(
                StatusCode::OK,
                "application/json",
                upstream.faults.json(&upstream.version),
            )
        }
        _ => {}
    }
    let delay = upstream.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let rate = upstream.faults.fail_rate();
    let failed = rate > 0.0 && fastrand::f64() < rate;
    let (status, body) = if failed {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("injected failure from {}\n", upstream.version),
        )
    } else {
        (StatusCode::OK, format!("hello from {}\n", upstream.version))
    };
    let mut response = answer(status, "text/plain; charset=utf-8", body);
    if let Ok(v) = HeaderValue::from_str(&upstream.version) {
        response.headers_mut().insert("x-version", v);
    }
    response
}

async fn serve(listener: TcpListener, upstream: Arc<Upstream>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    loop {
        let accepted = tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let upstream = Arc::clone(&upstream);
        let service = service_fn(move |request: Request<Incoming>| {
            let upstream = Arc::clone(&upstream);
            async move { Ok::<_, Infallible>(respond(upstream, request).await) }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    tracing::info!(version = %upstream.version, "demo-upstream stopped");
    Ok(())
}

/// Runs the demo upstream until SIGTERM or SIGINT.
pub fn run(listen: SocketAddr, version: String, fail_rate: f64, delay_ms: u64) -> ExitCode {
    let tokio = match crate::commands::tokio_runtime(1) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rampart demo-upstream: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio.block_on(async move {
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("rampart demo-upstream: cannot bind {listen}: {e}");
                return ExitCode::from(EXIT_BIND);
            }
        };
        let local = listener.local_addr().unwrap_or(listen);
        // One line on stdout, so a script that asked for port 0 learns the port.
        println!("demo-upstream {version} listening on http://{local}");
        tracing::info!(version = %version, listen = %local, fail_rate, delay_ms, "demo-upstream serving");
        let upstream = Arc::new(Upstream {
            version,
            faults: Faults {
                fail_rate: AtomicU64::new(fail_rate.to_bits()),
                delay_ms: AtomicU64::new(delay_ms),
            },
        });
        match serve(listener, upstream).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rampart demo-upstream: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rate_accepts_shares_between_zero_and_one_only() {
        assert_eq!(parse_fail_rate("0"), Ok(0.0));
        assert_eq!(parse_fail_rate("0.25"), Ok(0.25));
        assert_eq!(parse_fail_rate("1.0"), Ok(1.0));
        assert!(parse_fail_rate("1.5").is_err());
        assert!(parse_fail_rate("-0.1").is_err());
        assert!(parse_fail_rate("NaN").is_err());
        assert!(parse_fail_rate("lots").is_err());
    }

    #[test]
    fn delay_is_bounded_to_ten_minutes() {
        assert_eq!(parse_delay_ms("200"), Ok(200));
        assert!(parse_delay_ms("600001").is_err());
        assert!(parse_delay_ms("-1").is_err());
    }
}
