//! The disk tier: verified blobs stored by digest (`sha256/<hex>`), so a
//! layer shared by many archives is stored once, bounded in bytes with
//! least-recently-used eviction, and found again after a restart.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::image::Digest;

/// Recency order of the stored blobs.
#[derive(Default)]
struct Lru {
    entries: HashMap<Digest, (u64, u64)>, // digest -> (size, tick)
    order: BTreeMap<u64, Digest>,         // tick -> digest
    total: u64,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, d: &Digest) -> bool {
        let Some((_, t)) = self.entries.get_mut(d) else {
            return false;
        };
        self.order.remove(t);
        self.tick += 1;
        *t = self.tick;
        self.order.insert(self.tick, *d);
        true
    }

    fn insert(&mut self, d: Digest, size: u64) {
        if self.touch(&d) {
            return;
        }
        self.tick += 1;
        self.entries.insert(d, (size, self.tick));
        self.order.insert(self.tick, d);
        self.total += size;
    }

    fn remove(&mut self, d: &Digest) -> Option<u64> {
        let (size, t) = self.entries.remove(d)?;
        self.order.remove(&t);
        self.total -= size;
        Some(size)
    }

    fn oldest(&self) -> Option<Digest> {
        self.order.values().next().copied()
    }
}

/// The disk cache.
pub struct DiskCache {
    dir: PathBuf,
    max: u64,
    lru: Mutex<Lru>,
    temp_seq: AtomicU64,
    /// Blobs this process wrote or hashed: a file found on disk at start-up
    /// is hashed before it is first served.
    verified: Mutex<HashSet<Digest>>,
}

impl DiskCache {
    /// Opens (creating) the cache folder, removes temp files a crash left
    /// behind, and indexes what is stored, oldest modification first.
    pub fn open(dir: &Path, max: u64) -> std::io::Result<DiskCache> {
        let blobs = dir.join("sha256");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&tmp)?;
        remove_stale_temps(&tmp);
        let mut found = Vec::new();
        for e in std::fs::read_dir(&blobs)?.flatten() {
            let name = e.file_name();
            let Some(d) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
                // Not ours: leave it, but do not count it.
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let mtime = meta.modified().ok();
            found.push((mtime, d, meta.len()));
        }
        found.sort();
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            max,
            lru: Mutex::new(Lru::default()),
            temp_seq: AtomicU64::new(0),
            verified: Mutex::new(HashSet::new()),
        };
        if let Ok(mut lru) = cache.lru.lock() {
            for (_, d, size) in found {
                lru.insert(d, size);
            }
        }
        cache.evict();
        Ok(cache)
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join("sha256").join(d.hex())
    }

    /// A fresh temp file name for a blob being written.
    pub fn temp_path(&self, d: &Digest) -> PathBuf {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}.{}.{n}", d.hex(), std::process::id()))
    }

    /// Whether a blob is stored; marks it recently used.
    pub fn contains(&self, d: &Digest) -> bool {
        self.lru.lock().map(|mut l| l.touch(d)).unwrap_or(false)
    }

    /// Moves a verified temp file into the cache and evicts past the bound
    /// (blocking: call it on a blocking thread).
    pub fn commit(&self, tmp: &Path, d: &Digest, size: u64) -> std::io::Result<PathBuf> {
        let dest = self.path(d);
        std::fs::rename(tmp, &dest)?;
        if let Ok(mut l) = self.lru.lock() {
            l.insert(*d, size);
        }
        self.mark_verified(d);
        self.evict();
        Ok(dest)
    }

    /// Whether this process wrote or hashed the stored blob.
    pub fn is_verified(&self, d: &Digest) -> bool {
        self.verified.lock().is_ok_and(|v| v.contains(d))
    }

    pub fn mark_verified(&self, d: &Digest) {
        if let Ok(mut v) = self.verified.lock() {
            v.insert(*d);
        }
    }

    /// Forgets a blob whose file vanished, could not be read or is not
    /// the blob. Touches no file (the caller removes it, on a blocking
    /// thread): it is called from the async request path.
    pub fn forget(&self, d: &Digest) {
        if let Ok(mut l) = self.lru.lock() {
            l.remove(d);
        }
        if let Ok(mut v) = self.verified.lock() {
            v.remove(d);
        }
    }

    /// Bytes stored.
    pub fn used(&self) -> u64 {
        self.lru.lock().map(|l| l.total).unwrap_or(0)
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Removes least recently used blobs until the total fits (blocking:
    /// call it on a blocking thread). A blob being read keeps its bytes
    /// until its readers close it (unlink semantics). The files are
    /// removed after the lock is released.
    fn evict(&self) {
        let victims = {
            let Ok(mut l) = self.lru.lock() else { return };
            let mut victims = Vec::new();
            while l.total > self.max {
                let Some(d) = l.oldest() else { break };
                l.remove(&d);
                victims.push(d);
            }
            victims
        };
        for d in victims {
            if let Err(e) = std::fs::remove_file(self.path(&d))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(digest = %d, "cannot evict from the disk cache: {e}");
            }
            tracing::debug!(digest = %d, "evicted from the disk cache");
        }
    }
}

