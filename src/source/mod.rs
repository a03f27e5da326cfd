//! Where archive bytes live. A [`Source`] can say how big an object is and
//! which version of it is there, and read any byte range of it; everything
//! above keys what it derives by (url, version) so a replaced object is
//! re-read, never mixed with the old one.
//!
//! [`Sources`] opens a source from a URL: a path or `file://` URL, an
//! `http(s)://` URL ([`HttpSource`]) or an `s3://bucket/key` URL
//! ([`S3Source`]). It keeps one HTTP client per distinct [`HttpOptions`] and
//! one S3 store per (bucket, [`S3Options`]), shared by every source opened
//! through it.
mod file;
mod http;
mod options;
mod redact;
mod s3;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;

pub use crate::catalog::ByteStream;
pub use file::{FileSource, file_version};
pub use http::HttpSource;
pub use options::{HttpOptions, S3Addressing, S3Options, SourceOptions};
pub use redact::{Redacted, redact};
pub use s3::S3Source;

/// What a listing found: at most the number of objects asked for, and
/// whether there were more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Full URLs, sorted.
    pub urls: Vec<String>,
    pub truncated: bool,
}

/// Size and version of an object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stat {
    pub size: u64,
    /// Changes whenever the content may have changed (ETag, or mtime+size).
    pub version: String,
}

/// Why a source could not deliver. Every URL and message is shown
/// [`Redacted`]: no userinfo, no query string. Clone, so one failure can
/// be kept (a binding remembers why its source failed) and reported.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("{}: not found", Redacted(.url))]
    NotFound { url: String },
    #[error("{}: {}", Redacted(.url), Redacted(.message))]
    Io { url: String, message: String },
    #[error("{}: changed while being read (was {expected}, now {actual})", Redacted(.url))]
    Changed {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{}: unsupported source (expected a path, file://, http://, https:// or s3:// URL)", Redacted(.0))]
    Unsupported(String),
    /// The server answered a range request with the whole object: the
    /// caller falls back to one streaming pass.
    #[error("{}: the server does not honour range requests", Redacted(.url))]
    RangeUnsupported { url: String },
    /// 401/403: credentials missing or wrong. Never carries the secret.
    #[error("{}: access denied ({status})", Redacted(.url))]
    Denied { url: String, status: u16 },
}

impl SourceError {
    /// An I/O error; `url` and the message are redacted here already, so
    /// not even the Debug form carries a secret.
    pub(crate) fn io(url: &str, e: impl fmt::Display) -> SourceError {
        SourceError::Io {
            url: redact(url),
            message: redact(&e.to_string()),
        }
    }
}

/// A readable object: a file, an HTTP resource or an S3 object.
#[async_trait::async_trait]
pub trait Source: Send + Sync + fmt::Debug + 'static {
    /// The URL or path as the user wrote it, [`Redacted`] (no userinfo, no
    /// query string): for logs, errors and the keys of saved indexes.
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

    /// The local file behind this source, when it is one: its bytes can
    /// be served in place (and handed to `sendfile`) instead of copied.
    fn local_path(&self) -> Option<&Path> {
        None
    }
}

/// What kind of source a URL names.
enum Kind<'a> {
    File(PathBuf),
    Http,
    S3 { bucket: &'a str, key: &'a str },
}

fn kind<'a>(url: &'a str, base: Option<&Path>) -> Result<Kind<'a>, SourceError> {
    if let Some(rest) = url.strip_prefix("file://") {
        Ok(Kind::File(PathBuf::from(rest)))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        Ok(Kind::Http)
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(SourceError::io(url, "an s3:// URL needs a bucket"));
        }
        Ok(Kind::S3 { bucket, key })
    } else if url.contains("://") {
        Err(SourceError::Unsupported(url.to_string()))
    } else {
        let p = PathBuf::from(url);
        Ok(Kind::File(match base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        }))
    }
}

/// Opens sources from URLs, sharing HTTP clients and S3 stores between
/// sources with the same options. Cheap to clone.
#[derive(Clone, Default)]
pub struct Sources {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    http: Mutex<HashMap<HttpOptions, reqwest::Client>>,
    s3: Mutex<HashMap<(String, S3Options), Arc<object_store::aws::AmazonS3>>>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let http = self.inner.http.lock().map(|m| m.len()).unwrap_or(0);
        let s3 = self.inner.s3.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Sources")
            .field("http_clients", &http)
            .field("s3_stores", &s3)
            .finish()
    }
}

impl Sources {
    pub fn new() -> Sources {
        Sources::default()
    }

    /// Opens a source from a path or URL. Relative paths are taken relative
    /// to `base` (the config file's directory) when given. Nothing is sent
    /// over the network yet.
    pub fn open(
        &self,
        url: &str,
        opts: &SourceOptions,
        base: Option<&Path>,
    ) -> Result<Arc<dyn Source>, SourceError> {
        Ok(match kind(url, base)? {
            Kind::File(path) => Arc::new(FileSource::new(url.to_string(), path)),
            Kind::Http => {
                let client = self.http_client(url, &opts.http)?;
                Arc::new(HttpSource::new(url, client, &opts.http)?)
            }
            Kind::S3 { bucket, key } => {
                if key.is_empty() || key.ends_with('/') {
                    return Err(SourceError::io(url, "an s3:// URL needs an object key"));
                }
                let store = self.s3_store(url, bucket, &opts.s3)?;
                Arc::new(S3Source::new(url, key, store))
            }
        })
    }

