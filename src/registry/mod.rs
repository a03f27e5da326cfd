//! The HTTP front end: OCI Distribution API routes over [`crate::catalog::Images`].
