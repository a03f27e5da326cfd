//! What an image is on the wire: digests, names, references, media types and
//! the manifests and configs cartorio builds.
pub mod build;
mod digest;
pub mod hex_bytes;
pub mod media;
mod name;

pub use build::ImageConfig;
pub use digest::{Digest, DigestError, Hasher};
pub use name::{NameError, Reference, RepoName, Tag, split_image_ref};
