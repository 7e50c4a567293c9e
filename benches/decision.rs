//! Criterion benches of the per-request work Rampart adds to a proxied request, through the
//! public APIs of `rampart-core` and `rampart-proxy`:
//!
//! - `bucket/*`: hashing an identity into one of 10,000 buckets (docs/routing.md#bucketing);
//! - `decision/*`: the whole per-request decision the handler makes before it picks an
//!   upstream: route match over four routes, client address and identity extraction,
//!   overrides, kill and breaker gates, health, and the split; on a route with and without a
//!   breaker, and with the breaker's outcome recorded afterwards;
//! - `breaker/*`: admitting a request and recording its outcome, alone and from 2 and 4
//!   threads hammering one breaker (contended figures are wall time per operation per
//!   thread; this machine has 2 cores, so 4 threads are oversubscribed on purpose).
//!
//! The decision is the request path's own (`ProxyState::decide_request`, the one decision
//! function in `crates/proxy/src/decide.rs`). Run: `cargo bench --bench decision`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::request::Parts;
use rampart_core::breaker::{Admission, Breaker, Outcome};
use rampart_core::bucket::{bucket_for, bucket_of, key_prefix};
use rampart_core::config;
use rampart_proxy::completion::{record_attempt, Verdict};
use rampart_proxy::{Metrics, ProxyState, Snapshot, SnapshotSource};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Distinct requests cycled through, so identities (and buckets) vary per iteration.
const POOL: usize = 1024;

/// Four routes; the benchmarked request matches the last one, so matching walks them all.
fn config_yaml(with_breaker: bool) -> String {
    let breaker = if with_breaker {
        "    breaker:\n      window: 30s\n      min_requests: 20\n      max_error_rate: 0.05\n      consecutive_errors: 5\n      max_latency: {quantile: 0.99, threshold: 800ms}\n      open_for: 30s\n      half_open_requests: 5\n"
    } else {
        ""
    };
    format!(
        r#"version: 1
listen: 127.0.0.1:8080
metrics_listen: 127.0.0.1:9090
default_upstream: stable
upstreams:
  stable: {{url: "http://127.0.0.1:3000"}}
  canary: {{url: "http://127.0.0.1:3001"}}
routes:
  - name: admin-ui
    match: {{path_prefix: /admin, methods: [GET]}}
    stable: stable
  - name: search
    match: {{path_prefix: /search, hosts: [search.example.com]}}
    identity: [header:x-user-id]
    stable: stable
    split: [{{backend: canary, percent: 50}}]
  - name: cart
    match: {{path_prefix: /cart, headers: {{x-tenant: acme}}}}
    identity: [cookie:sid]
    stable: stable
    split: [{{backend: canary, percent: 5}}]
  - name: checkout
    match: {{path_prefix: /checkout, methods: [GET, POST], hosts: [shop.example.com]}}
    identity: [header:x-user-id, cookie:sid, client_ip]
    stable: stable
    split: [{{backend: canary, percent: 10}}]
    overrides:
      force_header: x-rampart-force
      identities: {{canary: [qa-alice, qa-bob]}}
      headers: [{{name: x-employee, value: "true", backend: canary}}]
{breaker}"#
    )
}

/// A typical browser-ish request on the checkout route with a random-looking identity.
fn request(i: usize) -> Parts {
    let id = format!(
        "user-{:08x}",
        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
    );
    let (parts, ()) = http::Request::builder()
        .method("GET")
        .uri("/checkout/cart/items?page=2")
        .header("host", "shop.example.com")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .header("x-user-id", id)
        .header("cookie", "theme=dark; sid=s-123456")
        .body(())
        .unwrap()
        .into_parts();
    parts
}

/// The data plane's real state over the bench config: the decision is the request path's
/// own (`ProxyState::decide_request`), gates and all.
fn state(with_breaker: bool) -> ProxyState {
    rampart_proxy::tls::install_crypto_provider();
    let config =
        Arc::new(config::parse(&config_yaml(with_breaker)).expect("bench config is valid"));
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("metrics register");
    let snapshot = Snapshot::build(
        config,
        SnapshotSource::default(),
        &metrics,
        None,
        &HashMap::new(),
    )
    .expect("snapshot builds");
    ProxyState::new(snapshot, metrics)
}

