//! The blob cache: memory (moka, weighted by bytes) in front of a
//! content-addressed disk tier, with single flight. N requests for the same
//! cold blob cause one upstream read; every requester streams the bytes as
//! they land in the temp file, and the blob's last byte is released only
//! after its sha256 matched. Only verified files are renamed into the
//! cache; when the cache cannot write (disk full, read-only), requests are
//! served straight from upstream.
mod disk;
mod filling;
mod index;
mod inplace;
mod verify;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};
use tokio::sync::watch;

pub use disk::{DiskCache, ScrubReport, scrub};
pub use filling::{FillSpan, Sendable};
pub use index::IndexStore;
pub use inplace::{FileSpan, Origin, RangeFetch, VerifiedRecord};
pub use verify::Verified;

use crate::image::{Digest, Hasher};
use crate::metrics::{METRICS, inc};
use crate::source::ByteStream;

/// Chunk size for reading cached files.
const CHUNK: u64 = 512 * 1024;

/// Opens the blob's bytes from its start, as stored in the archive.
pub type Fetch = Arc<dyn Fn() -> BoxFuture<'static, io::Result<ByteStream>> + Send + Sync>;

/// Where and how much to cache.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// None: no disk tier (every cold read goes upstream).
    pub dir: Option<PathBuf>,
    pub disk: u64,
    pub memory: u64,
}

#[derive(Clone, Debug)]
enum Progress {
    /// `received` bytes came from upstream (the latest of them are in the
    /// flight's window); the first `written` of them are in the temp file.
    Writing { received: u64, written: u64 },
    /// Verified; the file is complete.
    Done,
    /// Upstream failed or the digest did not match: cut the response.
    Failed(Arc<str>),
    /// The cache could not write: serve from upstream instead.
    CacheFailed,
}

/// How many recent upstream bytes a flight keeps in memory: a follower that
/// keeps up with the upstream is served the very buffers the hasher and the
/// temp file get, instead of reading the file back.
const WINDOW: u64 = 8 * 1024 * 1024;

/// How many chunks may wait for the hasher or the temp-file writer before
/// the upstream read waits for them.
const QUEUE: usize = 32;

struct Flight {
    /// The size the flight verifies against: a reader that expects another
    /// size is refused rather than served a prefix or a short file.
    size: u64,
    progress: watch::Receiver<Progress>,
    /// The temp file, once the fill created it (on a blocking thread).
    file: OnceLock<Arc<std::fs::File>>,
    /// The latest upstream chunks, by offset.
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    chunks: VecDeque<(u64, Bytes)>,
    bytes: u64,
}

impl Flight {
    /// Bytes `pos..limit` (or a prefix of them) from the window, if the
    /// window still holds `pos`.
    fn windowed(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let w = self.window.lock().ok()?;
        let first = w.chunks.front()?.0;
        if pos < first {
            return None;
        }
        // Chunks are contiguous: find the one holding `pos`.
        let i = w
            .chunks
            .partition_point(|(off, b)| off + b.len() as u64 <= pos);
        let (off, b) = w.chunks.get(i)?;
        let hi = (off + b.len() as u64).min(limit);
        (pos < hi).then(|| b.slice((pos - off) as usize..(hi - off) as usize))
    }

    fn push(&self, off: u64, b: Bytes) {
        if let Ok(mut w) = self.window.lock() {
            w.bytes += b.len() as u64;
            w.chunks.push_back((off, b));
            while w.bytes > WINDOW && w.chunks.len() > 1 {
                if let Some((_, old)) = w.chunks.pop_front() {
                    w.bytes -= old.len() as u64;
                }
            }
        }
    }

    fn clear_window(&self) {
        if let Ok(mut w) = self.window.lock() {
            *w = Window::default();
        }
    }
}

/// A descriptor whose size disagrees with the verified bytes of its digest.
/// One digest has one size across the catalog: the archive whose descriptor
/// disagrees gets the error, and the good cached copy is kept.
fn size_conflict(digest: &Digest, stored: u64, asked: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("blob {digest} is {stored} bytes but the archive's descriptor says {asked}"),
    )
}

/// Whether the file at `path` hashes to `digest` (blocking: call it on a
/// blocking thread).
fn file_matches(path: &Path, digest: &Digest) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; CHUNK as usize];
    loop {
        match io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    hasher.finish() == *digest
}

