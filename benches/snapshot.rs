//! Criterion benches of loading the applied config snapshot, the one shared read every
//! request makes (`ProxyState::snapshot`, an `ArcSwap<Snapshot>`): `load` (a guard, no
//! reference count touched in the common case) and `load_full` (an `Arc` clone, what the
//! handler keeps for the request's life), alone and from 2 and 4 threads at once (wall
//! time per load per thread; 4 threads oversubscribe this 2-core machine on purpose).
//!
//! Run: `cargo bench --bench snapshot`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use rampart_core::config;
use rampart_proxy::{Metrics, ProxyState, Snapshot, SnapshotSource};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"version: 1
listen: 127.0.0.1:8080
metrics_listen: 127.0.0.1:9090
default_upstream: stable
upstreams:
  stable: {url: "http://127.0.0.1:3000"}
  canary: {url: "http://127.0.0.1:3001"}
routes:
  - name: checkout
    identity: [header:x-user-id]
    stable: stable
    split: [{backend: canary, percent: 10}]
    breaker: {window: 30s, min_requests: 20, max_error_rate: 0.05}
"#;

fn state() -> ProxyState {
    rampart_proxy::tls::install_crypto_provider();
    let config = Arc::new(config::parse(CONFIG).expect("bench config is valid"));
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
        Instant::now()
    })
    .elapsed()
}

fn bench_snapshot(c: &mut Criterion) {
    let state = state();
    c.bench_function("snapshot/load (guard), 1 thread", |b| {
        b.iter(|| black_box(state.snapshot.load().routes.len()))
    });
    c.bench_function("snapshot/load_full (Arc), 1 thread", |b| {
        b.iter(|| black_box(state.snapshot.load_full()))
    });
    for threads in [2usize, 4] {
        c.bench_function(&format!("snapshot/load (guard), {threads} threads"), |b| {
            b.iter_custom(|iters| {
                contended(threads, iters, || {
                    black_box(state.snapshot.load().routes.len());
                })
            })
        });
        c.bench_function(
            &format!("snapshot/load_full (Arc), {threads} threads"),
            |b| {
                b.iter_custom(|iters| {
                    contended(threads, iters, || {
                        black_box(state.snapshot.load_full());
                    })
                })
            },
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_snapshot
}
criterion_main!(benches);
