//! The catalog: which repositories and tags exist and where their images
//! come from. The registry front end knows only the [`Images`] trait; the
//! catalog knows the archives below it, and takes what to serve from the
//! config's specs ([`ImageSpec`], [`RouteSpec`]): config owns those types
//! and knows nothing of the catalog.
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use crate::image::{Digest, Reference, RepoName, Tag};
use crate::metrics::{METRICS, inc};
use crate::source::{Listing, Redacted, SourceError};

pub use crate::cache::{FileSpan, FillSpan};

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
    /// The archive behind an image could not be indexed (its source failed,
    /// it is broken, ...: see [`LoadError`]); other images are unaffected.
    /// `image` names the archive (redacted), for the log.
    #[error("image {image} cannot be served: {error}")]
    Load {
        image: String,
        #[source]
        error: LoadError,
    },
    /// A blob's bytes could not be served; `archive` names where they live
    /// (redacted), for the log.
    #[error("blob from {archive}: {error}")]
    Blob {
        archive: String,
        #[source]
        error: BlobError,
    },
    /// The source of a templated route's image cannot even be opened (its
    /// URL, filled in, is not one cartorio can read).
    #[error("{route}: {error}")]
    Open {
        route: String,
        #[source]
        error: SourceError,
    },
    /// A range outside the blob.
    #[error("range {start}-{end} outside a blob of {size} bytes")]
    RangeInvalid { start: u64, end: u64, size: u64 },
}

/// Why a blob's bytes could not be served.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes disagree with the archive's descriptor (their digest or
    /// length): the archive is wrong, not its source.
    #[error("{0}")]
    Mismatch(#[source] io::Error),
    /// Reading them failed: the source, or the cache's disk.
    #[error("{0}")]
    Read(#[source] io::Error),
}

impl BlobError {
    /// The cache's verdict on a read, by its kind: the cache reports a
    /// digest or length mismatch as `InvalidData` / `InvalidInput`.
    fn of(e: io::Error) -> BlobError {
        match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => BlobError::Mismatch(e),
            _ => BlobError::Read(e),
        }
    }
}

/// Why the catalog cannot start: a configured source that cannot be opened
/// or asked for its archive at all.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {error}")]
pub struct StartError {
    /// Where the image was configured (config file and entry).
    pub origin: String,
    #[source]
    pub error: SourceError,
}

/// The binary reports start-up failures as text.
impl From<StartError> for String {
    fn from(e: StartError) -> String {
        e.to_string()
    }
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

    /// The blob's verified bytes in a file (a cached blob, or a blob of a
    /// local archive verified at its current version), for the zero-copy
    /// path; None when its bytes must still be hashed as they stream, or
    /// live elsewhere (memory, a remote source).
    async fn blob_file(
        &self,
        _repo: &RepoName,
        _digest: &Digest,
    ) -> Result<Option<FileSpan>, CatalogError> {
        Ok(None)
    }

    /// The temp file of a cold blob being filled into the disk cache, for
    /// the zero-copy path (only bytes already written, and the last one
    /// only once verified, may be sent from it); None when no fill of
    /// `digest` at `size` is in progress. Asked after [`Images::blob`],
    /// which starts the fill.
    fn blob_filling(&self, _digest: &Digest, _size: u64) -> Option<FillSpan> {
        None
    }

    /// The tags of `repo`, sorted.
    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, CatalogError>;

    /// Every repository, sorted.
    async fn repositories(&self) -> Vec<RepoName>;

    /// Bytes held by the disk cache, for `/metrics`; None without one.
    fn disk_cache_bytes(&self) -> Option<u64> {
        None
    }

    /// Descriptors (OCI descriptor JSON objects) of the manifests in `repo`
    /// whose `subject` is `digest`.
    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, CatalogError>;
}

mod binding;
mod probe;
pub mod sidecar;

