//! One configured image source: an archive, the tags it is served under,
//! and its index, kept per version of the archive so a replaced tarball is
//! re-indexed, never mixed with the old one.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::archive::{
    self, Archive, ArchiveError, ArchiveRef, Indexed, Layout, Root, SeekState, Spill,
    StreamDigests, Toc,
};
use crate::cache::{BlobCache, CacheSpill, IndexStore};
use crate::config::ImageSpec;
use crate::image::{Digest, Tag};
use crate::metrics::{METRICS, inc};
use crate::source::{Redacted, Source, SourceError, SourceOptions, Sources, Stat};

use super::probe::Probe;

/// Where an archive is: a tar behind a source, or a local directory.
#[derive(Debug, Clone)]
pub enum Location {
    Tar(Arc<dyn Source>),
    Dir(PathBuf),
}

impl Location {
    /// Resolves a configured source. A local path that is a directory is a
    /// layout folder; anything else goes through [`source::open`].
    pub fn open(
        sources: &Sources,
        url: &str,
        opts: &SourceOptions,
        base: Option<&std::path::Path>,
    ) -> Result<Location, SourceError> {
        let local = match url.strip_prefix("file://") {
            Some(p) => Some(PathBuf::from(p)),
            None if !url.contains("://") => Some(match base {
                Some(b) => b.join(url),
                None => PathBuf::from(url),
            }),
            None => None,
        };
        if let Some(p) = local
            && p.is_dir()
        {
            return Ok(Location::Dir(p));
        }
        Ok(Location::Tar(sources.open(url, opts, base)?))
    }

    pub async fn open_archive(&self) -> Result<Arc<Archive>, ArchiveError> {
        self.open_spilling(None).await
    }

    /// Opens the archive; a streaming pass hands its blobs to `spill`.
    pub async fn open_spilling(
        &self,
        spill: Option<Arc<dyn Spill>>,
    ) -> Result<Arc<Archive>, ArchiveError> {
        Ok(Arc::new(match self {
            Location::Tar(s) => Archive::open_spilling(s.clone(), spill).await?,
            Location::Dir(p) => Archive::open_dir(p).await?,
        }))
    }

    async fn version(&self) -> Result<String, ArchiveError> {
        match self {
            Location::Tar(s) => Ok(s.stat().await?.version),
            // A layout folder has no single version; its index.json (or
            // metadata.json) changes whenever what it serves does.
            Location::Dir(p) => {
                use std::os::unix::fs::MetadataExt;
                let mut v = String::new();
                for f in ["index.json", "metadata.json", "manifest.json", "."] {
                    if let Ok(m) = tokio::fs::metadata(p.join(f)).await {
                        v.push_str(&format!(
                            "{f}:{}.{}-{};",
                            m.mtime(),
                            m.mtime_nsec(),
                            m.len()
                        ));
                    }
                }
                Ok(v)
            }
        }
    }
}

/// An indexed archive at one version, with the tags this binding serves.
#[derive(Debug)]
pub struct Loaded {
    pub version: String,
    pub archive: Arc<Archive>,
    pub indexed: Indexed,
    pub tags: BTreeMap<Tag, Root>,
    /// Every digest this binding's images reach (manifests, configs,
    /// layers, and referrers of them).
    pub digests: HashSet<Digest>,
}

/// A saved index, as written.
#[derive(serde::Serialize)]
struct SavedIndexRef<'a> {
    layout: Layout,
    toc: &'a Toc,
    stat: &'a Stat,
    digests: Option<StreamDigests>,
    indexed: &'a Indexed,
}

/// A saved index, as read back.
#[derive(serde::Deserialize)]
struct SavedIndex {
    layout: Layout,
    toc: Toc,
    stat: Stat,
    digests: Option<StreamDigests>,
    indexed: Indexed,
}

/// Why a binding has no index. Only what the archive itself decides
/// ([`LoadError::pinned`]) is kept for the archive's version; a failed
/// source is asked again (see [`RETRY_BACKOFF`]), so an image recovers as
/// soon as its upstream does.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LoadError {
    /// The source says the archive is not there: the image is unknown.
    #[error("{0}")]
    Missing(SourceError),
    /// The source failed (down, 5xx, reset, denied, changed mid-read):
    /// nothing is known about the archive.
    #[error("source unavailable: {0}")]
    Unavailable(SourceError),
    /// The archive at this version cannot be served: malformed, hostile,
    /// over its budget. Shared, as the error is kept for the version.
    #[error("{0}")]
    Broken(Arc<ArchiveError>),
    /// The archive does not hold what the image's settings select.
    #[error("{0}")]
    Select(#[from] SelectError),
    /// A bug in cartorio (an indexing task panicked), not a fact about
    /// the archive or its source.
    #[error("internal error (a bug in cartorio): {0}")]
    Bug(String),
}

