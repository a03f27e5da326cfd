use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream;

use super::{ByteStream, Source, SourceError, Stat};

/// Chunk size for streaming a file: large enough that syscalls and hashing
/// are amortised, small enough that a slow client holds little memory.
const CHUNK: usize = 512 * 1024;

/// A local file, read with positional reads so concurrent readers never
/// share a cursor.
#[derive(Debug)]
pub struct FileSource {
    url: String,
    path: PathBuf,
}

impl FileSource {
    pub fn new(url: String, path: PathBuf) -> FileSource {
        FileSource { url, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> Result<File, SourceError> {
        File::open(&self.path).map_err(|e| self.err(e))
    }

    /// Opens the file, checking it is still the version `pin` names. The
    /// open file keeps reading the same inode even if the path is replaced.
    fn open_pinned(&self, pin: Option<&Stat>) -> Result<File, SourceError> {
        let file = self.open()?;
        if let Some(pin) = pin {
            let meta = file.metadata().map_err(|e| self.err(e))?;
            let now = version_of(&meta);
            if now != pin.version {
                return Err(SourceError::Changed {
                    url: self.url.clone(),
                    expected: pin.version.clone(),
                    actual: now,
                });
            }
        }
        Ok(file)
    }

    fn err(&self, e: std::io::Error) -> SourceError {
        if e.kind() == std::io::ErrorKind::NotFound {
            SourceError::NotFound {
                url: self.url.clone(),
            }
        } else {
            SourceError::io(&self.url, e)
        }
    }
}

/// mtime, inode and size: a file rewritten in place or replaced by a rename
/// gets a new version.
pub fn file_version(meta: &std::fs::Metadata) -> String {
    version_of(meta)
}

fn version_of(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}.{}-{}-{}",
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino(),
        meta.len()
    )
}

/// Reads up to `len` bytes at `offset`, short only at end of file.
fn pread(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match file.read_at(rest, offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

#[async_trait::async_trait]
impl Source for FileSource {
    fn url(&self) -> &str {
        &self.url
    }

    fn local_path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    async fn stat(&self) -> Result<Stat, SourceError> {
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.err(e))?;
        if !meta.is_file() {
            return Err(SourceError::io(&self.url, "not a regular file"));
        }
        Ok(Stat {
            size: meta.len(),
            version: version_of(&meta),
        })
    }

    async fn read_range(
        &self,
        offset: u64,
        len: u64,
        pin: Option<&Stat>,
    ) -> Result<Bytes, SourceError> {
        let file = self.open_pinned(pin)?;
        let len = usize::try_from(len).map_err(|e| SourceError::io(&self.url, e))?;
        tokio::task::spawn_blocking(move || pread(&file, offset, len))
            .await
            .map_err(|e| SourceError::io(&self.url, e))?
            .map_err(|e| self.err(e))
    }

    async fn stream(
        &self,
        offset: u64,
        len: Option<u64>,
        pin: Option<&Stat>,
    ) -> Result<ByteStream, SourceError> {
        let file = Arc::new(self.open_pinned(pin)?);
        let end = len.map(|l| offset.saturating_add(l));
        let url = self.url.clone();
        let s = stream::try_unfold(offset, move |pos| {
            let file = file.clone();
            let url = url.clone();
            async move {
                let want = match end {
                    Some(end) if pos >= end => return Ok(None),
                    Some(end) => (end - pos).min(CHUNK as u64) as usize,
                    None => CHUNK,
                };
                let chunk = tokio::task::spawn_blocking(move || pread(&file, pos, want))
                    .await
                    .map_err(std::io::Error::other)??;
                if chunk.is_empty() {
                    if end.is_some() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("{url}: file ended at byte {pos}, before the range did"),
                        ));
                    }
                    return Ok(None);
                }
                let next = pos + chunk.len() as u64;
                Ok(Some((chunk, next)))
            }
        });
        Ok(Box::pin(s))
    }
}
