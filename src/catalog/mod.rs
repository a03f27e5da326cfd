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

mod binding;
mod verify;

pub use binding::{Binding, LoadError, Loaded, Location};

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::archive::{BlobAt, Root};
use crate::config::ImageSpec;
use crate::image::media;

/// The configured repositories and the archives behind them.
pub struct Catalog {
    repos: BTreeMap<RepoName, Vec<Arc<Binding>>>,
}

impl Catalog {
    /// Builds the catalog and opens every source. A source that cannot be
    /// opened at all (no such file, unsupported URL) is an error here, so
    /// the server does not start half-configured; a source whose archive is
    /// malformed is logged and answers errors for that image only.
    pub async fn new(
        specs: Vec<ImageSpec>,
        base: Option<&std::path::Path>,
    ) -> Result<Catalog, String> {
        let mut repos: BTreeMap<RepoName, Vec<Arc<Binding>>> = BTreeMap::new();
        for spec in specs {
            let location =
                Location::open(&spec.source, base).map_err(|e| format!("{}: {e}", spec.origin))?;
            if let Location::Tar(s) = &location {
                s.stat()
                    .await
                    .map_err(|e| format!("{}: {e}", spec.origin))?;
            }
            repos
                .entry(spec.name.clone())
                .or_default()
                .push(Arc::new(Binding::new(spec, location)));
        }
        let catalog = Catalog { repos };
        // Index everything now, concurrently, so the first pull is fast and
        // broken archives are reported at start-up.
        let all: Vec<_> = catalog.bindings().cloned().collect();
        futures_util::future::join_all(all.iter().map(|b| b.current())).await;
        Ok(catalog)
    }

    fn bindings(&self) -> impl Iterator<Item = &Arc<Binding>> {
        self.repos.values().flatten()
    }

    fn repo(&self, repo: &RepoName) -> Result<&[Arc<Binding>], CatalogError> {
        self.repos
            .get(repo)
            .map(Vec::as_slice)
            .ok_or_else(|| CatalogError::NameUnknown(repo.clone()))
    }