    /// Full URLs of the objects under a prefix URL (recursive), sorted;
    /// `Ok(None)` when the kind cannot list (http). A directory lists the
    /// regular files below it, as paths when `prefix_url` is a path and as
    /// `file://` URLs when it is a `file://` URL; S3 lists the keys under
    /// the prefix taken as a folder (`s3://b/a` lists `a/...`, not `ab`),
    /// as `s3://bucket/key` URLs.
    pub async fn list(
        &self,
        prefix_url: &str,
        opts: &SourceOptions,
        base: Option<&Path>,
    ) -> Result<Option<Vec<String>>, SourceError> {
        Ok(self
            .list_capped(prefix_url, opts, base, usize::MAX)
            .await?
            .map(|l| l.urls))
    }

    /// Like [`Sources::list`], stopping after `limit` objects so a huge
    /// prefix costs a bounded listing: S3 stops asking for pages, a
    /// directory walk stops (it walks each folder in name order, so the
    /// same tree always gives the same first `limit`).
    pub async fn list_capped(
        &self,
        prefix_url: &str,
        opts: &SourceOptions,
        base: Option<&Path>,
        limit: usize,
    ) -> Result<Option<Listing>, SourceError> {
        match kind(prefix_url, base)? {
            Kind::Http => Ok(None),
            Kind::File(dir) => {
                let as_url = prefix_url.starts_with("file://");
                let url = prefix_url.to_string();
                let found = tokio::task::spawn_blocking(move || list_dir(&dir, limit))
                    .await
                    .map_err(|e| SourceError::io(&url, e))?
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            SourceError::NotFound { url: url.clone() }
                        } else {
                            SourceError::io(&url, e)
                        }
                    })?;
                let root = prefix_url.trim_end_matches('/');
                let truncated = found.len() > limit;
                let mut out: Vec<String> = found
                    .into_iter()
                    .take(limit)
                    .map(|rel| {
                        if as_url || !root.is_empty() {
                            format!("{root}/{rel}")
                        } else {
                            rel
                        }
                    })
                    .collect();
                out.sort();
                Ok(Some(Listing {
                    urls: out,
                    truncated,
                }))
            }
            Kind::S3 { bucket, key } => {
                let store = self.s3_store(prefix_url, bucket, &opts.s3)?;
                s3::list(&store, bucket, key, limit).await.map(Some)
            }
        }
    }

    fn http_client(&self, url: &str, opts: &HttpOptions) -> Result<reqwest::Client, SourceError> {
        let mut clients = self.inner.http.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(opts) {
            return Ok(c.clone());
        }
        let c = http::build_client(opts).map_err(|e| SourceError::io(url, e))?;
        clients.insert(opts.clone(), c.clone());
        Ok(c)
    }

    fn s3_store(
        &self,
        url: &str,
        bucket: &str,
        opts: &S3Options,
    ) -> Result<Arc<object_store::aws::AmazonS3>, SourceError> {
        let mut stores = self.inner.s3.lock().unwrap_or_else(|e| e.into_inner());
        let key = (bucket.to_string(), opts.clone());
        if let Some(s) = stores.get(&key) {
            return Ok(s.clone());
        }
        let s = Arc::new(s3::build_store(bucket, opts).map_err(|e| SourceError::io(url, e))?);
        stores.insert(key, s.clone());
        Ok(s)
    }
}

/// The regular files below `dir`, as `/`-separated paths relative to it;
/// past `limit`, one more (so the caller knows there were more) and no
/// further. Each folder is read in name order, so the cut is the same on
/// every run.
fn list_dir(dir: &Path, limit: usize) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = todo.pop() {
        let mut entries = std::fs::read_dir(&d)?.collect::<std::io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        // Folders are pushed in reverse, so they pop in name order.
        let mut folders = Vec::new();
        for entry in entries {
            if out.len() > limit {
                return Ok(out);
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Symlinks to files count (opening them works); symlinks to
            // directories are not followed, so a loop cannot trap us.
            let ft = entry.file_type()?;
            if ft.is_dir() {
                folders.push((entry.path(), r));
            } else if ft.is_file()
                || (ft.is_symlink() && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()))
            {
                out.push(r);
            }
        }
        todo.extend(folders.into_iter().rev());
    }
    Ok(out)
}

/// The sources opened by [`open`]: default options, shared clients.
static DEFAULT: LazyLock<Sources> = LazyLock::new(Sources::new);

/// Opens a source from a path or URL with default options. Relative paths
/// are taken relative to `base` (the config file's directory) when given.
pub fn open(url: &str, base: Option<&Path>) -> Result<Arc<dyn Source>, SourceError> {
    DEFAULT.open(url, &SourceOptions::default(), base)
}
