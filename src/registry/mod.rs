//! The HTTP front end: OCI Distribution API routes over [`crate::catalog::Images`].
use std::future::Future;
use std::sync::Arc;

use crate::catalog::Images;

/// Placeholder until the front end lands.
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _images: Arc<dyn Images>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    shutdown.await;
    Ok(())
}
