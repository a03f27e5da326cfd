//! The router: one plain async function from request to response, so the
//! server and the tests drive exactly the same code.
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Body;

use super::auth::{Identity, Rejected};
use super::body::{self, ResponseBody};
use super::error::{ErrorCode, RegistryError, clip};
use super::frontend::{CatalogAccess, Frontend};
use super::ready::Readiness;
use super::routes::{self, Route};
use crate::catalog::Images;

/// Answers one request as a default [`Frontend`] would (every endpoint,
/// anonymous access). `ready` answers `/readyz`.
pub async fn handle(
    images: &dyn Images,
    ready: &Readiness,
    req: Request<impl Body>,
) -> Response<ResponseBody> {
    handle_with(images, ready, &Frontend::default(), req).await
}

/// Answers one request on a listener set up as `front`. Never fails: every
/// problem becomes an OCI error response. The request body is never read
/// (no endpoint takes one).
pub async fn handle_with(
    images: &dyn Images,
    ready: &Readiness,
    front: &Frontend,
    req: Request<impl Body>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let (parts, _body) = req.into_parts();
    let mut resp = match route(images, ready, front, &parts).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    crate::metrics::METRICS.request(route_kind(parts.uri.path()), resp.status().as_u16());
    if parts.method == Method::HEAD {
        // Keep the headers (Content-Length included), drop any body.
        *resp.body_mut() = body::empty();
    }
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    tracing::debug!(
        method = %parts.method,
        path = %clip(parts.uri.path()),
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

/// The label a request is counted under.
fn route_kind(path: &str) -> &'static str {
    if path == "/metrics" || path == "/healthz" || path == "/readyz" {
        return "metrics";
    }
    match Route::parse(path) {
        Route::Base => "base",
        Route::Catalog => "catalog",
        Route::Manifest { .. } => "manifest",
        Route::Blob { .. } => "blob",
        Route::Tags { .. } => "tags",
        Route::Referrers { .. } => "referrers",
        _ => "other",
    }
}

/// Counts a request refused by auth (index into `AUTH_REASONS`).
fn reject(reason: usize) {
    if let Some(c) = crate::metrics::METRICS.auth_rejected.get(reason) {
        crate::metrics::inc(c);
    }
}

async fn route(
    images: &dyn Images,
    ready: &Readiness,
    front: &Frontend,
    req: &http::request::Parts,
) -> Result<Response<ResponseBody>, RegistryError> {
    // Read-only: no method but GET and HEAD does anything anywhere, so it
    // is refused before the path is even looked at.
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(RegistryError::unsupported(&req.method));
    }
    let path = req.uri.path();
    if !front.endpoints.serves(path) {
        return Err(RegistryError::not_found(path));
    }
    // Operations endpoints, outside the registry API.
    match path {
        "/metrics" => {
            let text = crate::metrics::METRICS.render(images.disk_cache_bytes());
            return Ok(routes::text("text/plain; version=0.0.4", text));
        }
        "/healthz" => return Ok(routes::text("text/plain", "ok\n".to_string())),
        "/readyz" => return Ok(routes::readyz(ready).await),
        _ => {}
    }
    let route = Route::parse(path);
    // Who is asking, before anything else is looked at: wrong credentials
    // are 401 whatever the request.
    let who = match &front.auth {
        None => Identity::Anonymous,
        Some(auth) => auth.identify(&req.headers).await.map_err(|e| {
            reject(0);
            match e {
                Rejected::Malformed => RegistryError::unauthorized(e.to_string()),
                Rejected::Wrong => RegistryError::unauthorized("authentication failed"),
            }
        })?,
    };
    let may_pull = |repo: &str| front.auth.as_ref().is_none_or(|a| a.may_pull(&who, repo));
    // Validate the name before anything reaches the catalog.
    let name = route.name().map(routes::repo_name).transpose()?;
    if let (Some(name), Some(auth)) = (&name, &front.auth)
        && !may_pull(name.as_str())
    {
        // Anonymous: a login might help, and the answer is the same for
        // every repository, so it tells nothing. A user: hidden.
        if who == Identity::Anonymous && auth.has_users() {
            reject(1);
            return Err(RegistryError::unauthorized("authentication required"));
        }
        reject(2);
        return Err(crate::catalog::CatalogError::NameUnknown(name.clone()).into());
    }
    match (route, name) {
        (Route::Base, _) => match &front.auth {
            // Clients (containers/image, docker) send credentials only
            // after a challenge here, so anonymous callers get one whenever
            // there are users; without credentials they go on anonymously.
            Some(auth) if who == Identity::Anonymous && auth.has_users() => {
                reject(1);
                Err(RegistryError::unauthorized("authentication required"))
            }
            _ => Ok(routes::base::get()),
        },
        (Route::Catalog, _) => match front.catalog {
            CatalogAccess::Disabled => Err(RegistryError::not_found(path)),
            CatalogAccess::Authenticated if who == Identity::Anonymous => {
                reject(1);
                Err(RegistryError::unauthorized(
                    "authentication required to list repositories",
                ))
            }
            _ => Ok(routes::catalog::get(images, req, may_pull).await),
        },
        (Route::Manifest { reference, .. }, Some(name)) => {
            routes::manifests::get(images, &name, reference, req)
                .await
                .map_err(|e| e.for_image(name.as_str(), Some(reference)))
        }
        (Route::Blob { digest, .. }, Some(name)) => routes::blobs::get(images, &name, digest, req)
            .await
            .map_err(|e| e.for_image(name.as_str(), Some(digest))),
        (Route::Tags { .. }, Some(name)) => routes::tags::get(images, &name, req)
            .await
            .map_err(|e| e.for_image(name.as_str(), None)),
        (Route::Referrers { digest, .. }, Some(name)) => {
            routes::referrers::get(images, &name, digest, req)
                .await
                .map_err(|e| e.for_image(name.as_str(), Some(digest)))
        }
        (Route::Upload { .. }, Some(_)) => Err(RegistryError::new(
            ErrorCode::BlobUploadUnknown,
            "this registry is read-only and has no uploads",
        )),
        _ => Err(RegistryError::not_found(path)),
    }
}
