//! Blobs read in place from local archives, and the record of which
//! blobs were verified at which source version.
//!
//! A local uncompressed archive (a plain tar, a layout folder, a rootfs
//! `.tar` that is its own layer) already holds each blob's bytes
//! contiguously: copying them into the disk cache would only make a second
//! copy. Such a blob is read from the archive on every request. The first
//! read at a file version hashes it while it streams (the last byte held
//! until the digest matched, as for any fill); a match is remembered as
//! "digest D verified in source S at version V", in memory and as an empty
//! marker file under `<cache>/verified/`, so later reads — and restarts —
//! skip the hashing. A new version (mtime, inode, size) is a new key: a
//! changed file is verified again. Every read checks the file's version
//! when it opens it and again before the last byte goes out, so a file
//! rewritten in place mid-read is never served mixed.
//!
//! The same record serves remote sources when the disk tier cannot take a
//! blob (no cache, full, read-only): once a blob was verified at a version,
//! a range of it is one range read pinned to that version (If-Match), not
//! a read and hash of the whole blob.
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::stream;

use super::{BlobCache, CHUNK, Fetch, Verified, pread};
use crate::archive::LocalSpan;
use crate::image::Digest;
use crate::metrics::{METRICS, inc};
use crate::source::{ByteStream, file_version};

/// Changes whenever what a marker means changes.
const FORMAT: &str = "cartorio-verified-v1";

/// Which (source, version, digest) triples were verified.
pub struct VerifiedRecord {
    seen: Mutex<HashSet<Digest>>,
    /// Where markers are kept across restarts; None: memory only.
    dir: Option<PathBuf>,
}

impl VerifiedRecord {
    /// A record kept in `dir` (created if needed); memory only when `dir`
    /// is None or cannot be created.
    pub fn open(dir: Option<PathBuf>) -> VerifiedRecord {
        let dir = dir.filter(|d| match std::fs::create_dir_all(d) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(dir = %d.display(), "verified blobs will not be remembered across restarts: {e}");
                false
            }
        });
        VerifiedRecord {
            seen: Mutex::new(HashSet::new()),
            dir,
        }
    }

    fn key(url: &str, version: &str, digest: &Digest) -> Digest {
        Digest::of(format!("{FORMAT}\n{url}\n{version}\n{digest}").as_bytes())
    }

    /// Whether `digest` was verified in `url` at `version`.
    pub fn contains(&self, url: &str, version: &str, digest: &Digest) -> bool {
        let key = Self::key(url, version, digest);
        if self.seen.lock().is_ok_and(|s| s.contains(&key)) {
            return true;
        }
        let on_disk = self
            .dir
            .as_ref()
            .is_some_and(|d| d.join(key.hex()).is_file());
        if on_disk && let Ok(mut s) = self.seen.lock() {
            s.insert(key);
        }
        on_disk
    }

    /// Records a verification (the marker is written best effort: losing
    /// it costs one more hashing pass after a restart).
    pub fn insert(&self, url: &str, version: &str, digest: &Digest) {
        let key = Self::key(url, version, digest);
        let fresh = self.seen.lock().is_ok_and(|mut s| s.insert(key));
        if let (true, Some(dir)) = (fresh, &self.dir) {
            let path = dir.join(key.hex());
            if let Err(e) = File::create(&path) {
                tracing::debug!(path = %path.display(), "cannot record a verified blob: {e}");
            }
        }
    }
}

/// Verified bytes of one blob in an open file: a cached blob, or a blob
/// read in place whose digest was verified at the file's version. What the
/// zero-copy path hands to `sendfile`, and what other responses stream.
#[derive(Debug)]
pub struct FileSpan {
    pub file: Arc<File>,
    /// Where the blob's first byte is in the file.
    pub offset: u64,
    pub size: u64,
    /// For a file read in place: the version it had when opened. The last
    /// byte of a response is sent only if it still has it.
    pinned: Option<String>,
}

