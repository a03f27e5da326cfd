//! The socket side: accepts connections and serves each with hyper,
//! HTTP/1.1 (keep-alive) or HTTP/2 over cleartext, whichever the client
//! speaks.
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::ready::Readiness;
use super::router::handle;
use crate::catalog::Images;

/// How long in-flight requests may run after shutdown begins. Long enough
/// for a manifest or a resumed layer over a decent link; short enough
/// that a stuck client cannot hold a restart hostage.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the registry on `listener` until `shutdown` resolves; then marks
/// `ready` as stopping (so `/readyz` fails on kept-alive connections), stops
/// accepting and lets in-flight requests finish (bounded by
/// [`DRAIN_TIMEOUT`], after which the remaining connections are dropped).
///
/// Accept errors (out of file descriptors, a connection reset before
/// accept) do not end the server: they are logged and accepting resumes
/// after a short pause.
pub async fn serve(
    listener: TcpListener,
    images: Arc<dyn Images>,
    ready: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer enables hyper's header read timeout, so idle or slow-loris
    // connections do not pile up.
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let images = Arc::clone(&images);
        let ready = Arc::clone(&ready);
        let builder = Arc::clone(&builder);
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let images = Arc::clone(&images);
                let ready = Arc::clone(&ready);
                async move { Ok::<_, Infallible>(handle(&*images, &ready, req).await) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    ready.set_stopping();
    drop(listener);
    tracing::info!(connections = connections.len(), "shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
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