fn bench_bucket(c: &mut Criterion) {
    let prefix = key_prefix("checkout");
    let ids: Vec<String> = (0..POOL).map(|i| format!("user-{i:08}")).collect();
    let mut i = 0usize;
    c.bench_function("bucket/bucket_for (prefix built once per config)", |b| {
        b.iter(|| {
            i = (i + 1) % POOL;
            black_box(bucket_for(&prefix, black_box(ids[i].as_bytes())))
        })
    });
    c.bench_function("bucket/bucket_of (prefix built per call)", |b| {
        b.iter(|| {
            i = (i + 1) % POOL;
            black_box(bucket_of(black_box("checkout"), black_box(&ids[i])))
        })
    });
}

fn bench_decision(c: &mut Criterion) {
    let peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let requests: Vec<Parts> = (0..POOL).map(request).collect();
    for (name, with_breaker) in [
        ("decision/route+identity+overrides+split, no breaker", false),
        (
            "decision/route+identity+overrides+breaker admit+split",
            true,
        ),
    ] {
        let state = state(with_breaker);
        let snapshot = state.snapshot.load_full();
        let now = Instant::now();
        let mut i = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % POOL;
                black_box(state.decide_request(&snapshot, black_box(&requests[i]), peer, now))
            })
        });
    }
    let state = state(true);
    let snapshot = state.snapshot.load_full();
    let now = Instant::now();
    let mut i = 0usize;
    c.bench_function("decision/with breaker, then outcome recorded", |b| {
        b.iter(|| {
            i = (i + 1) % POOL;
            let decided = state.decide_request(&snapshot, black_box(&requests[i]), peer, now);
            record_attempt(
                &state,
                &snapshot,
                decided.route,
                decided.decision.slot,
                decided.admission,
                Verdict::Ok(Duration::from_micros(300)),
            );
            black_box(decided)
        })
    });
}

fn breaker() -> Breaker {
    let config = config::parse(&config_yaml(true)).expect("bench config is valid");
    let b = config
        .routes
        .iter()
        .find_map(|r| r.breaker.clone())
        .expect("checkout has a breaker");
    Breaker::new(b, Instant::now())
}

/// Runs `op` `iters` times on each of `threads` threads started together; the wall time
/// from the common start to the last thread's end.
fn contended(threads: usize, iters: u64, op: impl Fn() + Sync) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                start.wait();
                for _ in 0..iters {
                    op();
                }
            });
        }
        start.wait();
        // The scope joins every thread before it returns this start time.
        Instant::now()
    })
    .elapsed()
}

fn bench_breaker(c: &mut Criterion) {
    let ok = Outcome {
        error: false,
        latency: Duration::from_micros(300),
    };
    let b = breaker();
    let now = Instant::now();
    c.bench_function("breaker/admit (closed)", |bench| {
        bench.iter(|| black_box(b.admit(black_box(now))))
    });
    c.bench_function("breaker/record ok", |bench| {
        bench.iter(|| black_box(b.record(black_box(now), Admission::Admitted, ok)))
    });
    c.bench_function("breaker/admit+record ok, 1 thread", |bench| {
        bench.iter(|| {
            let (admission, _) = b.admit(black_box(now));
            black_box(b.record(now, admission, ok))
        })
    });
    // Real time moves the window along, as on the request path.
    c.bench_function(
        "breaker/admit+record ok with Instant::now(), 1 thread",
        |bench| {
            bench.iter(|| {
                let now = Instant::now();
                let (admission, _) = b.admit(now);
                black_box(b.record(now, admission, ok))
            })
        },
    );
    for threads in [2usize, 4] {
        let shared = breaker();
        c.bench_function(
            &format!("breaker/admit+record ok, {threads} threads on one breaker"),
            |bench| {
                bench.iter_custom(|iters| {
                    contended(threads, iters, || {
                        let now = Instant::now();
                        let (admission, _) = shared.admit(now);
                        black_box(shared.record(now, admission, ok));
                    })
                })
            },
        );
    }
    // An error-heavy mix exercises the window reads behind each verdict (the breaker trips
    // and then rejects, as in production; each batch starts from a fresh breaker).
    let err = Outcome {
        error: true,
        latency: Duration::from_millis(2),
    };
    c.bench_function(
        "breaker/4x admit+record error (each judged, no trip)",
        |bench| {
            bench.iter_batched(
                breaker,
                |b| {
                    for _ in 0..4 {
                        let (admission, _) = b.admit(now);
                        black_box(b.record(now, admission, err));
                    }
                    b
                },
                BatchSize::SmallInput,
            )
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_bucket, bench_decision, bench_breaker
}
criterion_main!(benches);
