//! A compressed archive read from its seek points: the indexing pass
//! records them ([`Pass`]), a zstd seek table provides them without a
//! pass, and a cold read of an entry starts decompressing at the nearest
//! point before it instead of at byte 0.
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};

use bytes::{Buf, Bytes};
use futures_util::{StreamExt, TryStreamExt};

use super::budget::{Budget, Limit};
use super::{ArchiveError, Compression};
use crate::image::{Digest, Hasher};
use crate::seek::{self, Codec, PassDecoder, Point, Points};
use crate::source::{ByteStream, Source, Stat};

impl Compression {
    pub fn codec(self) -> Codec {
        match self {
            Compression::Gzip => Codec::Gzip,
            Compression::Zstd => Codec::Zstd,
        }
    }
}

/// The seek points of an archive, and whether one of them failed.
#[derive(Debug, Default)]
pub struct SeekState {
    pub points: Option<Arc<Points>>,
    /// Set when decompression from a recorded point failed: the points
    /// (saved index or sidecar) do not belong to these bytes, and the
    /// index is rebuilt.
    failed: Arc<AtomicBool>,
    /// Points still in a sidecar, fetched by the first read that needs them.
    lazy: Option<Arc<LazyPoints>>,
}

/// Where a sidecar keeps the points, and their checksum.
#[derive(Debug)]
struct LazyPoints {
    sidecar: Arc<dyn Source>,
    stat: Stat,
    offset: u64,
    len: u64,
    sha256: [u8; 32],
    cell: tokio::sync::OnceCell<Option<Arc<Points>>>,
}

impl LazyPoints {
    async fn get(&self, archive_size: u64) -> Option<Arc<Points>> {
        self.cell
            .get_or_init(|| async {
                let r = match self
                    .sidecar
                    .read_range(self.offset, self.len, Some(&self.stat))
                    .await
                {
                    Ok(b) if b.len() as u64 != self.len => Err("truncated".to_string()),
                    Ok(b) if crate::image::Digest::of(&b).hex() != hex::encode(self.sha256) => {
                        Err("checksum mismatch".to_string())
                    }
                    Ok(b) => Points::decode(&b, archive_size).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok(p) => Some(Arc::new(p)),
                    Err(e) => {
                        tracing::warn!(
                            sidecar = self.sidecar.url(),
                            "sidecar seek points not used: {e}"
                        );
                        None
                    }
                }
            })
            .await
            .clone()
    }
}

impl SeekState {
    pub fn new(points: Option<Points>) -> SeekState {
        SeekState {
            points: points.map(Arc::new),
            ..SeekState::default()
        }
    }

    /// Points kept in a sidecar at `offset..offset + len`, to be checked
    /// against `sha256` and fetched when first needed.
    pub fn lazy(
        sidecar: Arc<dyn Source>,
        stat: Stat,
        offset: u64,
        len: u64,
        sha256: [u8; 32],
    ) -> SeekState {
        SeekState {
            lazy: Some(Arc::new(LazyPoints {
                sidecar,
                stat,
                offset,
                len,
                sha256,
                cell: tokio::sync::OnceCell::new(),
            })),
            ..SeekState::default()
        }
    }

