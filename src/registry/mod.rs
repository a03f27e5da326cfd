//! The HTTP front end: OCI Distribution API routes over [`crate::catalog::Images`].
//!
//! Read-only: GET and HEAD are served; every other method gets 405
//! `UNSUPPORTED`. [`handle`] is the whole API as one function; [`serve`]
//! puts it on a socket. `/healthz` (liveness) and `/readyz` (readiness,
//! see [`Readiness`]) sit beside it for orchestrators.
//!
//! Choices the spec leaves open, made here:
//! - A reference outside the tag and digest grammars is 404
//!   `MANIFEST_UNKNOWN` (as distribution, whose routes do not match it);
//!   the spec reserves `MANIFEST_INVALID` for pushes.
//! - A malformed digest, or one not sha256, is 400 `DIGEST_INVALID`.
//! - A path the API does not have is 404 with the made-up code
//!   `NOT_FOUND` in the usual error body, so clients' decoders still work.
//! - GET on an upload path is 404 `BLOB_UPLOAD_UNKNOWN`; every method but
//!   GET and HEAD, anywhere, is 405 `UNSUPPORTED` with `Allow: GET, HEAD`.
//! - A malformed, multi-range or `If-Range`-stale `Range` is ignored (200,
//!   whole blob); an empty blob is always served whole.
//! - A non-numeric `n` is ignored; `n=0` is an empty page with no `Link`.
pub mod auth;
mod body;
mod conn;
mod error;
mod frontend;
mod log;
mod pagination;
mod query;
mod range;
mod ready;
mod router;
mod routes;
mod server;
pub mod tls;
mod zerocopy;

pub use body::ResponseBody;
pub use frontend::{ADMIN_PATHS, CatalogAccess, Endpoints, Frontend};
pub use ready::{NotReady, Readiness};
pub use router::{handle, handle_with};
pub use server::{
    DRAIN_TIMEOUT, IDLE_TIMEOUT, Limits, WRITE_TIMEOUT, default_max_connections, serve,
    serve_reloadable, serve_with,
};

#[cfg(test)]
mod tests;