impl LoadError {
    /// Whether this is a fact about the archive at its version, kept until
    /// the version changes, rather than about the moment it was asked.
    pub fn pinned(&self) -> bool {
        matches!(
            self,
            LoadError::Broken(_) | LoadError::Select(_) | LoadError::Bug(_)
        )
    }

    /// A source's failure: not found is [`LoadError::Missing`], anything
    /// else [`LoadError::Unavailable`].
    fn source(e: SourceError) -> LoadError {
        match e {
            SourceError::NotFound { .. } => LoadError::Missing(e),
            e => LoadError::Unavailable(e),
        }
    }

    /// An indexing failure. `seen` is how the source failed during it, if
    /// it did: then the failure says nothing about the archive (a reset
    /// surfaces as a truncated tar, a 5xx as a short read) and is not kept.
    fn archive(e: ArchiveError, seen: Option<SourceError>) -> LoadError {
        match (e, seen) {
            (ArchiveError::Source(s), _) => LoadError::source(s),
            (ArchiveError::Task(j), _) => LoadError::Bug(j.to_string()),
            (_, Some(s)) => LoadError::source(s),
            (e, None) => LoadError::Broken(Arc::new(e)),
        }
    }
}

/// Why the images an archive holds do not fit the image's settings.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SelectError {
    #[error("select = {0:?} is not a valid image reference")]
    InvalidSelect(String),
    #[error("select = {select:?} matches no image in the archive (it has: {known})")]
    NoMatch { select: String, known: String },
    #[error("the archive holds {0} images; choose one with `select`")]
    Ambiguous(usize),
    #[error("the archive records no tag for this name; set `tags`")]
    NoTag,
}

/// The version recorded while the source cannot be asked; no source
/// reports it.
const UNAVAILABLE: &str = "\0unavailable";

/// On a miss (a tag the index lacks) the source is asked again, but not
/// more often than this, so a client asking for unknown tags in a loop
/// cannot turn every request into an upstream request.
const MISS_RECHECK: Duration = Duration::from_millis(100);

/// After the source failed, it is asked again at most this often, however
/// often (and however many clients at once) the image is asked for: a dead
/// upstream is not hammered, a recovered one is noticed within a second.
pub const RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// A verdict kept for an archive's version (broken, no such tag, a bug) is
/// indexed again after this long, doubling each time the same verdict
/// comes back, up to [`PINNED_RECHECK_MAX`]. Bytes damaged on their way
/// (a flipped byte in a tar header, a proxy that lies about a length) look
/// exactly like a broken archive and leave no trace in the source's
/// version: kept for ever, one bad read would break the image until the
/// tarball changed. A truly broken archive costs one indexing per period,
/// and only while clients ask for it.
pub const PINNED_RECHECK: Duration = Duration::from_secs(10);

/// The longest period between two indexings of a broken archive.
pub const PINNED_RECHECK_MAX: Duration = Duration::from_secs(15 * 60);

/// The last load: the version it was for, when that was last confirmed,
/// and its outcome (an error is kept too, so a broken archive is not
/// re-read on every request).
struct Snapshot {
    version: String,
    checked: Instant,
    result: Result<Arc<Loaded>, LoadError>,
    /// For a kept verdict: when the archive may be indexed again, and the
    /// period after that one (see [`PINNED_RECHECK`]).
    recheck: Option<(Instant, Duration)>,
}

/// A configured image and its current index.
pub struct Binding {
    pub spec: ImageSpec,
    pub location: Location,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// The last index that loaded, kept through outages of the source.
    good: RwLock<Option<Arc<Loaded>>>,
    /// One revalidation or load at a time.
    loading: tokio::sync::Mutex<()>,
    revalidate: Duration,
    /// See [`RETRY_BACKOFF`].
    retry: Duration,
    /// See [`PINNED_RECHECK`].
    pinned_recheck: Duration,
    /// Where blobs from streaming passes and saved indexes go.
    cache: Option<Arc<BlobCache>>,
    /// A published index of the archive to try before walking it.
    sidecar: Option<Arc<dyn Source>>,
    /// The archive version whose sidecar proved wrong (a seek point failed).
    sidecar_refused: std::sync::Mutex<Option<String>>,
}

