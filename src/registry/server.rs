//! The socket side: accepts connections and serves each with hyper,
//! HTTP/1.1 (keep-alive) or HTTP/2 over cleartext, whichever the client
//! speaks, within [`Limits`] that one client cannot exhaust.
//!
//! The accept loop yields a plain stream; [`serve_io`] serves any
//! `AsyncRead + AsyncWrite` connection: the TCP stream, or the TLS stream
//! over it when the [`Frontend`] has TLS (HTTP/2 then by ALPN).
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::conn::{ConnState, InFlight, Tracked, Verdict, instant_at, now_ms};
use super::frontend::Frontend;
use super::ready::Readiness;
use crate::catalog::Images;
use crate::metrics::{METRICS, inc};
use crate::reload::Swap;

/// How long in-flight requests may run after shutdown begins, by default.
/// Long enough for a manifest or a resumed layer over a decent link; short
/// enough that a stuck client cannot hold a restart hostage.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection with no request in flight for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A response whose peer takes none of its bytes for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Under pressure (at the connection cap, or out of file descriptors),
/// connections idle at least this long are closed to make room.
pub(super) const SHED_IDLE_AFTER_MS: u64 = 1000;

/// After an accept error for want of resources, accepting pauses this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one log line per this period for repeated accept trouble.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// What one client may hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A connection with no request in flight (nothing sent yet, or
    /// between requests) for this long is closed. HTTP/1 and HTTP/2.
    pub idle_timeout: Duration,
    /// A response whose peer takes nothing for this long is dropped with
    /// its connection (a cache fill it followed goes on for the others).
    pub write_timeout: Duration,
    /// Connections served at once; beyond it new ones wait in the listen
    /// backlog, and idle ones are closed to make room.
    pub max_connections: usize,
    /// How long in-flight requests may finish after shutdown begins.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_connections: default_max_connections(),
            drain_timeout: DRAIN_TIMEOUT,
        }
    }
}

/// Half the file descriptors the process may open (the rest is for cache
/// files and sources), between 64 and 65536.
pub fn default_max_connections() -> usize {
    let nofile = crate::rlimit::nofile_soft().unwrap_or(1024);
    (nofile.saturating_sub(64) / 2).clamp(64, 65536) as usize
}

/// What every connection task shares.
pub(super) struct Shared {
    pub(super) images: Arc<dyn Images>,
    pub(super) ready: Arc<Readiness>,
    /// Replaced on config reload (auth policy, `_catalog` access).
    pub(super) front: Arc<Swap<Frontend>>,
    builder: auto::Builder<TokioExecutor>,
    pub(super) limits: Limits,
    /// Wakes connections to close themselves if idle (see
    /// [`SHED_IDLE_AFTER_MS`]).
    pub(super) pressure: Notify,
}

/// Serves the registry on `listener` with the default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    images: Arc<dyn Images>,
    ready: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let front = Arc::new(Frontend::default());
    serve_with(listener, images, ready, front, Limits::default(), shutdown).await
}

/// Serves the registry on `listener` until `shutdown` resolves; then marks
/// `ready` as stopping (so `/readyz` fails on kept-alive connections), stops
/// accepting and lets in-flight requests finish (bounded by
/// `limits.drain_timeout`, after which the remaining connections are
/// dropped).
///
/// Accept errors do not end the server. Out of file descriptors
/// (EMFILE/ENFILE) pauses accepting briefly and closes idle connections;
/// the trouble is logged once per [`LOG_EVERY`], not per attempt.
pub async fn serve_with(
    listener: TcpListener,
    images: Arc<dyn Images>,
    ready: Arc<Readiness>,
    front: Arc<Frontend>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let front = Arc::new(Swap::new(front));
    serve_reloadable(listener, images, ready, front, limits, shutdown).await
}

