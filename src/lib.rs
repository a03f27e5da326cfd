//! cartorio: a read-only OCI registry that serves container images straight
//! out of tarballs.
pub mod archive;
pub mod cache;
pub mod catalog;
pub mod check;
pub mod config;
pub mod image;
pub mod logging;
pub(crate) mod metrics;
pub mod registry;
pub mod reload;
pub mod rlimit;
pub mod seek;
pub mod source;
pub mod template;
