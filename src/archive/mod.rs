//! What a tarball holds: its table of contents, read lazily from the
//! source, and the images its format describes.
//!
//! Three containers: a plain tar on a source that can range-read (headers
//! are walked with range reads, entries served as byte ranges), a gzip or
//! zstd compressed tar (one streaming pass to index; an entry is served by
//! decompressing up to it), and a directory (an OCI layout or Concourse
//! folder on local disk).
pub mod budget;
mod detect;
pub mod docker;
mod guard;
pub mod model;
pub mod oci;
pub mod repack;
pub mod rootfs;
pub mod saved;
mod seekable;
pub mod toc;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

pub use detect::index;
pub use model::{ArchiveRef, Blob, BlobAt, Doc, Format, FoundImage, Indexed, Root};
pub use seekable::SeekState;
pub use toc::{Entry, EntryKind, Meta, Spill, SpillFile, Toc};

use crate::image::{Digest, Hasher};
use crate::source::{ByteStream, FileSource, Source, SourceError, Stat};

/// The lazy header walk may read at least this much (or a quarter of the
/// archive) before a streaming pass is cheaper.
const WALK_BUDGET_MIN: u64 = 4 * 1024 * 1024;

/// Largest member read whole into memory (manifests, configs, metadata).
/// Anything bigger is not a JSON document any real tool writes.
pub const MAX_DOC: u64 = 16 * 1024 * 1024;

/// Why an archive cannot be indexed or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("refused hostile archive: {0}")]
    Hostile(String),
    #[error("not a tar archive (nor gzip- or zstd-compressed tar, nor a directory)")]
    NotAnArchive,
    #[error("{0}")]
    Format(String),
    /// The archive costs more to index than any real image does.
    #[error("refused archive: more than {} {} (per-archive limit)", .0.max(), .0.name())]
    Budget(budget::Limit),
    /// A blocking indexing task panicked or was cancelled: a bug in
    /// cartorio, not a fact about the archive.
    #[error("internal error: an indexing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Whole-archive compression, recognized by magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn sniff(head: &[u8]) -> Option<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Where the archive is and how its bytes are laid out.
#[derive(Debug)]
pub enum Container {
    /// A plain tar on a source that honours range reads.
    Tar(Arc<dyn Source>),
    /// A compressed tar, or any tar on a source without range support:
    /// an entry is reached by reading (and decompressing) from the start.
    Streamed {
        source: Arc<dyn Source>,
        compression: Option<Compression>,
        /// Whether the source honours ranges (the stored file itself, a
        /// rootfs layer, can then be range-read).
        ranged: bool,
    },
    Dir(PathBuf),
}

/// The layout of a [`Container`] without its source, as saved indexes
/// record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Layout {
    Tar,
    Streamed {
        compression: Option<Compression>,
        ranged: bool,
    },
}

/// Digests of the whole archive stream, as a rootfs layer needs them.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct StreamDigests {
    /// sha256 and size of the bytes as stored.
    pub stored: (Digest, u64),
    /// sha256 of the decompressed tar (the layer's diff_id).
    pub diff_id: Digest,
}

/// A blob's bytes inside a local file: `offset` is where its first byte
/// is; `version` the file version they were indexed at (None for a file
/// of a layout folder, which has its own).
#[derive(Clone, Debug)]
pub struct LocalSpan {
    /// The source, as the verification record keys it.
    pub url: String,
    pub path: PathBuf,
    pub offset: u64,
    pub version: Option<String>,
}