/// What a scrub of a cache folder found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubReport {
    /// Files that hash to their name.
    pub good: u64,
    /// Files that did not, or could not be read: removed.
    pub bad: u64,
}

/// Hashes every stored blob of the cache folder `dir` and removes those
/// that are not their digest (`cartorio cache verify`). Blocking. Files
/// that are not blobs (other names) are left alone and not counted.
pub fn scrub(dir: &Path) -> std::io::Result<ScrubReport> {
    let mut report = ScrubReport::default();
    for e in std::fs::read_dir(dir.join("sha256"))? {
        let e = e?;
        let name = e.file_name();
        let Some(d) = name.to_str().and_then(|n| Digest::from_hex(n).ok()) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if super::file_matches(&e.path(), &d) {
            report.good += 1;
        } else {
            tracing::warn!(digest = %d, "cached blob does not match its digest; removed");
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(digest = %d, "cannot remove a bad cached blob: {err}");
            }
            report.bad += 1;
        }
    }
    Ok(report)
}

/// Removes temp files of processes that are gone (a crash). Temp names
/// carry the writer's pid, so a second server sharing the folder keeps its
/// fills in progress.
fn remove_stale_temps(tmp: &Path) {
    let Ok(rd) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.split('.').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let alive = pid
            .is_some_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &DiskCache, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let tmp = c.temp_path(&d);
        std::fs::write(&tmp, data).unwrap();
        c.commit(&tmp, &d, data.len() as u64).unwrap();
        d
    }

    #[test]
    fn evicts_least_recently_used_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 250).unwrap();
        let a = put(&c, &[1u8; 100]);
        let b = put(&c, &[2u8; 100]);
        assert!(c.contains(&a)); // a is now more recent than b
        let x = put(&c, &[3u8; 100]);
        assert!(!c.path(&b).exists(), "the least recently used blob goes");
        assert!(c.path(&a).exists() && c.path(&x).exists());
        assert_eq!(c.used(), 200);
        // A crash leaves a temp file behind; a restart removes it and finds
        // the stored blobs again.
        std::fs::write(c.temp_path(&a), b"partial").unwrap();
        // Another live server's fill in progress is left alone (pid 1 is
        // always alive); one of a dead pid is not.
        let live = dir.path().join("tmp").join(format!("{}.1.0", a.hex()));
        std::fs::write(&live, b"filling").unwrap();
        std::fs::write(
            dir.path()
                .join("tmp")
                .join(format!("{}.999999999.0", a.hex())),
            b"x",
        )
        .unwrap();
        drop(c);
        let c = DiskCache::open(dir.path(), 250).unwrap();
        assert!(c.contains(&a) && c.contains(&x));
        assert_eq!(c.used(), 200);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(left, vec![live]);
        // A smaller bound after a restart evicts at once.
        drop(c);
        let c = DiskCache::open(dir.path(), 150).unwrap();
        assert_eq!(c.used(), 100);
    }
}
