//! images.toml