/// An opened archive: where it lives and its table of contents.
#[derive(Debug)]
pub struct Archive {
    pub container: Container,
    pub toc: Toc,
    pub stat: Stat,
    /// Bytes read from the source to build the TOC.
    pub fetched: u64,
    /// Set when the TOC came from a full streaming pass.
    pub digests: Option<StreamDigests>,
    /// Where decompression can start (compressed archives).
    pub seek: SeekState,
    /// What indexing this archive may still cost: the TOC walk and the
    /// format walk charge the same budget.
    pub budget: Arc<budget::Budget>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Skips `skip` bytes of a reader and streams the next `len`.
async fn skip_take(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    skip: u64,
    len: u64,
) -> Result<ByteStream, ArchiveError> {
    let skipped = tokio::io::copy(&mut (&mut r).take(skip), &mut tokio::io::sink())
        .await
        .map_err(|e| ArchiveError::Corrupt(format!("reading up to the entry failed: {e}")))?;
    if skipped != skip {
        return Err(ArchiveError::Corrupt(
            "the archive ended before the entry".into(),
        ));
    }
    let body = ReaderStream::with_capacity(r.take(len), 256 * 1024);
    Ok(Box::pin(body.map_err(other)))
}

/// Decompresses a byte stream (or passes it through).
fn decoder(stream: ByteStream, c: Option<Compression>) -> Box<dyn AsyncRead + Send + Unpin> {
    let reader = BufReader::with_capacity(256 * 1024, StreamReader::new(stream));
    let Some(c) = c else {
        return Box::new(reader);
    };
    match c {
        Compression::Gzip => {
            let mut d = async_compression::tokio::bufread::GzipDecoder::new(reader);
            d.multiple_members(true);
            Box::new(Decompressed(d))
        }
        Compression::Zstd => {
            let mut d = async_compression::tokio::bufread::ZstdDecoder::new(reader);
            d.multiple_members(true);
            Box::new(Decompressed(d))
        }
    }
}

/// A decompressing reader whose output counts in
/// `cartorio_decompressed_bytes_total`.
struct Decompressed<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for Decompressed<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        crate::metrics::METRICS.decompressed_bytes.fetch_add(
            (buf.filled().len() - before) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        r
    }
}

impl Archive {
    /// Opens a tar (plain or compressed) on `source`: detects compression by
    /// magic bytes and builds the TOC. A plain tar on a source that honours
    /// ranges costs a few range reads; anything else one streaming pass.
    pub async fn open(source: Arc<dyn Source>) -> Result<Archive, ArchiveError> {
        Self::open_spilling(source, None).await
    }

    /// Like [`Archive::open`]; a streaming pass hands the blobs it passes
    /// to `spill`.
    pub async fn open_spilling(
        source: Arc<dyn Source>,
        spill: Option<Arc<dyn Spill>>,
    ) -> Result<Archive, ArchiveError> {
        let stat = source.stat().await?;
        let head = match source.read_range(0, 512, Some(&stat)).await {
            Ok(h) => h,
            Err(SourceError::RangeUnsupported { .. }) => {
                tracing::info!(
                    source = source.url(),
                    "no range support: indexing with one streaming pass"
                );
                return Self::open_streamed(source, stat, false, spill).await;
            }
            Err(e) => return Err(e.into()),
        };
        if Compression::sniff(&head).is_some() {
            tracing::info!(
                source = source.url(),
                "compressed archive: indexing with one streaming pass"
            );
            return Self::open_streamed(source, stat, true, spill).await;
        }
        if head.len() < 512 || !detect::looks_like_tar(&head) {
            return Err(ArchiveError::NotAnArchive);
        }
        let rt = tokio::runtime::Handle::current();
        let src = source.clone();
        let pin = stat.clone();
        // Headers packed densely (a rootfs of small files) make the lazy
        // walk read most of the file, and such an archive needs a full
        // read for its digest anyway: past this budget, one streaming pass
        // does both.
        let read_budget = (stat.size / 4).max(WALK_BUDGET_MIN);
        let spend = Arc::new(budget::Budget::default());
        let charged = spend.clone();
        let walked = tokio::task::spawn_blocking(move || {
            let size = pin.size;
            let mut reader = toc::RangeReader::new(src, rt, pin, read_budget);
            let toc = {
                let guard = guard::HeaderGuard::new(&mut reader, charged.clone());
                let mut ar = tar::Archive::new(guard);
                ar.entries_with_seek()
                    .map_err(|e| ArchiveError::Corrupt(e.to_string()))
                    .and_then(|entries| toc::walk(entries, Some(size), false, None, &charged))
            };
            (toc, reader.fetched, reader.exhausted)
        })
        .await
        .map_err(ArchiveError::Task)?;
        let (toc, fetched) = match walked {
            (Ok(toc), fetched, _) => (toc, fetched),
            (Err(_), fetched, true) => {
                tracing::info!(
                    source = source.url(),
                    read = fetched,
                    "dense headers (a rootfs?): indexing with one streaming pass"
                );
                let mut a = Self::open_streamed(source, stat, true, spill).await?;
                a.fetched += fetched;
                return Ok(a);
            }
            (Err(e), _, false) => return Err(e),
        };
        Ok(Archive {
            container: Container::Tar(source),
            toc,
            stat,
            fetched: fetched + head.len() as u64,
            digests: None,
            seek: SeekState::default(),
            budget: spend,
        })
    }

