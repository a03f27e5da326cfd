//! Where archive bytes live. A [`Source`] can say how big an object is and
//! which version of it is there, and read any byte range of it; everything
//! above keys what it derives by (url, version) so a replaced object is
//! re-read, never mixed with the old one.
mod file;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use crate::catalog::ByteStream;
pub use file::FileSource;

/// Size and version of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    /// Changes whenever the content may have changed (ETag, or mtime+size).
    pub version: String,
}

/// Why a source could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: {message}")]
    Io { url: String, message: String },
    #[error("{url}: changed while being read (was {expected}, now {actual})")]
    Changed {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{0}: unsupported source (expected a path or file:// URL)")]
    Unsupported(String),
    /// The server answered a range request with the whole object: the
    /// caller falls back to one streaming pass.
    #[error("{url}: the server does not honour range requests")]
    RangeUnsupported { url: String },
    /// 401/403: credentials missing or wrong. Never carries the secret.
    #[error("{url}: access denied ({status})")]
    Denied { url: String, status: u16 },
}

impl SourceError {
    pub(crate) fn io(url: &str, e: impl fmt::Display) -> SourceError {
        SourceError::Io {
            url: url.to_string(),
            message: e.to_string(),
        }
    }
}

/// A readable object: a file today, an HTTP or S3 object later.
#[async_trait::async_trait]
pub trait Source: Send + Sync + fmt::Debug + 'static {
    /// The URL or path as the user wrote it, for logs and errors.
    fn url(&self) -> &str;

    async fn stat(&self) -> Result<Stat, SourceError>;

    /// Up to `len` bytes from `offset`; fewer only at the end of the object.
    /// With `pin`, the read fails with [`SourceError::Changed`] unless the
    /// object is still at that version (If-Match), so bytes of two
    /// versions are never mixed.
    async fn read_range(
        &self,
        offset: u64,
        len: u64,
        pin: Option<&Stat>,
    ) -> Result<Bytes, SourceError>;

    /// A stream of the bytes `offset..offset+len` (to the end when `len` is
    /// None), read in large chunks; `pin` as for `read_range`.
    async fn stream(
        &self,
        offset: u64,
        len: Option<u64>,
        pin: Option<&Stat>,
    ) -> Result<ByteStream, SourceError>;
}

/// Opens a source from a path or URL. Relative paths are taken relative to
/// `base` (the config file's directory) when given.
pub fn open(url: &str, base: Option<&std::path::Path>) -> Result<Arc<dyn Source>, SourceError> {
    let path = if let Some(rest) = url.strip_prefix("file://") {
        std::path::PathBuf::from(rest)
    } else if url.contains("://") {
        return Err(SourceError::Unsupported(url.to_string()));
    } else {
        let p = std::path::PathBuf::from(url);
        match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }
    };
    Ok(Arc::new(FileSource::new(url.to_string(), path)))
}