impl Binding {
    pub fn new(
        spec: ImageSpec,
        location: Location,
        revalidate: Duration,
        cache: Option<Arc<BlobCache>>,
    ) -> Binding {
        Binding {
            spec,
            location,
            snapshot: RwLock::new(None),
            good: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
            revalidate,
            retry: RETRY_BACKOFF,
            pinned_recheck: PINNED_RECHECK,
            cache,
            sidecar: None,
            sidecar_refused: std::sync::Mutex::new(None),
        }
    }

    /// Tries `sidecar` (see [`super::sidecar`]) before walking the archive.
    pub fn with_sidecar(mut self, sidecar: Option<Arc<dyn Source>>) -> Binding {
        self.sidecar = sidecar;
        self
    }

    /// The archive and its images from the sidecar, when there is one
    /// that checks out for the archive at `version`.
    async fn load_sidecar(&self, version: &str) -> Option<(Arc<Archive>, Indexed)> {
        let (Location::Tar(source), Some(sidecar)) = (&self.location, &self.sidecar) else {
            return None;
        };
        if self.sidecar_refused.lock().ok()?.as_deref() == Some(version) {
            return None;
        }
        let stat = source.stat().await.ok().filter(|s| s.version == version)?;
        let settings = self.index_settings();
        match super::sidecar::load(sidecar, source, &stat, &settings).await {
            Ok((archive, indexed)) => {
                let archive = Arc::new(archive);
                let indexed = match indexed {
                    Some(i) => i,
                    // Made with other image settings: the TOC is right,
                    // the generated images are derived again.
                    None => match archive::index(&archive, &self.spec.config).await {
                        Ok(i) => i,
                        Err(e) => {
                            tracing::warn!(image = %self.spec.name, sidecar = sidecar.url(), "sidecar ignored: {e}");
                            return None;
                        }
                    },
                };
                tracing::info!(image = %self.spec.name, sidecar = sidecar.url(), "index read from the sidecar");
                Some((archive, indexed))
            }
            Err(super::sidecar::SidecarError::Source(SourceError::NotFound { .. })) => None,
            Err(e) => {
                tracing::warn!(image = %self.spec.name, sidecar = sidecar.url(), "sidecar ignored, indexing the archive: {e}");
                None
            }
        }
    }

    fn fresh(&self, within: Duration) -> Option<Arc<Snapshot>> {
        let s = self.snapshot.read().ok()?.clone()?;
        let within = match &s.result {
            Err(LoadError::Unavailable(_)) => self.retry,
            _ => within,
        };
        (s.checked.elapsed() < within).then_some(s)
    }

    fn store(&self, s: Snapshot) {
        if let (Ok(l), Ok(mut good)) = (&s.result, self.good.write()) {
            *good = Some(l.clone());
        }
        if let Ok(mut g) = self.snapshot.write() {
            *g = Some(Arc::new(s));
        }
    }

    /// The index for the archive as it is now: re-indexed when its version
    /// changed, the cached result (or error) otherwise.
    pub async fn current(&self) -> Result<Arc<Loaded>, LoadError> {
        self.checked_within(self.revalidate).await
    }

    /// Like [`Binding::current`], after a miss: asks the source again
    /// unless it was asked very recently.
    pub async fn recheck(&self) -> Result<Arc<Loaded>, LoadError> {
        self.checked_within(MISS_RECHECK.min(self.revalidate)).await
    }