    /// Indexes an archive in one pass over its bytes: decompresses if
    /// needed, walks the tar, hashes the stored and the uncompressed stream.
    async fn open_streamed(
        source: Arc<dyn Source>,
        stat: Stat,
        ranged: bool,
        spill: Option<Arc<dyn Spill>>,
    ) -> Result<Archive, ArchiveError> {
        let mut raw = source.stream(0, None, Some(&stat)).await?;
        // Sniff the compression from the first chunk, then put it back.
        let first = match raw.next().await {
            Some(c) => c.map_err(|e| ArchiveError::Corrupt(e.to_string()))?,
            None => return Err(ArchiveError::NotAnArchive),
        };
        let compression = Compression::sniff(&first);
        let raw: ByteStream =
            Box::pin(futures_util::stream::once(async move { Ok(first) }).chain(raw));
        let spend = Arc::new(budget::Budget::default());
        let charged = spend.clone();
        let pass = seekable::Pass::start(raw, compression, spend.clone())?;
        let (toc, pass) = tokio::task::spawn_blocking(move || {
            let mut pass = pass;
            let toc = {
                let mut ar = tar::Archive::new(guard::HeaderGuard::new(&mut pass, charged.clone()));
                // Seeking skips entry data without copying it.
                let entries = ar
                    .entries_with_seek()
                    .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
                toc::walk(entries, None, true, spill.as_deref(), &charged)?
            };
            // The diff_id covers the whole decompressed stream, including
            // the end-of-archive blocks the tar reader stops before.
            pass.drain().map_err(|e| match guard::refusal(e) {
                Ok(refused) => refused,
                Err(e) => ArchiveError::Corrupt(format!("decompression failed: {e}")),
            })?;
            Ok::<_, ArchiveError>((toc, pass))
        })
        .await
        .map_err(ArchiveError::Task)??;
        let done = pass.finish().await?;
        let (stored, n) = done.stored;
        if n != stat.size {
            return Err(ArchiveError::Corrupt(format!(
                "read {n} bytes but the source is {} bytes: changed while reading?",
                stat.size
            )));
        }
        // A seekable zstd file's table has every frame; the pass only
        // the frames at least a MiB apart.
        let table = match compression {
            Some(Compression::Zstd) if ranged => seekable::read_seek_table(&source, &stat).await,
            _ => None,
        };
        Ok(Archive {
            container: Container::Streamed {
                source,
                compression,
                ranged,
            },
            toc,
            stat,
            fetched: n,
            digests: Some(StreamDigests {
                stored: (stored, n),
                diff_id: done.diff_id,
            }),
            seek: SeekState::new(table.or(done.points)),
            budget: spend,
        })
    }

    /// How the bytes are laid out, for saving the index; None for a
    /// directory (cheap to list again).
    pub fn layout(&self) -> Option<Layout> {
        match &self.container {
            Container::Tar(_) => Some(Layout::Tar),
            Container::Streamed {
                compression,
                ranged,
                ..
            } => Some(Layout::Streamed {
                compression: *compression,
                ranged: *ranged,
            }),
            Container::Dir(_) => None,
        }
    }

    /// An archive whose TOC was saved earlier for this source at this
    /// version: nothing is read to restore it.
    pub fn restore(
        source: Arc<dyn Source>,
        layout: Layout,
        toc: Toc,
        stat: Stat,
        digests: Option<StreamDigests>,
    ) -> Archive {
        let container = match layout {
            Layout::Tar => Container::Tar(source),
            Layout::Streamed {
                compression,
                ranged,
            } => Container::Streamed {
                source,
                compression,
                ranged,
            },
        };
        Archive {
            container,
            toc,
            stat,
            fetched: 0,
            digests,
            seek: SeekState::default(),
            budget: Arc::default(),
        }
    }

    /// Opens a directory (an OCI layout or a Concourse folder): the TOC is
    /// its file list.
    pub async fn open_dir(path: &Path) -> Result<Archive, ArchiveError> {
        let root = path.to_path_buf();
        let (toc, newest) = tokio::task::spawn_blocking(move || detect::walk_dir(&root))
            .await
            .map_err(ArchiveError::Task)??;
        Ok(Archive {
            container: Container::Dir(path.to_path_buf()),
            toc,
            stat: Stat {
                size: 0,
                version: newest,
            },
            fetched: 0,
            digests: None,
            seek: SeekState::default(),
            budget: Arc::default(),
        })
    }