    /// Whether the points come from a sidecar.
    pub fn is_lazy(&self) -> bool {
        self.lazy.is_some()
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Size of the points in their saved form.
    pub fn encoded(&self) -> Option<Vec<u8>> {
        self.points
            .as_ref()
            .filter(|p| !p.points().is_empty())
            .map(|p| p.encode())
    }

    /// `len` bytes at `offset` of the decompressed stream, decompressing
    /// from the nearest point before it (a range read of the source from
    /// there to the end, dropped once `len` bytes came out).
    pub(super) async fn stream(
        &self,
        source: &Arc<dyn Source>,
        stat: &Stat,
        compression: Compression,
        offset: u64,
        len: u64,
    ) -> Result<ByteStream, ArchiveError> {
        let codec = compression.codec();
        let points = match (&self.points, &self.lazy) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(l)) => l.get(stat.size).await,
            (None, None) => None,
        };
        let point = match points {
            Some(p) if p.codec() == codec => p.nearest(offset),
            _ => Point::start(codec),
        };
        let from = point.read_from();
        let raw = source.stream(from, None, Some(stat)).await?;
        let failed = self.failed.clone();
        let url = source.url().to_string();
        let mark = move |e: &dyn std::fmt::Display| {
            if point_out_of(from) && !failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    source = url,
                    "seek point at compressed byte {from} failed ({e}): index marked stale"
                );
            }
        };
        let s = match seek::decode_stream(codec, &point, raw, offset - point.out, len) {
            Ok(s) => s,
            Err(e) => {
                mark(&e);
                return Err(ArchiveError::Corrupt(e.to_string()));
            }
        };
        Ok(Box::pin(s.inspect_err(move |e| {
            // Corrupt data (not a broken connection) from a recorded point.
            if e.kind() == io::ErrorKind::InvalidData {
                mark(e);
            }
        })))
    }
}

impl super::Archive {
    /// A whole blob read from a compressed archive with seek points,
    /// hashed on its way as well as by the cache. A point whose window is
    /// not these bytes' can decompress cleanly to other bytes: no decoder
    /// notices, and the cache only refuses the blob, so without this check
    /// every later read would start from the same wrong point. A mismatch
    /// marks the index stale (the next request indexes the archive again);
    /// the bytes themselves are still judged by the cache.
    pub fn check_points(
        &self,
        s: ByteStream,
        digest: crate::image::Digest,
        size: u64,
    ) -> ByteStream {
        let compressed = matches!(
            self.container,
            super::Container::Streamed {
                compression: Some(_),
                ..
            }
        );
        let has_points = self
            .seek
            .points
            .as_ref()
            .is_some_and(|p| !p.points().is_empty())
            || self.seek.lazy.is_some();
        if !compressed || !has_points {
            return s;
        }
        let failed = self.seek.failed.clone();
        let url = self.describe();
        let state = (s, Some(crate::image::Hasher::new()), 0u64);
        Box::pin(futures_util::stream::unfold(
            state,
            move |(mut s, mut h, mut n)| {
                let (failed, url) = (failed.clone(), url.clone());
                async move {
                    match futures_util::StreamExt::next(&mut s).await {
                        Some(Ok(b)) => {
                            if let Some(h) = h.as_mut() {
                                h.update(&b);
                            }
                            n += b.len() as u64;
                            Some((Ok(b), (s, h, n)))
                        }
                        // A failed read proves nothing about the points.
                        Some(Err(e)) => Some((Err(e), (s, None, n))),
                        None => {
                            if let Some(h) = h.take()
                                && n == size
                                && h.finish() != digest
                                && !failed.swap(true, Ordering::Relaxed)
                            {
                                tracing::warn!(
                                    archive = url,
                                    "blob {digest} read through seek points hashes to \
                                     other bytes: index marked stale"
                                );
                            }
                            None
                        }
                    }
                }
            },
        ))
    }
}

/// Whether a read started at a recorded point rather than the start.
fn point_out_of(from: u64) -> bool {
    from > 0
}

/// A zstd archive in the seekable format carries its points in a seek
/// table at its end: two small range reads. None when it has none, or a
/// table that does not check out (logged; the pass records frames anyway).
pub(super) async fn read_seek_table(source: &Arc<dyn Source>, stat: &Stat) -> Option<Points> {
    let footer_len = seek::SEEK_TABLE_FOOTER as u64;
    if stat.size < footer_len {
        return None;
    }
    let footer = source
        .read_range(stat.size - footer_len, footer_len, Some(stat))
        .await
        .ok()?;
    let len = match seek::seek_table_len(&footer) {
        Ok(Some(len)) if len <= stat.size => len,
        Ok(None) => return None,
        Ok(Some(_)) | Err(_) => {
            tracing::warn!(
                source = source.url(),
                "ignoring a malformed zstd seek table"
            );
            return None;
        }
    };
    let table = source
        .read_range(stat.size - len, len, Some(stat))
        .await
        .ok()?;
    match seek::parse_seek_table(&table, stat.size) {
        Ok(p) => {
            tracing::info!(
                source = source.url(),
                frames = p.points().len() + 1,
                "zstd seekable format: seek table read"
            );
            Some(p)
        }
        Err(e) => {
            tracing::warn!(source = source.url(), "ignoring the zstd seek table: {e}");
            None
        }
    }
}

