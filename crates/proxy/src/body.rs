//! Body types between client and upstream, streaming both ways.
//!
//! [`ReqBody`] goes upstream: the client's body as it arrives, a body that can be taken
//! back if the upstream never read it (so a refused canary connection can be retried on
//! stable without buffering), or a buffered copy. [`RespBody`] goes to the client: the
//! upstream's body under an idle timeout, holding the upstream's in-flight slot until it
//! ends, or a small body of Rampart's own.

use crate::handler::{Completion, End};
use crate::upstream::InflightGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Errors of bodies crossing the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body frame gap longer than the upstream's `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?} (idle_timeout)")]
pub struct IdleTimeout(pub Duration);

/// A client body that the upstream client may or may not start reading.
///
/// Until its first poll the body sits in a shared slot, so after a connection failure the
/// handler can take it back ([`Reclaim::take`]) and send it elsewhere: nothing was read, so
/// nothing was lost. Once polled, it is the upstream's for good.
pub struct ReclaimableBody {
    slot: Arc<Mutex<Option<Incoming>>>,
    body: Option<Incoming>,
}

/// The handler's side of a [`ReclaimableBody`].
pub struct Reclaim {
    slot: Arc<Mutex<Option<Incoming>>>,
}

impl Reclaim {
    /// The body, if the upstream never started reading it.
    pub fn take(&self) -> Option<Incoming> {
        self.slot.lock().ok().and_then(|mut s| s.take())
    }
}

/// Wraps `body` so that it can be reclaimed while unread.
pub fn reclaimable(body: Incoming) -> (ReclaimableBody, Reclaim) {
    let slot = Arc::new(Mutex::new(Some(body)));
    (
        ReclaimableBody {
            slot: slot.clone(),
            body: None,
        },
        Reclaim { slot },
    )
}

impl ReclaimableBody {
    fn with_slot<R>(&self, f: impl FnOnce(&Incoming) -> R, default: R) -> R {
        if let Some(body) = &self.body {
            return f(body);
        }
        match self.slot.lock() {
            Ok(slot) => slot.as_ref().map(f).unwrap_or(default),
            Err(_) => default,
        }
    }
}

impl Body for ReclaimableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.body.is_none() {
            let taken = self.slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(body) => self.body = Some(body),
                None => return Poll::Ready(None),
            }
        }
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_slot(Body::is_end_stream, true)
    }

    fn size_hint(&self) -> SizeHint {
        self.with_slot(Body::size_hint, SizeHint::with_exact(0))
    }
}

pin_project! {
    /// The body sent to an upstream.
    #[project = ReqBodyProj]
    pub enum ReqBody {
        /// The client's body, streamed (frames at most `idle_timeout` apart).
        Streamed { #[pin] body: IdleBody<Incoming> },
        /// The client's body, reclaimable until first read.
        Reclaimable { #[pin] body: IdleBody<ReclaimableBody> },
        /// A buffered body (retries of small idempotent requests).
        Buffered { #[pin] body: Full<Bytes> },
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ReqBodyProj::Streamed { body } => body.poll_frame(cx),
            ReqBodyProj::Reclaimable { body } => body.poll_frame(cx),
            ReqBodyProj::Buffered { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Streamed { body } => body.is_end_stream(),
            ReqBody::Reclaimable { body } => body.is_end_stream(),
            ReqBody::Buffered { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Streamed { body } => body.size_hint(),
            ReqBody::Reclaimable { body } => body.size_hint(),
            ReqBody::Buffered { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// A body whose frames may be at most `timeout` apart.
    ///
    /// The timer is made only the first time the body has to wait, so a body that is
    /// empty or already buffered costs no timer and no allocation.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        sleep: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
    }
}

impl<B> IdleBody<B> {
    /// Wraps `inner` with an idle timeout.
    pub fn new(inner: B, timeout: Duration) -> Self {
        IdleBody {
            inner,
            sleep: None,
            timeout,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(sleep) = this.sleep.as_mut() {
                    sleep.as_mut().reset(Instant::now() + *this.timeout);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = *this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeout(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The body sent to the client.
    #[project = RespBodyProj]
    pub enum RespBody {
        /// The upstream's body; the guard frees the upstream's in-flight slot when it ends,
        /// and the completion records the outcome then (or when the client goes away).
        Upstream {
            #[pin] body: IdleBody<Incoming>,
            guard: Option<InflightGuard>,
            completion: Option<Completion>,
        },
        /// A body Rampart wrote itself.
        Own { #[pin] body: Full<Bytes> },
    }
}

impl RespBody {
    /// A body of Rampart's own.
    pub fn own(text: &'static str) -> RespBody {
        RespBody::Own {
            body: Full::new(Bytes::from_static(text.as_bytes())),
        }
    }

    /// An empty body.
    pub fn empty() -> RespBody {
        RespBody::Own {
            body: Full::new(Bytes::new()),
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RespBodyProj::Upstream {
                body,
                guard,
                completion,
            } => {
                let polled = body.poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(trailers), Some(c)) =
                            (frame.trailers_ref(), completion.as_mut())
                        {
                            c.trailers(trailers);
                        }
                    }
                    Poll::Ready(None) => {
                        guard.take();
                        if let Some(mut c) = completion.take() {
                            c.finish(End::Complete);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        guard.take();
                        if let Some(mut c) = completion.take() {
                            c.finish(End::BodyError);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
            RespBodyProj::Own { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Upstream { body, .. } => body.is_end_stream(),
            RespBody::Own { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Upstream { body, .. } => body.size_hint(),
            RespBody::Own { body } => body.size_hint(),
        }
    }
}
