//! Hash-while-streaming: a blob response is released byte for byte as it
//! arrives, except its last chunk, which is held until the whole blob's
//! sha256 has been checked. On a mismatch the stream ends in an error, so
//! the response is cut short and no client can take wrong bytes as a
//! complete blob.
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::image::{Digest, Hasher};
use crate::source::ByteStream;

/// Wraps `inner`, the bytes `0..size` of a blob, emitting only
/// `start..=end` and verifying the whole against `expected`. `on_verified`
/// runs once the digest matched.
pub struct Verified {
    inner: ByteStream,
    hasher: Option<Hasher>,
    expected: Digest,
    size: u64,
    start: u64,
    end: u64,
    pos: u64,
    held: Option<Bytes>,
    done: bool,
    on_verified: Option<Box<dyn FnOnce() + Send>>,
    label: String,
}

impl Verified {
    pub fn new(
        inner: ByteStream,
        expected: Digest,
        size: u64,
        start: u64,
        end: u64,
        label: String,
        on_verified: Box<dyn FnOnce() + Send>,
    ) -> Verified {
        Verified {
            inner,
            hasher: Some(Hasher::new()),
            expected,
            size,
            start,
            end,
            pos: 0,
            held: None,
            done: false,
            on_verified: Some(on_verified),
            label,
        }
    }

    fn finish(&mut self) -> Option<std::io::Result<Bytes>> {
        self.done = true;
        let actual = self.hasher.take().map(Hasher::finish);
        if self.pos != self.size || actual != Some(self.expected) {
            let actual = actual.map(|d| d.to_string()).unwrap_or_default();
            tracing::error!(
                source = self.label,
                expected = %self.expected,
                actual,
                bytes = self.pos,
                size = self.size,
                "blob does not match its digest; response cut"
            );
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("blob {} failed verification", self.expected),
            )));
        }
        if let Some(f) = self.on_verified.take() {
            f();
        }
        self.held.take().map(Ok)
    }
}

impl Stream for Verified {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => return Poll::Ready(this.finish()),
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(&chunk);
                        crate::metrics::METRICS
                            .blob_bytes_hashed
                            .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    let chunk_start = this.pos;
                    this.pos += chunk.len() as u64;
                    if this.pos > this.size {
                        // More bytes than the blob has: never complete it.
                        return Poll::Ready(this.finish());
                    }
                    // The part of this chunk inside start..=end.
                    let lo = this.start.max(chunk_start);
                    let hi = (this.end + 1).min(this.pos);
                    if lo < hi {
                        let part =
                            chunk.slice((lo - chunk_start) as usize..(hi - chunk_start) as usize);
                        if let Some(prev) = this.held.replace(part) {
                            return Poll::Ready(Some(Ok(prev)));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt, stream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn chunks(data: &[u8], n: usize) -> ByteStream {
        let v: Vec<std::io::Result<Bytes>> = data
            .chunks(n)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(stream::iter(v))
    }

    async fn run(data: &[u8], expected: Digest, start: u64, end: u64) -> (Vec<u8>, bool, bool) {
        let ok = Arc::new(AtomicBool::new(false));
        let flag = ok.clone();
        let mut s = Verified::new(
            chunks(data, 3),
            expected,
            data.len() as u64,
            start,
            end,
            "test".into(),
            Box::new(move || flag.store(true, Ordering::SeqCst)),
        );
        let mut out = Vec::new();
        let mut failed = false;
        while let Some(c) = s.next().await {
            match c {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => failed = true,
            }
        }
        (out, failed, ok.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn good_blob_passes_whole_and_in_ranges() {
        let data = b"hello, verified world";
        let d = Digest::of(data);
        assert_eq!(
            run(data, d, 0, data.len() as u64 - 1).await,
            (data.to_vec(), false, true)
        );
        assert_eq!(
            run(data, d, 7, 14).await,
            (data[7..=14].to_vec(), false, true)
        );
        assert_eq!(
            run(data, d, 20, 20).await,
            (data[20..=20].to_vec(), false, true)
        );
    }

    #[tokio::test]
    async fn bad_blob_is_cut_before_its_last_byte() {
        let data = b"hello, verified world";
        let wrong = Digest::of(b"something else");
        let (out, failed, ok) = run(data, wrong, 0, data.len() as u64 - 1).await;
        assert!(failed && !ok);
        assert!(
            out.len() < data.len(),
            "sent {} of {} bytes",
            out.len(),
            data.len()
        );
        // A range that ends early is still held back until the end is checked.
        let (out, failed, _) = run(data, wrong, 0, 2).await;
        assert!(failed);
        assert!(out.len() < 3);
    }

    #[tokio::test]
    async fn short_source_fails() {
        let data = b"abcdef";
        let d = Digest::of(b"abcdefg");
        let ok = Arc::new(AtomicBool::new(false));
        let mut s = Verified::new(chunks(data, 2), d, 7, 0, 6, "t".into(), Box::new(|| {}));
        let mut failed = false;
        while let Some(c) = s.next().await {
            failed |= c.is_err();
        }
        assert!(failed && !ok.load(Ordering::SeqCst));
    }
}
