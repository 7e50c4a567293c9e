//! Black-box harness for Rampart's integration tests.
//!
//! Everything here talks to the real `rampart` binary over loopback: [`Upstream`] is a real
//! hyper HTTP/1.1 server that echoes what reached it, [`Rampart`] writes a config into a fresh
//! temp dir, starts `rampart run -c FILE` on OS-picked ports and waits (bounded) for `/readyz`,
//! and the client helpers send requests either through hyper or as raw bytes (for malformed
//! requests hyper would refuse to write). [`bucket`] recomputes docs/routing.md#bucketing independently.
//!
//! Every wait in this file is a bounded poll: a fixed number of tries and a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Path of the binary under test, built by cargo for this test run.
pub const RAMPART: &str = env!("CARGO_BIN_EXE_rampart");

/// Upper bound for any single network exchange in the tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Bucketing oracle
// ---------------------------------------------------------------------------------------------

/// docs/routing.md#bucketing, computed independently of the binary: murmur3_x86_32 of `salt:identity`
/// with seed 0, modulo 10,000.
pub fn bucket(salt: &str, identity: &str) -> u32 {
    let key = format!("{salt}:{identity}");
    murmur3::murmur3_32(&mut key.as_bytes(), 0).unwrap() % 10_000
}

/// Finds an identity `PREFIX-N` whose bucket under `salt` satisfies `pred`. Bounded search.
pub fn find_identity(salt: &str, prefix: &str, pred: impl Fn(u32) -> bool) -> String {
    (0..2_000_000u32)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| pred(bucket(salt, id)))
        .unwrap_or_else(|| panic!("no identity with prefix {prefix} matched under salt {salt}"))
}

/// Finds `count` distinct identities `PREFIX-N` whose bucket under `salt` satisfies `pred`.
pub fn find_identities(
    salt: &str,
    prefix: &str,
    count: usize,
    pred: impl Fn(u32) -> bool,
) -> Vec<String> {
    let found: Vec<String> = (0..2_000_000u32)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|id| pred(bucket(salt, id)))
        .take(count)
        .collect();
    assert_eq!(found.len(), count, "not enough identities for {prefix}");
    found
}

// ---------------------------------------------------------------------------------------------
// Temp dirs and text helpers
// ---------------------------------------------------------------------------------------------

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir; removed on drop unless the test is failing,
/// so its config and logs stay around for a post-mortem.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "rampart-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the dir and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("(kept test dir {})", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Strips the common leading indentation of a block of text (like `indoc`), so YAML can be
/// written indented inside test functions. A leading newline is dropped.
pub fn dedent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line.get(indent..).unwrap_or("").trim_end());
        out.push('\n');
    }
    out
}

/// 1-based number of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in config:\n{text}"))
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Upstream: an echoing hyper server
// ---------------------------------------------------------------------------------------------

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

struct UpstreamState {
    name: String,
    hits: AtomicUsize,
    status: AtomicU16,
    requests: Mutex<Vec<Recorded>>,
}

