//! The write-progress watchdog of an HTTP/2 client connection (`send_timeout`,
//! docs/proxying.md#hostile-clients): a write that stays blocked for that long, because
//! the client stopped reading, fails with `TimedOut`, which ends the connection and so the
//! responses and upstream slots it held. (The HTTP/1.1 server keeps its own watchdog in its
//! write path, `crate::h1::conn`.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The timer of a write-progress watchdog: armed when a write blocks, disarmed when one
/// makes progress, fired when a write stayed blocked for the whole timeout. Its `Sleep` is
/// made the first time a write blocks and reused after.
#[derive(Debug)]
pub struct StallTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl StallTimer {
    /// A watchdog of `timeout`, not armed.
    pub fn new(timeout: Duration) -> StallTimer {
        StallTimer {
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// A write made progress.
    pub fn progressed(&mut self) {
        self.armed = false;
    }

    /// A write is blocked: arms the timer if it is not running; ready once it fired.
    pub fn poll_blocked(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = Instant::now() + self.timeout;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.armed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx)
    }
}

/// A connection whose writes fail once they have been blocked for the send timeout.
#[derive(Debug)]
pub struct WatchedIo<T> {
    inner: T,
    stall: StallTimer,
    /// Set when the watchdog failed a write.
    timed_out: Arc<AtomicBool>,
}

impl<T> WatchedIo<T> {
    /// Wraps `inner` with a watchdog of `send_timeout`.
    pub fn new(inner: T, send_timeout: Duration) -> Self {
        WatchedIo {
            inner,
            stall: StallTimer::new(send_timeout),
            timed_out: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the watchdog failed a write (readable after the connection has moved into
    /// hyper).
    pub fn timed_out(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.timed_out)
    }

    /// A write that made progress disarms the watchdog; one that is blocked arms it (once
    /// per blocked stretch) and fails with `TimedOut` when it fires.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stall.progressed();
            return polled;
        }
        if self.stall.poll_blocked(cx).is_ready() {
            self.timed_out.store(true, Ordering::Release);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client accepted no bytes for send_timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch_write(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_blocked_for_the_send_timeout_fails_the_connection() -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(64);
        let mut watched = WatchedIo::new(server, Duration::from_millis(100));
        let timed_out = watched.timed_out();
        // The client never reads: the 64-byte pipe fills and the write blocks.
        let written =
            tokio::time::timeout(Duration::from_secs(10), watched.write_all(&[b'x'; 4096]))
                .await
                .map_err(|_| io::Error::other("the watchdog never fired"))?;
        let error = written.err().map(|e| e.kind());
        assert_eq!(error, Some(io::ErrorKind::TimedOut));
        assert!(timed_out.load(Ordering::Acquire));
        drop(client);
        Ok(())
    }

    #[tokio::test]
    async fn writes_that_progress_never_time_out() -> io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut watched = WatchedIo::new(server, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            // Slower overall than the timeout, but never blocked that long at once.
            let mut total = 0;
            let mut buf = [0u8; 64];
            while total < 64 * 20 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                total += client.read(&mut buf).await?;
            }
            Ok::<_, io::Error>(total)
        });
        watched.write_all(&[b'x'; 64 * 20]).await?;
        assert!(!watched.timed_out().load(Ordering::Acquire));
        assert_eq!(reader.await.map_err(io::Error::other)??, 64 * 20);
        Ok(())
    }
}
