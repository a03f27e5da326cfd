//! The request log: one line per request (target
//! [`crate::logging::ACCESS`]) once its response is finished or cut, with
//! the request id, method, repository, reference, status, body bytes sent,
//! duration and the tier that served it; and a span per request, so every
//! line logged while handling it carries its `request_id`.
//!
//! The id is the client's `X-Request-Id` when it is sane (short, a
//! conservative charset: nothing that could forge a log field), else one
//! made here; either way it is echoed in the response's `X-Request-Id`.
//! Nothing else from the request's headers is logged, and the path pieces
//! are clipped like error messages (see [`super::error::clip`]).
//!
//! Both fronts use it: hyper's connections log when the response body is
//! dropped (see [`super::conn::Tracked`]); the sendfile front logs after
//! writing each response.
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Body;
use tracing::Instrument;

use super::body::ResponseBody;
use super::error::clip;
use super::frontend::ADMIN_PATHS;
use super::router::handle_with;
use super::routes::Route;
use super::server::Shared;
use crate::logging::ACCESS;
use crate::metrics::{Tier, tracking_tier};

/// The request id header, read and written.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client-chosen request id kept.
const MAX_ID: usize = 128;

/// What the request line says about a request, gathered while handling it.
#[derive(Debug)]
pub struct Access {
    id: HeaderValue,
    method: Method,
    uri: Uri,
    started: Instant,
    status: u16,
    pub tier: Tier,
}

/// Answers `req` on the listener `shared` serves, within a span carrying
/// its request id; the response carries `X-Request-Id`.
pub(super) async fn handle(
    shared: &Shared,
    req: Request<impl Body>,
) -> (Response<ResponseBody>, Access) {
    let started = Instant::now();
    let id = request_id(req.headers());
    let method = req.method().clone();
    let uri = req.uri().clone();
    let span = tracing::info_span!("request", request_id = id.to_str().unwrap_or_default());
    let front = shared.front.load();
    let (mut resp, tier) = tracking_tier(handle_with(&*shared.images, &shared.ready, &front, req))
        .instrument(span)
        .await;
    resp.headers_mut().insert(REQUEST_ID, id.clone());
    let status = resp.status().as_u16();
    (
        resp,
        Access {
            id,
            method,
            uri,
            started,
            status,
            tier,
        },
    )
}

impl Access {
    /// Logs the request line: `bytes` of body sent, `complete` when the
    /// whole response went out.
    pub fn finish(&self, bytes: u64, complete: bool) {
        let path = self.uri.path();
        // Probes and scrapes every few seconds would drown the pulls.
        let admin = ADMIN_PATHS.contains(&path);
        if admin && !tracing::enabled!(target: ACCESS, tracing::Level::DEBUG) {
            return;
        }
        if !admin && !tracing::enabled!(target: ACCESS, tracing::Level::INFO) {
            return;
        }
        let (repo, reference) = match Route::parse(path) {
            Route::Manifest { name, reference } => (Some(name), Some(reference)),
            Route::Blob { name, digest } | Route::Referrers { name, digest } => {
                (Some(name), Some(digest))
            }
            Route::Tags { name } | Route::Upload { name } => (Some(name), None),
            _ => (None, None),
        };
        let repository = repo.map(clip);
        let reference = reference.map(clip);
        let path = repo.is_none().then(|| clip(path));
        let us = self.started.elapsed().as_micros() as u64;
        let duration_ms = us as f64 / 1000.0;
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: ACCESS,
                    $level,
                    request_id = self.id.to_str().unwrap_or_default(),
                    method = self.method.as_str(),
                    repository = repository.as_deref(),
                    reference = reference.as_deref(),
                    path = path.as_deref(),
                    status = self.status,
                    bytes,
                    duration_ms,
                    tier = self.tier.label(),
                    complete,
                )
            };
        }
        if admin {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
    }
}

/// The client's `X-Request-Id` if it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID)
        && sane(v.as_bytes())
    {
        return v.clone();
    }
    new_id()
}

/// 1 to [`MAX_ID`] bytes of letters, digits and `-_.:/+=@` (UUIDs, hex,
/// base64, W3C trace ids and the like).
fn sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// 16 hex digits, unique within the process (a bijection of a counter)
/// and unlikely to repeat across processes (a random offset).
fn new_id() -> HeaderValue {
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = NEXT.fetch_add(1, Relaxed);
    let id = splitmix64(seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    // Sixteen lowercase hex digits, written without allocating.
    let mut buf = [0u8; 16];
    let _ = write!(buf.as_mut_slice(), "{id:016x}");
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A bijection on u64 that scatters consecutive inputs.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_and_anything_else_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            REQUEST_ID,
            HeaderValue::from_static("4bf92f35-77b3-4da6-a3ce-929d0e0e4736"),
        );
        assert_eq!(
            request_id(&h).to_str().ok(),
            Some("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
        );
        for bad in ["a b", "x\"y", "", "a=b c", &"x".repeat(MAX_ID + 1)] {
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).expect("header"));
            let id = request_id(&h);
            assert_ne!(id.as_bytes(), bad.as_bytes());
            assert_eq!(id.len(), 16);
        }
    }

    #[test]
    fn new_ids_differ() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 16 && sane(i.as_bytes())));
    }
}
