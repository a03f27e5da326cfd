//! Saved indexes: the TOC and images of an archive at one version, so a
//! restart does not walk remote tarballs again (nor re-read a compressed
//! or range-less one whole). Keyed by a digest of (url, version, the
//! settings that shape generated images); written atomically; a file that
//! does not parse or does not check out against its archive is removed
//! (one log line) and the archive indexed again.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::image::Digest;

/// Changes whenever what is saved changes shape or meaning.
/// v2: the TOC's name index is rebuilt on load, not saved.
const FORMAT: &str = "cartorio-index-v2";

/// Reads and writes run on blocking threads: indexes are loaded and saved
/// from the async request path (the first pull of a version).
#[derive(Clone)]
pub struct IndexStore {
    dir: PathBuf,
    /// Keys discarded whose files may not be removed yet (the removal runs
    /// in the background): never read back.
    discarded: Arc<Mutex<HashSet<Digest>>>,
}

impl IndexStore {
    pub fn open(dir: &Path) -> std::io::Result<IndexStore> {
        std::fs::create_dir_all(dir)?;
        Ok(IndexStore {
            dir: dir.to_path_buf(),
            discarded: Arc::default(),
        })
    }

    /// The key for an archive at a version under some settings.
    pub fn key(url: &str, version: &str, settings: &str) -> Digest {
        Digest::of(format!("{FORMAT}\n{url}\n{version}\n{settings}").as_bytes())
    }

    fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex()))
    }

    fn was_discarded(&self, key: &Digest) -> bool {
        self.discarded.lock().map_or(true, |d| d.contains(key))
    }

    pub async fn get(&self, key: &Digest) -> Option<Vec<u8>> {
        if self.was_discarded(key) {
            return None;
        }
        read(self.path(key)).await
    }

    /// Removes a saved index that cannot be used. Returns at once (it is
    /// called from checks on the request path); the files go in the
    /// background and the key reads as absent until it is saved again.
    pub fn discard(&self, key: &Digest) {
        if let Ok(mut d) = self.discarded.lock() {
            d.insert(*key);
        }
        let paths = [self.path(key), self.points_path(key)];
        let removing = move || {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(removing)),
            Err(_) => removing(),
        }
    }

    /// Seek points of a compressed archive are kept beside its index in
    /// their own compact binary form (windows are bytes; JSON would
    /// double them).
    fn points_path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.points", key.hex()))
    }

    pub async fn get_points(&self, key: &Digest) -> Option<Vec<u8>> {
        if self.was_discarded(key) {
            return None;
        }
        read(self.points_path(key)).await
    }

    /// Saves points, or removes stale ones when there are none.
    pub async fn put_points(&self, key: &Digest, data: Option<Vec<u8>>) {
        let path = self.points_path(key);
        blocking(move || match data {
            Some(d) => write_atomic(&path, &d),
            None => {
                let _ = std::fs::remove_file(path);
            }
        })
        .await
    }

    /// Saves, best effort: a cache that cannot write costs a re-index
    /// after a restart, nothing more.
    pub async fn put(&self, key: &Digest, data: Vec<u8>) {
        let path = self.path(key);
        blocking(move || write_atomic(&path, &data)).await;
        if let Ok(mut d) = self.discarded.lock() {
            d.remove(key);
        }
    }
}

async fn read(path: PathBuf) -> Option<Vec<u8>> {
    tokio::task::spawn_blocking(move || std::fs::read(path).ok())
        .await
        .ok()
        .flatten()
}

async fn blocking(f: impl FnOnce() + Send + 'static) {
    let _ = tokio::task::spawn_blocking(f).await;
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