    async fn checked_within(&self, within: Duration) -> Result<Arc<Loaded>, LoadError> {
        if let Some(s) = self.fresh(within) {
            return s.result.clone();
        }
        let _one = self.loading.lock().await;
        if let Some(s) = self.fresh(within) {
            return s.result.clone();
        }
        let version = match self.location.version().await {
            Ok(v) => v,
            Err(e) => {
                let err = LoadError::archive(e, None);
                tracing::warn!(image = %self.spec.name, "{err}");
                // Remembered like any answer, so a source that is down is
                // asked once per `retry`, not once per request.
                self.store(Snapshot {
                    version: UNAVAILABLE.into(),
                    checked: Instant::now(),
                    result: Err(err.clone()),
                    recheck: None,
                });
                return Err(err);
            }
        };
        let previous = self.snapshot.read().ok().and_then(|g| g.clone());
        // The same version: the same answer, unless it was a failure of the
        // source (asked again) or an index found stale.
        if let Some(p) = &previous
            && p.version == version
            && match &p.result {
                Ok(l) => !self.stale(l),
                Err(e) => e.pinned() && p.recheck.is_none_or(|(at, _)| Instant::now() < at),
            }
        {
            self.store(Snapshot {
                version,
                checked: Instant::now(),
                result: p.result.clone(),
                recheck: p.recheck,
            });
            return p.result.clone();
        }
        // Back after an outage at the version served before.
        if let Some(good) = self.last()
            && good.version == version
            && !self.stale(&good)
        {
            self.store(Snapshot {
                version,
                checked: Instant::now(),
                result: Ok(good.clone()),
                recheck: None,
            });
            return Ok(good);
        }
        let r = self.load(version.clone()).await;
        match &r {
            Ok(l) => tracing::info!(
                image = %self.spec.name,
                source = %Redacted(&self.spec.source),
                format = ?l.indexed.format,
                tags = ?l.tags.keys().map(Tag::as_str).collect::<Vec<_>>(),
                bytes_read = l.archive.fetched,
                "indexed"
            ),
            Err(e) => {
                inc(&METRICS.index_failures);
                let (image, source) = (&self.spec.name, Redacted(&self.spec.source));
                let why = Redacted(&e.to_string()).to_string();
                match e {
                    LoadError::Missing(_) | LoadError::Unavailable(_) => {
                        tracing::warn!(%image, %source, "cannot index now, will retry: {why}")
                    }
                    LoadError::Bug(_) => {
                        tracing::error!(%image, %source, "cannot serve, this is a bug in cartorio (please report it): {why}")
                    }
                    LoadError::Broken(_) | LoadError::Select(_) => {
                        tracing::error!(%image, %source, "cannot serve this version of the archive: {why}")
                    }
                }
            }
        }
        // A kept verdict is indexed again later (see PINNED_RECHECK): the
        // period doubles while the same version keeps failing.
        let recheck = match &r {
            Err(e) if e.pinned() => {
                let period = previous
                    .as_ref()
                    .filter(|p| p.version == version)
                    .and_then(|p| p.recheck)
                    .map_or(self.pinned_recheck, |(_, d)| {
                        (d * 2).min(PINNED_RECHECK_MAX)
                    });
                Some((Instant::now() + period, period))
            }
            _ => None,
        };
        self.store(Snapshot {
            version,
            checked: Instant::now(),
            result: r.clone(),
            recheck,
        });
        r
    }

    /// The last good index, without checking the archive's version: what
    /// blobs are still served from (verified, or from the cache) while the
    /// source is down.
    pub fn last(&self) -> Option<Arc<Loaded>> {
        self.good.read().ok()?.clone()
    }

    /// Whether a seek point of this index failed to decompress: then its
    /// saved copy is dropped and the archive indexed again.
    fn stale(&self, l: &Loaded) -> bool {
        if !l.archive.seek.failed() {
            return false;
        }
        if l.archive.seek.is_lazy()
            && let Ok(mut r) = self.sidecar_refused.lock()
        {
            *r = Some(l.version.clone());
        }
        if let (Location::Tar(source), Some(store)) =
            (&self.location, self.cache.as_ref().and_then(|c| c.index()))
        {
            store.discard(&IndexStore::key(
                source.url(),
                &l.version,
                &self.index_settings(),
            ));
        }
        tracing::warn!(image = %self.spec.name, source = %Redacted(&self.spec.source), "seek points failed: indexing again");
        true
    }