    /// Finds a digest among the bindings of a repository.
    async fn find(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Arc<Loaded>>, CatalogError> {
        for b in self.repo(repo)? {
            // A source that fails now may still have a good index from
            // before; its blobs are verified as they stream anyway.
            let Some(loaded) = b.current().await.ok().or_else(|| b.last()) else {
                continue;
            };
            if loaded.digests.contains(digest) {
                return Ok(Some(loaded));
            }
        }
        Ok(None)
    }
}

/// Picks the rendering of a generated image the client asked for: Docker
/// schema 2 only when the client accepts it and not OCI; OCI otherwise
/// (never a refusal).
fn choose(root: &Root, accept: &[&str]) -> Digest {
    match root {
        Root::Stored(d) => *d,
        Root::Generated { oci, docker } => {
            let oci_ok = accept.is_empty()
                || accept
                    .iter()
                    .any(|a| *a == media::OCI_MANIFEST || *a == "*/*" || *a == "application/*");
            match docker {
                Some(d) if !oci_ok && accept.contains(&media::DOCKER_MANIFEST) => *d,
                _ => *oci,
            }
        }
    }
}

#[async_trait::async_trait]
impl Images for Catalog {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest, CatalogError> {
        let unknown = || CatalogError::ManifestUnknown(repo.clone(), reference.clone());
        let (loaded, digest) = match reference {
            Reference::Tag(tag) => {
                let mut broken = None;
                let mut hit = None;
                for b in self.repo(repo)? {
                    match b.current().await {
                        Ok(l) => {
                            if let Some(root) = l.tags.get(tag) {
                                let d = choose(root, accept);
                                hit = Some((l, d));
                                break;
                            }
                        }
                        Err(e) if e.missing => {}
                        Err(e) => broken = Some((b.spec.source.clone(), e.message)),
                    }
                }
                match (hit, broken) {
                    (Some(h), _) => h,
                    // A broken archive may be the one that holds the tag.
                    (None, Some((src, e))) => return Err(CatalogError::Broken(src, e)),
                    (None, None) => return Err(unknown()),
                }
            }
            Reference::Digest(d) => (self.find(repo, d).await?.ok_or_else(unknown)?, *d),
        };
        let doc = loaded.indexed.docs.get(&digest).ok_or_else(unknown)?;
        Ok(Manifest {
            media_type: doc.media_type.clone(),
            digest,
            bytes: doc.bytes.clone(),
        })
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, CatalogError> {
        let unknown = || CatalogError::BlobUnknown(repo.clone(), *digest);
        let loaded = self.find(repo, digest).await?.ok_or_else(unknown)?;
        if let Some(b) = loaded.indexed.blobs.get(digest) {
            return Ok(b.size);
        }
        let doc = loaded.indexed.docs.get(digest).ok_or_else(unknown)?;
        Ok(doc.bytes.len() as u64)
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, CatalogError> {
        let unknown = || CatalogError::BlobUnknown(repo.clone(), *digest);
        let loaded = self.find(repo, digest).await?.ok_or_else(unknown)?;
        let (size, at) = match loaded.indexed.blobs.get(digest) {
            Some(b) => (b.size, b.at.clone()),
            None => {
                let doc = loaded.indexed.docs.get(digest).ok_or_else(unknown)?;
                (doc.bytes.len() as u64, BlobAt::Memory(doc.bytes.clone()))
            }
        };
        if start > end || end >= size {
            return Err(CatalogError::Broken(
                repo.to_string(),
                format!("range {start}-{end} outside blob of {size} bytes"),
            ));
        }
        let archive = &loaded.archive;
        let src = |e: crate::archive::ArchiveError| {
            CatalogError::Source(archive.describe(), e.to_string())
        };
        let verified = loaded
            .verified
            .lock()
            .map(|v| v.contains(digest))
            .unwrap_or(false);
        let whole = start == 0 && end + 1 == size;
        let stream: ByteStream = match at {
            BlobAt::Memory(b) => {
                let part = b.slice(start as usize..=end as usize);
                return Ok(Box::pin(futures_util::stream::once(
                    async move { Ok(part) },
                )));
            }
            // Already checked at this version: a range is just read.
            BlobAt::Member(name) if verified && !whole => {
                let e = archive.member(&name).map_err(src)?;
                return archive
                    .member_stream(e, start, end - start + 1)
                    .await
                    .map_err(src);
            }
            BlobAt::Whole if verified && !whole => {
                return archive
                    .whole_stream(start, end - start + 1)
                    .await
                    .map_err(src);
            }
            BlobAt::Member(name) => {
                let e = archive.member(&name).map_err(src)?;
                archive.member_stream(e, 0, size).await.map_err(src)?
            }
            BlobAt::Whole => archive.whole_stream(0, size).await.map_err(src)?,
            BlobAt::Repack(r) => archive.repack_stream(&r),
        };
        let mark = loaded.clone();
        let d = *digest;
        Ok(Box::pin(verify::Verified::new(
            stream,
            *digest,
            size,
            start,
            end,
            archive.describe(),
            Box::new(move || {
                if let Ok(mut v) = mark.verified.lock() {
                    v.insert(d);
                }
            }),
        )))
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, CatalogError> {
        let mut tags = std::collections::BTreeSet::new();
        for b in self.repo(repo)? {
            if let Ok(l) = b.current().await {
                tags.extend(l.tags.keys().cloned());
            }
        }
        Ok(tags.into_iter().collect())
    }

    async fn repositories(&self) -> Vec<RepoName> {
        self.repos.keys().cloned().collect()
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, CatalogError> {
        let mut out = Vec::new();
        for b in self.repo(repo)? {
            if let Ok(l) = b.current().await
                && l.digests.contains(digest)
            {
                out.extend(
                    l.indexed
                        .referrers
                        .get(digest)
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
            }
        }
        Ok(out)
    }
}
