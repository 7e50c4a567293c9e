//! What one client connection's task needs to know to enforce its deadlines
//! (docs/proxying.md#hostile-clients): whether a first request arrived, how many responses
//! are in flight, since when it has been idle, and which HTTP/2 response bodies wait on a
//! client that does not open its flow-control window.
//!
//! The service of the connection updates a [`ConnWatch`]; the task that drives the
//! connection (in [`crate::server`]) reads it when its timer fires. Every response leaves
//! the service as a [`ClientBody`], which keeps the in-flight count and, on HTTP/2, notes
//! when hyper stops asking it for data: hyper's HTTP/2 server does not poll a body while the
//! stream's send window is zero, so a client that never opens it would otherwise hold the
//! response, and the upstream slot in it, forever.

use crate::body::RespBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// `waiting_since` of a body that is not waiting on the client.
const NOT_WAITING: u64 = u64::MAX;

/// The shared state of one client connection (one allocation per connection).
#[derive(Debug)]
pub struct ConnWatch {
    /// When the connection was accepted; the other times are milliseconds after it.
    started: Instant,
    /// Request heads the service has been given.
    requests: AtomicU64,
    /// Wakes the connection task when the first request head arrives.
    first: Notify,
    /// Responses in flight (service called, body not yet dropped).
    open: AtomicUsize,
    /// When `open` last dropped to 0.
    idle_since_ms: AtomicU64,
    /// Wakes the connection task when an HTTP/2 connection's last response ends.
    idle: Notify,
    /// Whether the connection speaks HTTP/2 (known from its first request).
    h2: AtomicBool,
    /// HTTP/2 response bodies in flight, for the send-timeout check.
    streams: Mutex<Vec<Arc<StreamState>>>,
}

/// One HTTP/2 response body as the send-timeout check sees it.
#[derive(Debug)]
struct StreamState {
    /// Milliseconds after the connection's start when the body last handed hyper data that
    /// hyper has not come back for; [`NOT_WAITING`] otherwise.
    waiting_since_ms: AtomicU64,
    /// The body was dropped.
    done: AtomicBool,
}

impl ConnWatch {
    /// The watch of a connection accepted at `started`.
    pub fn new(started: Instant) -> ConnWatch {
        ConnWatch {
            started,
            requests: AtomicU64::new(0),
            first: Notify::new(),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            idle: Notify::new(),
            h2: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        }
    }

    /// When the connection was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// Request heads seen so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Resolves once the first request head has arrived (at once if it has).
    pub async fn first_request(&self) {
        let notified = self.first.notified();
        if self.requests() > 0 {
            return;
        }
        notified.await;
    }

    /// Resolves when the last response of an HTTP/2 connection ends (or has ended since
    /// the previous call).
    pub async fn became_idle(&self) {
        self.idle.notified().await;
    }

