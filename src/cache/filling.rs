//! A blob whose fill is in progress, seen as its temp file: what the
//! zero-copy front sends with `sendfile` to the clients of a cold blob
//! (the one that started the fill and those that joined it), instead of
//! copying the fill's buffers into their sockets from user space.
//!
//! The bytes a client may be sent are those the fill has written to the
//! temp file, and never the blob's last byte before its sha256 matched: on
//! a mismatch the response is cut one byte short, as on every other path.
//! When the cache cannot write mid-fill (disk full), the temp file is
//! incomplete: the caller goes on from the response's own stream, which
//! re-reads the blob from the source, verified.
use std::fs::File;
use std::io;
use std::sync::Arc;

use tokio::sync::watch;

use super::{BlobCache, Progress};
use crate::image::Digest;

/// The temp file of a fill in progress and the fill's progress.
#[derive(Clone, Debug)]
pub struct FillSpan {
    pub file: Arc<File>,
    /// The blob's size.
    pub size: u64,
    progress: watch::Receiver<Progress>,
}

/// How far a [`FillSpan`] may be sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Sendable {
    /// Bytes up to (not including) this offset may be sent.
    Upto(u64),
    /// The cache stopped writing: the rest must come from elsewhere.
    CacheFailed,
}

impl FillSpan {
    /// Waits until byte `pos` of a response ending at byte `end` (both
    /// blob offsets, `end` inclusive) may be sent, and says up to where.
    /// Bytes are sendable once the fill wrote them, except the blob's last
    /// byte and the response's: they wait for the verdict on the whole
    /// blob, so no response is complete before it matched. An error when
    /// the fill failed (source error, digest mismatch): the response must
    /// be cut.
    pub async fn sendable(&mut self, pos: u64, end: u64) -> io::Result<Sendable> {
        loop {
            let now = self.progress.borrow_and_update().clone();
            match now {
                Progress::Writing { written, .. } => {
                    let n = written.min(self.size.saturating_sub(1)).min(end);
                    if n > pos {
                        return Ok(Sendable::Upto(n));
                    }
                }
                Progress::Done => return Ok(Sendable::Upto(end.saturating_add(1))),
                Progress::Failed(why) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, why.to_string()));
                }
                Progress::CacheFailed => return Ok(Sendable::CacheFailed),
            }
            if self.progress.changed().await.is_err() {
                // The fill is over: its verdict, if it sent one, is the
                // value seen last (`changed` reports it before closing).
                if matches!(*self.progress.borrow(), Progress::Writing { .. }) {
                    return Err(io::Error::other("cache fill ended early"));
                }
            }
        }
    }
}

impl BlobCache {
    /// The temp file of the fill of `digest` in progress, at `size`; None
    /// when there is none (no fill, another size, or a fill that could not
    /// create its file).
    pub fn filling(&self, digest: &Digest, size: u64) -> Option<FillSpan> {
        let flights = self.flights.lock().ok()?;
        let flight = flights.get(digest).filter(|f| f.size == size)?;
        Some(FillSpan {
            file: flight.file.get()?.clone(),
            size,
            progress: flight.progress.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::cache::tests::{fetcher, settings};

    /// Reads bytes `start..=end` of a fill's temp file as the zero-copy
    /// front does: what it was let send, and how the fill ended for it.
    async fn send_all(mut span: FillSpan, start: u64, end: u64) -> (Vec<u8>, io::Result<()>) {
        let mut out = Vec::new();
        let mut pos = start;
        while pos <= end {
            match span.sendable(pos, end).await {
                Ok(Sendable::Upto(n)) => {
                    assert!(n > pos && n <= end + 1, "{pos}..{n} of ..={end}");
                    let mut b = vec![0; (n - pos) as usize];
                    span.file.read_exact_at(&mut b, pos).unwrap();
                    out.extend_from_slice(&b);
                    pos = n;
                }
                Ok(Sendable::CacheFailed) => return (out, Err(io::Error::other("cache failed"))),
                Err(e) => return (out, Err(e)),
            }
        }
        (out, Ok(()))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fill_is_sent_from_its_temp_file_the_last_byte_once_verified() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::new(&settings(dir.path())));
        let data: Vec<u8> = (0..60_000u32).map(|i| (i % 253) as u8).collect();
        let d = Digest::of(&data);
        let size = data.len() as u64;
        let calls = Arc::new(AtomicUsize::new(0));

        // A lying source: the file is let out all but its last byte, then
        // the fill fails, and nothing is cached; a range short of the
        // blob's end is held back at its own last byte as well.
        let liar = fetcher(data.clone(), calls.clone(), true);
        let _stream = cache
            .read(d, size, 0, size - 1, "t".into(), liar, None)
            .await
            .unwrap();
        assert!(
            cache.filling(&d, size + 1).is_none(),
            "joined at another size"
        );
        let span = cache.filling(&d, size).expect("a fill in progress");
        let (part, part_end) = send_all(span.clone(), 100, 30_000).await;
        let (bytes, end) = send_all(span, 0, size - 1).await;
        assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(bytes.len() < data.len(), "the last byte was let out");
        assert_eq!(part_end.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(
            part.len() < 30_000 - 100 + 1,
            "the range's last byte was let out"
        );
        assert!(!dir.path().join("sha256").join(d.hex()).exists());

        // An honest one: every byte, the same as the blob, and no fill left.
        let honest = fetcher(data.clone(), calls.clone(), false);
        let _stream = cache
            .read(d, size, 0, size - 1, "t".into(), honest, None)
            .await
            .unwrap();
        let span = cache.filling(&d, size).expect("a fill in progress");
        let (part, part_end) = send_all(span.clone(), 100, 30_000).await;
        let (bytes, end) = send_all(span, 0, size - 1).await;
        end.unwrap();
        assert!(bytes == data);
        part_end.unwrap();
        assert!(part == data[100..=30_000]);
        assert!(cache.filling(&d, size).is_none());
        assert_eq!(
            std::fs::read(dir.path().join("sha256").join(d.hex())).unwrap(),
            data
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
