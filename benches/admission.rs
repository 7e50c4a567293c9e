//! Admission latency of `rampart injector` over TLS, as the API server sees it
//! (docs/inject.md#admission-latency).
//!
//! Starts the real binary (this build's `rampart`, so `cargo bench` measures the optimised
//! one) on a loopback port with a certificate made here, then sends AdmissionReviews one at
//! a time, each a Pod CREATE the webhook injects, and reports the median, p99 and max of
//! the time from sending the request to the whole answer read:
//!
//! - `h2`: one TLS connection, HTTP/2 (what Go's HTTP client negotiates by ALPN when the
//!   server offers it, as this one does);
//! - `http1 keep-alive`: one TLS connection, HTTP/1.1;
//! - `new connection`: a TCP connect and a full TLS handshake per request (the first
//!   admission after the API server's pooled connection went away).
//!
//! Each mode sends 100 warm-up requests, then the measured ones (1,000 unless
//! `--requests N`). The load average is printed before and after, because the figures mean
//! little without it on a shared machine. Reporting only: nothing is asserted about speed.
//!
//! ```sh
//! cargo bench --bench admission
//! cargo bench --bench admission -- --requests 5000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SERVER_NAME: &str = "rampart-injector.rampart.svc";
const WARM_UP: usize = 100;

/// The injector process, killed on drop.
struct Injector {
    child: Child,
    dir: PathBuf,
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a serving certificate for the webhook Service's name signed by it, written to
/// `dir` as `tls.crt` and `tls.key`; returns the roots a client needs to trust it.
fn certificates(dir: &std::path::Path) -> Arc<rustls::RootCertStore> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVER_NAME);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    Arc::new(roots)
}

/// A TLS client that trusts `roots` and offers `alpn`.
fn connector(roots: &Arc<rustls::RootCertStore>, alpn: &[&[u8]]) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// A Pod CREATE as the API server sends it for a ReplicaSet's pod (generateName, no name),
/// annotated so the webhook injects it.
fn review(uid: usize) -> Bytes {
    let review: Value = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{uid}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "prod",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "generateName": "shop-7d9c6b8f5-",
                    "namespace": "prod",
                    "labels": {"app": "shop", "pod-template-hash": "7d9c6b8f5"},
                    "annotations": {"rampart.dev/config": "shop-rampart"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "shop-7d9c6b8f5", "uid": "0b7e2d6e-2f7c-4b55-9a59-3c8a4e3e0a11",
                        "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {
                    "containers": [{
                        "name": "shop", "image": "registry.example/shop:1.4.2",
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "grpc", "containerPort": 9000, "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}},
                        "livenessProbe": {"tcpSocket": {"port": "http"}},
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
                    }],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
                    "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
                    "securityContext": {}, "schedulerName": "default-scheduler",
                    "enableServiceLinks": true, "priority": 0
                },
                "status": {}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    Bytes::from(review.to_string())
}

fn request(body: Bytes) -> hyper::Request<Full<Bytes>> {
    hyper::Request::post(format!("https://{SERVER_NAME}/mutate"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(Full::new(body))
        .unwrap()
}

/// Checks one answer: 200 and a JSONPatch (the bench must measure injections, not errors).
async fn check(resp: hyper::Response<hyper::body::Incoming>) {
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        answer["response"]["patchType"], "JSONPatch",
        "not an injection: {answer}"
    );
}

async fn connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    // As Go's net/http (the API server) does.
    tcp.set_nodelay(true).unwrap();
    connector
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap()
}

async fn http1_keep_alive(
    addr: SocketAddr,
    roots: &Arc<rustls::RootCertStore>,
    n: usize,
) -> Vec<Duration> {
    let tls = connect(addr, &connector(roots, &[b"http/1.1"])).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let body = review(i);
        let start = Instant::now();
        let resp = sender.send_request(request(body)).await.unwrap();
        check(resp).await;
        if i >= WARM_UP {
            samples.push(start.elapsed());
        }
    }
    samples
}

async fn h2(addr: SocketAddr, roots: &Arc<rustls::RootCertStore>, n: usize) -> Vec<Duration> {
    let tls = connect(addr, &connector(roots, &[b"h2"])).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let body = review(i);
        let start = Instant::now();
        let resp = sender.send_request(request(body)).await.unwrap();
        check(resp).await;
        if i >= WARM_UP {
            samples.push(start.elapsed());
        }
    }
    samples
}

async fn new_connection(
    addr: SocketAddr,
    roots: &Arc<rustls::RootCertStore>,
    n: usize,
) -> Vec<Duration> {
    let connector = connector(roots, &[b"http/1.1"]);
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let body = review(i);
        let start = Instant::now();
        let tls = connect(addr, &connector).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(request(body)).await.unwrap();
        check(resp).await;
        if i >= WARM_UP {
            samples.push(start.elapsed());
        }
        drop(sender);
        let _ = driver.await;
    }
    samples
}

/// The injector's own histogram of the mutation (body decoded to answer built): its sum
/// and count for `result="injected"`, from `/metrics`.
async fn mutation_time(addr: SocketAddr, roots: &Arc<rustls::RootCertStore>) -> (f64, f64) {
    let tls = connect(addr, &connector(roots, &[b"http/1.1"])).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("https://{SERVER_NAME}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> f64 {
        let prefix = format!("{name}{{result=\"injected\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("rampart_injector_admission_duration_seconds_sum"),
        value("rampart_injector_admission_duration_seconds_count"),
    )
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn report(mode: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let n = samples.len();
    let at = |q: f64| samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1];
    println!(
        "{mode:<18} n={n:<6} median {:>8}   p99 {:>8}   max {:>8}",
        micros(at(0.5)),
        micros(at(0.99)),
        micros(samples[n - 1])
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let mut n = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--requests" {
            n = args
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .expect("--requests N: a positive number");
        }
        // Anything else (cargo bench passes `--bench`) is ignored.
    }

    let dir = std::env::temp_dir().join(format!("rampart-admission-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let roots = certificates(&dir);
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["injector", "--listen", &addr.to_string()])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rampart injector");
    let _injector = Injector {
        child,
        dir: dir.clone(),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Ready: a TLS connection succeeds.
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = connector(&roots, &[b"http/1.1"]);
        loop {
            if let Ok(tcp) = TcpStream::connect(addr).await {
                if probe
                    .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the injector never came up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "rampart injector admission latency: {n} AdmissionReviews per mode (after {WARM_UP} warm-up), one at a time, each injected; {cpus} CPUs"
        );
        println!("load average before: {}", load_average());
        report("h2", h2(addr, &roots, n).await);
        report("http1 keep-alive", http1_keep_alive(addr, &roots, n).await);
        report("new connection", new_connection(addr, &roots, n).await);
        let (sum, count) = mutation_time(addr, &roots).await;
        println!(
            "server side (rampart_injector_admission_duration_seconds, injected): mean {} over {count} admissions",
            micros(Duration::from_secs_f64(sum / count.max(1.0)))
        );
        println!("load average after:  {}", load_average());
    });
}
