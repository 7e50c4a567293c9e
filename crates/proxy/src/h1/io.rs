//! I/O helpers of the HTTP/1.1 server.

use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection that can say "bytes are waiting" before it is given a buffer to read them
/// into, so an idle keep-alive connection holds no read buffer.
///
/// A plain TCP socket can (readiness from the reactor). TLS cannot (the TLS layer may have
/// decrypted data buffered already), so TLS connections answer at once and are read with a
/// buffer.
pub trait IdleRead {
    /// Resolves when a read would find data (or the end of the stream), if this I/O can
    /// tell; at once otherwise.
    fn poll_idle_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl IdleRead for TcpStream {
    fn poll_idle_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl<I> IdleRead for tokio_rustls::server::TlsStream<I> {
    fn poll_idle_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// In-memory connections (tests, fuzzing) are read with a buffer.
impl IdleRead for tokio::io::DuplexStream {
    fn poll_idle_readable(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl<I: IdleRead> IdleRead for Prefixed<I> {
    fn poll_idle_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            return Poll::Ready(Ok(()));
        }
        self.io.poll_idle_readable(cx)
    }
}

/// A connection with bytes already read from it put back in front: what the HTTP/1.1
/// server read past a head before handing the connection on, to hyper's HTTP/2 server (the
/// prior-knowledge preface) or to an upgrade's tunnel.
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
}

impl<I> std::fmt::Debug for Prefixed<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefixed")
            .field("prefix_len", &self.prefix.len())
            .finish_non_exhaustive()
    }
}

impl<I> Prefixed<I> {
    /// `io` to be read after `prefix`.
    pub fn new(prefix: Bytes, io: I) -> Prefixed<I> {
        Prefixed { prefix, io }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Buffers kept per thread for the next exchange: enough for the exchanges one worker
/// thread runs at once in a busy sidecar; more are freed.
const POOLED_BUFFERS: usize = 64;
/// Buffers larger than this (a huge head, a body read) are freed, not pooled.
const POOLED_MAX_CAPACITY: usize = 16 * 1024;

thread_local! {
    /// Read buffers of finished exchanges, reused by the next exchange on this thread: no
    /// allocation per request, and no heap holes between connections' tasks.
    static READ_BUFFERS: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Output buffers of finished exchanges, likewise.
    static WRITE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer with `room` to read into: a pooled one if this thread has one.
pub(crate) fn take_read_buffer(room: usize) -> BytesMut {
    let mut buf = READ_BUFFERS
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default();
    // Reclaims the pooled allocation in place once nothing else shares it.
    buf.reserve(room);
    buf
}

/// Keeps an emptied read buffer for the next exchange on this thread.
pub(crate) fn give_read_buffer(buf: BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 && buf.capacity() <= POOLED_MAX_CAPACITY {
        READ_BUFFERS.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            }
        });
    }
}

/// An output buffer: a pooled one if this thread has one.
pub(crate) fn take_write_buffer() -> Vec<u8> {
    WRITE_BUFFERS
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(1024))
}

/// Keeps an output buffer for the next exchange on this thread.
pub(crate) fn give_write_buffer(mut buf: Vec<u8>) {
    if buf.capacity() > 0 && buf.capacity() <= POOLED_MAX_CAPACITY {
        buf.clear();
        WRITE_BUFFERS.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_BUFFERS {
                pool.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_prefix_is_read_first_then_the_connection() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = Prefixed::new(Bytes::from_static(b"PRI * "), server);
        let mut client = client;
        client.write_all(b"HTTP/2.0").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI * HTTP/2.0");
    }
}
