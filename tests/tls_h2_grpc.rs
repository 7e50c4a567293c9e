//! Black-box: TLS, HTTP/2 and gRPC through the real binary (docs/config.md, docs/proxying.md).
//!
//! Certificates are made here with rcgen; the upstreams are real servers on 127.0.0.1 (an h2c
//! echo, an HTTPS HTTP/1.1 server, a tonic gRPC service written against tonic's server core
//! with hand-derived prost messages, so no `protoc` is needed). Every wait is a bounded poll.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

/// A leaf certificate and its key, PEM-encoded.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A TLS client that trusts only this CA and offers `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// A TLS connection to `addr` asking for `server_name`; the handshake's error as text.
async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    server_name: &str,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let fut = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| "TLS connect timed out".to_string())?
}

/// The certificate the server presented on `stream`.
fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn negotiated_alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(|p| p.to_vec())
}

// ---------------------------------------------------------------------------------------------
// Upstreams: an h2c echo and an HTTPS HTTP/1.1 server
// ---------------------------------------------------------------------------------------------

/// One request as an upstream saw it, with the HTTP version it came in.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    headers: http::HeaderMap,
    sni: Option<String>,
}

/// A plain-TCP upstream speaking only HTTP/2 (prior knowledge), answering 200
/// `x-upstream: NAME`; counts the connections it accepted.
struct H2cUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl H2cUpstream {
    async fn start(name: &'static str) -> H2cUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (accept_seen, accept_conns) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept_conns.fetch_add(1, Ordering::SeqCst);
                let seen = accept_seen.clone();
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| record_and_answer(name, seen.clone(), None, req));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        H2cUpstream {
            addr,
            seen,
            connections,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for H2cUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record_and_answer(
    name: &'static str,
    seen: Arc<Mutex<Vec<Seen>>>,
    sni: Option<String>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    seen.lock().unwrap().push(Seen {
        version: req.version(),
        headers: req.headers().clone(),
        sni,
    });
    let _ = req.into_body().collect().await;
    Ok(http::Response::builder()
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(name)))
        .unwrap())
}