/// Chunks in flight between two stages of the pass: enough to ride out
/// one stage pausing, a few MiB at most.
const QUEUE: usize = 8;

/// The indexing pass's reading side, in stages on their own threads so
/// that they overlap on a machine with two or more cores: reading the
/// source and hashing its bytes as stored; decompressing them (recording
/// seek points); hashing the decompressed tar (the diff_id). The tar walk,
/// on the caller's thread, reads the decompressed stream through this.
/// Done on one thread, a pass runs at the sum of the stages' costs: a
/// zstd archive at about a third of `zstd -d`'s speed.
///
/// Every decompressed byte the walk receives, whether it reads it or
/// skips it, is charged to the archive's [`Limit::DecompressedBytes`]
/// budget; a stage stops as soon as the one after it is gone, so a
/// refused archive stops the whole pass.
pub(super) struct Pass {
    rx: Receiver<io::Result<Bytes>>,
    chunk: Bytes,
    pos: u64,
    /// The stream ended (cleanly, or with an error already returned).
    done: bool,
    failed: bool,
    budget: Arc<Budget>,
    read: tokio::task::JoinHandle<(Hasher, u64)>,
    decode: Option<tokio::task::JoinHandle<Option<Points>>>,
    hash: Option<tokio::task::JoinHandle<Hasher>>,
}

/// What a pass learnt besides the TOC.
pub(super) struct PassDone {
    /// sha256 and size of the bytes as stored.
    pub stored: (Digest, u64),
    /// sha256 of the decompressed tar.
    pub diff_id: Digest,
    pub points: Option<Points>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tar walk stopped")
}

