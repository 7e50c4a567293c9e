//! The floor of a pingora proxy for the load benchmark: one service thread (no work
//! stealing), pingora's upstream keep-alive pool, and the same 10 % split as Rampart's
//! bench route (`murmur3("bench:" + x-user-id) % 10000 < 1000` goes to the canary).
//! Nothing else: no header rewriting, metrics or logs.
//!
//! Usage: `bare-pingora LISTEN STABLE_ADDR CANARY_ADDR`, e.g.
//! `bare-pingora 127.0.0.1:18040 127.0.0.1:18001 127.0.0.1:18002`.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::io::Read;
use std::net::SocketAddr;

struct Split {
    stable: HttpPeer,
    canary: HttpPeer,
}

fn to_canary(id: &[u8]) -> bool {
    let hash = murmur3::murmur3_32(&mut b"bench:".chain(id), 0).unwrap_or(0);
    hash % 10_000 < 1_000
}

#[async_trait]
impl ProxyHttp for Split {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let canary = session
            .req_header()
            .headers
            .get("x-user-id")
            .is_some_and(|v| to_canary(v.as_bytes()));
        let peer = if canary { &self.canary } else { &self.stable };
        Ok(Box::new(peer.clone()))
    }
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, stable, canary] = args.as_slice() else {
        return Err("usage: bare-pingora LISTEN STABLE_ADDR CANARY_ADDR".into());
    };
    let stable: SocketAddr = stable.parse()?;
    let canary: SocketAddr = canary.parse()?;
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Split {
            stable: HttpPeer::new(stable, false, String::new()),
            canary: HttpPeer::new(canary, false, String::new()),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
