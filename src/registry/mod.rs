//! The HTTP front end: OCI Distribution API routes over [`crate::catalog::Images`].
//!
//! Read-only: GET and HEAD are served; every other method gets 405
//! `UNSUPPORTED`. [`handle`] is the whole API as one function; [`serve`]
//! puts it on a socket.
mod body;
mod error;
mod pagination;
mod query;
mod range;
mod router;
mod routes;
mod server;

pub use body::ResponseBody;
pub use router::handle;
pub use server::{DRAIN_TIMEOUT, serve};

#[cfg(test)]
mod tests;
