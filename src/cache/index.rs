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
    }

    /// Saves, best effort: a cache that cannot write costs a re-index
    /// after a restart, nothing more.
    pub fn put(&self, key: &Digest, data: &[u8]) {
        let path = self.path(key);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let r = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), "cannot save an index: {e}");
        }
    }
}
