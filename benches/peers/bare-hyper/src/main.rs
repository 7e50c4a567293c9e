//! The floor of a hyper 1 proxy for the load benchmark: one current-thread tokio runtime,
//! an HTTP/1.1 server, hyper-util's pooled keep-alive client, and the same 10 % split as
//! Rampart's bench route (`murmur3("bench:" + x-user-id) % 10000 < 1000` goes to the
//! canary). Nothing else: no header rewriting, metrics, breaker or logs.
//!
//! Usage: `bare-hyper LISTEN STABLE_ADDR CANARY_ADDR`, e.g.
//! `bare-hyper 127.0.0.1:18030 127.0.0.1:18001 127.0.0.1:18002`.

use http::uri::{Authority, Scheme, Uri};
use http_body_util::{Either, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io::Read;
use std::sync::Arc;
use tokio::net::TcpListener;

type Body = Either<Incoming, Empty<Bytes>>;

struct Upstreams {
    client: Client<HttpConnector, Incoming>,
    stable: Authority,
    canary: Authority,
}

fn to_canary(id: &[u8]) -> bool {
    let hash = murmur3::murmur3_32(&mut b"bench:".chain(id), 0).unwrap_or(0);
    hash % 10_000 < 1_000
}

async fn proxy(
    up: Arc<Upstreams>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let canary = request
        .headers()
        .get("x-user-id")
        .is_some_and(|v| to_canary(v.as_bytes()));
    let authority = if canary { &up.canary } else { &up.stable };
    let (mut parts, body) = request.into_parts();
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = parts.uri.path_and_query().cloned();
    let Ok(uri) = Uri::from_parts(uri) else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    parts.uri = uri;
    match up.client.request(Request::from_parts(parts, body)).await {
        Ok(response) => Ok(response.map(Either::Left)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, stable, canary] = args.as_slice() else {
        return Err("usage: bare-hyper LISTEN STABLE_ADDR CANARY_ADDR".into());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        let upstreams = Arc::new(Upstreams {
            client,
            stable: stable.parse()?,
            canary: canary.parse()?,
        });
        let listener = TcpListener::bind(listen.as_str()).await?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let up = Arc::clone(&upstreams);
            tokio::spawn(async move {
                let service = service_fn(move |req| proxy(Arc::clone(&up), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