impl Pass {
    /// Starts the stages on `raw`, the archive from its first byte. Must
    /// be called within the runtime (the stages wait on `raw` through it).
    pub(super) fn start(
        mut raw: ByteStream,
        compression: Option<Compression>,
        budget: Arc<Budget>,
    ) -> Result<Pass, ArchiveError> {
        let decoder = compression
            .map(|c| {
                // Tests use small archives; the spans shrink with them.
                let (span, min) = if cfg!(test) {
                    (256 * 1024, 128 * 1024)
                } else {
                    (seek::SPAN, seek::MIN_SPAN)
                };
                PassDecoder::with_spans(c.codec(), span, min)
            })
            .transpose()
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let rt = tokio::runtime::Handle::current();
        let (in_tx, in_rx) = sync_channel::<io::Result<Bytes>>(QUEUE);
        let read = tokio::task::spawn_blocking(move || {
            let mut h = Hasher::new();
            let mut n = 0u64;
            while let Some(c) = rt.block_on(raw.next()) {
                match c {
                    Ok(b) => {
                        n += b.len() as u64;
                        let sent = in_tx.send(Ok(b.clone()));
                        h.update(&b);
                        if sent.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = in_tx.send(Err(e));
                        break;
                    }
                }
            }
            (h, n)
        });
        let Some(mut dec) = decoder else {
            // A plain tar: the walk reads the stored bytes, whose digest
            // is also the diff_id.
            return Ok(Pass::new(in_rx, budget, read, None, None));
        };
        let (out_tx, out_rx) = sync_channel::<io::Result<Bytes>>(QUEUE);
        let (hash_tx, hash_rx) = sync_channel::<Bytes>(QUEUE);
        let hash = tokio::task::spawn_blocking(move || {
            let mut h = Hasher::new();
            for b in hash_rx {
                h.update(&b);
            }
            h
        });
        let decode = tokio::task::spawn_blocking(move || {
            let mut emit = |b: Bytes| {
                hash_tx.send(b.clone()).map_err(|_| gone())?;
                out_tx.send(Ok(b)).map_err(|_| gone())
            };
            for c in in_rx {
                let fed = match c {
                    Ok(b) => dec.feed(&b, &mut emit),
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = fed {
                    let _ = out_tx.send(Err(e.into()));
                    return None;
                }
            }
            match dec.finish(&mut emit) {
                Ok(points) => Some(points),
                Err(e) => {
                    let _ = out_tx.send(Err(e.into()));
                    None
                }
            }
        });
        Ok(Pass::new(out_rx, budget, read, Some(decode), Some(hash)))
    }

    fn new(
        rx: Receiver<io::Result<Bytes>>,
        budget: Arc<Budget>,
        read: tokio::task::JoinHandle<(Hasher, u64)>,
        decode: Option<tokio::task::JoinHandle<Option<Points>>>,
        hash: Option<tokio::task::JoinHandle<Hasher>>,
    ) -> Pass {
        Pass {
            rx,
            chunk: Bytes::new(),
            pos: 0,
            done: false,
            failed: false,
            budget,
            read,
            decode,
            hash,
        }
    }

    /// Makes `chunk` non-empty; false at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        while self.chunk.is_empty() {
            if self.failed {
                return Err(io::Error::other("the archive stream failed"));
            }
            if self.done {
                return Ok(false);
            }
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    // A decompression bomb is refused, not decompressed
                    // for ever.
                    if let Err(e) = self.budget.charge(Limit::DecompressedBytes, b.len() as u64) {
                        self.failed = true;
                        return Err(io::Error::other(e));
                    }
                    self.chunk = b;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                // The stage before ended: cleanly, or by a panic that
                // joining it reports.
                Err(_) => self.done = true,
            }
        }
        Ok(true)
    }

    /// Takes in the rest of the stream (the end-of-archive blocks and
    /// anything after them count in the diff_id).
    pub(super) fn drain(&mut self) -> io::Result<()> {
        while self.fill()? {
            self.pos += self.chunk.len() as u64;
            self.chunk.clear();
        }
        Ok(())
    }

    /// Waits for the stages, once the stream was drained.
    pub(super) async fn finish(self) -> Result<PassDone, ArchiveError> {
        let Pass {
            rx,
            read,
            decode,
            hash,
            ..
        } = self;
        drop(rx);
        let points = match decode {
            Some(d) => d.await?,
            None => None,
        };
        let (stored, n) = read.await?;
        let stored = stored.finish();
        let diff_id = match hash {
            Some(h) => h.await?.finish(),
            None => stored,
        };
        Ok(PassDone {
            stored: (stored, n),
            diff_id,
            points,
        })
    }
}