pub use crate::config::DEFAULT_REVALIDATE;
pub use crate::template::Template;
pub use binding::{Binding, LoadError, Loaded, Location, RETRY_BACKOFF, SelectError};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::{BlobAt, Root};
use crate::cache::{BlobCache, Fetch, Origin};
use crate::config::{ImageSpec, RouteSpec};
use crate::image::media;
use crate::source::Sources;

/// How many route bindings (one per repository and tag of a templated
/// route) are kept; the least recently used are dropped past that.
const MAX_ROUTE_BINDINGS: u64 = 4096;

/// A route binding's key: route index, the `{repo}` value, the tag.
type RouteKey = (usize, String, Option<Tag>);

/// How long a templated route's listing (for `_catalog` and `tags/list`) is
/// reused: unauthenticated clients asking in a loop cost one listing of the
/// bucket per prefix per this, and a new archive shows within it.
pub const LIST_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Most objects one listing reads; past it the listing is cut (logged), so
/// a bucket prefix with millions of keys costs a bounded listing.
pub const LIST_CAP: usize = 10_000;

/// How many listings (one per route prefix) are kept.
const MAX_LISTINGS: u64 = 1024;

/// How long a templated name or tag whose archive the source says is not
/// there is answered unknown without asking again: random names cost one
/// stat each per this, and a new archive is found within it.
pub const MISSING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// How many missing names are remembered (least recently used dropped
/// first): bounded memory under a flood of random names.
const MAX_MISSING: u64 = 16_384;

/// The configured repositories and the archives behind them.
pub struct Catalog {
    repos: BTreeMap<RepoName, Vec<Arc<Binding>>>,
    routes: Vec<RouteSpec>,
    route_bindings: moka::sync::Cache<RouteKey, Arc<Binding>>,
    /// Route bindings whose archive was not there, kept apart so a flood
    /// of random names neither asks the source again nor pushes the
    /// bindings of real images out of `route_bindings`.
    missing: moka::sync::Cache<RouteKey, ()>,
    /// Route listings by (route, prefix); None for a source that cannot
    /// list. Concurrent requests share one listing.
    listings: moka::future::Cache<(usize, String), Option<Arc<Listing>>>,
    sources: Sources,
    base: Option<PathBuf>,
    revalidate: std::time::Duration,
    cache: Arc<BlobCache>,
}