    pub fn describe(&self) -> String {
        match &self.container {
            Container::Tar(s) | Container::Streamed { source: s, .. } => s.url().to_string(),
            Container::Dir(p) => p.display().to_string(),
        }
    }

    /// The bytes of a member, which must be at most [`MAX_DOC`] long.
    pub async fn read_member(&self, name: &str) -> Result<Bytes, ArchiveError> {
        if let Some(b) = self.toc.captured(name) {
            return Ok(b.clone());
        }
        let e = self.member(name)?;
        if e.size > MAX_DOC {
            return Err(ArchiveError::Format(format!(
                "{name} is {} bytes, too large for a JSON document",
                e.size
            )));
        }
        let mut out = Vec::with_capacity(e.size as usize);
        let mut s = self.member_stream(e, 0, e.size).await?;
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.map_err(|e| ArchiveError::Corrupt(e.to_string()))?);
        }
        if out.len() as u64 != e.size {
            return Err(ArchiveError::Corrupt(format!("{name} is truncated")));
        }
        Ok(Bytes::from(out))
    }

    /// A JSON document a format reads while indexing (manifest.json, a
    /// config, index.json, an OCI blob): charged to the archive's budget
    /// before it is read. Serving reads members with [`Archive::read_member`],
    /// which charges nothing.
    pub async fn read_doc(&self, name: &str) -> Result<Bytes, ArchiveError> {
        let e = self.member(name)?;
        // Readers disagree on which of two same-named documents counts.
        if self.toc.repeated(&e.name) {
            return Err(ArchiveError::Hostile(format!(
                "two members are named {:?}: readers disagree on which one counts",
                e.name
            )));
        }
        self.budget
            .charge(budget::Limit::DocumentBytes, e.size.min(MAX_DOC + 1))?;
        self.read_member(name).await
    }

    /// The entry named `name` (links followed), or a clear error.
    pub fn member(&self, name: &str) -> Result<&Entry, ArchiveError> {
        self.toc
            .get(name)
            .filter(|e| e.kind == EntryKind::File)
            .ok_or_else(|| ArchiveError::Format(format!("the archive has no file {name:?}")))
    }

    /// The first bytes of a member, to sniff its compression.
    pub async fn member_head(&self, e: &Entry) -> Result<Bytes, ArchiveError> {
        if let Some(h) = e.head {
            return Ok(Bytes::copy_from_slice(&h));
        }
        if let Some(b) = self.toc.captured(&e.name) {
            return Ok(b.slice(..b.len().min(8)));
        }
        let n = e.size.min(8);
        let mut s = self.member_stream(e, 0, n).await?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.map_err(|e| ArchiveError::Corrupt(e.to_string()))?);
        }
        Ok(Bytes::from(out))
    }

    /// Streams `len` bytes of a member starting at `start` within it.
    pub async fn member_stream(
        &self,
        e: &Entry,
        start: u64,
        len: u64,
    ) -> Result<ByteStream, ArchiveError> {
        if start.checked_add(len).is_none_or(|end| end > e.size) {
            return Err(ArchiveError::Format(format!(
                "{start}+{len} is outside {} ({} bytes)",
                e.name, e.size
            )));
        }
        if let Container::Dir(root) = &self.container {
            let f = FileSource::new(e.name.clone(), root.join(&e.name));
            return Ok(f.stream(start, Some(len), None).await?);
        }
        let at = e
            .offset
            .checked_add(start)
            .ok_or_else(|| ArchiveError::Corrupt(format!("{} lies past any offset", e.name)))?;
        self.tar_span(at, len).await
    }

    /// Streams `len` bytes of the tar stream (decompressed, when the
    /// archive is compressed) from offset `at`.
    pub(crate) async fn tar_span(&self, at: u64, len: u64) -> Result<ByteStream, ArchiveError> {
        match &self.container {
            // A plain tar, also when it was indexed in one pass: ranges.
            Container::Tar(s)
            | Container::Streamed {
                source: s,
                compression: None,
                ranged: true,
            } => Ok(s.stream(at, Some(len), Some(&self.stat)).await?),
            Container::Dir(_) => Err(ArchiveError::Format(
                "a directory is not a tar stream".into(),
            )),
            Container::Streamed {
                source,
                compression: Some(c),
                ..
            } => {
                // Decompress from the nearest seek point before `at` (the
                // start when there is none). The cache makes this a
                // one-time cost.
                self.seek.stream(source, &self.stat, *c, at, len).await
            }
            Container::Streamed {
                source,
                compression: None,
                ..
            } => {
                // No random access: read up to `at`.
                let raw = source.stream(0, None, Some(&self.stat)).await?;
                skip_take(decoder(raw, None), at, len).await
            }
        }
    }

    /// Streams the archive file as stored (a rootfs layer is the file).
    pub async fn whole_stream(&self, start: u64, len: u64) -> Result<ByteStream, ArchiveError> {
        match &self.container {
            Container::Tar(source)
            | Container::Streamed {
                source,
                ranged: true,
                ..
            } => Ok(source.stream(start, Some(len), Some(&self.stat)).await?),
            Container::Streamed { source, .. } => {
                let raw = source.stream(0, None, Some(&self.stat)).await?;
                skip_take(decoder(raw, None), start, len).await
            }
            Container::Dir(_) => Err(ArchiveError::Format("a directory is not a layer".into())),
        }
    }

    /// Whether a blob at `at` can be read by pinned range reads of the
    /// source, without reading (or decompressing) from its start.
    pub fn ranged(&self, at: &BlobAt) -> bool {
        matches!(
            (&self.container, at),
            (
                Container::Tar(_)
                    | Container::Streamed {
                        compression: None,
                        ranged: true,
                        ..
                    },
                BlobAt::Member(_)
            ) | (
                Container::Tar(_) | Container::Streamed { ranged: true, .. },
                BlobAt::Whole
            )
        )
    }

    /// Where a blob's bytes lie in a local file, when they can be read in
    /// place: a member of a plain tar (or of a layout folder), or the
    /// archive file itself as stored (a rootfs layer). None for anything
    /// that needs decompressing, a remote source, or generated bytes.
    pub fn local_span(&self, at: &BlobAt) -> Option<LocalSpan> {
        match (&self.container, at) {
            (
                Container::Tar(s)
                | Container::Streamed {
                    source: s,
                    compression: None,
                    ranged: true,
                },
                BlobAt::Member(name),
            ) => Some(LocalSpan {
                url: s.url().to_string(),
                path: s.local_path()?.to_path_buf(),
                offset: self.member(name).ok()?.offset,
                version: Some(self.stat.version.clone()),
            }),
            (
                Container::Tar(s)
                | Container::Streamed {
                    source: s,
                    ranged: true,
                    ..
                },
                BlobAt::Whole,
            ) => Some(LocalSpan {
                url: s.url().to_string(),
                path: s.local_path()?.to_path_buf(),
                offset: 0,
                version: Some(self.stat.version.clone()),
            }),
            (Container::Dir(root), BlobAt::Member(name)) => {
                let e = self.member(name).ok()?;
                let path = root.join(&e.name);
                Some(LocalSpan {
                    url: path.display().to_string(),
                    path,
                    offset: 0,
                    version: None,
                })
            }
            _ => None,
        }
    }

    /// sha256 and size of a stream, and of its decompressed content when
    /// it is compressed: what a layer's digest and diff_id need.
    pub async fn hash_stream(
        stream: ByteStream,
        compression: Option<Compression>,
    ) -> Result<StreamDigests, ArchiveError> {
        let stored = Arc::new(Mutex::new((Hasher::new(), 0u64)));
        let tap = stored.clone();
        let tapped: ByteStream = Box::pin(stream.inspect_ok(move |b| {
            if let Ok(mut g) = tap.lock() {
                g.0.update(b);
                g.1 += b.len() as u64;
            }
        }));
        let diff_id = match compression {
            None => {
                let mut s = tapped;
                while let Some(c) = s.next().await {
                    c.map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
                }
                None
            }
            Some(c) => {
                let mut r = decoder(tapped, Some(c));
                let mut h = Hasher::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = r
                        .read(&mut buf)
                        .await
                        .map_err(|e| ArchiveError::Corrupt(format!("decompression failed: {e}")))?;
                    if n == 0 {
                        break;
                    }
                    h.update(buf.get(..n).unwrap_or_default());
                }
                Some(h.finish())
            }
        };
        let (h, n) = std::mem::take(
            &mut *stored
                .lock()
                .map_err(|_| ArchiveError::Corrupt("poisoned".into()))?,
        );
        let d = h.finish();
        Ok(StreamDigests {
            stored: (d, n),
            diff_id: diff_id.unwrap_or(d),
        })
    }
}