impl FileSpan {
    /// A verified cached file (content-addressed: it never changes).
    pub fn cached(file: File, size: u64) -> FileSpan {
        FileSpan {
            file: Arc::new(file),
            offset: 0,
            size,
            pinned: None,
        }
    }

    /// Fails when the file is no longer at the version it was opened at
    /// (rewritten in place while being served).
    pub fn check(&self) -> io::Result<()> {
        let Some(pinned) = &self.pinned else {
            return Ok(());
        };
        let now = file_version(&self.file.metadata()?);
        if &now != pinned {
            tracing::warn!(
                was = pinned,
                now,
                "archive changed while a blob was served from it; response cut"
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the archive changed while the blob was being served",
            ));
        }
        Ok(())
    }

    /// Streams bytes `start..=end` of the blob; the last chunk goes out
    /// only after [`FileSpan::check`] passed.
    pub fn stream(self: Arc<Self>, start: u64, end: u64) -> ByteStream {
        Box::pin(stream::try_unfold(start, move |pos| {
            let span = self.clone();
            async move {
                if pos > end {
                    return Ok(None);
                }
                let want = (end + 1 - pos).min(CHUNK);
                let b = pread(span.file.clone(), span.offset + pos, want).await?;
                if b.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file is shorter than the blob",
                    ));
                }
                let next = pos + b.len() as u64;
                if next > end {
                    span.check()?;
                }
                Ok(Some((b, next)))
            }
        }))
    }
}

/// Opens bytes `offset..offset+len` of a blob, pinned to its source's version.
pub type RangeFetch =
    Arc<dyn Fn(u64, u64) -> BoxFuture<'static, io::Result<ByteStream>> + Send + Sync>;

/// Where a blob of a remote source lives, for the verification record: the
/// source, its version, and pinned range reads of the blob.
#[derive(Clone)]
pub struct Origin {
    pub url: String,
    pub version: String,
    pub range: RangeFetch,
}

/// A local span opened at the file's current version.
struct Opened {
    span: FileSpan,
    url: String,
    version: String,
}