impl Read for Pass {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || !self.fill()? {
            return Ok(0);
        }
        let n = buf.len().min(self.chunk.len());
        match (buf.get_mut(..n), self.chunk.get(..n)) {
            (Some(to), Some(from)) => to.copy_from_slice(from),
            _ => return Err(io::Error::other("pass reader out of step")),
        }
        self.chunk.advance(n);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Forward only, as the tar reader skips entry data: skipped bytes are
/// dropped without being copied (they were hashed on their own thread).
impl Seek for Pass {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let SeekFrom::Current(d) = to else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the archive stream only skips forward",
            ));
        };
        let mut left = u64::try_from(d).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the archive stream only skips forward",
            )
        })?;
        while left > 0 {
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "unexpected EOF during skip",
                ));
            }
            let k = left.min(self.chunk.len() as u64) as usize;
            self.chunk.advance(k);
            self.pos += k as u64;
            left -= k as u64;
        }
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::AtomicU64;

    use bytes::Bytes;
    use futures_util::StreamExt;

    use super::*;
    use crate::archive::Archive;
    use crate::seek::Kind;
    use crate::source::{FileSource, SourceError};

    /// A file source that counts the bytes its streams deliver.
    #[derive(Debug)]
    struct Counting(FileSource, Arc<AtomicU64>);

    #[async_trait::async_trait]
    impl Source for Counting {
        fn url(&self) -> &str {
            self.0.url()
        }
        async fn stat(&self) -> Result<Stat, SourceError> {
            self.0.stat().await
        }
        async fn read_range(&self, o: u64, l: u64, p: Option<&Stat>) -> Result<Bytes, SourceError> {
            let b = self.0.read_range(o, l, p).await?;
            self.1.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(b)
        }
        async fn stream(
            &self,
            o: u64,
            l: Option<u64>,
            p: Option<&Stat>,
        ) -> Result<ByteStream, SourceError> {
            let n = self.1.clone();
            let s = self.0.stream(o, l, p).await?;
            Ok(Box::pin(s.inspect_ok(move |b| {
                n.fetch_add(b.len() as u64, Ordering::Relaxed);
            })))
        }
    }

    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (n, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, n, *d).expect("append");
        }
        b.into_inner().expect("tar")
    }

    fn gzip_cli(data: &[u8]) -> Vec<u8> {
        let mut c = std::process::Command::new("gzip")
            .args(["-1", "-c", "-n"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip is needed for this test");
        let mut i = c.stdin.take().expect("stdin");
        let d = data.to_vec();
        let w = std::thread::spawn(move || i.write_all(&d));
        let out = c.wait_with_output().expect("gzip");
        w.join().expect("join").expect("write");
        out.stdout
    }

    async fn read(a: &Archive, name: &str) -> Result<Vec<u8>, std::io::Error> {
        let e = a.member(name).expect("member");
        let mut s = a
            .member_stream(e, 0, e.size)
            .await
            .map_err(std::io::Error::other)?;
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_cold_member_is_read_from_the_nearest_point() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = noise(3 << 20, 1);
        let last = noise(300_000, 2);
        let plain = tarball(&[("first.bin", &first), ("last.bin", &last)]);
        let gz = gzip_cli(&plain);
        let path = dir.path().join("a.tar.gz");
        std::fs::write(&path, &gz).expect("write");
        let n = Arc::new(AtomicU64::new(0));
        let src = Arc::new(Counting(
            FileSource::new("a.tar.gz".into(), path.clone()),
            n.clone(),
        ));
        let a = Archive::open(src.clone()).await.expect("open");
        let points = a.seek.points.clone().expect("points recorded");
        assert!(
            points.points().len() >= 8,
            "{} points",
            points.points().len()
        );
        assert!(
            points
                .points()
                .iter()
                .all(|p| matches!(p.kind, Kind::Deflate { .. }))
        );

        n.store(0, Ordering::Relaxed);
        assert!(read(&a, "last.bin").await.expect("read") == last);
        let pulled = n.load(Ordering::Relaxed);
        // From the nearest point (within 256 KiB of output before the
        // member) to the end: a fraction of the archive, not all of it.
        assert!(
            pulled < gz.len() as u64 / 4,
            "read {pulled} of {}",
            gz.len()
        );
        assert!(read(&a, "first.bin").await.expect("read") == first);

        // Points that do not belong to these bytes: the read fails (or its
        // digest would), and the archive is marked for re-indexing.
        let mut bad = Archive::restore(
            src,
            a.layout().expect("layout"),
            crate::archive::Toc::default(),
            a.stat.clone(),
            a.digests,
        );
        bad.toc = Archive::open(Arc::new(FileSource::new("a".into(), path)))
            .await
            .expect("open")
            .toc;
        let wrong: Vec<_> = points
            .points()
            .iter()
            .map(|p| crate::seek::Point {
                kind: Kind::Deflate {
                    bits: 3,
                    window: noise(100, 9),
                },
                ..p.clone()
            })
            .collect();
        bad.seek = SeekState::new(Some(
            Points::from_points(Codec::Gzip, wrong, gz.len() as u64).expect("shape"),
        ));
        assert!(!bad.seek.failed());
        assert!(read(&bad, "last.bin").await.is_err());
        assert!(bad.seek.failed());
    }

    /// Points that decompress cleanly to other bytes (here: output offsets
    /// one byte off, as a hostile or stale sidecar could say) are caught by
    /// the blob's digest, and the index is marked stale for re-indexing.
    #[tokio::test]
    async fn points_that_yield_other_bytes_mark_the_index_stale() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = noise(3 << 20, 4);
        let last = noise(300_000, 5);
        let plain = tarball(&[("first.bin", &first), ("last.bin", &last)]);
        let gz = gzip_cli(&plain);
        let path = dir.path().join("a.tar.gz");
        std::fs::write(&path, &gz).expect("write");
        let src: Arc<dyn Source> = Arc::new(FileSource::new("a".into(), path));
        let a = Archive::open(src.clone()).await.expect("open");
        let points = a.seek.points.clone().expect("points recorded");
        let mut bad = Archive::restore(
            src.clone(),
            a.layout().expect("layout"),
            crate::archive::Toc::default(),
            a.stat.clone(),
            a.digests,
        );
        bad.toc = Archive::open(src).await.expect("open").toc;
        let shifted: Vec<_> = points
            .points()
            .iter()
            .map(|p| crate::seek::Point {
                out: p.out + 1,
                ..p.clone()
            })
            .collect();
        bad.seek = SeekState::new(Some(
            Points::from_points(Codec::Gzip, shifted, gz.len() as u64).expect("shape"),
        ));
        let e = bad.member("last.bin").expect("member");
        let digest = crate::image::Digest::of(&last);
        let s = bad.member_stream(e, 0, e.size).await.expect("stream");
        let mut s = bad.check_points(s, digest, e.size);
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.expect("decompresses cleanly"));
        }
        assert_eq!(got.len(), last.len());
        assert!(got != last, "the shifted points gave the right bytes");
        assert!(bad.seek.failed());

        // The good points: the same read, checked, leaves the index alone.
        let e = a.member("last.bin").expect("member");
        let s = a.member_stream(e, 0, e.size).await.expect("stream");
        let mut s = a.check_points(s, digest, e.size);
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.expect("read"));
        }
        assert!(got == last);
        assert!(!a.seek.failed());
    }

    fn chunked(data: &[u8]) -> ByteStream {
        let chunks: Vec<_> = data
            .chunks(100_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(chunks))
    }

    /// The pass on its threads: the digests of both streams and the
    /// points, for every kind of stream; and the decompressed-bytes budget
    /// holds (also for bytes the walk skips), stopping every stage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pass_hashes_both_streams_and_keeps_the_budget() {
        let plain = tarball(&[("a.bin", &noise(3 << 20, 7)), ("b.bin", b"b")]);
        let mut z = vec![0u8; zstd_safe::compress_bound(plain.len())];
        let n = zstd_safe::compress(&mut z[..], &plain, 3).expect("zstd");
        z.truncate(n);
        for (name, stored, compression) in [
            ("tar", plain.clone(), None),
            ("gzip", gzip_cli(&plain), Some(super::Compression::Gzip)),
            ("zstd", z, Some(super::Compression::Zstd)),
        ] {
            let budget = Arc::new(Budget::default());
            let pass = Pass::start(chunked(&stored), compression, budget.clone()).expect("start");
            let pass = tokio::task::spawn_blocking(move || {
                let mut pass = pass;
                let mut head = [0u8; 512];
                pass.read_exact(&mut head).expect("header");
                pass.seek(SeekFrom::Current(1 << 20)).expect("skip");
                pass.drain().expect("drain");
                pass
            })
            .await
            .expect("join");
            let done = pass.finish().await.expect("finish");
            assert_eq!(
                done.stored,
                (Digest::of(&stored), stored.len() as u64),
                "{name}"
            );
            assert_eq!(done.diff_id, Digest::of(&plain), "{name}");
            assert_eq!(done.points.is_some(), compression.is_some(), "{name}");
            assert_eq!(
                budget.spent(Limit::DecompressedBytes),
                plain.len() as u64,
                "{name}"
            );

            let small = Arc::new(Budget::default().with_max(Limit::DecompressedBytes, 1 << 20));
            let pass = Pass::start(chunked(&stored), compression, small).expect("start");
            let err = tokio::task::spawn_blocking(move || {
                let mut pass = pass;
                pass.seek(SeekFrom::Current(2 << 20))
                    .expect_err("over budget")
            })
            .await
            .expect("join");
            assert!(
                matches!(
                    crate::archive::guard::refusal(err),
                    Ok(ArchiveError::Budget(Limit::DecompressedBytes))
                ),
                "{name}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_over_a_broken_stream_fails_cleanly() {
        let plain = tarball(&[("a.bin", &noise(1 << 20, 8))]);
        let gz = gzip_cli(&plain);
        // Truncated: the walk sees an error, never a clean end.
        let cut = gz.get(..gz.len() / 2).expect("half");
        let budget = Arc::new(Budget::default());
        let pass =
            Pass::start(chunked(cut), Some(super::Compression::Gzip), budget).expect("start");
        let err = tokio::task::spawn_blocking(move || {
            let mut pass = pass;
            pass.drain().expect_err("truncated")
        })
        .await
        .expect("join");
        assert!(err.to_string().contains("ended in the middle"), "{err}");
        // A source error reaches the walk as it was.
        let mut chunks: Vec<io::Result<Bytes>> =
            vec![Ok(Bytes::copy_from_slice(gz.get(..1000).expect("head")))];
        chunks.push(Err(io::Error::other("upstream went away")));
        let raw: ByteStream = Box::pin(futures_util::stream::iter(chunks));
        let pass = Pass::start(raw, Some(super::Compression::Gzip), Arc::default()).expect("start");
        let err = tokio::task::spawn_blocking(move || {
            let mut pass = pass;
            pass.drain().expect_err("source error")
        })
        .await
        .expect("join");
        assert!(err.to_string().contains("upstream went away"), "{err}");
    }

    #[tokio::test]
    async fn a_zstd_seek_table_is_read_at_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let data = noise(1 << 20, 3);
        let plain = tarball(&[("a.bin", &data)]);
        // Seekable: frames of 256 KiB plus the table.
        let mut z = Vec::new();
        let mut table = Vec::new();
        for c in plain.chunks(256 * 1024) {
            let mut buf = vec![0u8; zstd_safe::compress_bound(c.len())];
            let n = zstd_safe::compress(&mut buf[..], c, 3).expect("zstd");
            buf.truncate(n);
            table.extend((buf.len() as u32).to_le_bytes());
            table.extend((c.len() as u32).to_le_bytes());
            z.extend(buf);
        }
        table.extend((plain.len().div_ceil(256 * 1024) as u32).to_le_bytes());
        table.push(0);
        table.extend(0x8F92_EAB1u32.to_le_bytes());
        z.extend(0x184D_2A5Eu32.to_le_bytes());
        z.extend((table.len() as u32).to_le_bytes());
        z.extend(table);
        let path = dir.path().join("a.tar.zst");
        std::fs::write(&path, &z).expect("write");
        let a = Archive::open(Arc::new(FileSource::new("a".into(), path)))
            .await
            .expect("open");
        let p = a.seek.points.clone().expect("points");
        // Every frame start, from the table (the pass keeps fewer).
        assert_eq!(p.points().len(), plain.len().div_ceil(256 * 1024) - 1);
        assert!(read(&a, "a.bin").await.expect("read") == data);
    }
}