/// Allocates the blocks of a temp file for a blob of `size` bytes before
/// it is written, keeping its length (it grows as bytes land, so a
/// partial file looks partial). The page-cache write then skips the
/// filesystem's delayed allocation, page by page (a third of the write's
/// CPU on ext4), and a disk without room for the blob fails here, before
/// the fill starts, rather than midway. Filesystems that cannot
/// preallocate are written as before.
fn reserve(file: &std::fs::File, size: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(len) = libc::off_t::try_from(size) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a plain syscall on a descriptor we own.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, len) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Memory and disk tiers and the flights filling them.
pub struct BlobCache {
    memory: moka::future::Cache<Digest, Bytes>,
    /// Blobs up to this size are kept in memory (configs, small layers).
    memory_max_blob: u64,
    disk: Option<DiskCache>,
    index: Option<IndexStore>,
    flights: Mutex<HashMap<Digest, Arc<Flight>>>,
    /// Which blobs were verified at which source version (in-place reads).
    verified: Arc<VerifiedRecord>,
}

impl BlobCache {
    /// Opens the cache. A disk tier that cannot be opened is logged and
    /// left out: serving goes on without it.
    pub fn new(settings: &CacheSettings) -> BlobCache {
        let disk = settings.dir.as_ref().and_then(|dir| match DiskCache::open(dir, settings.disk) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "disk cache unavailable, serving from sources only: {e}");
                None
            }
        });
        let memory = moka::future::Cache::builder()
            .max_capacity(settings.memory)
            .weigher(|_: &Digest, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .build();
        let index = disk.as_ref().and_then(|_| {
            let dir = settings.dir.as_ref()?.join("index");
            IndexStore::open(&dir)
                .map_err(|e| tracing::warn!(dir = %dir.display(), "indexes will not be saved: {e}"))
                .ok()
        });
        BlobCache {
            memory,
            memory_max_blob: (settings.memory / 16).min(8 * 1024 * 1024),
            verified: Arc::new(VerifiedRecord::open(
                disk.as_ref()
                    .and(settings.dir.as_ref())
                    .map(|d| d.join("verified")),
            )),
            disk,
            index,
            flights: Mutex::new(HashMap::new()),
        }
    }

    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// Where indexes are saved, with the disk tier.
    pub fn index(&self) -> Option<&IndexStore> {
        self.index.as_ref()
    }

    /// Bytes `start..=end` of the blob `digest` (of `size` bytes), from
    /// memory, disk, or one shared upstream read through `fetch`.
    #[allow(clippy::too_many_arguments)]
    pub async fn read(
        self: &Arc<Self>,
        digest: Digest,
        size: u64,
        start: u64,
        end: u64,
        label: String,
        fetch: Fetch,
        origin: Option<Origin>,
    ) -> io::Result<ByteStream> {
        if start > end || end >= size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range {start}-{end} outside blob {digest} of {size} bytes"),
            ));
        }
        if let Some(b) = self.memory.get(&digest).await {
            // The memory tier holds verified bytes keyed by digest alone:
            // their length is the blob's size, whatever this descriptor says.
            if b.len() as u64 != size {
                return Err(size_conflict(&digest, b.len() as u64, size));
            }
            inc(&METRICS.cache_memory_hits);
            crate::metrics::served(crate::metrics::Tier::Memory);
            return Ok(once(b.slice(start as usize..=end as usize)));
        }
        let Some(disk) = &self.disk else {
            return self
                .direct(digest, size, start, end, label, fetch, origin)
                .await;
        };
        if disk.contains(&digest)
            && let Some(hit) = self.disk_hit(disk, digest, size, start, end).await?
        {
            inc(&METRICS.cache_disk_hits);
            crate::metrics::served(crate::metrics::Tier::Disk);
            return Ok(hit);
        }
        let flight = self.flight(digest, size, label.clone(), fetch.clone())?;
        // Wait for the source's first bytes, so a source that fails at once
        // is answered with an error status instead of a cut 200.
        let mut first = flight.progress.clone();
        loop {
            let now = first.borrow_and_update().clone();
            match now {
                Progress::Writing { received: 0, .. } => {}
                Progress::Failed(why) => return Err(io::Error::other(why.to_string())),
                // The cache cannot take it: straight from upstream.
                Progress::CacheFailed => {
                    return self
                        .direct(digest, size, start, end, label, fetch, origin)
                        .await;
                }
                _ => break,
            }
            if first.changed().await.is_err() {
                break;
            }
        }
        Ok(follow(Follow {
            progress: flight.progress.clone(),
            flight,
            pos: start,
            end,
            size,
            digest,
            label,
            fetch,
        }))
    }

    /// Serves `start..=end` of a stored blob. The file is checked first:
    /// its length against the descriptor, and its content against the
    /// digest once per process (a bit flip on disk would otherwise be
    /// served for ever). None when the file was not the blob and is gone:
    /// fetch it again.
    async fn disk_hit(
        &self,
        disk: &DiskCache,
        digest: Digest,
        size: u64,
        start: u64,
        end: u64,
    ) -> io::Result<Option<ByteStream>> {
        let path = disk.path(&digest);
        let verified = disk.is_verified(&digest);
        let opened = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            // A file of the descriptor's length is checked once; one of
            // another length tells a wrong descriptor (the file is the
            // blob) from a damaged file.
            let good = (verified && len == size) || file_matches(&path, &digest);
            if !good {
                // Not the blob: removed here, off the async workers.
                let _ = std::fs::remove_file(&path);
            }
            Ok::<_, io::Error>((f, len, good))
        })
        .await
        .map_err(|e| io::Error::other(format!("cache read task failed (a bug): {e}")))?;
        let (f, len) = match opened {
            Ok((f, len, true)) => (f, len),
            Ok((_, _, false)) => {
                tracing::warn!(%digest, "cached blob does not match its digest; evicted, fetching again");
                inc(&METRICS.cache_fill_digest_mismatches);
                disk.forget(&digest);
                return Ok(None);
            }
            // Vanished or unreadable: fetch it again.
            Err(_) => {
                disk.forget(&digest);
                let path = disk.path(&digest);
                drop(tokio::task::spawn_blocking(move || {
                    let _ = std::fs::remove_file(path);
                }));
                return Ok(None);
            }
        };
        disk.mark_verified(&digest);
        if len != size {
            return Err(size_conflict(&digest, len, size));
        }
        let f = Arc::new(f);
        if size <= self.memory_max_blob
            && let Ok(b) = pread(f.clone(), 0, size).await
            && b.len() as u64 == size
        {
            self.memory.insert(digest, b.clone()).await;
            return Ok(Some(once(b.slice(start as usize..=end as usize))));
        }
        Ok(Some(file_range(f, start, end)))
    }

    /// The flight filling `digest`, started if there is none. Only the
    /// map is touched under the lock: the temp file is created by the fill,
    /// on a blocking thread.
    fn flight(
        self: &Arc<Self>,
        digest: Digest,
        size: u64,
        label: String,
        fetch: Fetch,
    ) -> io::Result<Arc<Flight>> {
        let mut flights = self
            .flights
            .lock()
            .map_err(|_| io::Error::other("cache lock poisoned"))?;
        if let Some(f) = flights.get(&digest) {
            if f.size != size {
                return Err(size_conflict(&digest, f.size, size));
            }
            inc(&METRICS.cache_fill_joins);
            crate::metrics::served(crate::metrics::Tier::Follower);
            return Ok(f.clone());
        }
        crate::metrics::served(crate::metrics::Tier::Fill);
        let (tx, rx) = watch::channel(Progress::Writing {
            received: 0,
            written: 0,
        });
        let flight = Arc::new(Flight {
            size,
            progress: rx,
            file: OnceLock::new(),
            window: Mutex::new(Window::default()),
        });
        flights.insert(digest, flight.clone());
        drop(flights);
        let cache = self.clone();
        let filling = flight.clone();
        // The fill runs on behalf of the request that started it: its log
        // lines carry that request's id.
        let fill = async move {
            let tx = Arc::new(tx);
            let outcome = cache.fill(&filling, digest, &tx, &label, fetch).await;
            if let Ok(mut f) = cache.flights.lock() {
                f.remove(&digest);
            }
            // Readers behind the window read the complete file from here.
            filling.clear_window();
            let _ = tx.send(outcome);
        };
        tokio::spawn(tracing::Instrument::in_current_span(fill));
        Ok(flight)
    }

    /// Copies the blob from upstream into a temp file and commits it when
    /// its digest matches. The upstream read runs here; each chunk goes,
    /// as the same buffer, to the window (for followers), to a hashing
    /// thread and to a writing thread, so the network, sha256 and the
    /// file write run side by side instead of one after the other.
    async fn fill(
        self: &Arc<Self>,
        flight: &Flight,
        digest: Digest,
        tx: &Arc<watch::Sender<Progress>>,
        label: &str,
        fetch: Fetch,
    ) -> Progress {
        let Some(disk) = &self.disk else {
            return Progress::CacheFailed;
        };
        let size = flight.size;
        let tmp = disk.temp_path(&digest);
        let created = {
            let tmp = tmp.clone();
            // Readable too: followers behind the window read it back.
            tokio::task::spawn_blocking(move || {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)?;
                if let Err(e) = reserve(&f, size) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                Ok(f)
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        let file = match created {
            Ok(f) => Arc::new(f),
            Err(e) => {
                inc(&METRICS.cache_write_errors);
                tracing::warn!(dir = %tmp.display(), "disk cache cannot write, serving from the source: {e}");
                return Progress::CacheFailed;
            }
        };
        inc(&METRICS.cache_fills);
        let _ = flight.file.set(file.clone());
        // Off the async workers, and done before the verdict is sent.
        let discard = || {
            let tmp = tmp.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(tmp)).await;
            }
        };
        let mut upstream = match fetch().await {
            Ok(s) => s,
            Err(e) => {
                discard().await;
                tracing::warn!(source = label, %digest, "upstream read failed: {e}");
                inc(&METRICS.cache_fill_upstream_errors);
                return Progress::Failed(e.to_string().into());
            }
        };
        let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let hashing = tokio::task::spawn_blocking(move || {
            let mut hasher = Hasher::new();
            while let Some(b) = hash_rx.blocking_recv() {
                hasher.update(&b);
                METRICS
                    .blob_bytes_hashed
                    .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            hasher.finish()
        });
        // Positional writes: when one returns, the bytes are in the file
        // for every follower's read.
        let (write_tx, mut write_rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(QUEUE);
        let writing = {
            let (tx, out) = (tx.clone(), file);
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                while let Some((at, b)) = write_rx.blocking_recv() {
                    out.write_all_at(&b, at)?;
                    let to = at + b.len() as u64;
                    tx.send_modify(|p| {
                        if let Progress::Writing { written, .. } = p {
                            *written = to;
                        }
                    });
                }
                Ok::<_, io::Error>(())
            })
        };
        let mut received = 0u64;
        let mut failed = None;
        while let Some(chunk) = upstream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let at = received;
            received += chunk.len() as u64;
            METRICS
                .upstream_blob_bytes
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if received > size {
                break;
            }
            flight.push(at, chunk.clone());
            tx.send_modify(|p| {
                if let Progress::Writing { received: r, .. } = p {
                    *r = received;
                }
            });
            // Either side gone means it failed; its outcome is read below.
            if hash_tx.send(chunk.clone()).await.is_err()
                || write_tx.send((at, chunk)).await.is_err()
            {
                break;
            }
        }
        drop((hash_tx, write_tx, upstream));
        let wrote = writing
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("cache write task failed: {e}"))));
        let actual = hashing.await;
        if let Some(e) = failed {
            discard().await;
            tracing::warn!(source = label, %digest, received, "upstream read failed: {e}");
            inc(&METRICS.cache_fill_upstream_errors);
            return Progress::Failed(e.to_string().into());
        }
        if let Err(e) = wrote {
            discard().await;
            tracing::warn!(%digest, "disk cache write failed, serving from the source: {e}");
            inc(&METRICS.cache_write_errors);
            return Progress::CacheFailed;
        }
        let actual = match actual {
            Ok(d) => d,
            Err(e) => {
                discard().await;
                tracing::error!(%digest, "hashing task failed (a bug): {e}");
                return Progress::Failed(format!("blob {digest} could not be verified").into());
            }
        };
        if received != size || actual != digest {
            inc(&METRICS.cache_fill_digest_mismatches);
            discard().await;
            tracing::error!(
                source = label,
                expected = %digest,
                actual = %actual,
                bytes = received,
                size,
                "blob does not match its digest; not cached, response cut"
            );
            return Progress::Failed(format!("blob {digest} failed verification").into());
        }
        let committed = {
            let cache = self.clone();
            let tmp = tmp.clone();
            tokio::task::spawn_blocking(move || match &cache.disk {
                Some(disk) => disk.commit(&tmp, &digest, size),
                None => Err(io::Error::other("no disk tier")),
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        match committed {
            Ok(path) => {
                if size <= self.memory_max_blob
                    && let Ok(b) = tokio::fs::read(&path).await
                {
                    self.memory.insert(digest, Bytes::from(b)).await;
                }
            }
            // Verified bytes: the readers keep their open file.
            Err(e) => {
                discard().await;
                tracing::warn!(%digest, "cannot store a verified blob in the disk cache: {e}");
            }
        }
        Progress::Done
    }
}

/// Lets a streaming pass over an archive fill the disk tier.
pub struct CacheSpill(pub Arc<BlobCache>);

impl crate::archive::Spill for CacheSpill {
    fn create(&self, size: u64) -> Option<Box<dyn crate::archive::SpillFile>> {
        let disk = self.0.disk.as_ref()?;
        if size > disk.max() {
            return None;
        }
        // The digest is not known yet: a placeholder name, renamed on commit.
        let tmp = disk.temp_path(&Digest::of(b""));
        let file = std::fs::File::create(&tmp).ok()?;
        Some(Box::new(SpillFile {
            cache: self.0.clone(),
            out: io::BufWriter::with_capacity(256 * 1024, file),
            tmp,
            size,
        }))
    }
}

struct SpillFile {
    cache: Arc<BlobCache>,
    out: io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    size: u64,
}

impl io::Write for SpillFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl crate::archive::SpillFile for SpillFile {
    fn commit(mut self: Box<Self>, digest: Digest) {
        use std::io::Write;
        let Some(disk) = &self.cache.disk else { return };
        if self.out.flush().is_err() || disk.contains(&digest) {
            let _ = std::fs::remove_file(&self.tmp);
            return;
        }
        if let Err(e) = disk.commit(&self.tmp, &digest, self.size) {
            tracing::warn!(%digest, "cannot keep a blob from the streaming pass: {e}");
            let _ = std::fs::remove_file(&self.tmp);
        }
    }

    fn abort(self: Box<Self>) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// `s`, adding every byte it yields to the source-bytes counter: blobs
/// read straight from a source (no disk tier, a cache that cannot write)
/// count as much as the ones a fill reads.
fn counted(s: ByteStream) -> ByteStream {
    Box::pin(s.inspect(|chunk| {
        if let Ok(c) = chunk {
            METRICS
                .upstream_blob_bytes
                .fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }))
}

fn once(b: Bytes) -> ByteStream {
    Box::pin(stream::once(async move { Ok(b) }))
}

/// Reads up to `len` bytes at `pos` of an open file.
async fn pread(file: Arc<std::fs::File>, pos: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len as usize];
        let mut filled = 0;
        while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
            match file.read_at(rest, pos + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

/// Streams `start..=end` of a verified cached file.
fn file_range(file: Arc<std::fs::File>, start: u64, end: u64) -> ByteStream {
    Box::pin(stream::try_unfold(start, move |pos| {
        let file = file.clone();
        async move {
            if pos > end {
                return Ok(None);
            }
            let b = pread(file, pos, (end + 1 - pos).min(CHUNK)).await?;
            if b.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached blob is shorter than its size",
                ));
            }
            let next = pos + b.len() as u64;
            Ok(Some((b, next)))
        }
    }))
}

/// A reader following a flight: from its window while it keeps up, from
/// its temp file when it fell behind.
struct Follow {
    flight: Arc<Flight>,
    progress: watch::Receiver<Progress>,
    /// Next byte to send.
    pos: u64,
    end: u64,
    size: u64,
    digest: Digest,
    label: String,
    fetch: Fetch,
}

enum FollowState {
    Following(Follow),
    Direct(ByteStream),
    Finished,
}

fn follow(f: Follow) -> ByteStream {
    Box::pin(stream::unfold(
        FollowState::Following(f),
        |state| async move {
            match state {
                FollowState::Finished => None,
                FollowState::Direct(mut s) => {
                    let item = s.next().await?;
                    Some((item, FollowState::Direct(s)))
                }
                FollowState::Following(mut f) => loop {
                    if f.pos > f.end {
                        return None;
                    }
                    let progress = f.progress.borrow_and_update().clone();
                    let (readable, written) = match progress {
                        // The blob's last byte, and this range's, wait for
                        // the verdict (as `Verified` holds them without a cache).
                        Progress::Writing { received, written } => {
                            (received.min(f.size - 1).min(f.end), written)
                        }
                        Progress::Done => (f.size, f.size),
                        Progress::Failed(why) => {
                            return Some((
                                Err(io::Error::new(io::ErrorKind::InvalidData, why.to_string())),
                                FollowState::Finished,
                            ));
                        }
                        Progress::CacheFailed => {
                            // Re-read from upstream, verified, sending only
                            // what this reader has not sent yet.
                            let s = match (f.fetch)().await {
                                Ok(s) => counted(s),
                                Err(e) => return Some((Err(e), FollowState::Finished)),
                            };
                            let v: ByteStream = Box::pin(Verified::new(
                                s,
                                f.digest,
                                f.size,
                                f.pos,
                                f.end,
                                f.label.clone(),
                                Box::new(|| {}),
                            ));
                            let mut direct = v;
                            let item = direct.next().await?;
                            return Some((item, FollowState::Direct(direct)));
                        }
                    };
                    let limit = readable.min(f.end + 1);
                    if f.pos < limit {
                        if let Some(b) = f.flight.windowed(f.pos, limit) {
                            f.pos += b.len() as u64;
                            return Some((Ok(b), FollowState::Following(f)));
                        }
                        let from_file = written.min(limit);
                        if f.pos < from_file {
                            let Some(file) = f.flight.file.get().cloned() else {
                                return Some((
                                    Err(io::Error::other("cache file vanished")),
                                    FollowState::Finished,
                                ));
                            };
                            return match pread(file, f.pos, (from_file - f.pos).min(CHUNK)).await {
                                Ok(b) if !b.is_empty() => {
                                    f.pos += b.len() as u64;
                                    Some((Ok(b), FollowState::Following(f)))
                                }
                                Ok(_) => Some((
                                    Err(io::Error::other("cache file is shorter than written")),
                                    FollowState::Finished,
                                )),
                                Err(e) => Some((Err(e), FollowState::Finished)),
                            };
                        }
                    }
                    if f.progress.changed().await.is_err() {
                        // The filler ended without a verdict we saw: take the
                        // last one sent.
                        if matches!(*f.progress.borrow(), Progress::Writing { .. }) {
                            return Some((
                                Err(io::Error::other("cache fill ended early")),
                                FollowState::Finished,
                            ));
                        }
                    }
                },
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A source of `data` in small, slow chunks that counts its reads;
    /// `lie` flips one byte, as a corrupt upstream would.
    pub(super) fn fetcher(data: Vec<u8>, calls: Arc<AtomicUsize>, lie: bool) -> Fetch {
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut data = data.clone();
            if lie {
                data[10] ^= 0xff;
            }
            Box::pin(async move {
                let chunks: Vec<io::Result<Bytes>> = data
                    .chunks(1000)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                let s = stream::iter(chunks).then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    c
                });
                Ok(Box::pin(s) as ByteStream)
            })
        })
    }

    /// Reads a stream to its end: its bytes, and whether it ended cleanly.
    pub(super) async fn drain(mut s: ByteStream) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            match c {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => return (out, false),
            }
        }
        (out, true)
    }

    pub(super) fn settings(dir: &Path) -> CacheSettings {
        CacheSettings {
            dir: Some(dir.to_path_buf()),
            disk: 1 << 30,
            memory: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cold_reads_share_one_upstream_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = fetcher(data.clone(), calls.clone(), false);
        let size = data.len() as u64;
        let mut tasks = Vec::new();
        for i in 0..10u64 {
            let (cache, f) = (cache.clone(), f.clone());
            // Half ask for a range, as a resuming client would.
            let (start, end) = if i % 2 == 0 {
                (0, size - 1)
            } else {
                (1000 * i, size - 1 - i)
            };
            tasks.push(tokio::spawn(async move {
                let s = cache
                    .read(d, size, start, end, "t".into(), f, None)
                    .await
                    .unwrap();
                (start, end, drain(s).await)
            }));
        }
        for t in tasks {
            let (start, end, (bytes, ok)) = t.await.unwrap();
            assert!(ok);
            assert_eq!(bytes, data[start as usize..=end as usize]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Stored under its digest; a later read does not go upstream.
        assert_eq!(
            std::fs::read(dir.path().join("sha256").join(d.hex())).unwrap(),
            data
        );
        let (bytes, ok) = drain(
            cache
                .read(d, size, 0, size - 1, "t".into(), f, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(ok && bytes == data);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lying_upstream_is_cut_and_never_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let data = vec![7u8; 20_000];
        let d = Digest::of(&data);
        let size = data.len() as u64;
        let calls = Arc::new(AtomicUsize::new(0));
        let liar = fetcher(data.clone(), calls.clone(), true);
        let (bytes, ok) = drain(
            cache
                .read(d, size, 0, size - 1, "t".into(), liar, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(!ok, "the response must end in an error");
        assert!(bytes.len() < data.len(), "the last byte must not be sent");
        assert!(!dir.path().join("sha256").join(d.hex()).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        // Fixed upstream: the next read goes upstream again and succeeds.
        let honest = fetcher(data.clone(), calls.clone(), false);
        let (bytes, ok) = drain(
            cache
                .read(d, size, 0, size - 1, "t".into(), honest, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(ok && bytes == data);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unusable_cache_dir_serves_from_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let cache = Arc::new(BlobCache::new(&settings(&file)));
        assert!(cache.disk().is_none());
        let data = vec![3u8; 5000];
        let d = Digest::of(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = fetcher(data.clone(), calls.clone(), false);
        let (bytes, ok) = drain(
            cache
                .read(d, 5000, 100, 199, "t".into(), f, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(ok && bytes == data[100..200]);
        // The cache dir becoming unwritable later: the read still works.
        let dir2 = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&settings(dir2.path())));
        std::fs::remove_dir_all(dir2.path().join("tmp")).unwrap();
        let f = fetcher(data.clone(), calls.clone(), false);
        let (bytes, ok) = drain(
            cache
                .read(d, 5000, 0, 4999, "t".into(), f, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(ok && bytes == data);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_blobs_are_served_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&CacheSettings {
            dir: Some(dir.path().to_path_buf()),
            disk: 1 << 20,
            memory: 1 << 20,
        }));
        let data = vec![9u8; 3000];
        let d = Digest::of(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = fetcher(data.clone(), calls.clone(), false);
        let _ = drain(
            cache
                .read(d, 3000, 0, 2999, "t".into(), f.clone(), None)
                .await
                .unwrap(),
        )
        .await;
        // Gone from disk, still served: it is in memory.
        std::fs::remove_file(dir.path().join("sha256").join(d.hex())).unwrap();
        let (bytes, ok) = drain(
            cache
                .read(d, 3000, 10, 19, "t".into(), f, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(ok && bytes == data[10..20]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// One digest, one size: a second archive listing a cached digest with
    /// another size gets an error from every tier, never a panic, a prefix
    /// served as a complete blob, or the good file deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_descriptor_with_another_size_is_refused_by_every_tier() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 7) as u8).collect();
        let d = Digest::of(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = fetcher(data.clone(), calls.clone(), false);
        for memory in [1u64 << 20, 0] {
            let cache = Arc::new(BlobCache::new(&CacheSettings {
                dir: Some(dir.path().to_path_buf()),
                disk: 1 << 20,
                memory,
            }));
            let (bytes, ok) = drain(
                cache
                    .read(d, 3000, 0, 2999, "t".into(), f.clone(), None)
                    .await
                    .unwrap(),
            )
            .await;
            assert!(ok && bytes == data);
            for (size, end) in [(5000, 4999), (100, 99)] {
                let e = match cache
                    .read(d, size, 0, end, "t".into(), f.clone(), None)
                    .await
                {
                    Err(e) => e,
                    Ok(_) => panic!("size {size} served (memory {memory})"),
                };
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                assert!(e.to_string().contains("3000 bytes"), "{e}");
            }
            // The good file is kept and still served.
            assert_eq!(
                std::fs::read(dir.path().join("sha256").join(d.hex())).unwrap(),
                data
            );
            let (bytes, ok) = drain(
                cache
                    .read(d, 3000, 5, 9, "t".into(), f.clone(), None)
                    .await
                    .unwrap(),
            )
            .await;
            assert!(ok && bytes == data[5..10]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A cached file that is not its blob's length (truncated on disk) and
    /// does not hash to its digest is evicted and fetched again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_cached_file_is_refetched() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let data = vec![4u8; 9000];
        let d = Digest::of(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = fetcher(data.clone(), calls.clone(), false);
        let _ = drain(
            cache
                .read(d, 9000, 0, 8999, "t".into(), f.clone(), None)
                .await
                .unwrap(),
        )
        .await;
        let path = dir.path().join("sha256").join(d.hex());
        std::fs::write(&path, &data[..100]).unwrap();
        let (bytes, ok) = drain(
            cache
                .read(d, 9000, 0, 8999, "t".into(), f, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(ok && bytes == data);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    /// A reader with another size does not join a flight in progress.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flight_is_joined_only_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let data = vec![5u8; 50_000];
        let d = Digest::of(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = fetcher(data.clone(), calls.clone(), false);
        let first = cache
            .read(d, 50_000, 0, 49_999, "t".into(), f.clone(), None)
            .await
            .unwrap();
        match cache
            .read(d, 40_000, 0, 39_999, "t".into(), f.clone(), None)
            .await
        {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
            Ok(s) => {
                // The flight may have ended already: then the disk tier refuses.
                let (bytes, ok) = drain(s).await;
                panic!("served {} bytes (complete: {ok})", bytes.len());
            }
        }
        let (bytes, ok) = drain(first).await;
        assert!(ok && bytes == data);
    }

    /// A same-length corruption of a stored blob (a bit flip on disk) is
    /// found before a process first serves the file: evicted and fetched
    /// again, not served for ever. `scrub` finds and removes it on demand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flipped_byte_on_disk_heals_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = noise_bytes(70_000);
        let d = Digest::of(&data);
        let calls = Arc::new(AtomicUsize::new(0));
        let f = fetcher(data.clone(), calls.clone(), false);
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let _ = drain(
            cache
                .read(d, 70_000, 0, 69_999, "t".into(), f.clone(), None)
                .await
                .unwrap(),
        )
        .await;
        drop(cache);
        let path = dir.path().join("sha256").join(d.hex());
        let flip = |path: &Path| {
            let mut b = std::fs::read(path).unwrap();
            b[60_000] ^= 1;
            std::fs::write(path, b).unwrap();
        };
        flip(&path);
        assert_eq!(scrub(dir.path()).unwrap(), ScrubReport { good: 0, bad: 1 });
        assert!(!path.exists());
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let _ = drain(
            cache
                .read(d, 70_000, 0, 69_999, "t".into(), f.clone(), None)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(scrub(dir.path()).unwrap(), ScrubReport { good: 1, bad: 0 });
        drop(cache);
        // Restarted with a damaged file: the first read refetches.
        flip(&path);
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let (bytes, ok) = drain(
            cache
                .read(d, 70_000, 100, 69_999, "t".into(), f, None)
                .await
                .unwrap(),
        )
        .await;
        assert!(ok && bytes == data[100..]);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    /// A blob larger than a flight's window: a reader that keeps up is
    /// served from memory, one that starts after the window moved on (or
    /// after the fill ended) reads the temp file; both get every byte, and
    /// the blob crosses the network once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_behind_the_window_read_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let data = noise_bytes(3 * WINDOW as usize + 12_345);
        let d = Digest::of(&data);
        let size = data.len() as u64;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let chunks = data.clone();
        let f: Fetch = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let v: Vec<io::Result<Bytes>> = chunks
                .chunks(64 * 1024)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Box::pin(async move { Ok(Box::pin(stream::iter(v)) as ByteStream) })
        });
        let fast = cache
            .read(d, size, 0, size - 1, "t".into(), f.clone(), None)
            .await
            .unwrap();
        // Opened at once, read only after the fast one is done.
        let late = cache
            .read(d, size, 5, size - 2, "t".into(), f.clone(), None)
            .await
            .unwrap();
        let (bytes, ok) = drain(fast).await;
        assert!(ok && bytes == data);
        let (bytes, ok) = drain(late).await;
        assert!(ok);
        assert!(bytes == data[5..data.len() - 1]);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    fn noise_bytes(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect()
    }
}