impl BlobCache {
    /// Opens the blob's bytes in the local file: checks the file is still
    /// at the version the index was built from and long enough.
    async fn open_local(&self, at: &LocalSpan, size: u64) -> io::Result<Opened> {
        let path = at.path.clone();
        let (file, version) = tokio::task::spawn_blocking(move || {
            let f = File::open(&path)?;
            let meta = f.metadata()?;
            Ok::<_, io::Error>((f, file_version(&meta), meta.len()))
        })
        .await
        .map_err(io::Error::other)?
        .and_then(|(f, v, len)| {
            if at.offset.checked_add(size).is_none_or(|e| e > len) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} is shorter than the blob it indexed", at.url),
                ));
            }
            Ok((f, v))
        })?;
        if let Some(expected) = &at.version
            && *expected != version
        {
            return Err(io::Error::other(format!(
                "{}: changed since it was indexed (was {expected}, now {version})",
                at.url
            )));
        }
        Ok(Opened {
            span: FileSpan {
                file: Arc::new(file),
                offset: at.offset,
                size,
                pinned: Some(version.clone()),
            },
            url: at.url.clone(),
            version,
        })
    }

    /// Bytes `start..=end` of a blob read in place: without hashing when
    /// it was verified at this version, else hashed as it streams (the
    /// whole blob, holding the last byte) and remembered once it matched.
    pub async fn read_in_place(
        &self,
        at: &LocalSpan,
        digest: Digest,
        size: u64,
        start: u64,
        end: u64,
        label: String,
    ) -> io::Result<ByteStream> {
        let o = self.open_local(at, size).await?;
        inc(&METRICS.in_place_reads);
        crate::metrics::served(crate::metrics::Tier::InPlace);
        let span = Arc::new(o.span);
        if self.verified.contains(&o.url, &o.version, &digest) {
            return Ok(span.stream(start, end));
        }
        let record = self.verified.clone();
        let (url, version) = (o.url, o.version);
        Ok(Box::pin(Verified::new(
            span.stream(0, size - 1),
            digest,
            size,
            start,
            end,
            label,
            Box::new(move || record.insert(&url, &version, &digest)),
        )))
    }

    /// The blob's bytes in the local file, if they were verified at its
    /// current version; None when they still need hashing.
    pub async fn verified_in_place(
        &self,
        at: &LocalSpan,
        digest: Digest,
        size: u64,
    ) -> io::Result<Option<FileSpan>> {
        let o = self.open_local(at, size).await?;
        if !self.verified.contains(&o.url, &o.version, &digest) {
            return Ok(None);
        }
        inc(&METRICS.in_place_reads);
        crate::metrics::served(crate::metrics::Tier::InPlace);
        Ok(Some(o.span))
    }

    /// A blob read straight from its source (no disk tier to fill): a
    /// pinned range read when the blob was verified at this version, else
    /// the whole blob hashed as it streams and recorded once it matched.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn direct(
        &self,
        digest: Digest,
        size: u64,
        start: u64,
        end: u64,
        label: String,
        fetch: Fetch,
        origin: Option<Origin>,
    ) -> io::Result<ByteStream> {
        crate::metrics::served(crate::metrics::Tier::Source);
        let Some(origin) = origin else {
            return Ok(Box::pin(Verified::new(
                super::counted(fetch().await?),
                digest,
                size,
                start,
                end,
                label,
                Box::new(|| {}),
            )));
        };
        if self
            .verified
            .contains(&origin.url, &origin.version, &digest)
        {
            return Ok(super::counted(
                (origin.range)(start, end + 1 - start).await?,
            ));
        }
        let record = self.verified.clone();
        Ok(Box::pin(Verified::new(
            super::counted(fetch().await?),
            digest,
            size,
            start,
            end,
            label,
            Box::new(move || record.insert(&origin.url, &origin.version, &digest)),
        )))
    }

    /// The blob's file in the disk tier, if it is there whole and this
    /// process has hashed or written it (a file found at start-up is
    /// checked by the ordinary read path first).
    pub async fn cached_file(&self, digest: &Digest, size: u64) -> Option<FileSpan> {
        let disk = self.disk.as_ref()?;
        if !disk.contains(digest) || !disk.is_verified(digest) {
            return None;
        }
        let path = disk.path(digest);
        let f = tokio::task::spawn_blocking(move || {
            let f = File::open(path).ok()?;
            f.metadata().is_ok_and(|m| m.len() == size).then_some(f)
        })
        .await
        .ok()??;
        inc(&METRICS.cache_disk_hits);
        crate::metrics::served(crate::metrics::Tier::Disk);
        Some(FileSpan::cached(f, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheSettings;
    use crate::cache::tests::drain;
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering;

    /// A file holding a blob between two pads, and its span.
    fn archive(dir: &std::path::Path, blob: &[u8]) -> LocalSpan {
        let path = dir.join("a.tar");
        let mut data = vec![0u8; 1000];
        data.extend_from_slice(blob);
        data.extend_from_slice(&[0u8; 500]);
        std::fs::write(&path, &data).unwrap();
        let version = file_version(&std::fs::metadata(&path).unwrap());
        LocalSpan {
            url: path.display().to_string(),
            path,
            offset: 1000,
            version: Some(version),
        }
    }

    /// A cache with neither a disk nor a memory tier.
    fn tierless() -> BlobCache {
        BlobCache::new(&CacheSettings {
            dir: None,
            disk: 0,
            memory: 0,
        })
    }

    /// Whether `cache` holds a verification of the blob at `at`'s version.
    async fn verified(cache: &BlobCache, at: &LocalSpan, digest: Digest, size: u64) -> bool {
        cache
            .verified_in_place(at, digest, size)
            .await
            .unwrap()
            .is_some()
    }

    fn hashed() -> u64 {
        METRICS.blob_bytes_hashed.load(Ordering::Relaxed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verified_once_then_served_without_hashing_and_nothing_copied() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let cache = BlobCache::new(&CacheSettings {
            dir: Some(cache_dir.clone()),
            disk: 1 << 30,
            memory: 1 << 20,
        });
        let blob: Vec<u8> = (0..8_000_000u32).map(|i| (i % 253) as u8).collect();
        let d = Digest::of(&blob);
        let size = blob.len() as u64;
        let at = archive(dir.path(), &blob);
        assert!(!verified(&cache, &at, d, size).await);

        // First read (a range): the whole blob is hashed, the range served.
        let before = hashed();
        let s = cache.read_in_place(&at, d, size, 10, 99, "t".into()).await;
        assert_eq!(drain(s.unwrap()).await, (blob[10..100].to_vec(), true));
        assert!(
            hashed() - before >= size,
            "the first read must hash the blob"
        );

        // Verified now: ranges and whole reads hash nothing (other tests
        // run alongside, so compare against this blob's size).
        let before = hashed();
        let s = cache
            .read_in_place(&at, d, size, 0, size - 1, "t".into())
            .await;
        assert_eq!(drain(s.unwrap()).await, (blob.clone(), true));
        let span = cache.verified_in_place(&at, d, size).await.unwrap();
        let span = Arc::new(span.expect("verified"));
        assert_eq!(drain(span.stream(5, 5)).await, (blob[5..6].to_vec(), true));
        assert!(hashed() - before < size, "a verified blob was hashed again");

        // Nothing but the marker was written to the cache folder.
        assert_eq!(
            std::fs::read_dir(cache_dir.join("sha256")).unwrap().count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(cache_dir.join("verified"))
                .unwrap()
                .count(),
            1
        );

        // A restart remembers it.
        let again = BlobCache::new(&CacheSettings {
            dir: Some(cache_dir.clone()),
            disk: 1 << 30,
            memory: 0,
        });
        assert!(verified(&again, &at, d, size).await);
    }

    /// A source of `data` whose whole reads and range reads are counted.
    fn origin(
        data: Vec<u8>,
        lie: bool,
        whole: Arc<std::sync::atomic::AtomicUsize>,
        ranges: Arc<std::sync::atomic::AtomicUsize>,
    ) -> (Fetch, Origin) {
        let mut served = data.clone();
        if lie {
            served[7] ^= 1;
        }
        let served = bytes::Bytes::from(served);
        let s2 = served.clone();
        let fetch: Fetch = Arc::new(move || {
            whole.fetch_add(1, Ordering::SeqCst);
            let b = s2.clone();
            Box::pin(async move {
                let chunks: Vec<io::Result<bytes::Bytes>> =
                    b.chunks(4096).map(|c| Ok(b.slice_ref(c))).collect();
                Ok(Box::pin(stream::iter(chunks)) as ByteStream)
            })
        });
        let range: RangeFetch = Arc::new(move |off, len| {
            ranges.fetch_add(1, Ordering::SeqCst);
            let b = served.slice(off as usize..(off + len) as usize);
            Box::pin(async move { Ok(Box::pin(stream::once(async move { Ok(b) })) as ByteStream) })
        });
        let o = Origin {
            url: "http://x/a.tar".into(),
            version: "\"etag\"".into(),
            range,
        };
        (fetch, o)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_disk_tier_a_verified_blob_is_read_by_ranges() {
        use std::sync::atomic::AtomicUsize;
        let cache = Arc::new(tierless());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let d = Digest::of(&data);
        let (whole, ranges) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));

        // A lying source: cut, and not recorded (the next read hashes again).
        let (f, o) = origin(data.clone(), true, whole.clone(), ranges.clone());
        for _ in 0..2 {
            let s = cache.read(d, 100_000, 0, 0, "t".into(), f.clone(), Some(o.clone()));
            assert!(!drain(s.await.unwrap()).await.1);
        }
        assert_eq!(
            (whole.load(Ordering::SeqCst), ranges.load(Ordering::SeqCst)),
            (2, 0)
        );

        // An honest one: the first range reads the whole blob; later ones one range each.
        let (f, o) = origin(data.clone(), false, whole.clone(), ranges.clone());
        let s = cache.read(d, 100_000, 0, 0, "t".into(), f.clone(), Some(o.clone()));
        assert_eq!(drain(s.await.unwrap()).await, (data[..1].to_vec(), true));
        for (a, b) in [(0u64, 0u64), (500, 99_999), (99_999, 99_999)] {
            let s = cache.read(d, 100_000, a, b, "t".into(), f.clone(), Some(o.clone()));
            let want = data[a as usize..=b as usize].to_vec();
            assert_eq!(drain(s.await.unwrap()).await, (want, true));
        }
        assert_eq!(
            (whole.load(Ordering::SeqCst), ranges.load(Ordering::SeqCst)),
            (3, 3)
        );

        // Another version of the source is another key: verified again.
        let (f, mut o) = origin(data.clone(), false, whole.clone(), ranges.clone());
        o.version = "\"other\"".into();
        let s = cache.read(d, 100_000, 9, 9, "t".into(), f, Some(o));
        assert!(drain(s.await.unwrap()).await.1);
        assert_eq!(whole.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_archive_is_cut_and_never_marked_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tierless();
        let blob = vec![42u8; 100_000];
        let wrong = Digest::of(b"not this");
        let at = archive(dir.path(), &blob);
        for _ in 0..2 {
            let s = cache
                .read_in_place(&at, wrong, 100_000, 0, 99_999, "t".into())
                .await;
            let (bytes, ok) = drain(s.unwrap()).await;
            assert!(!ok && bytes.len() < blob.len());
            assert!(!verified(&cache, &at, wrong, 100_000).await);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_file_is_refused_then_verified_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tierless();
        let blob = vec![7u8; 200_000];
        let d = Digest::of(&blob);
        let at = archive(dir.path(), &blob);
        let s = cache
            .read_in_place(&at, d, 200_000, 0, 199_999, "t".into())
            .await;
        assert!(drain(s.unwrap()).await.1);
        assert!(verified(&cache, &at, d, 200_000).await);

        // Rewritten (same bytes, new mtime): not the indexed version any more.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let at2 = archive(dir.path(), &blob);
        assert_ne!(at.version, at2.version);
        assert!(
            cache
                .read_in_place(&at, d, 200_000, 0, 9, "t".into())
                .await
                .is_err()
        );
        // Re-indexed at the new version: verified again before skipping the hash.
        assert!(!verified(&cache, &at2, d, 200_000).await);
        let s = cache
            .read_in_place(&at2, d, 200_000, 0, 199_999, "t".into())
            .await;
        assert!(drain(s.unwrap()).await.1);
        assert!(verified(&cache, &at2, d, 200_000).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_rewritten_mid_read_is_cut_before_its_last_byte() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tierless();
        let blob: Vec<u8> = (0..2_000_000u32).map(|i| (i % 13) as u8).collect();
        let d = Digest::of(&blob);
        let size = blob.len() as u64;
        let at = archive(dir.path(), &blob);
        let s = cache
            .read_in_place(&at, d, size, 0, size - 1, "t".into())
            .await;
        assert!(drain(s.unwrap()).await.1);
        // Verified: served without hashing. Rewrite it in place after the
        // first chunk went out.
        let mut s = cache
            .read_in_place(&at, d, size, 0, size - 1, "t".into())
            .await
            .unwrap();
        let first = s.next().await.unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&at.path)
                .unwrap();
            f.write_all_at(b"X", 1000 + size - 1).unwrap();
        }
        let (rest, ok) = drain(s).await;
        assert!(!ok, "a changed file completed a response");
        assert!((first.len() + rest.len()) < blob.len());
    }
}
