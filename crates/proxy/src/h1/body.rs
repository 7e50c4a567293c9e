//! The client's request body as the handler sees it, and the channel through which the
//! HTTP/1.1 driver feeds it.
//!
//! The driver reads body bytes only when the body asks for them (so a body nobody reads
//! costs no reads, and `Expect: 100-continue` is answered only then), one frame at a time:
//! the upstream's pace is the client's pace, with at most one frame (64 KiB) in between.

use super::io::Prefixed;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// The client's request body, whichever protocol brought it.
#[derive(Debug)]
pub enum RequestBody {
    /// No body (no `Content-Length` and no `Transfer-Encoding`, or `Content-Length: 0`).
    Empty,
    /// An HTTP/1.1 body, fed by the connection's driver.
    Http1(H1Body),
    /// An HTTP/2 stream's body, from hyper.
    Http2(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            RequestBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Http1(body) => body.is_end_stream(),
            RequestBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Http1(body) => body.size_hint(),
            RequestBody::Http2(body) => body.size_hint(),
        }
    }
}

/// What the body and the driver share.
#[derive(Debug, Default)]
pub(crate) struct Chan {
    state: Mutex<ChanState>,
}

#[derive(Debug, Default)]
struct ChanState {
    /// A frame (or the error that ended the body) waiting for the body to take it.
    frame: Option<Result<Frame<Bytes>, io::Error>>,
    /// The driver has delivered the end of the body (after `frame`, if any).
    end: bool,
    /// The body is waiting for a frame.
    want: bool,
    /// The body was dropped: nobody will read the rest.
    dropped: bool,
    body_waker: Option<Waker>,
    conn_waker: Option<Waker>,
}

/// What the driver should do next for a body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Demand {
    /// Read and deliver the next frame.
    Frame,
    /// Nothing until the body asks (the driver's waker is registered).
    Wait,
    /// The body was dropped before its end.
    Dropped,
}

impl Chan {
    /// What the body needs now; registers `cx`'s waker when it is nothing.
    pub(crate) fn demand(&self, cx: &mut Context<'_>) -> Demand {
        let Ok(mut state) = self.state.lock() else {
            return Demand::Dropped;
        };
        if state.dropped {
            return Demand::Dropped;
        }
        if state.want && state.frame.is_none() && !state.end {
            return Demand::Frame;
        }
        if !state
            .conn_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.conn_waker = Some(cx.waker().clone());
        }
        Demand::Wait
    }

    /// Hands the body a frame (or its final error), and the end after it if `end`.
    pub(crate) fn deliver(&self, frame: Option<Result<Frame<Bytes>, io::Error>>, end: bool) {
        let waker = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            state.frame = frame;
            state.end |= end;
            state.want = false;
            state.body_waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// An HTTP/1.1 request body: frames the connection's driver reads when this body asks.
#[derive(Debug)]
pub struct H1Body {
    chan: Arc<Chan>,
    /// Bytes still to come of a `Content-Length` body; `None` for a chunked one.
    remaining: Option<u64>,
    /// The end (or an error) was returned.
    ended: bool,
}

impl H1Body {
    /// A body fed through `chan`; `length` for a `Content-Length` body.
    pub(crate) fn new(chan: Arc<Chan>, length: Option<u64>) -> H1Body {
        H1Body {
            chan,
            remaining: length,
            ended: false,
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.ended || this.remaining == Some(0) {
            return Poll::Ready(None);
        }
        let (polled, waker) = {
            let Ok(mut state) = this.chan.state.lock() else {
                this.ended = true;
                return Poll::Ready(Some(Err(io::Error::other("request body state poisoned"))));
            };
            if let Some(frame) = state.frame.take() {
                (Poll::Ready(Some(frame)), None)
            } else if state.end {
                (Poll::Ready(None), None)
            } else {
                state.want = true;
                if !state
                    .body_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.body_waker = Some(cx.waker().clone());
                }
                (Poll::Pending, state.conn_waker.take())
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(remaining), Some(data)) = (this.remaining.as_mut(), frame.data_ref()) {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => this.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if self.ended || self.remaining == Some(0) {
            return true;
        }
        self.chan
            .state
            .lock()
            .map(|s| s.end && s.frame.is_none())
            .unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        let waker = match self.chan.state.lock() {
            Ok(mut state) => {
                state.dropped = true;
                state.conn_waker.take()
            }
            Err(_) => None,
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The I/O of an upgraded connection (the client's side of a tunnel).
pub trait UpgradeIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpgradeIo for T {}

/// The client's connection after a `101 Switching Protocols`: the bytes the server had read
/// past the request head first, then the socket.
pub type Upgraded = Prefixed<Box<dyn UpgradeIo>>;

/// The client's side of an HTTP/1.1 upgrade, put in the request's extensions: resolves to
/// the connection once the driver has written the `101` response, or fails when the
/// response was not a `101` (the connection then stays HTTP/1.1).
///
/// Cloneable, as request extensions must be; every clone waits on the same hand-over, and
/// only one receives the connection.
#[derive(Debug, Clone)]
pub struct ClientUpgrade {
    rx: Arc<Mutex<oneshot::Receiver<Upgraded>>>,
}

impl ClientUpgrade {
    pub(crate) fn pair() -> (oneshot::Sender<Upgraded>, ClientUpgrade) {
        let (tx, rx) = oneshot::channel();
        (
            tx,
            ClientUpgrade {
                rx: Arc::new(Mutex::new(rx)),
            },
        )
    }
}

impl Future for ClientUpgrade {
    type Output = Result<Upgraded, io::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut rx) = self.rx.lock() else {
            return Poll::Ready(Err(io::Error::other("upgrade state poisoned")));
        };
        Pin::new(&mut *rx).poll(cx).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was not upgraded",
            )
        })
    }
}