    /// The saved index of this archive at `version`, if there is one.
    async fn restore(&self, version: &str) -> Option<(Arc<Archive>, Indexed)> {
        let Location::Tar(source) = &self.location else {
            return None;
        };
        let store = self.cache.as_ref()?.index()?;
        let key = IndexStore::key(source.url(), version, &self.index_settings());
        let bytes = store.get(&key).await?;
        let checked = serde_json::from_slice::<SavedIndex>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|saved| {
                crate::archive::saved::check(saved.layout, &saved.stat, &saved.toc, &saved.indexed)
                    .map_err(|e| e.to_string())?;
                Ok(saved)
            });
        let saved = match checked {
            Ok(saved) if saved.stat.version == version => saved,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(image = %self.spec.name, source = source.url(), "saved index discarded, indexing again: {e}");
                store.discard(&key);
                return None;
            }
        };
        let size = saved.stat.size;
        let mut archive = Archive::restore(
            source.clone(),
            saved.layout,
            saved.toc,
            saved.stat,
            saved.digests,
        );
        if let Some(b) = store.get_points(&key).await {
            match crate::seek::Points::decode(&b, size) {
                Ok(p) => archive.seek = SeekState::new(Some(p)),
                Err(e) => {
                    tracing::warn!(image = %self.spec.name, source = source.url(), "saved seek points discarded: {e}");
                    store.put_points(&key, None).await;
                }
            }
        }
        tracing::debug!(image = %self.spec.name, source = source.url(), "index restored from the cache");
        Some((Arc::new(archive), saved.indexed))
    }

    async fn save(&self, archive: &Archive, indexed: &Indexed) {
        let (Location::Tar(source), Some(layout)) = (&self.location, archive.layout()) else {
            return;
        };
        let Some(store) = self.cache.as_ref().and_then(|c| c.index()) else {
            return;
        };
        let key = IndexStore::key(source.url(), &archive.stat.version, &self.index_settings());
        let saved = SavedIndexRef {
            layout,
            toc: &archive.toc,
            stat: &archive.stat,
            digests: archive.digests,
            indexed,
        };
        if let Ok(bytes) = serde_json::to_vec(&saved) {
            store.put(&key, bytes).await;
        }
        let points = archive.seek.encoded();
        if let Some(p) = &points {
            tracing::info!(
                image = %self.spec.name,
                source = source.url(),
                points = archive.seek.points.as_ref().map_or(0, |p| p.points().len()),
                bytes = p.len(),
                bytes_per_gib = (p.len() as f64 * (1u64 << 30) as f64 / archive.stat.size.max(1) as f64) as u64,
                "seek points saved"
            );
        }
        store.put_points(&key, points).await;
    }

    /// What besides the archive shapes its index: the image settings.
    fn index_settings(&self) -> String {
        serde_json::to_string(&self.spec.config).unwrap_or_default()
    }

    async fn load(&self, version: String) -> Result<Arc<Loaded>, LoadError> {
        let (archive, indexed) = match self.restore(&version).await {
            Some(r) => {
                inc(&METRICS.index_restores);
                r
            }
            None => match self.load_sidecar(&version).await {
                Some(r) => {
                    inc(&METRICS.index_loads);
                    r
                }
                None => {
                    let spill = self
                        .cache
                        .as_ref()
                        .filter(|c| c.disk().is_some())
                        .map(|c| Arc::new(CacheSpill(c.clone())) as Arc<dyn Spill>);
                    // Whether the source failed while the archive was read
                    // decides what a failure means.
                    let (location, probe) = match &self.location {
                        Location::Tar(s) => {
                            let p = Probe::new(s.clone());
                            (Location::Tar(p.clone()), Some(p))
                        }
                        dir => (dir.clone(), None),
                    };
                    let seen = || probe.as_ref().and_then(|p| p.failure());
                    let mut archive = location
                        .open_spilling(spill)
                        .await
                        .map_err(|e| LoadError::archive(e, seen()))?;
                    let indexed = archive::index(&archive, &self.spec.config)
                        .await
                        .map_err(|e| LoadError::archive(e, seen()))?;
                    inc(&METRICS.index_loads);
                    if let Some(a) = Arc::get_mut(&mut archive) {
                        a.toc.retain(&indexed.members());
                    }
                    self.save(&archive, &indexed).await;
                    (archive, indexed)
                }
            },
        };
        let tags = select_tags(&self.spec, &indexed)?;
        let mut digests: HashSet<Digest> = HashSet::new();
        let roots: BTreeSet<Digest> = tags.values().flat_map(Root::digests).collect();
        for img in &indexed.images {
            if img.root.digests().iter().any(|d| roots.contains(d)) {
                digests.extend(img.digests.iter().copied());
            }
        }
        // Referrers (signatures, SBOMs) of served manifests are served too.
        let subjects: Vec<Digest> = digests.iter().copied().collect();
        for s in subjects {
            for r in indexed.referrers.get(&s).into_iter().flatten() {
                if let Some(d) = r["digest"].as_str().and_then(|d| d.parse().ok()) {
                    let reach = indexed
                        .images
                        .iter()
                        .find(|i| i.root.digests().contains(&d));
                    digests.insert(d);
                    if let Some(i) = reach {
                        digests.extend(i.digests.iter().copied());
                    }
                }
            }
        }
        Ok(Arc::new(Loaded {
            version,
            archive,
            indexed,
            tags,
            digests,
        }))
    }
}

