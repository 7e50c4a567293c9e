//! Body types between client and upstream, streaming both ways.
//!
//! [`ReqBody`] goes upstream: the client's body as it arrives, a body that can be sent
//! again after an attempt the upstream did not process (so a refused canary connection or
//! HTTP/2 stream can be retried on stable), or a buffered copy. [`RespBody`] goes to the client: the
//! upstream's body under an idle timeout, holding the upstream's in-flight slot until it
//! ends, or a small body of Rampart's own.

use crate::handler::{Completion, End};
use crate::upstream::InflightGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::collections::VecDeque;
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

/// A client body that can be sent again after an attempt that the upstream did not process.
///
/// The client's unread body sits in a slot shared with the handler's [`Reclaim`]; the frames
/// an attempt reads are kept (cheap `Bytes` clones, at most [`MAX_RETRY_BODY`] bytes) while
/// the handler holds its `Reclaim`. So after a refused connection (nothing read) or a
/// refused HTTP/2 stream (hyper may already have read and sent part of the body, e.g. a gRPC
/// message, before the upstream's REFUSED_STREAM arrived), [`Reclaim::take`] gives a body
/// that replays what was read and then continues with the unread rest.
///
/// [`MAX_RETRY_BODY`]: crate::handler::MAX_RETRY_BODY
pub struct ReclaimableBody {
    shared: Arc<Mutex<Reclaimed>>,
    /// Frames an earlier attempt read, sent first (the retry's body).
    replay: VecDeque<Frame<Bytes>>,
}

/// What a [`ReclaimableBody`] and its [`Reclaim`] share.
struct Reclaimed {
    /// The client's body from where the attempts have read it so far.
    rest: Option<Incoming>,
    /// Copies of the frames read so far; `None` once more than `MAX_RETRY_BODY` bytes were
    /// read or the handler dropped its [`Reclaim`] (nothing will be retried then).
    read: Option<Vec<Frame<Bytes>>>,
    read_bytes: u64,
}

impl Reclaimed {
    fn keep(&mut self, frame: &Frame<Bytes>) {
        let Some(read) = self.read.as_mut() else {
            return;
        };
        let copy = if let Some(data) = frame.data_ref() {
            self.read_bytes += data.len() as u64;
            Frame::data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            Frame::trailers(trailers.clone())
        } else {
            return;
        };
        if self.read_bytes > crate::handler::MAX_RETRY_BODY {
            self.read = None;
        } else {
            read.push(copy);
        }
    }
}

/// The handler's side of a [`ReclaimableBody`].
pub struct Reclaim {
    shared: Arc<Mutex<Reclaimed>>,
}

impl Reclaim {
    /// The body again, for one retry: what the failed attempt read, then the unread rest.
    /// `None` if the attempt read more than can be replayed.
    pub fn take(&self) -> Option<ReclaimableBody> {
        let mut shared = self.shared.lock().ok()?;
        let read = shared.read.take()?;
        let rest = shared.rest.take();
        Some(ReclaimableBody {
            shared: Arc::new(Mutex::new(Reclaimed {
                rest,
                read: None,
                read_bytes: 0,
            })),
            replay: read.into(),
        })
    }
}

impl Drop for Reclaim {
    fn drop(&mut self) {
        // No retry can come any more: stop keeping copies of the body.
        if let Ok(mut shared) = self.shared.lock() {
            shared.read = None;
        }
    }
}

/// Wraps `body` so that it can be sent again ([`Reclaim::take`]).
pub fn reclaimable(body: Incoming) -> (ReclaimableBody, Reclaim) {
    let shared = Arc::new(Mutex::new(Reclaimed {
        rest: Some(body),
        read: Some(Vec::new()),
        read_bytes: 0,
    }));
    (
        ReclaimableBody {
            shared: Arc::clone(&shared),
            replay: VecDeque::new(),
        },
        Reclaim { shared },
    )
}

impl Body for ReclaimableBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.replay.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Ok(mut shared) = this.shared.lock() else {
            return Poll::Ready(Some(Err("request body state poisoned".into())));
        };
        let polled = match shared.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx).map_err(Into::into),
            // Taken for a retry: this attempt is over.
            None => Poll::Ready(None),
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            shared.keep(frame);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.replay.is_empty()
            && self
                .shared
                .lock()
                .map(|s| s.rest.as_ref().is_none_or(Body::is_end_stream))
                .unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        let replay: u64 = self
            .replay
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        let rest = self
            .shared
            .lock()
            .ok()
            .and_then(|s| s.rest.as_ref().map(Body::size_hint))
            .unwrap_or_else(|| SizeHint::with_exact(0));
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(replay));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(replay));
        }
        hint
    }
}

pin_project! {
    /// The body sent to an upstream.
    #[project = ReqBodyProj]
    pub enum ReqBody {
        /// The client's body, streamed (frames at most `idle_timeout` apart).
        Streamed { #[pin] body: IdleBody<Incoming> },
        /// The client's body, replayable for one retry (see [`ReclaimableBody`]).
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
                mut body,
                guard,
                completion,
            } => {
                let polled = body.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(trailers), Some(c)) =
                            (frame.trailers_ref(), completion.as_mut())
                        {
                            c.trailers(trailers);
                        }
                        // hyper stops polling once the body says it has ended, so the
                        // end is recorded here, not only at a final `None`.
                        if body.is_end_stream() {
                            guard.take();
                            if let Some(mut c) = completion.take() {
                                c.finish(End::Complete);
                            }
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
