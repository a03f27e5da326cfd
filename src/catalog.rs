//! The catalog: which repositories and tags exist and where their images
//! come from. The registry front end knows only the [`Images`] trait; the
//! catalog knows the archives below it.
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::image::{Digest, Reference, RepoName, Tag};

/// A stream of blob bytes. An `Err` item means the response must be cut
/// (the connection aborted) so the client cannot take it as complete.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// A manifest or index, as served.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// What the catalog can say went wrong, in terms of the registry's domain.
/// The registry maps each to an OCI error code and status.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("repository {0} is not known")]
    NameUnknown(RepoName),
    #[error("manifest {1} is not known in repository {0}")]
    ManifestUnknown(RepoName, Reference),
    #[error("blob {1} is not known in repository {0}")]
    BlobUnknown(RepoName, Digest),
    /// The archive behind an image is unreadable or malformed; other images
    /// are unaffected.
    #[error("image {0} cannot be served: {1}")]
    Broken(String, String),
    /// The place the archive lives failed (I/O error, upstream error).
    #[error("source of {0} failed: {1}")]
    Source(String, String),
}

/// The read-only view of images that the registry serves.
#[async_trait::async_trait]
pub trait Images: Send + Sync + 'static {
    /// The manifest or index that `reference` names in `repo`. `accept` is
    /// the client's Accept header values (media types, parameters stripped),
    /// used to choose between an OCI and a Docker rendering when both exist;
    /// never a reason to refuse.
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest, CatalogError>;

    /// The size of a blob that an image of `repo` references.
    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, CatalogError>;

    /// The bytes `start..=end` of a blob (the whole blob is `0..=size-1`).
    /// The stream ends in an error, before its last byte, if the blob's
    /// bytes do not match its digest.
    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, CatalogError>;

    /// The tags of `repo`, sorted.
    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, CatalogError>;

    /// Every repository, sorted.
    async fn repositories(&self) -> Vec<RepoName>;

    /// Descriptors (OCI descriptor JSON objects) of the manifests in `repo`
    /// whose `subject` is `digest`.
    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, CatalogError>;
}