fn matches(r: &ArchiveRef, want: &ArchiveRef) -> bool {
    match (&want.name, &r.name) {
        (Some(wn), Some(rn)) => wn == rn && (want.tag.is_none() || want.tag == r.tag),
        (Some(_), None) => false,
        (None, _) => want.tag.is_some() && want.tag == r.tag,
    }
}

/// Which tag serves which image, from the spec and the archive.
fn select_tags(spec: &ImageSpec, ix: &Indexed) -> Result<BTreeMap<Tag, Root>, LoadError> {
    let images: Vec<_> = match &spec.select {
        Some(sel) => {
            let want =
                ArchiveRef::parse(sel).ok_or_else(|| SelectError::InvalidSelect(sel.clone()))?;
            let found: Vec<_> = ix
                .images
                .iter()
                .filter(|i| i.refs.iter().any(|r| matches(r, &want)))
                .collect();
            if found.is_empty() {
                let known: Vec<String> = ix
                    .images
                    .iter()
                    .flat_map(|i| i.refs.iter().map(|r| r.to_string()))
                    .collect();
                return Err(SelectError::NoMatch {
                    select: sel.clone(),
                    known: known.join(", "),
                }
                .into());
            }
            found.into_iter().take(1).collect()
        }
        None => ix.images.iter().collect(),
    };
    let mut tags = BTreeMap::new();
    if let Some(want) = &spec.tags {
        if images.len() != 1 {
            return Err(SelectError::Ambiguous(images.len()).into());
        }
        for t in want {
            for img in &images {
                tags.insert(t.clone(), img.root.clone());
            }
        }
        return Ok(tags);
    }
    let mut untagged = Vec::new();
    for img in &images {
        let mut any = false;
        for r in &img.refs {
            if let Some(only) = &spec.only_name
                && r.name.as_ref() != Some(only)
            {
                continue;
            }
            if let Some(t) = &r.tag {
                any = true;
                if tags.contains_key(t) {
                    tracing::warn!(image = %spec.name, tag = %t, "tag recorded twice in the archive; serving the first");
                } else {
                    tags.insert(t.clone(), img.root.clone());
                }
            }
        }
        if !any && spec.only_name.is_none() {
            untagged.push(img);
        }
    }
    if tags.is_empty() {
        match untagged.first() {
            Some(img) => {
                if untagged.len() > 1 {
                    tracing::warn!(image = %spec.name, "the archive holds several untagged images; `latest` serves the first");
                }
                let latest: Tag = "latest"
                    .parse()
                    .map_err(|e| LoadError::Bug(format!("the tag `latest`: {e}")))?;
                tags.insert(latest, img.root.clone());
            }
            None => return Err(SelectError::NoTag.into()),
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ByteStream;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// An object in memory whose server can be switched off; counts stats.
    #[derive(Debug)]
    struct Flaky {
        data: Bytes,
        down: AtomicBool,
        stats: AtomicUsize,
        /// Reads fail (a 5xx, a reset) while stats still answer.
        reads_down: AtomicBool,
        /// Reads answered before `reads_down` takes effect.
        reads_ok: AtomicUsize,
    }

    impl Flaky {
        fn new(down: bool) -> Arc<Flaky> {
            Arc::new(Flaky {
                data: rootfs_tar(),
                down: AtomicBool::new(down),
                stats: AtomicUsize::new(0),
                reads_down: AtomicBool::new(false),
                reads_ok: AtomicUsize::new(0),
            })
        }

        /// A source that answers, with bytes that are no archive.
        fn broken() -> Arc<Flaky> {
            Arc::new(Flaky {
                data: Bytes::from(vec![7u8; 4096]),
                down: AtomicBool::new(false),
                stats: AtomicUsize::new(0),
                reads_down: AtomicBool::new(false),
                reads_ok: AtomicUsize::new(0),
            })
        }

        fn check(&self) -> Result<(), SourceError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(SourceError::io("mem://x", "connection refused"));
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl Source for Flaky {
        fn url(&self) -> &str {
            "mem://x"
        }
        async fn stat(&self) -> Result<Stat, SourceError> {
            self.stats.fetch_add(1, Ordering::SeqCst);
            self.check()?;
            Ok(Stat {
                size: self.data.len() as u64,
                version: "v1".into(),
            })
        }
        async fn read_range(
            &self,
            offset: u64,
            len: u64,
            _: Option<&Stat>,
        ) -> Result<Bytes, SourceError> {
            self.check()?;
            if self.reads_down.load(Ordering::SeqCst)
                && self
                    .reads_ok
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_err()
            {
                return Err(SourceError::io("mem://x", "503 Service Unavailable"));
            }
            let start = (offset as usize).min(self.data.len());
            let end = (offset.saturating_add(len) as usize).min(self.data.len());
            Ok(self.data.slice(start..end))
        }
        async fn stream(
            &self,
            offset: u64,
            len: Option<u64>,
            pin: Option<&Stat>,
        ) -> Result<ByteStream, SourceError> {
            let len = len.unwrap_or(self.data.len() as u64 - offset);
            let b = self.read_range(offset, len, pin).await?;
            Ok(Box::pin(futures_util::stream::once(async move { Ok(b) })))
        }
    }

    fn rootfs_tar() -> Bytes {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/hello", &b"hello"[..]).unwrap();
        Bytes::from(b.into_inner().unwrap())
    }

    fn binding(src: Arc<Flaky>) -> Binding {
        let spec = ImageSpec {
            name: "app".parse().unwrap(),
            source: "mem://x".into(),
            tags: Some(vec!["v1".parse().unwrap()]),
            select: None,
            only_name: None,
            index: None,
            config: Default::default(),
            options: Default::default(),
            origin: "test".into(),
        };
        Binding::new(spec, Location::Tar(src), Duration::from_secs(60), None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_that_is_down_is_asked_once_per_revalidation() {
        let src = Flaky::new(true);
        let b = binding(src.clone());
        for _ in 0..5 {
            let e = b.current().await.unwrap_err();
            assert!(matches!(e, LoadError::Unavailable(_)), "{e}");
        }
        assert_eq!(src.stats.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_good_index_outlives_an_outage() {
        let src = Flaky::new(false);
        let mut b = binding(src.clone());
        b.retry = Duration::ZERO;
        let first = b.current().await.unwrap();
        assert!(first.tags.contains_key(&"v1".parse::<Tag>().unwrap()));
        src.down.store(true, Ordering::SeqCst);
        // Past the revalidation window, the source is asked and fails.
        let e = b.checked_within(Duration::ZERO).await.unwrap_err();
        assert!(matches!(e, LoadError::Unavailable(_)), "{e}");
        assert!(Arc::ptr_eq(&b.last().unwrap(), &first));
        // Back at the same version: the same index, not a re-index.
        src.down.store(false, Ordering::SeqCst);
        let again = b.checked_within(Duration::ZERO).await.unwrap();
        assert!(Arc::ptr_eq(&again, &first));
    }

    /// The bug the #13 harness found: a source failing while the archive
    /// is indexed (the stat answers, the reads do not) was kept for the
    /// archive's version as a "corrupt archive" until the tarball changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_failing_mid_index_is_retried_not_pinned() {
        for reads_ok in [0, 1, 2] {
            let src = Flaky::new(false);
            src.reads_down.store(true, Ordering::SeqCst);
            src.reads_ok.store(reads_ok, Ordering::SeqCst);
            let mut b = binding(src.clone());
            b.retry = Duration::ZERO;
            let e = b.current().await.unwrap_err();
            assert!(
                matches!(e, LoadError::Unavailable(_)),
                "after {reads_ok} reads: {e}"
            );
            src.reads_down.store(false, Ordering::SeqCst);
            b.current().await.expect("recovered");
        }
        let src = Flaky::new(false);
        src.reads_down.store(true, Ordering::SeqCst);
        src.reads_ok.store(1, Ordering::SeqCst);
        let mut b = binding(src.clone());
        b.retry = Duration::from_millis(200);
        let e = b.current().await.unwrap_err();
        assert!(matches!(e, LoadError::Unavailable(_)), "{e}");
        assert!(!e.pinned());
        assert!(!e.to_string().contains("corrupt"), "{e}");
        // Within the backoff, many requests share the one failed attempt.
        let stats = src.stats.load(Ordering::SeqCst);
        for _ in 0..10 {
            assert!(matches!(b.current().await, Err(LoadError::Unavailable(_))));
        }
        assert_eq!(src.stats.load(Ordering::SeqCst), stats);
        // The upstream is back: the next request past the backoff indexes.
        src.reads_down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let l = b
            .current()
            .await
            .expect("recovered once the source is back");
        assert!(l.tags.contains_key(&"v1".parse::<Tag>().unwrap()));
    }

    /// An archive that is broken at a version stays broken at it: asked
    /// once, not re-read per request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_archive_is_kept_broken_for_its_version() {
        let src = Flaky::broken();
        let mut b = binding(src.clone());
        b.retry = Duration::ZERO;
        let e = b.checked_within(Duration::ZERO).await.unwrap_err();
        assert!(matches!(e, LoadError::Broken(_)) && e.pinned(), "{e}");
        let again = b.checked_within(Duration::ZERO).await.unwrap_err();
        assert!(matches!(again, LoadError::Broken(_)), "{again}");
    }

    /// A kept verdict is indexed again after its period (bytes damaged on
    /// their way look like a broken archive), the period doubling while the
    /// same verdict comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_verdict_is_indexed_again_after_its_period() {
        let src = Flaky::broken();
        let mut b = binding(src.clone());
        b.retry = Duration::ZERO;
        b.pinned_recheck = Duration::from_millis(300);
        let verdict = |e: LoadError| match e {
            LoadError::Broken(a) => a,
            e => panic!("{e}"),
        };
        let now = || b.checked_within(Duration::ZERO);
        let first = verdict(now().await.unwrap_err());
        // Within the period: the kept verdict, not a new indexing.
        assert!(Arc::ptr_eq(&first, &verdict(now().await.unwrap_err())));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = verdict(now().await.unwrap_err());
        assert!(!Arc::ptr_eq(&first, &second), "not indexed again");
        // The period doubled (600 ms): still kept 400 ms later.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(Arc::ptr_eq(&second, &verdict(now().await.unwrap_err())));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!Arc::ptr_eq(&second, &verdict(now().await.unwrap_err())));
    }

    #[tokio::test]
    async fn what_an_indexing_failure_means() {
        let seen = || Some(SourceError::io("mem://x", "connection reset"));
        let corrupt = || ArchiveError::Corrupt("unexpected end of file".into());
        assert!(matches!(
            LoadError::archive(corrupt(), None),
            LoadError::Broken(_)
        ));
        assert!(matches!(
            LoadError::archive(corrupt(), seen()),
            LoadError::Unavailable(_)
        ));
        let gone = ArchiveError::Source(SourceError::NotFound { url: "x".into() });
        assert!(matches!(
            LoadError::archive(gone, None),
            LoadError::Missing(_)
        ));
        let panicked = tokio::spawn(async { panic!("boom (expected by this test)") })
            .await
            .unwrap_err();
        let e = LoadError::archive(ArchiveError::Task(panicked), seen());
        assert!(matches!(e, LoadError::Bug(_)) && e.pinned(), "{e}");
        assert!(e.to_string().contains("bug"), "{e}");
    }

    /// A damaged saved index (an offset past the archive, a document that is not its digest) is
    /// discarded and the archive indexed again: never a panic, never served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_saved_index_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&crate::cache::CacheSettings {
            dir: Some(dir.path().to_path_buf()),
            disk: 1 << 20,
            memory: 0,
        }));
        let src = Flaky::new(false);
        let with_cache = || {
            let mut b = binding(src.clone());
            b.cache = Some(cache.clone());
            b
        };
        let good = with_cache().current().await.unwrap();
        let index_dir = dir.path().join("index");
        let file = std::fs::read_dir(&index_dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        // A good saved index is restored as it is: checked, not rewritten.
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&file).unwrap().ino();
        with_cache().current().await.unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
        type Damage = fn(&mut serde_json::Value);
        let damage: [(&str, Damage); 3] = [
            ("offset past the archive", |v| {
                v["toc"]["entries"] = serde_json::json!([{
                    "name": "etc/hello", "kind": "File", "size": 5, "offset": 1u64 << 40,
                    "head": null, "meta": { "mode": 420, "uid": 0, "gid": 0, "mtime": 0 }
                }]);
            }),
            ("document not its digest", |v| {
                let docs = v["indexed"]["docs"].as_object_mut().unwrap();
                for doc in docs.values_mut() {
                    let hex = doc["bytes"].as_str().unwrap().to_string();
                    doc["bytes"] = serde_json::json!(format!("{}20", &hex[..hex.len() - 2]));
                }
            }),
            ("not JSON", |v| *v = serde_json::json!("garbage")),
        ];
        for (what, f) in damage {
            let mut v = saved.clone();
            f(&mut v);
            std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
            let again = with_cache().current().await.unwrap();
            assert_eq!(again.indexed.docs.len(), good.indexed.docs.len(), "{what}");
            for (d, doc) in &again.indexed.docs {
                assert_eq!(Digest::of(&doc.bytes), *d, "{what}");
            }
            // Replaced by a good one.
            let now: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
            assert_eq!(now, saved, "{what}");
        }
    }
}
