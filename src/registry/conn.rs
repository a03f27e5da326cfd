//! One connection's clock: whether it is idle (no request in flight) and
//! whether its peer still takes the bytes it is sent.
//!
//! The watchdog in [`super::server`] wakes at most once per timeout per
//! connection and asks [`ConnState::verdict`]; recording is a few relaxed
//! atomics per request and per body frame, with no lock and no allocation
//! beyond the connection's one `Arc`.
//!
//! Why not time out at the socket: a response that waits for a slow source
//! makes no IO progress through no fault of the client, and an HTTP/2 peer
//! with a zero flow-control window stalls a response without a single
//! pending socket write. What tells a stalled reader apart is whether the
//! server holds a frame (or a response head) its peer has not taken.
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::body::ResponseBody;
use super::log::Access;

/// Milliseconds since the process's first call: a cheap, monotonic clock
/// that fits an atomic.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The tokio instant of `ms` on the [`now_ms`] clock.
pub fn instant_at(ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_millis(ms))
}

/// What the watchdog should do with a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fine; look again at this time (ms on the [`now_ms`] clock).
    CheckAt(u64),
    /// No request in flight for the idle timeout.
    Idle,
    /// A response waited for the peer to take its bytes for the write
    /// timeout.
    Stalled,
}

/// Per-connection counters shared by the watchdog, the service and the
/// response bodies.
#[derive(Debug)]
pub struct ConnState {
    /// Requests whose response (body included) is not finished.
    in_flight: AtomicU32,
    /// When the last request finished (or the connection was accepted).
    idle_since: AtomicU64,
    /// Responses holding a head or frame the peer has not taken yet.
    waiting: AtomicU32,
    /// When the peer last took something, or when `waiting` left zero.
    progress_at: AtomicU64,
}

impl ConnState {
    pub fn new() -> Arc<ConnState> {
        let now = now_ms();
        Arc::new(ConnState {
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            waiting: AtomicU32::new(0),
            progress_at: AtomicU64::new(now),
        })
    }

    /// How long the connection has had no request in flight; zero while
    /// one is.
    pub fn idle_for(&self, now: u64) -> u64 {
        if self.in_flight.load(Relaxed) > 0 {
            return 0;
        }
        now.saturating_sub(self.idle_since.load(Relaxed))
    }

    /// The watchdog's decision at `now`. A stall is seen between one and
    /// two write timeouts after it starts (the watchdog does not wake for
    /// every frame).
    pub fn verdict(&self, now: u64, idle_timeout: u64, write_timeout: u64) -> Verdict {
        if self.in_flight.load(Relaxed) == 0 {
            let since = self.idle_since.load(Relaxed);
            if now.saturating_sub(since) >= idle_timeout {
                return Verdict::Idle;
            }
            // A request may start and stall before the idle deadline.
            return Verdict::CheckAt((since + idle_timeout).min(now + write_timeout));
        }
        if self.waiting.load(Relaxed) > 0 {
            let since = self.progress_at.load(Relaxed);
            if now.saturating_sub(since) >= write_timeout {
                return Verdict::Stalled;
            }
            return Verdict::CheckAt(since + write_timeout);
        }
        Verdict::CheckAt(now + write_timeout)
    }

    fn hold(&self) {
        if self.waiting.fetch_add(1, Relaxed) == 0 {
            self.progress_at.store(now_ms(), Relaxed);
        }
    }

    fn taken(&self) {
        self.waiting.fetch_sub(1, Relaxed);
        self.progress_at.store(now_ms(), Relaxed);
    }
}

/// One request in flight on a connection, from the moment the service is
/// called until its response body is finished or dropped.
#[derive(Debug)]
pub struct InFlight {
    conn: Arc<ConnState>,
    /// The response holds something the peer has not taken.
    holding: bool,
}

