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

/// Per-source settings (`[image.http]`, `[image.s3]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOptions {
    #[serde(default)]
    pub http: HttpOptions,
    #[serde(default)]
    pub s3: S3Options,
}

/// Settings for http(s) sources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {}

/// Settings for s3 sources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Options {}

/// Opens sources and lists prefixes, sharing clients between them.
#[derive(Clone, Debug, Default)]
pub struct Sources {}

impl Sources {
    pub fn new() -> Sources {
        Sources {}
    }

    pub fn open(
        &self,
        url: &str,
        _opts: &SourceOptions,
        base: Option<&std::path::Path>,
    ) -> Result<Arc<dyn Source>, SourceError> {
        open(url, base)
    }

    /// Full URLs (or paths, for paths) of the objects under a prefix,
    /// sorted; None when the kind of source cannot list.
    pub async fn list(
        &self,
        prefix_url: &str,
        _opts: &SourceOptions,
        base: Option<&std::path::Path>,
    ) -> Result<Option<Vec<String>>, SourceError> {
        if prefix_url.contains("://") && !prefix_url.starts_with("file://") {
            return Ok(None);
        }
        let (scheme, raw) = match prefix_url.strip_prefix("file://") {
            Some(r) => ("file://", r),
            None => ("", prefix_url),
        };
        let full = match base {
            Some(b) if std::path::Path::new(raw).is_relative() => b.join(raw).display().to_string(),
            _ => raw.to_string(),
        };
        // List the folder the prefix ends in, keep what starts with it.
        let dir = match full.rfind('/') {
            Some(i) => full[..=i].to_string(),
            None => "./".to_string(),
        };
        let strip = full.len() - raw.len();
        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut stack = vec![std::path::PathBuf::from(&dir)];
            while let Some(d) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in rd.flatten() {
                    let p = e.path();
                    let Ok(ft) = e.file_type() else { continue };
                    let s = p.display().to_string();
                    if ft.is_dir() {
                        stack.push(p);
                    } else if ft.is_file() && s.starts_with(&full) {
                        out.push(format!("{scheme}{}", &s[strip..]));
                    }
                }
            }
            out.sort();
            out
        })
        .await
        .map_err(|e| SourceError::io(prefix_url, e))?;
        Ok(Some(out))
    }
}