/// The bindings that may hold a repository's images.
enum Repo<'a> {
    Static(&'a [Arc<Binding>]),
    /// A templated route: its place in `Catalog::routes` (which keys its
    /// caches), the route, and the rest of the name after its prefix.
    Route(usize, &'a RouteSpec, String),
}

impl Catalog {
    /// Builds the catalog and opens every static source. A source that
    /// cannot be opened at all (no such file, unsupported URL) is an error
    /// here, so the server does not start half-configured; a source whose
    /// archive is malformed is logged and answers errors for that image only.
    pub async fn new(
        specs: Vec<ImageSpec>,
        routes: Vec<RouteSpec>,
        sources: Sources,
        base: Option<&std::path::Path>,
        revalidate: std::time::Duration,
        cache: Arc<BlobCache>,
    ) -> Result<Catalog, StartError> {
        Catalog::build(specs, routes, sources, base, revalidate, cache, None).await
    }

    /// A catalog of a reloaded config, sharing this one's cache. Entries
    /// that did not change keep their bindings (their indexes, and the
    /// cache's knowledge of their blobs); unchanged routes keep the
    /// bindings of the repositories they served. Validated like
    /// [`Catalog::new`]: on error nothing changes.
    pub async fn reloaded(
        &self,
        specs: Vec<ImageSpec>,
        routes: Vec<RouteSpec>,
        base: Option<&std::path::Path>,
        revalidate: std::time::Duration,
    ) -> Result<Catalog, StartError> {
        let cache = self.cache.clone();
        Catalog::build(
            specs,
            routes,
            self.sources.clone(),
            base,
            revalidate,
            cache,
            Some(self),
        )
        .await
    }

    /// How many static entries of `previous` this catalog reuses, and how
    /// many it has.
    pub fn reused_from(&self, previous: &Catalog) -> (usize, usize) {
        let old: Vec<&Arc<Binding>> = previous.repos.values().flatten().collect();
        let all: Vec<&Arc<Binding>> = self.repos.values().flatten().collect();
        let kept = all
            .iter()
            .filter(|b| old.iter().any(|o| Arc::ptr_eq(o, b)))
            .count();
        (kept, all.len())
    }

    async fn build(
        specs: Vec<ImageSpec>,
        routes: Vec<RouteSpec>,
        sources: Sources,
        base: Option<&std::path::Path>,
        revalidate: std::time::Duration,
        cache: Arc<BlobCache>,
        previous: Option<&Catalog>,
    ) -> Result<Catalog, StartError> {
        let same_base =
            previous.is_some_and(|p| p.base.as_deref() == base && p.revalidate == revalidate);
        let mut repos: BTreeMap<RepoName, Vec<Arc<Binding>>> = BTreeMap::new();
        for spec in specs {
            let kept = previous
                .filter(|_| same_base)
                .and_then(|p| p.repos.get(&spec.name))
                .and_then(|bs| bs.iter().find(|b| same_image(&b.spec, &spec)));
            if let Some(b) = kept {
                repos.entry(spec.name.clone()).or_default().push(b.clone());
                continue;
            }
            let fail = |error| StartError {
                origin: spec.origin.clone(),
                error,
            };
            let location =
                Location::open(&sources, &spec.source, &spec.options, base).map_err(fail)?;
            if let Location::Tar(s) = &location {
                s.stat().await.map_err(fail)?;
            }
            let sidecar = sidecar::open(
                &sources,
                &location,
                &spec.source,
                spec.index.as_deref(),
                &spec.options,
                base,
            );
            repos.entry(spec.name.clone()).or_default().push(Arc::new(
                Binding::new(spec, location, revalidate, Some(cache.clone())).with_sidecar(sidecar),
            ));
        }
        let route_bindings = match previous {
            Some(p) if same_base && same_routes(&p.routes, &routes) => p.route_bindings.clone(),
            _ => moka::sync::Cache::new(MAX_ROUTE_BINDINGS),
        };
        let catalog = Catalog {
            repos,
            routes,
            route_bindings,
            missing: moka::sync::Cache::builder()
                .max_capacity(MAX_MISSING)
                .time_to_live(MISSING_TTL)
                .build(),
            listings: moka::future::Cache::builder()
                .max_capacity(MAX_LISTINGS)
                .time_to_live(LIST_TTL)
                .build(),
            sources,
            base: base.map(PathBuf::from),
            revalidate,
            cache,
        };
        // Index every static image now, concurrently, so the first pull is
        // fast and broken archives are reported at start-up.
        let all: Vec<_> = catalog.repos.values().flatten().cloned().collect();
        futures_util::future::join_all(all.iter().map(|b| b.current())).await;
        Ok(catalog)
    }

    fn repo(&self, repo: &RepoName) -> Result<Repo<'_>, CatalogError> {
        if let Some(b) = self.repos.get(repo) {
            return Ok(Repo::Static(b));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(rest) = repo.as_str().strip_prefix(&r.prefix)
                && !rest.is_empty()
            {
                return Ok(Repo::Route(i, r, rest.to_string()));
            }
        }
        Err(CatalogError::NameUnknown(repo.clone()))
    }

    /// The binding for one archive of a templated route, None when its
    /// archive is not there (remembered for [`MISSING_TTL`]). The name and
    /// tag were validated by parsing; only then are they put into the URL.
    async fn route_binding(
        &self,
        repo: &RepoName,
        route: usize,
        r: &RouteSpec,
        rest: &str,
        tag: Option<&Tag>,
    ) -> Result<Option<Arc<Binding>>, CatalogError> {
        let tag = tag.filter(|_| r.template.has_tag()).cloned();
        let key = (route, rest.to_string(), tag.clone());
        if self.missing.contains_key(&key) {
            return Ok(None);
        }
        let b = self
            .route_bindings
            .try_get_with(key.clone(), || {
                let source = r.template.fill(rest, tag.as_ref());
                let spec = ImageSpec {
                    name: repo.clone(),
                    source: source.clone(),
                    tags: tag.clone().map(|t| vec![t]),
                    select: r.select.clone(),
                    only_name: None,
                    index: None,
                    config: r.config.clone(),
                    options: r.options.clone(),
                    origin: r.origin.clone(),
                };
                let location =
                    Location::open(&self.sources, &source, &r.options, self.base.as_deref())?;
                let sidecar = sidecar::open(
                    &self.sources,
                    &location,
                    &source,
                    None,
                    &r.options,
                    self.base.as_deref(),
                );
                Ok::<_, crate::source::SourceError>(Arc::new(
                    Binding::new(spec, location, self.revalidate, Some(self.cache.clone()))
                        .with_sidecar(sidecar),
                ))
            })
            .map_err(|e| CatalogError::Open {
                route: r.origin.clone(),
                error: (*e).clone(),
            })?;
        if let Err(LoadError::Missing(_)) = b.current().await {
            self.route_bindings.invalidate(&key);
            self.missing.insert(key, ());
            return Ok(None);
        }
        Ok(Some(b))
    }

    /// The bindings that may serve `tag` in `repo`.
    async fn bindings_for_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Vec<Arc<Binding>>, CatalogError> {
        match self.repo(repo)? {
            Repo::Static(b) => Ok(b.to_vec()),
            Repo::Route(i, r, rest) => Ok(self
                .route_binding(repo, i, r, &rest, Some(tag))
                .await?
                .into_iter()
                .collect()),
        }
    }

    /// The bindings of `repo` that may hold a digest: for a route with
    /// `{tag}`, the archives of tags already asked for.
    async fn bindings_known(&self, repo: &RepoName) -> Result<Vec<Arc<Binding>>, CatalogError> {
        match self.repo(repo)? {
            Repo::Static(b) => Ok(b.to_vec()),
            Repo::Route(i, r, rest) if !r.template.has_tag() => Ok(self
                .route_binding(repo, i, r, &rest, None)
                .await?
                .into_iter()
                .collect()),
            Repo::Route(i, _, rest) => {
                let mut found: Vec<(Option<Tag>, Arc<Binding>)> = self
                    .route_bindings
                    .iter()
                    .filter(|(k, _)| k.0 == i && k.1 == rest)
                    .map(|(k, b)| (k.2.clone(), b))
                    .collect();
                found.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(found.into_iter().map(|(_, b)| b).collect())
            }
        }
    }

    /// Finds a digest among the bindings of a repository.
    async fn find(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Arc<Loaded>>, CatalogError> {
        for b in self.bindings_known(repo).await? {
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

    /// Lists a prefix of a route's source (see [`LIST_TTL`], [`LIST_CAP`]),
    /// logging (not failing) when the source cannot list or the listing
    /// fails; a failed listing is not kept.
    async fn list(&self, route: usize, r: &RouteSpec, prefix: &str) -> Option<Arc<Listing>> {
        let listed = self
            .listings
            .try_get_with((route, prefix.to_string()), async {
                let l = self
                    .sources
                    .list_capped(prefix, &r.options, self.base.as_deref(), LIST_CAP)
                    .await?;
                if l.is_some() {
                    inc(&METRICS.source_listings);
                }
                if l.as_ref().is_some_and(|l| l.truncated) {
                    tracing::warn!(
                        route = r.origin,
                        "{}: more than {LIST_CAP} objects; listing only the first",
                        Redacted(prefix)
                    );
                }
                Ok::<_, SourceError>(l.map(Arc::new))
            })
            .await;
        match listed {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(route = r.origin, "cannot list {}: {e}", Redacted(prefix));
                None
            }
        }
    }
}

/// Whether two static entries serve the same thing (where in the config
/// they were written does not matter).
fn same_image(a: &ImageSpec, b: &ImageSpec) -> bool {
    a.name == b.name
        && a.source == b.source
        && a.tags == b.tags
        && a.select == b.select
        && a.only_name == b.only_name
        && a.config == b.config
        && a.options == b.options
}

/// Whether two lists of templated routes are the same routes.
fn same_routes(a: &[RouteSpec], b: &[RouteSpec]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.prefix == b.prefix
                && a.template.to_string() == b.template.to_string()
                && a.select == b.select
                && a.config == b.config
                && a.options == b.options
        })
}