impl InFlight {
    pub fn start(conn: &Arc<ConnState>) -> InFlight {
        conn.in_flight.fetch_add(1, Relaxed);
        InFlight {
            conn: Arc::clone(conn),
            holding: false,
        }
    }

    fn hold(&mut self) {
        if !self.holding {
            self.holding = true;
            self.conn.hold();
        }
    }

    fn release(&mut self) {
        if self.holding {
            self.holding = false;
            self.conn.taken();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.release();
        if self.conn.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.conn.idle_since.store(now_ms(), Relaxed);
        }
    }
}

/// A response body that tells its connection when the peer takes its
/// frames. The head counts as held until the body is first polled: an
/// HTTP/2 peer that never opens its window never gets the body polled.
///
/// With an [`Access`] it also logs the request line when it is dropped
/// (finished, or cut with its connection), with the body bytes taken.
pub struct Tracked {
    inner: ResponseBody,
    flight: InFlight,
    log: Option<Logged>,
}

struct Logged {
    access: Access,
    bytes: u64,
    complete: bool,
}

impl Tracked {
    pub fn new(inner: ResponseBody, mut flight: InFlight) -> Tracked {
        if !inner.is_end_stream() {
            flight.hold();
        }
        Tracked {
            inner,
            flight,
            log: None,
        }
    }

    /// Logs `access` once the body is done with.
    pub fn logged(mut self, access: Access) -> Tracked {
        self.log = Some(Logged {
            access,
            bytes: 0,
            complete: self.inner.is_end_stream(),
        });
        self
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(l) = &self.log {
            l.access.finish(l.bytes, l.complete);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Being polled again means the last frame was taken.
        self.flight.release();
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.flight.hold();
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                let end = self.inner.is_end_stream();
                if let Some(l) = &mut self.log {
                    l.bytes += n;
                    l.complete = end;
                }
            }
            Poll::Ready(None) => {
                if let Some(l) = &mut self.log {
                    l.complete = true;
                }
            }
            _ => {}
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
    use http_body_util::BodyExt;

    #[test]
    fn idle_only_without_requests() {
        let c = ConnState::new();
        let t0 = c.idle_since.load(Relaxed);
        assert_eq!(c.verdict(t0 + 10, 100, 50), Verdict::CheckAt(t0 + 60));
        assert_eq!(c.verdict(t0 + 90, 100, 50), Verdict::CheckAt(t0 + 100));
        assert_eq!(c.verdict(t0 + 100, 100, 50), Verdict::Idle);
        let f = InFlight::start(&c);
        // A request in flight that holds nothing: never idle, never stalled.
        assert_eq!(c.verdict(t0 + 1000, 100, 50), Verdict::CheckAt(t0 + 1050));
        drop(f);
        assert_eq!(c.in_flight.load(Relaxed), 0);
        assert!(c.idle_since.load(Relaxed) >= t0);
    }

    #[tokio::test]
    async fn a_held_head_or_frame_stalls_until_taken() {
        let c = ConnState::new();
        let body = Tracked::new(super::super::body::full("abc"), InFlight::start(&c));
        assert_eq!(c.waiting.load(Relaxed), 1, "the head waits for the peer");
        let since = c.progress_at.load(Relaxed);
        assert_eq!(c.verdict(since + 49, 100, 50), Verdict::CheckAt(since + 50));
        assert_eq!(c.verdict(since + 50, 100, 50), Verdict::Stalled);
        // Reading the body takes every frame; the end drops the hold.
        let got = body.collect().await.expect("body").to_bytes();
        assert_eq!(got, Bytes::from_static(b"abc"));
        assert_eq!(c.waiting.load(Relaxed), 0);
        assert_eq!(c.in_flight.load(Relaxed), 0);
        // An empty body holds nothing.
        let empty = Tracked::new(super::super::body::empty(), InFlight::start(&c));
        assert_eq!(c.waiting.load(Relaxed), 0);
        drop(empty);
    }
}
