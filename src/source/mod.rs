//! Where archive bytes live.
