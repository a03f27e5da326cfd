//! Saved indexes: the TOC and images of an archive at one version, so a
//! restart does not walk remote tarballs again (nor re-read a compressed
//! or range-less one whole). Keyed by a digest of (url, version, the
//! settings that shape generated images); written atomically; a file that
//! does not parse or does not check out against its archive is removed
//! (one log line) and the archive indexed again.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use crate::image::Digest;

/// Changes whenever what is saved changes shape or meaning.
/// v2: the TOC's name index is rebuilt on load, not saved.
const FORMAT: &str = "cartorio-index-v2";

/// Reads run on blocking threads: indexes are loaded and saved from the
/// async request path (the first pull of a version). Writes and removals
/// go, in the order they were asked for, through one thread of the
/// store's own: a discard returns at once, and its removal can never land
/// after (and delete) a save of the same key that was asked for later.
#[derive(Clone)]
pub struct IndexStore {
    dir: PathBuf,
    /// Keys discarded and not saved again since: never read back, whether
    /// or not their files are gone yet.
    discarded: Arc<Mutex<HashSet<Digest>>>,
    writes: mpsc::Sender<Write>,
}

/// One change to the store's files; `done` is told once it is on disk.
struct Write {
    path: PathBuf,
    /// `None` removes the file.
    data: Option<Vec<u8>>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl IndexStore {
    pub fn open(dir: &Path) -> std::io::Result<IndexStore> {
        std::fs::create_dir_all(dir)?;
        let (writes, queue) = mpsc::channel::<Write>();
        // Ends when the last handle on the store is dropped.
        std::thread::Builder::new()
            .name("cartorio-index".into())
            .spawn(move || {
                for w in queue {
                    match w.data {
                        Some(d) => write_atomic(&w.path, &d),
                        None => {
                            let _ = std::fs::remove_file(&w.path);
                        }
                    }
                    if let Some(done) = w.done {
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(IndexStore {
            dir: dir.to_path_buf(),
            discarded: Arc::default(),
            writes,
        })
    }

    /// Queues a change and waits until it is on disk.
    async fn change(&self, path: PathBuf, data: Option<Vec<u8>>) {
        let (done, written) = tokio::sync::oneshot::channel();
        let queued = self.writes.send(Write {
            path,
            data,
            done: Some(done),
        });
        if queued.is_ok() {
            let _ = written.await;
        }
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
        for path in [self.path(key), self.points_path(key)] {
            let _ = self.writes.send(Write {
                path,
                data: None,
                done: None,
            });
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
        self.change(self.points_path(key), data).await
    }

    /// Saves, best effort: a cache that cannot write costs a re-index
    /// after a restart, nothing more.
    pub async fn put(&self, key: &Digest, data: Vec<u8>) {
        self.change(self.path(key), Some(data)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A discard's removal runs in the background; a save of the same key
    /// asked for after it must survive it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_save_after_a_discard_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = IndexStore::open(dir.path()).unwrap();
        for i in 0..200u32 {
            let key = IndexStore::key("file:///a.tar", &i.to_string(), "");
            store.put(&key, b"old".to_vec()).await;
            store.put_points(&key, Some(b"old points".to_vec())).await;
            store.discard(&key);
            assert_eq!(
                store.get(&key).await,
                None,
                "a discarded key reads as absent"
            );
            store.put(&key, b"new".to_vec()).await;
            store.put_points(&key, Some(b"new points".to_vec())).await;
            assert_eq!(
                store.get(&key).await.as_deref(),
                Some(&b"new"[..]),
                "round {i}"
            );
            assert_eq!(
                store.get_points(&key).await.as_deref(),
                Some(&b"new points"[..]),
                "round {i}"
            );
        }
    }
}
