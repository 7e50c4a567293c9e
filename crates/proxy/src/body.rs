//! Body types between client and upstream, streaming both ways.
//!
//! [`ReqBody`] goes upstream: the client's body as it arrives, a body that can be sent
//! again after an attempt the upstream did not process (so a refused canary connection or
//! HTTP/2 stream can be retried on stable), or a buffered copy. [`RespBody`] goes to the client: the
//! upstream's body under an idle timeout, holding the upstream's in-flight slot until it
//! ends, or a small body of Rampart's own.

use crate::completion::Completion;
use crate::failure::ClientFault;
use crate::h1::RequestBody;
use crate::upstream::InflightGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Errors of bodies crossing the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request body kept for a re-send to stable (`fallback: idempotent` buffers up to
/// this much; a reclaimable body keeps copies of at most this much).
pub const MAX_RETRY_BODY: u64 = 64 * 1024;

/// The client's request body failed: what [`ClientFault`] it was, and the cause. Attempts
/// that fail with this in their error chain are the client's fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {fault:?}: {source}")]
pub struct ClientBodyError {
    fault: ClientFault,
    source: BoxError,
}

impl ClientBodyError {
    /// Which fault of the client's it was.
    pub fn fault(&self) -> ClientFault {
        self.fault
    }

    /// Classifies an error of the client's body stream: an idle timeout is a stall, a
    /// framing error (hyper reports invalid chunking as `InvalidInput`/`InvalidData`) is
    /// bad framing, anything else (end of stream too early, a reset) is a client gone.
    pub(crate) fn classify(source: BoxError) -> ClientBodyError {
        let mut fault = ClientFault::Gone;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(e) = cause {
            if e.is::<IdleTimeout>() {
                fault = ClientFault::Stalled;
                break;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) {
                    fault = ClientFault::BadFraming;
                }
                break;
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_parse() {
                    fault = ClientFault::BadFraming;
                    break;
                }
            }
            cause = e.source();
        }
        ClientBodyError { fault, source }
    }
}

/// Where a request body notes how the client is doing, for the handler to read after the
/// attempt: whether the client failed the body (whatever error the upstream client then
/// reports: HTTP/2 may report only its own reset of the stream), and whether, when the
/// attempt timed out, the body was still waiting on the client.
#[derive(Debug, Default)]
pub struct FaultCell {
    fault: AtomicU8,
    progress: AtomicU8,
}

/// [`FaultCell::progress`]: the body is being read from the client, or not polled.
const READING: u8 = 0;
/// [`FaultCell::progress`]: the last read found nothing: the client owes data.
const WAITING_ON_CLIENT: u8 = 1;
/// [`FaultCell::progress`]: the body ended.
const FINISHED: u8 = 2;

impl FaultCell {
    fn set(&self, fault: ClientFault) {
        let code = match fault {
            ClientFault::BadFraming => 1,
            ClientFault::Gone => 2,
            ClientFault::Stalled => 3,
        };
        let _ = self
            .fault
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The first fault noted, if any.
    pub fn get(&self) -> Option<ClientFault> {
        match self.fault.load(Ordering::Acquire) {
            1 => Some(ClientFault::BadFraming),
            2 => Some(ClientFault::Gone),
            3 => Some(ClientFault::Stalled),
            _ => None,
        }
    }

    /// Whether the body was waiting for the client's data (rather than for the upstream
    /// to read it, or finished): an attempt that timed out then is the client's stall.
    pub fn waiting_on_client(&self) -> bool {
        self.progress.load(Ordering::Acquire) == WAITING_ON_CLIENT
    }

    fn progress(&self, state: u8) {
        self.progress.store(state, Ordering::Release);
    }
}

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
pub struct ReclaimableBody<B = RequestBody> {
    shared: Arc<Mutex<Reclaimed<B>>>,
    /// Frames an earlier attempt read, sent first (the retry's body).
    replay: VecDeque<Frame<Bytes>>,
}

/// What a [`ReclaimableBody`] and its [`Reclaim`] share.
struct Reclaimed<B> {
    /// The client's body from where the attempts have read it so far.
    rest: Option<B>,
    /// Copies of the frames read so far; `None` once more than `MAX_RETRY_BODY` bytes were
    /// read or the handler dropped its [`Reclaim`] (nothing will be retried then).
    read: Option<Vec<Frame<Bytes>>>,
    read_bytes: u64,
}

impl<B> Reclaimed<B> {
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
        if self.read_bytes > MAX_RETRY_BODY {
            self.read = None;
        } else {
            read.push(copy);
        }
    }
}

/// The handler's side of a [`ReclaimableBody`].
pub struct Reclaim<B = RequestBody> {
    shared: Arc<Mutex<Reclaimed<B>>>,
}