    /// Whether the connection speaks HTTP/2.
    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Acquire)
    }

    /// Responses in flight.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Since when no response has been in flight (meaningful while [`ConnWatch::open`] is 0).
    pub fn idle_since(&self) -> Instant {
        self.at(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// Since when the longest-waiting HTTP/2 response body has been waiting for the client
    /// to accept data, if any is; forgets bodies that ended.
    pub fn oldest_waiting(&self) -> Option<Instant> {
        let mut streams = self.streams.lock().ok()?;
        streams.retain(|s| !s.done.load(Ordering::Acquire));
        streams
            .iter()
            .map(|s| s.waiting_since_ms.load(Ordering::Acquire))
            .filter(|&ms| ms != NOT_WAITING)
            .min()
            .map(|ms| self.at(ms))
    }

    /// Notes a request head handed to the service; returns the guard its response keeps.
    pub fn request(self: &Arc<Self>, h2: bool) -> InFlight {
        if self.requests.fetch_add(1, Ordering::AcqRel) == 0 {
            if h2 {
                self.h2.store(true, Ordering::Release);
            }
            self.first.notify_one();
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        let stream = h2.then(|| {
            let state = Arc::new(StreamState {
                waiting_since_ms: AtomicU64::new(NOT_WAITING),
                done: AtomicBool::new(false),
            });
            if let Ok(mut streams) = self.streams.lock() {
                streams.push(Arc::clone(&state));
            }
            state
        });
        InFlight {
            watch: Arc::clone(self),
            stream,
        }
    }
}

/// One response in flight on a connection: counted while it lives.
#[derive(Debug)]
pub struct InFlight {
    watch: Arc<ConnWatch>,
    stream: Option<Arc<StreamState>>,
}

impl InFlight {
    fn polled(&self) {
        if let Some(s) = &self.stream {
            s.waiting_since_ms.store(NOT_WAITING, Ordering::Release);
        }
    }

    fn handed_data(&self) {
        if let Some(s) = &self.stream {
            s.waiting_since_ms
                .store(self.watch.now_ms(), Ordering::Release);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(s) = &self.stream {
            s.done.store(true, Ordering::Release);
        }
        let now = self.watch.now_ms();
        if self.watch.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.watch.idle_since_ms.store(now, Ordering::Release);
            if self.stream.is_some() {
                self.watch.idle.notify_one();
            }
        }
    }
}

pin_project! {
    /// The body of every response the data plane sends: the handler's body, plus the
    /// connection's in-flight count and, on HTTP/2, the send-timeout bookkeeping.
    pub struct ClientBody {
        #[pin]
        inner: RespBody,
        in_flight: InFlight,
    }
}

impl ClientBody {
    /// Wraps the handler's `inner` body; `in_flight` is released when the body is dropped.
    pub fn new(inner: RespBody, in_flight: InFlight) -> ClientBody {
        ClientBody { inner, in_flight }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        this.in_flight.polled();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if frame.is_data() {
                // hyper comes back for more only once the client's window has room.
                this.in_flight.handed_data();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_count_idle_time_and_waiting_streams_follow_the_bodies() {
        let watch = Arc::new(ConnWatch::new(Instant::now()));
        assert_eq!(
            (watch.requests(), watch.open(), watch.is_h2()),
            (0, 0, false)
        );
        let first = watch.request(true);
        let second = watch.request(true);
        assert_eq!(
            (watch.requests(), watch.open(), watch.is_h2()),
            (2, 2, true)
        );
        assert_eq!(watch.oldest_waiting(), None);

        first.handed_data();
        let since = watch.oldest_waiting();
        assert!(since.is_some());
        second.handed_data();
        assert!(
            watch.oldest_waiting() <= since,
            "the oldest wait is reported"
        );
        first.polled();
        second.polled();
        assert_eq!(watch.oldest_waiting(), None);
        second.handed_data();

        drop(first);
        assert_eq!(watch.open(), 1);
        drop(second);
        assert_eq!(watch.open(), 0);
        assert_eq!(watch.oldest_waiting(), None, "ended bodies are forgotten");
        assert!(watch.idle_since() >= watch.started());
        tokio::time::timeout(Duration::from_secs(5), watch.became_idle())
            .await
            .unwrap_or_else(|_| panic!("the last stream's end did not wake the connection"));
    }

    #[test]
    fn http1_responses_are_counted_but_not_watched() {
        let watch = Arc::new(ConnWatch::new(Instant::now()));
        let in_flight = watch.request(false);
        in_flight.handed_data();
        assert_eq!((watch.open(), watch.is_h2()), (1, false));
        assert_eq!(watch.oldest_waiting(), None);
        drop(in_flight);
        assert_eq!(watch.open(), 0);
    }

    #[tokio::test]
    async fn first_request_resolves_once_a_head_arrived() {
        let watch = Arc::new(ConnWatch::new(Instant::now()));
        let waiter = {
            let watch = Arc::clone(&watch);
            tokio::spawn(async move { watch.first_request().await })
        };
        tokio::task::yield_now().await;
        let _in_flight = watch.request(false);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("first_request did not resolve"));
        // And at once afterwards.
        tokio::time::timeout(Duration::from_secs(5), watch.first_request())
            .await
            .unwrap_or_else(|_| panic!("first_request did not resolve"));
    }
}
