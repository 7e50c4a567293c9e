//! HTTP/1.1 as Rampart's own server speaks it, on raw connections: pipelined requests
//! answered in order, `Expect: 100-continue`, HEAD framing, HTTP/1.0 keep-alive rules,
//! chunked request bodies, and one upstream connection reused across requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `body_len` the echo upstream reported.
fn body_len(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["body_len"].as_u64().unwrap()
}

async fn one_upstream() -> (Upstream, Rampart) {
    let stable = Upstream::start("stable").await;
    let rampart = Rampart::start(&format!(
        "default_upstream: stable\nupstreams:\n  stable:\n    url: {}\n",
        stable.url()
    ))
    .await;
    (stable, rampart)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (stable, rampart) = one_upstream().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let first = conn
        .exchange(
            b"GET /a HTTP/1.1\r\nhost: shop\r\n\r\nGET /b HTTP/1.1\r\nhost: shop\r\n\r\nGET /c HTTP/1.1\r\nhost: shop\r\n\r\n",
        )
        .await
        .unwrap();
    let second = conn.exchange(b"").await.unwrap();
    let third = conn.exchange(b"").await.unwrap();
    let uris: Vec<String> = [first, second, third]
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200);
            parse_echo(&r.body).uri
        })
        .collect();
    assert_eq!(uris, ["/a", "/b", "/c"]);
    assert_eq!(stable.hits(), 3);
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let (stable, rampart) = one_upstream().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let interim = conn
        .exchange(b"POST /upload HTTP/1.1\r\nhost: shop\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(interim.status, 100, "the client is told to send its body");
    let done = conn.exchange(b"hello").await.unwrap();
    assert_eq!(done.status, 200);
    assert_eq!(body_len(&done.body), 5);
    assert_eq!(stable.hits(), 1);
}

#[tokio::test]
async fn a_head_answer_has_no_body_and_the_next_request_follows_it() {
    let (_stable, rampart) = one_upstream().await;
    let mut stream = tokio::net::TcpStream::connect(rampart.addr).await.unwrap();
    stream
        .write_all(b"HEAD /h HTTP/1.1\r\nhost: shop\r\n\r\nGET /g HTTP/1.1\r\nhost: shop\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the connection closes after the second answer")
        .unwrap();
    let text = String::from_utf8_lossy(&all);
    let head_end = text.find("\r\n\r\n").expect("a first head");
    let first_head = &text[..head_end];
    assert!(first_head.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        first_head.to_ascii_lowercase().contains("content-length:"),
        "HEAD keeps the length a GET would have: {first_head}"
    );
    assert!(
        text[head_end + 4..].starts_with("HTTP/1.1 200"),
        "no body bytes after the HEAD answer: {text}"
    );
}

#[tokio::test]
async fn http_1_0_closes_unless_it_asks_for_keep_alive() {
    let (_stable, rampart) = one_upstream().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let r = conn.exchange(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        conn.closed_by_peer().await,
        "HTTP/1.0 without keep-alive closes"
    );

    let mut conn = RawConn::connect(rampart.addr).await;
    let r = conn
        .exchange(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let again = conn
        .exchange(b"GET /again HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(parse_echo(&again.body).uri, "/again");
}

#[tokio::test]
async fn a_chunked_request_body_reaches_the_upstream_whole() {
    let (_stable, rampart) = one_upstream().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let r = conn
        .exchange(
            b"POST /c HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(body_len(&r.body), 11);
    // The connection stays usable after a chunked body.
    let next = conn
        .exchange(b"GET /next HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(parse_echo(&next.body).uri, "/next");
}

#[tokio::test]
async fn a_client_that_sends_bytes_after_a_refused_head_is_not_served() {
    let (stable, rampart) = one_upstream().await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let r = conn
        .exchange(b"GET / HTTP/1.1\r\nhost: shop\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(conn.closed_by_peer().await);
    assert_eq!(stable.hits(), 0, "neither request reached the upstream");
}

/// An upstream that answers every request at once, before reading its body, then reads
/// and discards what the connection still brings and closes it: as a server that refuses
/// an upload (413, 401) does.
async fn early_answering_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let answer =
                    b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
                // Bounded: at most IO_TIMEOUT per read, and the peer's EOF ends it.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk)).await
                {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

async fn rampart_before(upstream: std::net::SocketAddr) -> Rampart {
    Rampart::start(&format!(
        "default_upstream: early\nupstreams:\n  early:\n    url: http://{upstream}\n"
    ))
    .await
}

/// A body the upstream did not read (it answered first) is read and discarded by Rampart
/// after the answer, so the client's keep-alive connection carries its next request; a
/// body too long to discard is announced with `connection: close` in the answer.
#[tokio::test]
async fn a_request_body_the_upstream_left_unread_does_not_cost_the_client_its_connection() {
    let (upstream, _task) = early_answering_upstream().await;
    let rampart = rampart_before(upstream).await;
    let mut conn = RawConn::connect(rampart.addr).await;
    let mut sized =
        b"POST /upload HTTP/1.1\r\nhost: shop\r\ncontent-length: 100000\r\n\r\n".to_vec();
    sized.extend(std::iter::repeat_n(b'x', 100_000));
    let r = conn.exchange(&sized).await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("connection"),
        None,
        "kept alive, so not announced as closing"
    );
    let r = conn
        .exchange(b"POST /c HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        r.status, 201,
        "the same connection carries the next request"
    );
    let r = conn
        .exchange(b"GET /next HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 201, "and the one after a chunked body");

    // Longer than Rampart discards: said in the answer, then closed.
    let mut conn = RawConn::connect(rampart.addr).await;
    let r = conn
        .exchange(b"POST /big HTTP/1.1\r\nhost: shop\r\ncontent-length: 10000000\r\n\r\nxxxx")
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.closed_by_peer().await);
}