/// An HTTPS upstream on 127.0.0.1 presenting `leaf`, offering ALPN `h2` and `http/1.1`;
/// records the SNI and HTTP version of each request and counts failed TLS handshakes.
struct HttpsUpstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshake_failures: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsUpstream {
    async fn start(name: &'static str, leaf: &Leaf) -> HttpsUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let certs = vec![leaf.der.clone()];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let (accept_seen, accept_failures) = (seen.clone(), handshake_failures.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, seen, failures) = (
                    acceptor.clone(),
                    accept_seen.clone(),
                    accept_failures.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        failures.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    let svc = service_fn(move |req| {
                        record_and_answer(name, seen.clone(), sni.clone(), req)
                    });
                    // HTTP/1.1 or HTTP/2, whichever the client's ALPN asked for.
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        HttpsUpstream {
            port,
            seen,
            handshake_failures,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 clients
// ---------------------------------------------------------------------------------------------

type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 client connection over `io` (TLS with ALPN h2, or plain TCP for h2c).
async fn h2_handshake<I>(io: I) -> H2Sender
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A response with its trailers, read to the end.
#[derive(Debug)]
struct FullResponse {
    status: u16,
    version: http::Version,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl FullResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send_h2(sender: &mut H2Sender, req: http::Request<Full<Bytes>>) -> FullResponse {
    let fut = async {
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        FullResponse {
            status: parts.status.as_u16(),
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    };
    tokio::time::timeout(IO_TIMEOUT, fut).await.unwrap()
}

fn get_request(uri: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Rampart with TLS
// ---------------------------------------------------------------------------------------------

/// Writes `leaf` as `tls.crt`/`tls.key` in `dir`; returns the `tls:` line of a config.
fn tls_files(dir: &TempDir, leaf: &Leaf) -> String {
    let cert = dir.write("tls.crt", &leaf.cert_pem);
    let key = dir.write("tls.key", &leaf.key_pem);
    format!(
        "tls: {{cert_file: {}, key_file: {}}}\n",
        cert.display(),
        key.display()
    )
}

/// Polls `/metrics` until `route`'s requests and upstream attempts add up to the given
/// counts, and returns that text. A request's outcome is recorded when its response body
/// ends, which can be a moment after the client saw the end.
async fn metrics_settled(rampart: &Rampart, route: &str, requests: f64, attempts: f64) -> String {
    let route = [("route", route)];
    rampart
        .metrics_until(|t| {
            metric_sum(t, "rampart_requests_total", &route) == requests
                && metric_sum(t, "rampart_upstream_attempts_total", &route) == attempts
        })
        .await
}

/// Polls `until` every 50 ms for at most `limit`; returns whether it held.
async fn poll_until<F, Fut>(limit: Duration, mut until: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    for _ in 0..(limit.as_millis() / 50 + 1) {
        if until().await {
            return true;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until().await
}

// ---------------------------------------------------------------------------------------------
// 1, 2: HTTP/2 downstream (TLS with ALPN h2, and h2c) to an h2c upstream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_client_with_alpn_h2_reaches_an_h2c_upstream_that_sees_http2_and_forwarded_proto_https(
) {
    let ca = Ca::new("rampart test CA");
    let leaf = ca.issue(&["rampart.test"]);
    let certs = TempDir::new("tls1");
    let upstream = H2cUpstream::start("grpc-stable").await;
    let rampart = Rampart::start(&format!(
        "{}default_upstream: stable\nupstreams:\n  stable: {{url: http://{}, protocol: h2c}}\n",
        tls_files(&certs, &leaf),
        upstream.addr
    ))
    .await;

    let tls = tls_connect(
        &ca.connector(&[b"h2", b"http/1.1"]),
        rampart.addr,
        "rampart.test",
    )
    .await
    .unwrap();
    assert_eq!(negotiated_alpn(&tls).as_deref(), Some(&b"h2"[..]));
    assert_eq!(peer_cert(&tls), leaf.der);
    let mut sender = h2_handshake(tls).await;
    let resp = send_h2(
        &mut sender,
        get_request("https://rampart.test/hello", &[("x-user-id", "alice")]),
    )
    .await;

    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.header("x-upstream"), Some("grpc-stable"));
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(
        seen[0]
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok()),
        Some("https")
    );
    assert_eq!(
        seen[0].headers.get("te").and_then(|v| v.to_str().ok()),
        Some("trailers"),
        "h2 upstreams get te: trailers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_h2c_client_is_served_and_concurrent_streams_share_one_upstream_connection() {
    let upstream = H2cUpstream::start("h2-stable").await;
    let rampart = Rampart::start(&format!(
        "default_upstream: stable\nupstreams:\n  stable: {{url: http://{}, protocol: h2c}}\n",
        upstream.addr
    ))
    .await;

    let tcp = TcpStream::connect(rampart.addr).await.unwrap();
    let mut sender = h2_handshake(tcp).await;
    let uri = rampart.url("/h2c");
    let first = send_h2(&mut sender, get_request(&uri, &[])).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.version, http::Version::HTTP_2);
    assert_eq!(first.header("x-upstream"), Some("h2-stable"));

    // Many streams at once on the client's one connection, then on Rampart's pooled one.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut sender = sender.clone();
        let req = get_request(&format!("{uri}/{i}"), &[]);
        tasks.push(tokio::spawn(async move { send_h2(&mut sender, req).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 21);
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    assert!(seen.iter().all(|s| s
        .headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v == "http")));
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "HTTP/2 streams to the upstream are multiplexed on one pooled connection"
    );
}

/// An h2c upstream that answers every stream with RST_STREAM(REFUSED_STREAM): per RFC 9113
/// section 8.7 it processed nothing, so the request can be safely sent elsewhere.
async fn refusing_h2c_upstream() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, refused, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_canary_refusing_the_stream_falls_back_to_stable_like_a_connect_failure() {
    let stable = H2cUpstream::start("stable").await;
    let (canary, refused, task) = refusing_h2c_upstream().await;
    let rampart = Rampart::start(&format!(
        "default_upstream: stable
upstreams:
  stable: {{url: http://{}, protocol: h2c}}
  canary: {{url: http://{canary}, protocol: h2c}}
routes:
  - name: checkout
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: 100}}]
    fallback: connect_failure
",
        stable.addr
    ))
    .await;

    let resp = rampart.get("/pay", &[("x-user-id", "alice")]).await;
    assert_eq!(resp.status, 200, "{:?} {}", resp.headers, resp.text());
    assert_eq!(resp.upstream(), "stable");
    assert_eq!(
        refused.load(Ordering::SeqCst),
        1,
        "the canary saw the stream"
    );
    let text = metrics_settled(&rampart, "checkout", 1.0, 2.0).await;
    assert_eq!(
        metric_sum(
            &text,
            "rampart_fallbacks_total",
            &[("route", "checkout"), ("from", "canary")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_upstream_attempts_total",
            &[
                ("route", "checkout"),
                ("backend", "canary"),
                ("outcome", "error")
            ]
        ),
        Some(1.0),
        "the refused attempt counts against the canary's breaker\n{text}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_call_whose_h2_canary_refuses_the_stream_falls_back_to_stable_with_its_body() {
    let stable = GrpcServer::start("stable", Mode::Healthy).await;
    let (canary, refused, task) = refusing_h2c_upstream().await;
    let rampart = Rampart::start(&format!(
        "default_upstream: stable
upstreams:
  stable: {{url: http://{}, protocol: h2c}}
  canary: {{url: http://{canary}, protocol: h2c}}
routes:
  - name: greeter
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: 100}}]
    fallback: connect_failure
",
        stable.addr
    ))
    .await;
    let mut client = grpc_client(rampart.addr);
    let reply = say_hello(&mut client, hello("refused", 0, Some("alice")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.server, "stable");
    assert_eq!(
        reply.message, "hello refused #0",
        "the request message hyper had already sent to the canary is sent again to stable"
    );
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    let text = metrics_settled(&rampart, "greeter", 1.0, 2.0).await;
    assert_eq!(
        metric_sum(
            &text,
            "rampart_fallbacks_total",
            &[("route", "greeter"), ("from", "canary")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_requests_total",
            &[
                ("route", "greeter"),
                ("backend", "stable"),
                ("code_class", "2xx")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    task.abort();
}

// ---------------------------------------------------------------------------------------------
// 3: certificate rotation, Kubernetes Secret style
// ---------------------------------------------------------------------------------------------

/// A Secret volume as the kubelet lays it out: `dir/..data -> ..VERSION/`, and
/// `dir/tls.crt -> ..data/tls.crt` (same for the key).
struct SecretVolume {
    dir: TempDir,
}

impl SecretVolume {
    fn new(first_version: &str, leaf: &Leaf) -> SecretVolume {
        let dir = TempDir::new("secret");
        let vol = SecretVolume { dir };
        vol.write_version(first_version, &leaf.cert_pem, &leaf.key_pem);
        std::os::unix::fs::symlink(first_version, vol.path().join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), vol.path().join(f)).unwrap();
        }
        vol
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn write_version(&self, version: &str, cert_pem: &str, key_pem: &str) {
        let d = self.path().join(version);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("tls.crt"), cert_pem).unwrap();
        std::fs::write(d.join("tls.key"), key_pem).unwrap();
    }

    /// The kubelet's update: new version dir, `..data_tmp` symlink renamed over `..data`
    /// (atomic), old version dir removed.
    fn swap_to(&self, old_version: &str, new_version: &str, cert_pem: &str, key_pem: &str) {
        self.write_version(new_version, cert_pem, key_pem);
        let tmp = self.path().join("..data_tmp");
        std::os::unix::fs::symlink(new_version, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join("..data")).unwrap();
        std::fs::remove_dir_all(self.path().join(old_version)).unwrap();
    }
}

/// Sends `GET /` on an HTTP/1.1 client connection; the status, or the error as text.
async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> Result<u16, String> {
    let fut = async {
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::builder()
            .uri(path)
            .header("host", "a.rampart.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotated_by_secret_symlink_swap_is_served_to_new_connections_while_an_old_keep_alive_connection_keeps_working_and_a_bad_one_is_refused(
) {
    let ca = Ca::new("rampart rotation CA");
    let old = ca.issue(&["a.rampart.test"]);
    let new = ca.issue(&["b.rampart.test"]);
    let secret = SecretVolume::new("..2026_a", &old);
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&format!(
        "tls: {{cert_file: {}, key_file: {}}}\n{}",
        secret.file("tls.crt").display(),
        secret.file("tls.key").display(),
        config("stable", &[&stable], "")
    ))
    .await;
    let connector = ca.connector(&[b"h2", b"http/1.1"]);

    // A keep-alive HTTP/1.1 connection made before the swap.
    let h1_connector = ca.connector(&[b"http/1.1"]);
    let tls = tls_connect(&h1_connector, rampart.addr, "a.rampart.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&tls), old.der);
    let (mut keep_alive, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn_task = tokio::spawn(conn);
    assert_eq!(h1_get(&mut keep_alive, "/before").await, Ok(200));

    secret.swap_to("..2026_a", "..2026_b", &new.cert_pem, &new.key_pem);

    // New connections get the new certificate: bounded by the 10 s periodic check plus
    // margin; the directory watch normally makes it well under a second.
    let swapped_at = Instant::now();
    let served_new = poll_until(Duration::from_secs(15), || async {
        tls_connect(&connector, rampart.addr, "b.rampart.test")
            .await
            .is_ok_and(|s| peer_cert(&s) == new.der)
    })
    .await;
    assert!(
        served_new,
        "new connections still get the old certificate 15 s after the swap"
    );
    eprintln!(
        "new certificate served {:?} after the swap",
        swapped_at.elapsed()
    );
    let old_name = tls_connect(&connector, rampart.addr, "a.rampart.test").await;
    assert!(
        old_name.is_err(),
        "the old certificate is no longer served to new connections"
    );
    assert_eq!(
        h1_get(&mut keep_alive, "/after").await,
        Ok(200),
        "the connection opened before the swap keeps working"
    );

    // A bad certificate in the next swap is refused; the current one keeps serving.
    let garbage =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    secret.swap_to("..2026_b", "..2026_c", garbage, &new.key_pem);
    let refused = poll_until(Duration::from_secs(15), || async {
        rampart.stderr().contains("new TLS certificate refused")
    })
    .await;
    assert!(refused, "the bad certificate's refusal is logged");
    let still = tls_connect(&connector, rampart.addr, "b.rampart.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&still), new.der);
    let mut sender = h2_handshake(still).await;
    let resp = send_h2(&mut sender, get_request("https://b.rampart.test/x", &[])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(h1_get(&mut keep_alive, "/after-bad").await, Ok(200));

    // So is a good certificate paired with a key that is not its own.
    let third = ca.issue(&["c.rampart.test"]);
    secret.swap_to("..2026_c", "..2026_d", &third.cert_pem, &new.key_pem);
    let refused = poll_until(Duration::from_secs(15), || async {
        rampart
            .stderr()
            .matches("new TLS certificate refused")
            .count()
            >= 2
    })
    .await;
    assert!(refused, "the mismatched pair's refusal is logged");
    let still = tls_connect(&connector, rampart.addr, "b.rampart.test")
        .await
        .unwrap();
    assert_eq!(peer_cert(&still), new.der);
    assert!(stable.requests().iter().all(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "x-forwarded-proto" && v == "https")));
    conn_task.abort();
}

// ---------------------------------------------------------------------------------------------
// 4: https upstreams: verification against ca_file, failure = connect failure
// ---------------------------------------------------------------------------------------------

fn https_upstream_config(stable: &Upstream, canary_port: u16, ca_file: &Path) -> String {
    format!(
        "default_upstream: stable
upstreams:
  stable: {{url: {}}}
  canary: {{url: 'https://localhost:{canary_port}', ca_file: {}}}
routes:
  - name: checkout
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: 100}}]
    breaker: {{window: 10s, min_requests: 3, max_error_rate: 0.5, consecutive_errors: 3, open_for: 60s}}
    fallback: connect_failure
",
        stable.url(),
        ca_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_signed_by_an_untrusted_ca_is_a_connect_failure_that_falls_back_to_stable_and_opens_the_breaker(
) {
    let upstream_ca = Ca::new("upstream CA");
    let other_ca = Ca::new("some other CA");
    let files = TempDir::new("wrong-ca");
    let wrong_ca = files.write("other-ca.pem", &other_ca.pem);
    let stable = Upstream::start("stable").await;
    let canary = HttpsUpstream::start("canary", &upstream_ca.issue(&["localhost"])).await;
    let rampart = Rampart::start(&https_upstream_config(&stable, canary.port, &wrong_ca)).await;

    for i in 0..6 {
        let user = format!("user-{i}");
        let resp = rampart.get("/cart", &[("x-user-id", &user)]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.upstream(), "stable");
    }
    assert!(
        canary.seen().is_empty(),
        "no request went over an unverified connection"
    );
    assert!(canary.handshake_failures.load(Ordering::SeqCst) >= 1);
    let text = metrics_settled(&rampart, "checkout", 6.0, 9.0).await;
    assert_eq!(
        metric(
            &text,
            "rampart_fallbacks_total",
            &[
                ("route", "checkout"),
                ("from", "canary"),
                ("reason", "connect_failure")
            ]
        ),
        Some(3.0),
        "three failed handshakes fall back, then the open breaker sends straight to stable\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_breaker_state",
            &[
                ("route", "checkout"),
                ("backend", "canary"),
                ("state", "open")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_requests_total",
            &[
                ("route", "checkout"),
                ("backend", "stable"),
                ("code_class", "2xx")
            ]
        ),
        Some(6.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_reached_when_its_ca_file_is_trusted_and_gets_sni_from_the_url_host() {
    let upstream_ca = Ca::new("upstream CA");
    let files = TempDir::new("right-ca");
    let ca_file = files.write("upstream-ca.pem", &upstream_ca.pem);
    let stable = Upstream::start("stable").await;
    let canary = HttpsUpstream::start("canary", &upstream_ca.issue(&["localhost"])).await;
    let rampart = Rampart::start(&https_upstream_config(&stable, canary.port, &ca_file)).await;

    for i in 0..3 {
        let user = format!("user-{i}");
        let resp = rampart.get("/cart", &[("x-user-id", &user)]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.upstream(), "canary");
    }
    let seen = canary.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.sni.as_deref() == Some("localhost")));
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_11),
        "protocol http1 (the default) offers only http/1.1 even to an h2-capable upstream"
    );
    assert_eq!(stable.hits(), 0);
    assert_eq!(canary.handshake_failures.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_protocol_h2_is_spoken_to_in_http2_over_tls_with_te_trailers() {
    let upstream_ca = Ca::new("upstream CA");
    let files = TempDir::new("h2-tls");
    let ca_file = files.write("upstream-ca.pem", &upstream_ca.pem);
    let upstream = HttpsUpstream::start("h2-tls", &upstream_ca.issue(&["localhost"])).await;
    let rampart = Rampart::start(&format!(
        "default_upstream: stable\nupstreams:\n  stable: {{url: 'https://localhost:{}', protocol: h2, ca_file: {}}}\n",
        upstream.port,
        ca_file.display()
    ))
    .await;

    let resp = rampart.get("/over-h2", &[]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.upstream(), "h2-tls");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(seen[0].sni.as_deref(), Some("localhost"));
    assert_eq!(
        seen[0].headers.get("te").and_then(|v| v.to_str().ok()),
        Some("trailers")
    );
}

// ---------------------------------------------------------------------------------------------
// 5, 6: gRPC (tonic) end to end
// ---------------------------------------------------------------------------------------------

/// `rampart.test.Greeter` messages, derived by hand (no protoc).
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
    /// How many replies a server-streaming call should send.
    #[prost(uint32, tag = "2")]
    count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
    /// Which server answered.
    #[prost(string, tag = "2")]
    server: String,
    /// The `x-user-id` metadata the server received.
    #[prost(string, tag = "3")]
    user: String,
}

const SAY_HELLO: &str = "/rampart.test.Greeter/SayHello";
const SAY_MANY: &str = "/rampart.test.Greeter/SayMany";

/// How a test gRPC server behaves.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    /// Answers every call with OK.
    Healthy,
    /// Fails every call with UNAVAILABLE before any message: a trailers-only response.
    Unavailable,
    /// Streams one reply, then UNAVAILABLE in the trailers.
    UnavailableInTrailers,
}

#[derive(Clone)]
struct Greeter {
    name: &'static str,
    mode: Mode,
    calls: Arc<AtomicUsize>,
}

impl Greeter {
    fn reply(&self, req: &tonic::Request<HelloRequest>, i: u32) -> HelloReply {
        HelloReply {
            message: format!("hello {} #{i}", req.get_ref().name),
            server: self.name.to_string(),
            user: req
                .metadata()
                .get("x-user-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        }
    }
}

struct Unary(Greeter);
struct ServerStreaming(Greeter);

impl tonic::server::UnaryService<HelloRequest> for Unary {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(match self.0.mode {
            Mode::Healthy | Mode::UnavailableInTrailers => {
                Ok(tonic::Response::new(self.0.reply(&req, 0)))
            }
            Mode::Unavailable => Err(tonic::Status::unavailable(format!(
                "{} is unavailable",
                self.0.name
            ))),
        })
    }
}

type ReplyStream =
    futures_util::stream::Iter<std::vec::IntoIter<Result<HelloReply, tonic::Status>>>;

impl tonic::server::ServerStreamingService<HelloRequest> for ServerStreaming {
    type Response = HelloReply;
    type ResponseStream = ReplyStream;
    type Future = std::future::Ready<Result<tonic::Response<ReplyStream>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<HelloRequest>) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let items: Vec<Result<HelloReply, tonic::Status>> = match self.0.mode {
            Mode::Healthy => (0..req.get_ref().count)
                .map(|i| Ok(self.0.reply(&req, i)))
                .collect(),
            Mode::UnavailableInTrailers => vec![
                Ok(self.0.reply(&req, 0)),
                Err(tonic::Status::unavailable("failed mid-stream")),
            ],
            Mode::Unavailable => {
                return std::future::ready(Err(tonic::Status::unavailable("unavailable")))
            }
        };
        std::future::ready(Ok(tonic::Response::new(futures_util::stream::iter(items))))
    }
}

/// A gRPC server (h2c) on 127.0.0.1.
struct GrpcServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    async fn start(name: &'static str, mode: Mode) -> GrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let greeter = Greeter {
            name,
            mode,
            calls: calls.clone(),
        };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let greeter = greeter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| dispatch(greeter.clone(), req));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        GrpcServer { addr, calls, task }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn dispatch(
    greeter: Greeter,
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let codec = tonic_prost::ProstCodec::<HelloReply, HelloRequest>::default();
    let mut grpc = tonic::server::Grpc::new(codec);
    Ok(match req.uri().path() {
        SAY_HELLO => grpc.unary(Unary(greeter), req).await,
        SAY_MANY => grpc.server_streaming(ServerStreaming(greeter), req).await,
        _ => tonic::Status::unimplemented("no such method").into_http(),
    })
}

type GrpcClient = tonic::client::Grpc<Client<HttpConnector, tonic::body::Body>>;

/// A tonic client speaking h2c (prior knowledge) to `addr`.
fn grpc_client(addr: SocketAddr) -> GrpcClient {
    let http = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    tonic::client::Grpc::with_origin(http, format!("http://{addr}").parse().unwrap())
}

fn hello(name: &str, count: u32, user: Option<&str>) -> tonic::Request<HelloRequest> {
    let mut req = tonic::Request::new(HelloRequest {
        name: name.to_string(),
        count,
    });
    if let Some(user) = user {
        req.metadata_mut()
            .insert("x-user-id", user.parse().unwrap());
    }
    req
}

async fn say_hello(
    client: &mut GrpcClient,
    req: tonic::Request<HelloRequest>,
) -> Result<tonic::Response<HelloReply>, tonic::Status> {
    let fut = async {
        client.ready().await.unwrap();
        client
            .unary(
                req,
                http::uri::PathAndQuery::from_static(SAY_HELLO),
                tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await
    };
    tokio::time::timeout(IO_TIMEOUT, fut).await.unwrap()
}

/// A server-streaming call read to its end: the replies, then the final status.
async fn say_many(
    client: &mut GrpcClient,
    req: tonic::Request<HelloRequest>,
) -> (Vec<HelloReply>, Result<(), tonic::Status>) {
    let fut = async {
        client.ready().await.unwrap();
        let mut stream = match client
            .server_streaming(
                req,
                http::uri::PathAndQuery::from_static(SAY_MANY),
                tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default(),
            )
            .await
        {
            Ok(resp) => resp.into_inner(),
            Err(status) => return (Vec::new(), Err(status)),
        };
        let mut replies = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => return (replies, Ok(())),
                Err(status) => return (replies, Err(status)),
            }
        }
    };
    tokio::time::timeout(IO_TIMEOUT, fut).await.unwrap()
}

/// One gRPC frame (uncompressed) holding `msg`.
fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let payload = msg.encode_to_vec();
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&payload);
    Bytes::from(frame)
}

/// A raw gRPC POST over h2c, for looking at the HTTP status, headers and trailers as sent.
fn raw_grpc_request(
    rampart: &Rampart,
    path: &str,
    msg: &HelloRequest,
) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri(rampart.url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_frame(msg)))
        .unwrap()
}

fn grpc_config(stable: &GrpcServer, canary: &GrpcServer, percent: u32, breaker: &str) -> String {
    format!(
        "default_upstream: stable
upstreams:
  stable: {{url: http://{}, protocol: h2c}}
  canary: {{url: http://{}, protocol: h2c}}
routes:
  - name: greeter
    match: {{path_prefix: /rampart.test.Greeter}}
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: {percent}}}]
{breaker}",
        stable.addr, canary.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_calls_pass_through_with_trailers_and_metadata_identity_picks_the_backend(
) {
    let stable = GrpcServer::start("stable", Mode::Healthy).await;
    let canary = GrpcServer::start("canary", Mode::Healthy).await;
    let rampart = Rampart::start(&grpc_config(&stable, &canary, 50, "")).await;
    let to_canary = find_identity("greeter", "user", |b| b < 5000);
    let to_stable = find_identity("greeter", "user", |b| b >= 5000);
    let mut client = grpc_client(rampart.addr);

    let reply = say_hello(&mut client, hello("ana", 0, Some(&to_canary)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.server, "canary");
    assert_eq!(reply.user, to_canary, "metadata reaches the upstream");
    assert_eq!(reply.message, "hello ana #0");
    let reply = say_hello(&mut client, hello("bo", 0, Some(&to_stable)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.server, "stable");

    let (replies, end) = say_many(&mut client, hello("cy", 5, Some(&to_canary))).await;
    end.unwrap();
    assert_eq!(replies.len(), 5);
    assert!(replies.iter().all(|r| r.server == "canary"));
    assert_eq!(replies[4].message, "hello cy #4");
    let (replies, end) = say_many(&mut client, hello("di", 3, Some(&to_stable))).await;
    end.unwrap();
    assert_eq!(replies.len(), 3);
    assert!(replies.iter().all(|r| r.server == "stable"));

    // The same call as raw HTTP/2: the status arrives in the trailers, untouched.
    let tcp = TcpStream::connect(rampart.addr).await.unwrap();
    let mut raw = h2_handshake(tcp).await;
    let mut req = raw_grpc_request(
        &rampart,
        SAY_MANY,
        &HelloRequest {
            name: "ed".into(),
            count: 2,
        },
    );
    req.headers_mut()
        .insert("x-user-id", to_stable.parse().unwrap());
    let resp = send_h2(&mut raw, req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert!(resp.body.len() > 10, "two framed replies: {resp:?}");
    let trailers = resp.trailers.expect("gRPC trailers pass through");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");

    assert_eq!(canary.calls(), 2);
    assert_eq!(stable.calls(), 3);
    let text = metrics_settled(&rampart, "greeter", 5.0, 5.0).await;
    for backend in ["stable", "canary"] {
        let labels = [("route", "greeter"), ("backend", backend)];
        assert_eq!(
            metric_sum(&text, "rampart_requests_total", &labels),
            metric(
                &text,
                "rampart_requests_total",
                &[labels[0], labels[1], ("code_class", "2xx")]
            )
            .unwrap(),
            "every call was a success\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_canary_answering_unavailable_trips_the_breaker_and_later_calls_go_to_stable() {
    let stable = GrpcServer::start("stable", Mode::Healthy).await;
    let canary = GrpcServer::start("canary", Mode::Unavailable).await;
    let rampart = Rampart::start(&grpc_config(
        &stable,
        &canary,
        100,
        "    breaker: {window: 10s, min_requests: 4, max_error_rate: 0.5, open_for: 60s}\n",
    ))
    .await;
    let users = find_identities("greeter", "user", 20, |_| true);
    let mut client = grpc_client(rampart.addr);

    let mut failed = 0;
    let mut answers = Vec::new();
    for user in &users {
        match say_hello(&mut client, hello("x", 0, Some(user))).await {
            Ok(resp) => answers.push(resp.into_inner().server),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    answers.is_empty(),
                    "once stable answers, no call goes to the canary again"
                );
                failed += 1;
            }
        }
    }
    assert!(
        (4..=5).contains(&failed),
        "the breaker opens after min_requests (4) failed calls, not {failed}"
    );
    assert_eq!(canary.calls(), failed);
    assert_eq!(answers.len(), 20 - failed);
    assert!(answers.iter().all(|s| s == "stable"));

    metrics_settled(&rampart, "greeter", 20.0, 20.0).await;
    let text = rampart
        .metrics_until(|t| {
            metric(
                t,
                "rampart_breaker_state",
                &[
                    ("route", "greeter"),
                    ("backend", "canary"),
                    ("state", "open"),
                ],
            ) == Some(1.0)
        })
        .await;
    assert_eq!(
        metric(
            &text,
            "rampart_breaker_state",
            &[
                ("route", "greeter"),
                ("backend", "canary"),
                ("state", "open")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    let canary_labels = [("route", "greeter"), ("backend", "canary")];
    assert_eq!(
        metric(
            &text,
            "rampart_requests_total",
            &[canary_labels[0], canary_labels[1], ("code_class", "error")]
        ),
        Some(failed as f64),
        "failed gRPC calls are code_class error\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_requests_total",
            &[canary_labels[0], canary_labels[1], ("code_class", "2xx")]
        )
        .unwrap_or(0.0),
        0.0,
        "an HTTP 200 carrying grpc-status 14 is not 2xx\n{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_upstream_attempts_total",
            &[canary_labels[0], canary_labels[1], ("outcome", "error")]
        ),
        Some(failed as f64),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_requests_total",
            &[
                ("route", "greeter"),
                ("backend", "stable"),
                ("code_class", "2xx")
            ]
        ),
        Some((20 - failed) as f64),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_unavailable_in_trailers_after_messages_counts_as_an_error() {
    let stable = GrpcServer::start("stable", Mode::Healthy).await;
    let canary = GrpcServer::start("canary", Mode::UnavailableInTrailers).await;
    let rampart = Rampart::start(&grpc_config(
        &stable,
        &canary,
        100,
        "    breaker: {window: 10s, min_requests: 50, max_error_rate: 0.5, consecutive_errors: 50, open_for: 60s}\n",
    ))
    .await;
    let mut client = grpc_client(rampart.addr);
    for i in 0..3 {
        let user = format!("user-{i}");
        let (replies, end) = say_many(&mut client, hello("x", 1, Some(&user))).await;
        assert_eq!(replies.len(), 1, "the message before the error arrives");
        assert_eq!(end.unwrap_err().code(), tonic::Code::Unavailable);
    }
    // A unary call on the same canary succeeds: grpc-status 0 in trailers is no error.
    say_hello(&mut client, hello("y", 0, Some("user-ok")))
        .await
        .unwrap();

    let canary_labels = [("route", "greeter"), ("backend", "canary")];
    let error_class = [canary_labels[0], canary_labels[1], ("code_class", "error")];
    let text = metrics_settled(&rampart, "greeter", 4.0, 4.0).await;
    assert_eq!(
        metric(&text, "rampart_requests_total", &error_class),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_requests_total",
            &[canary_labels[0], canary_labels[1], ("code_class", "2xx")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "rampart_upstream_attempts_total",
            &[canary_labels[0], canary_labels[1], ("outcome", "error")]
        ),
        Some(3.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_call_to_a_down_h2c_canary_falls_back_to_stable_with_its_request_body() {
    let stable = GrpcServer::start("stable", Mode::Healthy).await;
    let down = free_port();
    let rampart = Rampart::start(&format!(
        "default_upstream: stable
upstreams:
  stable: {{url: http://{}, protocol: h2c}}
  canary: {{url: 'http://127.0.0.1:{down}', protocol: h2c}}
routes:
  - name: greeter
    identity: [header:x-user-id]
    split: [{{backend: canary, percent: 100}}]
    fallback: connect_failure
",
        stable.addr
    ))
    .await;
    let mut client = grpc_client(rampart.addr);
    for i in 0..3 {
        let user = format!("user-{i}");
        let reply = say_hello(&mut client, hello(&format!("n{i}"), 0, Some(&user)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.server, "stable");
        assert_eq!(
            reply.message,
            format!("hello n{i} #0"),
            "the body was re-sent"
        );
    }
    let text = metrics_settled(&rampart, "greeter", 3.0, 6.0).await;
    assert_eq!(
        metric(
            &text,
            "rampart_fallbacks_total",
            &[
                ("route", "greeter"),
                ("from", "canary"),
                ("reason", "connect_failure")
            ]
        ),
        Some(3.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_request_to_a_down_upstream_gets_http_200_trailers_only_with_grpc_status_14_and_connect_failure(
) {
    let down = free_port();
    let rampart = Rampart::start(&format!(
        "default_upstream: stable\nupstreams:\n  stable: {{url: 'http://127.0.0.1:{down}', protocol: h2c}}\n"
    ))
    .await;

    let tcp = TcpStream::connect(rampart.addr).await.unwrap();
    let mut raw = h2_handshake(tcp).await;
    let resp = send_h2(
        &mut raw,
        raw_grpc_request(
            &rampart,
            SAY_HELLO,
            &HelloRequest {
                name: "z".into(),
                count: 0,
            },
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("grpc-status"), Some("14"));
    assert_eq!(resp.header("x-rampart-error"), Some("connect_failure"));
    assert_eq!(resp.header("content-type"), Some("application/grpc"));
    assert!(resp.body.is_empty(), "trailers-only: no body");
    assert!(
        resp.trailers.is_none(),
        "trailers-only: the status is in the headers"
    );

    let mut client = grpc_client(rampart.addr);
    let status = say_hello(&mut client, hello("z", 0, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status
            .metadata()
            .get("x-rampart-error")
            .and_then(|v| v.to_str().ok()),
        Some("connect_failure")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_request_whose_upstream_does_not_answer_in_time_gets_grpc_status_4_and_timeout() {
    // An upstream that accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            conns.push(stream);
        }
    });
    let rampart = Rampart::start(&format!(
        "default_upstream: stable\nupstreams:\n  stable: {{url: 'http://{silent}', protocol: h2c, request_timeout: 300ms}}\n"
    ))
    .await;

    let mut client = grpc_client(rampart.addr);
    let status = say_hello(&mut client, hello("slow", 0, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-rampart-error")
            .and_then(|v| v.to_str().ok()),
        Some("timeout")
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_off_loopback_is_served_over_tls_only() {
    use std::os::unix::fs::PermissionsExt;
    let ca = Ca::new("admin test CA");
    let leaf = ca.issue(&["localhost", "127.0.0.1"]);
    let dir = TempDir::new("admintls");
    let token = "admin-tls-token-3e1f5a7c9b2d4f6a8c0e1a3b5c7d9e1f";
    let tokens = dir.write(
        "tokens.yaml",
        &format!(
            "- {{name: ada, role: admin, sha256: {}}}\n",
            sha256_hex(token.as_bytes())
        ),
    );
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let stable = Upstream::start("stable").await;
    let admin_port = free_port();
    let body = format!(
        "{}admin_listen: 0.0.0.0:{admin_port}\nadmin_tokens_file: {}\n{}",
        tls_files(&dir, &leaf),
        tokens.display(),
        config("stable", &[&stable], "routes: []\n")
    );
    let _rampart = Rampart::start(&body).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));

    // Plain HTTP gets no answer from an API whose listener speaks TLS.
    let plain = client();
    let answer = try_get(
        &plain,
        &format!("http://{admin}/v1/status"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert!(
        answer.is_err() || answer.as_ref().is_ok_and(|r| r.status != 200),
        "{answer:?}"
    );

    // Over TLS, with the data plane's certificate, the token works.
    let stream = tls_connect(&ca.connector(&[b"http/1.1"]), admin, "localhost")
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/v1/status")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(IO_TIMEOUT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
}
