//! What a tarball holds.