/// [`serve_with`], with a [`Frontend`] that may be replaced while serving
/// (on config reload); each request uses the one current when it starts.
/// TLS is taken from the frontend per connection.
pub async fn serve_reloadable(
    listener: TcpListener,
    images: Arc<dyn Images>,
    ready: Arc<Readiness>,
    front: Arc<Swap<Frontend>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A half-sent request has nothing in flight: the watchdog closes it
    // as idle. hyper's header read timeout stays as a backstop.
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.idle_timeout * 2);
    // Pings find dead HTTP/2 peers; the watchdog closes live idle ones.
    let ping = (limits.idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(20));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(ping)
        .keep_alive_timeout(ping);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let shared = Arc::new(Shared {
        images,
        ready,
        front,
        builder,
        limits,
        pressure: Notify::new(),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut trouble = Trouble::default();
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, new connections wait in the backlog.
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.pressure.notify_waiters();
                trouble.note("at --max-connections; closing idle connections, new ones wait");
                tokio::select! {
                    () = &mut shutdown => break,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                    // Look again (and shed again) every second.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) if is_out_of_resources(&e) => {
                    inc(&METRICS.accept_errors);
                    shared.pressure.notify_waiters();
                    trouble.note_error(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Err(e) => {
                    // Aborted before accept and the like: the next one is fine.
                    inc(&METRICS.accept_errors);
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let stop = stop_rx.clone();
        connections.spawn(async move {
            // Open (and holding its slot) from accept to close.
            let open = OpenConnection::new(permit);
            // TLS connections stay with hyper: only plain TCP may take the
            // sendfile front (zerocopy.rs); HTTP/2 with prior knowledge goes
            // to hyper too.
            let tls = shared.front.load().tls.clone();
            if tls.is_some() {
                let Some(stream) = super::tls::wrap(tls.as_ref(), stream).await else {
                    return;
                };
                serve_io(TokioIo::new(stream), peer, shared, stop, open).await;
                return;
            }
            let mut stop = stop;
            match super::zerocopy::opening(&stream, peer, &shared, &mut stop).await {
                // Idle, shed or shutting down before its first byte.
                None => {}
                Some(true) => serve_io(TokioIo::new(stream), peer, shared, stop, open).await,
                Some(false) => {
                    super::zerocopy::serve_connection(stream, peer, shared, stop).await;
                    drop(open);
                }
            }
        });
    }
    shared.ready.set_stopping();
    drop(listener);
    tracing::info!(connections = connections.len(), "shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(shared.limits.drain_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "in-flight requests did not finish in time; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Rate-limits the log lines of repeated accept trouble.
#[derive(Default)]
struct Trouble {
    last: Option<Instant>,
    suppressed: u64,
}

impl Trouble {
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    fn note(&mut self, what: &str) {
        if let Some(again) = self.due() {
            tracing::warn!(repeated = again, "{what}");
        }
    }

    fn note_error(&mut self, e: &io::Error) {
        if let Some(again) = self.due() {
            tracing::warn!(
                error = %e,
                repeated = again,
                "cannot accept connections (out of file descriptors?); pausing and closing idle connections"
            );
        }
    }
}

/// Serves one connection until it ends, goes idle, stalls, or shutdown
/// drains it. `_open` holds its slot under `--max-connections`.
async fn serve_io<I>(
    io: I,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    _open: OpenConnection,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let state = ConnState::new();
    let service = {
        let state = Arc::clone(&state);
        let shared = Arc::clone(&shared);
        service_fn(move |req| {
            let flight = InFlight::start(&state);
            let shared = Arc::clone(&shared);
            async move {
                let (resp, access) = super::log::handle(&shared, req).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, flight).logged(access)))
            }
        })
    };
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle_ms = shared.limits.idle_timeout.as_millis() as u64;
    let write_ms = shared.limits.write_timeout.as_millis() as u64;
    let watchdog = tokio::time::sleep(shared.limits.idle_timeout.min(shared.limits.write_timeout));
    tokio::pin!(watchdog);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = &mut watchdog => match state.verdict(now_ms(), idle_ms, write_ms) {
                Verdict::CheckAt(t) => watchdog.as_mut().reset(instant_at(t)),
                Verdict::Idle => {
                    inc(&METRICS.connections_closed_idle);
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
                Verdict::Stalled => {
                    inc(&METRICS.connections_closed_write_timeout);
                    tracing::info!(%peer, "dropping a response its client stopped reading");
                    return;
                }
            },
            _ = shared.pressure.notified() => {
                if state.idle_for(now_ms()) >= SHED_IDLE_AFTER_MS {
                    inc(&METRICS.connections_shed);
                    return;
                }
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Counts an open connection and holds its slot until it closes.
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(permit: OwnedSemaphorePermit) -> OpenConnection {
        METRICS.connections_open.fetch_add(1, Relaxed);
        OpenConnection { _permit: permit }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.connections_open.fetch_sub(1, Relaxed);
    }
}