/// Opens a blob's bytes from its start, wherever the archive keeps them.
async fn open_blob(
    archive: &Arc<crate::archive::Archive>,
    at: &BlobAt,
    digest: Digest,
    size: u64,
) -> Result<ByteStream, crate::archive::ArchiveError> {
    match at {
        BlobAt::Memory(b) => {
            let b = b.clone();
            Ok(Box::pin(futures_util::stream::once(async move { Ok(b) })))
        }
        BlobAt::Member(name) => {
            let e = archive.member(name)?;
            let s = archive.member_stream(e, 0, size).await?;
            Ok(archive.check_points(s, digest, size))
        }
        BlobAt::Whole => archive.whole_stream(0, size).await,
        BlobAt::Repack(r) => Ok(archive.repack_stream(r)),
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
                for b in self.bindings_for_tag(repo, tag).await? {
                    let mut r = b.current().await;
                    // A tag the index lacks may have just been added to the
                    // source: look again (bounded) before saying unknown.
                    if r.as_ref().is_ok_and(|l| !l.tags.contains_key(tag)) {
                        r = b.recheck().await;
                    }
                    match r {
                        Ok(l) => {
                            if let Some(root) = l.tags.get(tag) {
                                hit = Some((l.clone(), choose(root, accept)));
                                break;
                            }
                        }
                        Err(LoadError::Missing(_)) => {}
                        Err(e) => broken = Some((crate::source::redact(&b.spec.source), e)),
                    }
                }
                match (hit, broken) {
                    (Some(h), _) => h,
                    // A broken archive may be the one that holds the tag.
                    (None, Some((image, error))) => {
                        return Err(CatalogError::Load { image, error });
                    }
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
            return Err(CatalogError::RangeInvalid { start, end, size });
        }
        if let BlobAt::Memory(b) = &at {
            let part = b.slice(start as usize..=end as usize);
            return Ok(Box::pin(futures_util::stream::once(
                async move { Ok(part) },
            )));
        }
        let archive = loaded.archive.clone();
        let label = archive.describe();
        // A local uncompressed archive is its own cache: no second copy.
        if let Some(span) = archive.local_span(&at) {
            return self
                .cache
                .read_in_place(&span, *digest, size, start, end, label.clone())
                .await
                .map_err(|e| CatalogError::Blob {
                    archive: label,
                    error: BlobError::Read(e),
                });
        }
        // Range reads pinned to the archive's version, for a blob verified
        // at that version when the disk tier cannot take it.
        let origin = archive.ranged(&at).then(|| {
            let (archive, at) = (archive.clone(), at.clone());
            Origin {
                url: archive.describe(),
                version: archive.stat.version.clone(),
                range: Arc::new(move |offset, len| {
                    let (archive, at) = (archive.clone(), at.clone());
                    Box::pin(async move {
                        let r = match &at {
                            BlobAt::Member(name) => match archive.member(name) {
                                Ok(e) => archive.member_stream(e, offset, len).await,
                                Err(e) => Err(e),
                            },
                            _ => archive.whole_stream(offset, len).await,
                        };
                        r.map_err(std::io::Error::other)
                    })
                }),
            }
        });
        let digest_ = *digest;
        let fetch: Fetch = Arc::new(move || {
            let archive = archive.clone();
            let at = at.clone();
            Box::pin(async move {
                open_blob(&archive, &at, digest_, size)
                    .await
                    .map_err(std::io::Error::other)
            })
        });
        self.cache
            .read(*digest, size, start, end, label.clone(), fetch, origin)
            .await
            .map_err(|e| CatalogError::Blob {
                archive: label,
                error: BlobError::of(e),
            })
    }

    async fn blob_file(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<FileSpan>, CatalogError> {
        let unknown = || CatalogError::BlobUnknown(repo.clone(), *digest);
        let loaded = self.find(repo, digest).await?.ok_or_else(unknown)?;
        let Some(blob) = loaded.indexed.blobs.get(digest) else {
            return Ok(None);
        };
        if matches!(blob.at, BlobAt::Memory(_)) {
            return Ok(None);
        }
        match loaded.archive.local_span(&blob.at) {
            Some(span) => self
                .cache
                .verified_in_place(&span, *digest, blob.size)
                .await
                .map_err(|e| CatalogError::Blob {
                    archive: loaded.archive.describe(),
                    error: BlobError::Read(e),
                }),
            None => Ok(self.cache.cached_file(digest, blob.size).await),
        }
    }

    fn blob_filling(&self, digest: &Digest, size: u64) -> Option<FillSpan> {
        self.cache.filling(digest, size)
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, CatalogError> {
        let mut tags = BTreeSet::new();
        let bindings = match self.repo(repo)? {
            Repo::Route(i, r, rest) if r.template.has_tag() => {
                let prefix = r.template.tag_prefix(&rest).unwrap_or_default();
                match self.list(i, r, &prefix).await {
                    Some(listing) => {
                        tags.extend(
                            listing
                                .urls
                                .iter()
                                .filter_map(|u| r.template.parse_url(u))
                                .filter(|(p, _)| *p == rest)
                                .filter_map(|(_, t)| t),
                        );
                        if tags.is_empty() {
                            return Err(CatalogError::NameUnknown(repo.clone()));
                        }
                        return Ok(tags.into_iter().collect());
                    }
                    // Not listable (HTTP): the tags pulled so far.
                    None => self.bindings_known(repo).await?,
                }
            }
            _ => self.bindings_known(repo).await?,
        };
        let mut any = false;
        for b in bindings {
            match b.current().await {
                Ok(l) => {
                    any = true;
                    tags.extend(l.tags.keys().cloned());
                }
                Err(LoadError::Missing(_)) => {}
                Err(_) => any = true,
            }
        }
        if !any && matches!(self.repo(repo)?, Repo::Route(..)) {
            return Err(CatalogError::NameUnknown(repo.clone()));
        }
        Ok(tags.into_iter().collect())
    }

    fn disk_cache_bytes(&self) -> Option<u64> {
        self.cache.disk().map(|d| d.used())
    }

    async fn repositories(&self) -> Vec<RepoName> {
        let mut out: BTreeSet<RepoName> = self.repos.keys().cloned().collect();
        for (i, r) in self.routes.iter().enumerate() {
            let Some(listing) = self.list(i, r, &r.template.list_prefix()).await else {
                continue;
            };
            out.extend(
                listing
                    .urls
                    .iter()
                    .filter_map(|u| r.template.parse_url(u))
                    .filter_map(|(rest, _)| format!("{}{rest}", r.prefix).parse().ok()),
            );
        }
        out.into_iter().collect()
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, CatalogError> {
        let mut out = Vec::new();
        for b in self.bindings_known(repo).await? {
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
