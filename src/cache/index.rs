//! Saved indexes: the TOC and images of an archive at one version, so a
//! restart does not walk remote tarballs again (nor re-read a compressed
//! or range-less one whole). Keyed by a digest of (url, version, the
//! settings that shape generated images); written atomically; a file that
//! does not parse or does not check out against its archive is removed
//! (one log line) and the archive indexed again.
use std::path::{Path, PathBuf};

use crate::image::Digest;

/// Changes whenever what is saved changes shape or meaning.
/// v2: the TOC's name index is rebuilt on load, not saved.
const FORMAT: &str = "cartorio-index-v2";

pub struct IndexStore {
    dir: PathBuf,
}

impl IndexStore {
    pub fn open(dir: &Path) -> std::io::Result<IndexStore> {
        std::fs::create_dir_all(dir)?;
        Ok(IndexStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The key for an archive at a version under some settings.
    pub fn key(url: &str, version: &str, settings: &str) -> Digest {
        Digest::of(format!("{FORMAT}\n{url}\n{version}\n{settings}").as_bytes())
    }

    fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex()))
    }

    pub fn get(&self, key: &Digest) -> Option<Vec<u8>> {
        std::fs::read(self.path(key)).ok()
    }

    /// Removes a saved index that cannot be used.
    pub fn discard(&self, key: &Digest) {
        let _ = std::fs::remove_file(self.path(key));
        let _ = std::fs::remove_file(self.points_path(key));
    }

    /// Seek points of a compressed archive are kept beside its index in
    /// their own compact binary form (windows are bytes; JSON would
    /// double them).
    fn points_path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.points", key.hex()))
    }

    pub fn get_points(&self, key: &Digest) -> Option<Vec<u8>> {
        std::fs::read(self.points_path(key)).ok()
    }

    /// Saves points, or removes stale ones when there are none.
    pub fn put_points(&self, key: &Digest, data: Option<&[u8]>) {
        match data {
            Some(d) => write_atomic(&self.points_path(key), d),
            None => {
                let _ = std::fs::remove_file(self.points_path(key));
            }
        }
    }

    /// Saves, best effort: a cache that cannot write costs a re-index
    /// after a restart, nothing more.
    pub fn put(&self, key: &Digest, data: &[u8]) {
        write_atomic(&self.path(key), data)
    }
}

fn write_atomic(path: &Path, data: &[u8]) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let r = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %path.display(), "cannot save an index: {e}");
    }
}