impl<B> Reclaim<B> {
    /// The body again, for one retry: what the failed attempt read, then the unread rest.
    /// `None` if the attempt read more than can be replayed.
    pub fn take(&self) -> Option<ReclaimableBody<B>> {
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

impl<B> Drop for Reclaim<B> {
    fn drop(&mut self) {
        // No retry can come any more: stop keeping copies of the body.
        if let Ok(mut shared) = self.shared.lock() {
            shared.read = None;
        }
    }
}

/// Wraps `body` so that it can be sent again ([`Reclaim::take`]).
pub fn reclaimable<B>(body: B) -> (ReclaimableBody<B>, Reclaim<B>) {
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

impl<B> Body for ReclaimableBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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
    /// The body sent to an upstream. Errors of the client's side are wrapped in
    /// [`ClientBodyError`] and noted in the request's [`FaultCell`].
    pub struct ReqBody {
        #[pin]
        inner: ReqSource,
        fault: Option<Arc<FaultCell>>,
    }
}

pin_project! {
    /// Where a [`ReqBody`]'s frames come from.
    #[project = ReqSourceProj]
    pub enum ReqSource {
        /// The client's body, streamed (frames at most `idle_timeout` apart).
        Streamed { #[pin] body: IdleBody<RequestBody> },
        /// The client's body, replayable for one retry (see [`ReclaimableBody`]).
        Reclaimable { #[pin] body: IdleBody<ReclaimableBody> },
        /// A buffered body (retries of small idempotent requests).
        Buffered { #[pin] body: Full<Bytes> },
    }
}

impl ReqBody {
    /// A body from `inner`; client-side failures are noted in `fault` (none is needed for
    /// a buffered body or one that is already over).
    pub fn new(inner: ReqSource, fault: Option<Arc<FaultCell>>) -> ReqBody {
        ReqBody { inner, fault }
    }

    /// A buffered body.
    pub fn buffered(bytes: Bytes) -> ReqBody {
        ReqBody::new(
            ReqSource::Buffered {
                body: Full::new(bytes),
            },
            None,
        )
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.inner.project() {
            ReqSourceProj::Streamed { body } => body.poll_frame(cx),
            ReqSourceProj::Reclaimable { body } => body.poll_frame(cx),
            ReqSourceProj::Buffered { body } => body.poll_frame(cx).map_err(|never| match never {}),
        };
        let cell = this.fault.as_deref();
        match polled {
            Poll::Ready(Some(Err(e))) => {
                let error = ClientBodyError::classify(e);
                if let Some(cell) = cell {
                    cell.set(error.fault());
                }
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Pending => {
                if let Some(cell) = cell {
                    cell.progress(WAITING_ON_CLIENT);
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                if let Some(cell) = cell {
                    cell.progress(FINISHED);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(cell) = cell {
                    cell.progress(READING);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ReqSource::Streamed { body } => body.is_end_stream(),
            ReqSource::Reclaimable { body } => body.is_end_stream(),
            ReqSource::Buffered { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ReqSource::Streamed { body } => body.size_hint(),
            ReqSource::Reclaimable { body } => body.size_hint(),
            ReqSource::Buffered { body } => body.size_hint(),
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

/// An upstream's response body: from hyper's client, or from Rampart's own HTTP/1.1 client.
#[derive(Debug)]
pub enum UpstreamBody {
    /// hyper-util's pooled client (TLS, HTTP/2, requests with a body, upgrades).
    Hyper(Incoming),
    /// Rampart's HTTP/1.1 client ([`crate::h1::client`]).
    H1(crate::h1::client::H1ResponseBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            UpstreamBody::H1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::H1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::H1(body) => body.size_hint(),
        }
    }
}

/// How a response ended, for the record of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The body ended normally.
    Complete,
    /// The upstream body failed (reset, idle timeout).
    BodyError,
    /// The client went away before the end: not the upstream's fault.
    ClientGone,
}

/// What a response body reports as it ends: the trailers it carried, and how it ended.
/// The request's record ([`Completion`]) implements it; the body knows nothing else of it.
pub trait BodyEnd {
    /// Notes trailers seen at the end of the body.
    fn trailers(&mut self, trailers: &http::HeaderMap);
    /// Records the end; called once.
    fn finish(&mut self, end: End);
}

pin_project! {
    /// The body sent to the client.
    #[project = RespBodyProj]
    pub enum RespBody<E = Completion> {
        /// The upstream's body; the guard frees the upstream's in-flight slot when it ends,
        /// and the completion records the outcome then (or when the client goes away).
        Upstream {
            #[pin] body: IdleBody<UpstreamBody>,
            guard: Option<InflightGuard>,
            completion: Option<E>,
        },
        /// A body Rampart wrote itself.
        Own { #[pin] body: Full<Bytes> },
    }
}

impl<E> RespBody<E> {
    /// A body of Rampart's own.
    pub fn own(text: &'static str) -> RespBody<E> {
        RespBody::Own {
            body: Full::new(Bytes::from_static(text.as_bytes())),
        }
    }

    /// An empty body.
    pub fn empty() -> RespBody<E> {
        RespBody::Own {
            body: Full::new(Bytes::new()),
        }
    }
}

impl<E: BodyEnd> Body for RespBody<E> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body of scripted frames: `None` entries are a `Pending` (the client owes data).
    struct Scripted(VecDeque<Option<Result<Frame<Bytes>, BoxError>>>);

    impl Scripted {
        fn data(chunks: &[&'static [u8]]) -> Scripted {
            Scripted(
                chunks
                    .iter()
                    .map(|c| Some(Ok(Frame::data(Bytes::from_static(c)))))
                    .collect(),
            )
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop_front() {
                None => Poll::Ready(None),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(frame)) => Poll::Ready(Some(frame)),
            }
        }
    }

    async fn read_all<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    #[tokio::test]
    async fn a_reclaimed_body_replays_what_the_failed_attempt_read_then_the_rest() {
        let (mut first, reclaim) = reclaimable(Scripted::data(&[b"ab", b"cd", b"ef"]));
        // The first attempt read two frames before it failed.
        let a = first.frame().await.unwrap().unwrap().into_data().unwrap();
        let b = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!((&a[..], &b[..]), (&b"ab"[..], &b"cd"[..]));
        let mut retry = reclaim.take().expect("little was read: replayable");
        assert_eq!(read_all(&mut retry).await, b"abcdef");
        // The first attempt's body is over once taken.
        assert!(first.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_read_past_the_retry_limit_cannot_be_reclaimed() {
        static BIG: [u8; 40 * 1024] = [7; 40 * 1024];
        let (mut first, reclaim) = reclaimable(Scripted::data(&[&BIG, &BIG, b"tail"]));
        first.frame().await.unwrap().unwrap();
        first.frame().await.unwrap().unwrap();
        assert!(
            reclaim.take().is_none(),
            "80 KiB read is over MAX_RETRY_BODY"
        );
    }

    #[tokio::test]
    async fn dropping_the_reclaim_stops_keeping_copies() {
        let (mut first, reclaim) = reclaimable(Scripted::data(&[b"ab", b"cd"]));
        drop(reclaim);
        assert_eq!(read_all(&mut first).await, b"abcd");
        assert!(first.shared.lock().unwrap().read.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_body_fails_after_its_timeout_with_an_error_classified_as_a_stall() {
        let never = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let mut body = IdleBody::new(never, Duration::from_millis(100));
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(
            ClientBodyError::classify(error).fault(),
            ClientFault::Stalled
        );
    }

    #[test]
    fn client_body_errors_are_told_apart_by_kind() {
        let framing: BoxError = Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "Invalid chunk size line",
        ));
        assert_eq!(
            ClientBodyError::classify(framing).fault(),
            ClientFault::BadFraming
        );
        let eof: BoxError = Box::new(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "end of file before message length reached",
        ));
        assert_eq!(ClientBodyError::classify(eof).fault(), ClientFault::Gone);
        let idle: BoxError = Box::new(IdleTimeout(Duration::from_secs(1)));
        assert_eq!(
            ClientBodyError::classify(idle).fault(),
            ClientFault::Stalled
        );
    }

    #[test]
    fn the_first_fault_noted_is_kept_and_progress_tells_a_stall_from_backpressure() {
        let cell = FaultCell::default();
        assert_eq!(cell.get(), None);
        cell.set(ClientFault::Gone);
        cell.set(ClientFault::BadFraming);
        assert_eq!(cell.get(), Some(ClientFault::Gone));
        assert!(!cell.waiting_on_client());
        cell.progress(WAITING_ON_CLIENT);
        assert!(cell.waiting_on_client());
        cell.progress(FINISHED);
        assert!(!cell.waiting_on_client());
    }

    /// Records how a response body ended.
    #[derive(Default)]
    struct Ends(Vec<End>, bool);

    impl BodyEnd for Ends {
        fn trailers(&mut self, _trailers: &http::HeaderMap) {
            self.1 = true;
        }
        fn finish(&mut self, end: End) {
            self.0.push(end);
        }
    }

    #[test]
    fn own_bodies_need_no_record() {
        let body: RespBody<Ends> = RespBody::own("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        let empty: RespBody<Ends> = RespBody::empty();
        assert!(empty.is_end_stream());
    }
}