/// A real HTTP/1.1 server on 127.0.0.1:0. Answers every request with the configured status
/// (200 unless [`Upstream::set_status`] says otherwise), `x-upstream: NAME`, and a JSON body
/// `{"upstream", "method", "uri", "headers": [[name, value], ...], "body_len"}`.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            status: AtomicU16::new(200),
            requests: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| echo(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Makes every later answer use `code` (e.g. 500).
    pub fn set_status(&self, code: u16) {
        self.state.status.store(code, Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(
    state: Arc<UpstreamState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map(|pq| pq.to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    state.requests.lock().unwrap().push(Recorded {
        method: method.clone(),
        uri: uri.clone(),
        headers: headers.clone(),
    });
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let json = serde_json::json!({
        "upstream": state.name,
        "method": method,
        "uri": uri,
        "headers": headers,
        "body_len": body_len,
    });
    let status =
        StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let resp = Response::builder()
        .status(status)
        .header("x-upstream", state.name.as_str())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap();
    Ok(resp)
}

/// What an upstream reported it received, parsed from its JSON answer.
#[derive(Debug, Clone)]
pub struct Echo {
    pub upstream: String,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Echo {
    /// Every value of header `name` (case-insensitive), in the order received.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of header `name`; panics if it came more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} reached the upstream {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client helpers
// ---------------------------------------------------------------------------------------------

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client (keep-alive), shared by the requests of one test.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

/// A response as the test client received it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// The `x-upstream` header: which upstream answered.
    pub fn upstream(&self) -> String {
        self.header("x-upstream").unwrap_or_else(|| {
            panic!(
                "no x-upstream header; status {} body {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The upstream's echo of the request it received.
    pub fn echo(&self) -> Echo {
        parse_echo(&self.body)
    }
}

/// Parses an upstream's JSON echo.
pub fn parse_echo(body: &[u8]) -> Echo {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "body is not an upstream echo ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let headers = v["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|pair| {
                    (
                        pair[0].as_str().unwrap_or_default().to_string(),
                        pair[1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Echo {
        upstream: s("upstream"),
        method: s("method"),
        uri: s("uri"),
        headers,
    }
}

/// Sends `GET url` with the given headers; bounded by [`IO_TIMEOUT`].
pub async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Resp {
    try_get(client, url, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Like [`get`] but returns transport errors instead of panicking.
pub async fn try_get(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, String> {
    let mut req = Request::builder().method("GET").uri(url);
    for (k, v) in headers {
        req = req.header(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes()
            .to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| format!("timed out after {IO_TIMEOUT:?}"))?
}

/// A response read off a raw TCP connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw TCP connection, for requests hyper would refuse to send (malformed framing,
/// oversized headers, hand-written `Connection` headers).
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `request` while reading one response, so a server that answers before reading
    /// everything (431) is still heard. Write errors are ignored: the server may close early.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<RawResponse, String> {
        let (mut r, mut w) = self.stream.split();
        let buf = &mut self.buf;
        let write = async {
            let _ = tokio::time::timeout(IO_TIMEOUT, w.write_all(request)).await;
        };
        let read = async {
            tokio::time::timeout(IO_TIMEOUT, read_response(&mut r, buf))
                .await
                .map_err(|_| "timed out reading the response".to_string())?
        };
        let ((), resp) = tokio::join!(write, read);
        resp
    }

    /// Whether the server closes the connection (EOF or reset) within [`IO_TIMEOUT`], with no
    /// further bytes sent.
    pub async fn closed_by_peer(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn fill<R: AsyncReadExt + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = r.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn read_response<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<RawResponse, String> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 1 << 20 {
            return Err("response head over 1 MiB".into());
        }
        if fill(r, buf).await? == 0 {
            return Err(format!(
                "connection closed before a full response head; got {:?}",
                String::from_utf8_lossy(buf)
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let hdr = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = hdr("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len}"))?;
        while buf.len() < len {
            if fill(r, buf).await? == 0 {
                return Err("connection closed inside the body".into());
            }
        }
        buf.drain(..len).collect()
    } else if hdr("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                if fill(r, buf).await? == 0 {
                    return Err("connection closed inside a chunk size".into());
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (if any) end with an empty line.
                loop {
                    if let Some(i) = find(buf, b"\r\n") {
                        let empty = i == 0;
                        buf.drain(..i + 2);
                        if empty {
                            break;
                        }
                        continue;
                    }
                    if fill(r, buf).await? == 0 {
                        break;
                    }
                }
                break body;
            }
            while buf.len() < size + 2 {
                if fill(r, buf).await? == 0 {
                    return Err("connection closed inside a chunk".into());
                }
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Close-delimited body.
        while fill(r, buf).await? > 0 {}
        std::mem::take(buf)
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// Rampart: the binary under test
// ---------------------------------------------------------------------------------------------

/// Picks a free loopback port: binds :0, reads the port, releases it. Never the same port
/// twice in one test process: the kernel may hand a just-released port out again, and a
/// config whose `listen` and `metrics_listen` collide is (rightly) refused.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no fresh loopback port in 100 tries");
}

/// The `upstreams:` block for the given upstreams, each under its own name.
pub fn upstreams_yaml(upstreams: &[&Upstream]) -> String {
    let mut s = String::from("upstreams:\n");
    for u in upstreams {
        s.push_str(&format!("  {}:\n    url: {}\n", u.name, u.url()));
    }
    s
}

/// A config body (everything but the listeners and `state_dir`, which [`Rampart::start`]
/// adds): `default_upstream`, the upstreams block, then `routes_yaml` (dedented).
pub fn config(default_upstream: &str, upstreams: &[&Upstream], routes_yaml: &str) -> String {
    format!(
        "default_upstream: {default_upstream}\n{}{}",
        upstreams_yaml(upstreams),
        dedent(routes_yaml)
    )
}

/// A running `rampart run -c FILE`. Killed on drop; if the test is failing, its stderr is
/// printed.
pub struct Rampart {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
    child: Child,
    client: HttpClient,
    // Last field: dropped after the child is killed.
    dir: TempDir,
}

impl Rampart {
    /// Writes `version: 1`, `listen`, `metrics_listen` and `state_dir` followed by `body` into
    /// a fresh temp dir, starts the binary and waits until `/readyz` answers 200.
    pub async fn start(body: &str) -> Rampart {
        let (rampart, _) = launch(TempDir::new("run"), false, "", body, |dir, contents| {
            write_file(dir, "rampart.yaml", contents)
        })
        .await;
        rampart
    }

    /// URL on the data-plane listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// URL on the metrics listener.
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics_addr)
    }

    /// `GET path` on the data plane with the given headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        get(&self.client, &self.url(path), headers).await
    }

    /// The body of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        let resp = get(&self.client, &self.metrics_url("/metrics"), &[]).await;
        assert_eq!(resp.status, 200, "/metrics answered {}", resp.status);
        resp.text()
    }

    /// Polls `/metrics` until `pred` holds for its text (at most 100 tries, 5 s); returns the
    /// last text either way, so the caller's assertion shows what was there.
    pub async fn metrics_until(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut text = self.metrics_text().await;
        for _ in 0..100 {
            if pred(&text) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            text = self.metrics_text().await;
        }
        text
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The test client this instance uses (pooled).
    pub fn client(&self) -> &HttpClient {
        &self.client
    }
}

/// Polls `/readyz` until 200: at most 200 tries and 10 s. On failure returns the exit code if
/// the process ended, or `None` if it kept running without getting ready (it is then killed).
async fn wait_ready(
    child: &mut Child,
    client: &HttpClient,
    metrics_addr: SocketAddr,
) -> Result<(), Option<i32>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let url = format!("http://{metrics_addr}/readyz");
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Some(status.code().unwrap_or(-1)));
        }
        if Instant::now() > deadline {
            break;
        }
        let probe = tokio::time::timeout(Duration::from_secs(1), try_get(client, &url, &[]));
        if let Ok(Ok(resp)) = probe.await {
            if resp.status == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(None)
}

impl Drop for Rampart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail = stderr
                .char_indices()
                .rev()
                .nth(8000)
                .map(|(i, _)| &stderr[i..])
                .unwrap_or(&stderr);
            eprintln!("--- rampart stderr (tail) ---\n{tail}\n--- end ---");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CLI runs (check, explain)
// ---------------------------------------------------------------------------------------------

/// What a finished CLI invocation printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// stdout then stderr, for assertions that accept either stream.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `rampart ARGS...` to completion (at most 10 s, then it is killed and the test fails).
pub fn run_cli(args: &[&str]) -> CliOutput {
    let mut command = Command::new(RAMPART);
    command
        .args(args)
        .env_remove("RAMPART_CONFIG")
        .env_remove("RAMPART_LOG_FORMAT");
    run_to_exit(&mut command, Duration::from_secs(10))
}

/// Runs `command` (stdin empty, stdout and stderr captured to files) until it exits, at most
/// `limit`; past it the process is killed and the test fails.
pub fn run_to_exit(command: &mut Command, limit: Duration) -> CliOutput {
    let dir = TempDir::new("cli");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn rampart");
    let deadline = Instant::now() + limit;
    let mut status = None;
    for _ in 0..(limit.as_millis() / 10 + 1) {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{command:?} did not exit within {limit:?}");
    };
    CliOutput {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample line (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line.find(' ').is_none_or(|sp| open < sp) => {
            let name = &line[..open];
            let mut labels = Vec::new();
            let mut chars = line[open + 1..].char_indices();
            let mut key = String::new();
            let mut rest_at = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '}' => {
                        rest_at = Some(open + 1 + i + 1);
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        // Quoted value with escapes.
                        let mut val = String::new();
                        chars.next(); // opening quote
                        while let Some((_, c)) = chars.next() {
                            match c {
                                '\\' => match chars.next().map(|(_, c)| c) {
                                    Some('n') => val.push('\n'),
                                    Some(c) => val.push(c),
                                    None => {}
                                },
                                '"' => break,
                                c => val.push(c),
                            }
                        }
                        labels.push((std::mem::take(&mut key), val));
                    }
                    c => key.push(c),
                }
            }
            (name, labels, &line[rest_at?..])
        }
        _ => {
            let sp = line.find(' ')?;
            (&line[..sp], Vec::new(), &line[sp..])
        }
    };
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Samples named `name` whose labels include every pair of `labels`.
pub fn samples<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

/// The value of the one sample named `name` with (at least) these labels; `None` if absent,
/// panics if several match.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let all = parse_metrics(text);
    let found = samples(&all, name, labels);
    assert!(
        found.len() <= 1,
        "{} samples of {name} match {labels:?}: {found:?}",
        found.len()
    );
    found.first().map(|s| s.value)
}

/// The sum over every sample named `name` with (at least) these labels (0 if none).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let all = parse_metrics(text);
    samples(&all, name, labels).iter().map(|s| s.value).sum()
}

// ---------------------------------------------------------------------------------------------
// Admin API (tests/admin.rs): a Rampart with admin_listen, restarts, signals, any request
// ---------------------------------------------------------------------------------------------

impl Rampart {
    /// Like [`Rampart::start`], with the admin API on a free loopback port and
    /// `admin_tokens_file` holding `tokens_yaml` (mode 0600). Returns the admin address too.
    pub async fn start_admin(body: &str, tokens_yaml: &str) -> (Rampart, SocketAddr) {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("admin");
        let tokens = dir.write("tokens.yaml", tokens_yaml);
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        let head = format!("admin_tokens_file: {}\n", tokens.display());
        let (rampart, admin) = launch(dir, true, &head, body, |dir, contents| {
            write_file(dir, "rampart.yaml", contents)
        })
        .await;
        (rampart, admin.expect("an admin port"))
    }

    /// Kills the process (SIGKILL, as a crash would) and starts it again on the same config
    /// file and state dir; waits for `/readyz`. Its stderr is appended to the same log.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stdout_path = self.dir.path().join("stdout.log");
        self.child = spawn_run(&self.config_path, &stdout_path, &self.stderr_path);
        let result = wait_ready(&mut self.child, &self.client, self.metrics_addr).await;
        assert!(
            result.is_ok(),
            "rampart did not become ready after a restart ({result:?}); stderr:\n{}",
            self.stderr()
        );
    }

    /// Sends `signal` (e.g. "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// The process's `state_dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

/// Writes `contents` to `dir/name` and returns the path.
fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Starts `rampart run` on free loopback ports (and an admin port if `admin`), with
/// [`config_head`], `extra_head` and `body` laid out by `lay_out` under `dir`, and waits for
/// `/readyz`. A port taken between picking and binding (exit 3) is retried, at most 3 times.
async fn launch(
    dir: TempDir,
    admin: bool,
    extra_head: &str,
    body: &str,
    lay_out: impl Fn(&Path, &str) -> PathBuf,
) -> (Rampart, Option<SocketAddr>) {
    let client = client();
    let stderr_path = dir.path().join("stderr.log");
    let stdout_path = dir.path().join("stdout.log");
    let mut last_failure = String::new();
    for _attempt in 0..3 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin_addr = admin.then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let admin_line = admin_addr
            .map(|a| format!("admin_listen: {a}\n"))
            .unwrap_or_default();
        let head = config_head(addr, metrics_addr, &dir.path().join("state"));
        let contents = format!("{head}{admin_line}{extra_head}{body}");
        let config_path = lay_out(dir.path(), &contents);
        let _ = std::fs::remove_file(&stderr_path);
        let mut child = spawn_run(&config_path, &stdout_path, &stderr_path);
        match wait_ready(&mut child, &client, metrics_addr).await {
            Ok(()) => {
                let rampart = Rampart {
                    addr,
                    metrics_addr,
                    config_path,
                    stderr_path,
                    child,
                    client,
                    dir,
                };
                return (rampart, admin_addr);
            }
            Err(Some(3)) => {
                last_failure = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            }
            Err(code) => {
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!(
                    "rampart did not become ready (exit code {code:?}; None = still running, killed)\nconfig:\n{contents}\nstderr:\n{stderr}"
                );
            }
        }
    }
    panic!("rampart exited 3 (cannot bind) on 3 attempts; last stderr:\n{last_failure}");
}

fn spawn_run(config_path: &Path, stdout_path: &Path, stderr_path: &Path) -> Child {
    let append = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    };
    Command::new(RAMPART)
        .arg("run")
        .arg("-c")
        .arg(config_path)
        .env_remove("RAMPART_CONFIG")
        .env_remove("RAMPART_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(append(stdout_path))
        .stderr(append(stderr_path))
        .spawn()
        .expect("spawn rampart")
}

/// Sends any request (method, headers, body); bounded by [`IO_TIMEOUT`].
pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes()
            .to_vec();
        Ok::<_, String>(Resp {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: timed out"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Reload and drain (tests/reload.rs, tests/drain.rs): config files laid out by the test
// (ConfigMap symlinks), the process's exit code
// ---------------------------------------------------------------------------------------------

impl Rampart {
    /// Like [`Rampart::start`], but the test lays the config out itself:
    /// `lay_out(dir, contents)` writes `contents` (the listeners and `state_dir` of
    /// [`Rampart::config_head`], then `body`) however it likes under `dir` (a ConfigMap's
    /// `..data` symlinks, a symlink to another directory, ...) and returns the path given to
    /// `rampart run -c`. Called again, with new ports, if a port was taken (exit 3).
    pub async fn start_at(body: &str, lay_out: impl Fn(&Path, &str) -> PathBuf) -> Rampart {
        let (rampart, _) = launch(TempDir::new("at"), false, "", body, lay_out).await;
        rampart
    }

    /// The first lines of this instance's config file: `version`, `listen`,
    /// `metrics_listen` and `state_dir`, as [`Rampart::start`] and [`Rampart::start_at`]
    /// wrote them; a rewrite that keeps them keeps the listeners.
    pub fn config_head(&self) -> String {
        config_head(self.addr, self.metrics_addr, &self.state_dir())
    }

    /// The temp dir holding the config, the logs and `state/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The exit code if the process has ended (-1 for a signal), else `None`. Does not wait.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits (bounded poll, every 20 ms) up to `within` for the process to exit; its exit
    /// code (-1 for a signal), or `None` if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(code) = self.exit_code() {
                return Some(code);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/readyz`'s status code, or `None` if the metrics listener did not answer in 1 s.
    pub async fn readyz(&self) -> Option<u16> {
        let url = self.metrics_url("/readyz");
        let probe = tokio::time::timeout(Duration::from_secs(1), try_get(&self.client, &url, &[]));
        match probe.await {
            Ok(Ok(resp)) => Some(resp.status),
            _ => None,
        }
    }
}

/// `version: 1` and the listener and `state_dir` lines [`Rampart::start`] puts first.
pub fn config_head(addr: SocketAddr, metrics_addr: SocketAddr, state_dir: &Path) -> String {
    format!(
        "version: 1\nlisten: {addr}\nmetrics_listen: {metrics_addr}\nstate_dir: {}\n",
        state_dir.display()
    )
}

/// Lays `contents` out as kubelet mounts a ConfigMap key `file` in `dir`:
/// `dir/GENERATION/FILE`, `dir/..data -> GENERATION`, `dir/FILE -> ..data/FILE` (relative
/// symlinks). Returns `dir/FILE`. Re-runnable: an earlier layout is replaced.
pub fn configmap_create(dir: &Path, generation: &str, file: &str, contents: &str) -> PathBuf {
    use std::os::unix::fs::symlink;
    let generation_dir = dir.join(generation);
    let _ = std::fs::remove_dir_all(&generation_dir);
    std::fs::create_dir_all(&generation_dir).unwrap();
    std::fs::write(generation_dir.join(file), contents).unwrap();
    let _ = std::fs::remove_file(dir.join("..data"));
    symlink(generation, dir.join("..data")).unwrap();
    let _ = std::fs::remove_file(dir.join(file));
    symlink(format!("..data/{file}"), dir.join(file)).unwrap();
    dir.join(file)
}

/// kubelet's ConfigMap update, step by step: write `dir/NEW/FILE`, symlink
/// `..data_tmp -> NEW`, rename `..data_tmp` over `..data`, remove `dir/OLD`. No event in
/// `dir` names `FILE`.
pub fn configmap_swap(dir: &Path, old: &str, new: &str, file: &str, contents: &str) {
    use std::os::unix::fs::symlink;
    let new_dir = dir.join(new);
    std::fs::create_dir_all(&new_dir).unwrap();
    std::fs::write(new_dir.join(file), contents).unwrap();
    symlink(new, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old)).unwrap();
}

/// Replaces `path` the way editors and config tools do: write a temp file beside it, then
/// rename it over the file.
pub fn rename_over(path: &Path, contents: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
