//! Rampart's own HTTP/1.1 server: one parse of each request head, framing rules checked in
//! that parse, and no buffer held by an idle keep-alive connection.
//!
//! hyper serves HTTP/2 (prior knowledge on the data port, or ALPN `h2` over TLS); HTTP/1.x
//! is served here. Why not hyper's HTTP/1.1 server: it keeps a read buffer and a write buffer
//! (24 KiB together) for the whole life of a connection, and it accepts a request with both
//! `Content-Length` and `Transfer-Encoding` silently, which made Rampart parse every head a
//! second time to refuse them (docs/PERFORMANCE.md has the measurements).
//!
//! - [`codec`]: the pure part: request heads (httparse, RFC 9112 framing rules), chunked
//!   request bodies, response heads and chunks.
//! - [`conn`]: the connection driver: reads heads, runs the handler, feeds the request body
//!   to it as it asks for data, writes the response, keeps the connection alive or closes it,
//!   and enforces the connection's deadlines.
//! - [`body`]: the request body the handler sees ([`RequestBody`]) and the channel the
//!   driver feeds it through.
//! - [`client`]: the client side for plain-HTTP/1.1 upstreams and requests without a body,
//!   run in the task of the client's connection.
//! - [`io`]: I/O helpers: waiting for a readable socket without a buffer, bytes read ahead
//!   put back in front of a connection handed on (to HTTP/2 or to an upgrade's tunnel).

pub mod body;
pub mod client;
pub mod codec;
pub mod conn;
pub mod io;

pub use body::{ClientUpgrade, RequestBody, Upgraded};
pub use conn::{serve_h1, H1Settings};
pub use io::{IdleRead, Prefixed};
