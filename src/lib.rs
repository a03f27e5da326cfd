//! cartorio: a read-only OCI registry that serves container images straight
//! out of tarballs.

// Nothing a request or an archive holds may panic the server: outside tests,
// no `unwrap()`, no indexing or slicing that can go out of bounds, and no
// `&s[a..b]` on a string, which also panics inside a multi-byte character
// (use `get`, `split_at_checked`, `split_once`, `strip_prefix`, iterators; a
// site that cannot fail says why in an `#[allow]`). Tests may unwrap and
// index freely.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::indexing_slicing, clippy::string_slice)
)]
pub mod archive;
pub mod cache;
pub mod catalog;
pub mod check;
pub mod config;
pub mod image;
pub mod logging;
pub mod malloc;
pub(crate) mod metrics;
pub mod registry;
pub mod reload;
pub mod rlimit;
pub mod seek;
pub mod source;
pub mod template;
