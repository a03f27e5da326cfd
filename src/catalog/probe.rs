//! A source that remembers how it failed while an archive was indexed.
//!
//! The archive layer reads its source from blocking tar walks and
//! decompressors, where a failed read arrives as an I/O error among format
//! errors. Whether an index failed because the *archive* is broken (kept for
//! the archive's version) or because the *source* failed (retried) is
//! decided here, at the boundary: an index that saw its source fail proves
//! nothing about the archive.
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::source::{ByteStream, Source, SourceError, Stat};

#[derive(Debug)]
pub(super) struct Probe {
    inner: Arc<dyn Source>,
    seen: Arc<Seen>,
}

/// What a [`Probe`] saw, shared with the streams it hands out.
#[derive(Debug)]
struct Seen {
    url: String,
    /// The first failure.
    failure: Mutex<Option<SourceError>>,
    /// Whether a range read succeeded: a server that honoured ranges and
    /// then stops is failing; one that never did is simply range-less
    /// (the archive layer falls back to a streaming pass).
    ranged: AtomicBool,
}

impl Seen {
    fn note(&self, e: &SourceError) {
        if matches!(e, SourceError::RangeUnsupported { .. }) && !self.ranged.load(Ordering::Relaxed)
        {
            return;
        }
        if let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            *f = Some(e.clone());
        }
    }

    fn note_io(&self, e: &std::io::Error) {
        match e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()) {
            Some(s) => self.note(s),
            None => self.note(&SourceError::io(&self.url, e)),
        }
    }
}

impl Probe {
    pub(super) fn new(inner: Arc<dyn Source>) -> Arc<Probe> {
        let seen = Arc::new(Seen {
            url: inner.url().to_string(),
            failure: Mutex::new(None),
            ranged: AtomicBool::new(false),
        });
        Arc::new(Probe { inner, seen })
    }

    /// The first way the source failed, if it did.
    pub(super) fn failure(&self) -> Option<SourceError> {
        self.seen.failure.lock().ok()?.clone()
    }
}

#[async_trait::async_trait]
impl Source for Probe {
    fn url(&self) -> &str {
        self.inner.url()
    }

    async fn stat(&self) -> Result<Stat, SourceError> {
        self.inner.stat().await.inspect_err(|e| self.seen.note(e))
    }

    async fn read_range(
        &self,
        offset: u64,
        len: u64,
        pin: Option<&Stat>,
    ) -> Result<Bytes, SourceError> {
        let r = self.inner.read_range(offset, len, pin).await;
        match &r {
            Ok(_) => self.seen.ranged.store(true, Ordering::Relaxed),
            Err(e) => self.seen.note(e),
        }
        r
    }

    async fn stream(
        &self,
        offset: u64,
        len: Option<u64>,
        pin: Option<&Stat>,
    ) -> Result<ByteStream, SourceError> {
        let s = self
            .inner
            .stream(offset, len, pin)
            .await
            .inspect_err(|e| self.seen.note(e))?;
        let seen = self.seen.clone();
        Ok(Box::pin(s.inspect(move |item| {
            if let Err(e) = item {
                seen.note_io(e);
            }
        })))
    }

    fn local_path(&self) -> Option<&Path> {
        self.inner.local_path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Ranges(bool);

    #[async_trait::async_trait]
    impl Source for Ranges {
        fn url(&self) -> &str {
            "mem://r"
        }
        async fn stat(&self) -> Result<Stat, SourceError> {
            Ok(Stat {
                size: 10,
                version: "v".into(),
            })
        }
        async fn read_range(&self, _: u64, _: u64, _: Option<&Stat>) -> Result<Bytes, SourceError> {
            if self.0 {
                Ok(Bytes::from_static(b"x"))
            } else {
                Err(SourceError::RangeUnsupported {
                    url: "mem://r".into(),
                })
            }
        }
        async fn stream(
            &self,
            _: u64,
            _: Option<u64>,
            _: Option<&Stat>,
        ) -> Result<ByteStream, SourceError> {
            let items: Vec<std::io::Result<Bytes>> = vec![
                Ok(Bytes::from_static(b"ab")),
                Err(std::io::Error::other(SourceError::io(
                    "mem://r",
                    "connection reset",
                ))),
            ];
            Ok(Box::pin(futures_util::stream::iter(items)))
        }
    }

    #[tokio::test]
    async fn a_range_less_server_is_not_a_failure_but_a_failing_stream_is() {
        let p = Probe::new(Arc::new(Ranges(false)));
        assert!(p.read_range(0, 1, None).await.is_err());
        assert!(
            p.failure().is_none(),
            "range-less is handled by the archive layer"
        );
        let items: Vec<_> = p.stream(0, None, None).await.unwrap().collect().await;
        assert_eq!(items.len(), 2);
        let f = p.failure().expect("the reset is remembered");
        assert!(f.to_string().contains("connection reset"), "{f}");
    }

    #[tokio::test]
    async fn ranges_refused_after_ranges_worked_is_a_failure() {
        let p = Probe::new(Arc::new(Ranges(true)));
        p.read_range(0, 1, None).await.unwrap();
        assert!(p.failure().is_none());
        p.seen.note(&SourceError::RangeUnsupported {
            url: "mem://r".into(),
        });
        assert!(matches!(
            p.failure(),
            Some(SourceError::RangeUnsupported { .. })
        ));
    }
}
