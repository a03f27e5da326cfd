//! Reloading the served config without a restart: on SIGHUP, and when the
//! config file changes (its modification time, size or inode, looked at
//! every [`POLL`]; a Kubernetes ConfigMap update swaps a symlink, which
//! changes the inode behind the path).
//!
//! What is served sits behind a [`Swap`]: each request takes the current
//! value once per call and keeps it, so a reload never changes a response
//! under way, and a blob stream already started holds its archive open
//! whatever the new config says. The new value is built and validated
//! completely before it is swapped in; a config that does not load leaves
//! the old one serving.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::cache::{FileSpan, FillSpan};
use crate::catalog::{ByteStream, Catalog, CatalogError, Images, Manifest};
use crate::image::{Digest, Reference, RepoName, Tag};

/// How often the config file's metadata is looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// A value replaced whole: readers take an `Arc` of the current one and
/// are never blocked for longer than a pointer copy.
pub struct Swap<T: ?Sized> {
    current: RwLock<Arc<T>>,
}

impl<T: ?Sized> Swap<T> {
    pub fn new(value: Arc<T>) -> Swap<T> {
        Swap {
            current: RwLock::new(value),
        }
    }

    /// The current value.
    pub fn load(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the value; readers holding the old one keep it.
    pub fn store(&self, value: Arc<T>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// The catalog the registry serves, replaced on reload.
pub struct Reloadable {
    catalog: Swap<Catalog>,
}

impl Reloadable {
    pub fn new(catalog: Catalog) -> Reloadable {
        Reloadable {
            catalog: Swap::new(Arc::new(catalog)),
        }
    }

    /// The catalog being served.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load()
    }

    /// Serves `catalog` from now on.
    pub fn replace(&self, catalog: Catalog) {
        self.catalog.store(Arc::new(catalog));
    }
}

#[async_trait::async_trait]
impl Images for Reloadable {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest, CatalogError> {
        self.catalog().manifest(repo, reference, accept).await
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, CatalogError> {
        self.catalog().blob_size(repo, digest).await
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, CatalogError> {
        self.catalog().blob(repo, digest, start, end).await
    }

    async fn blob_file(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<FileSpan>, CatalogError> {
        self.catalog().blob_file(repo, digest).await
    }

    fn blob_filling(&self, digest: &Digest, size: u64) -> Option<FillSpan> {
        self.catalog().blob_filling(digest, size)
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, CatalogError> {
        self.catalog().tags(repo).await
    }

    async fn repositories(&self) -> Vec<RepoName> {
        self.catalog().repositories().await
    }

    fn disk_cache_bytes(&self) -> Option<u64> {
        self.catalog().disk_cache_bytes()
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, CatalogError> {
        self.catalog().referrers(repo, digest).await
    }
}

/// What a file looks like from outside: modification time, size, inode.
type Stamp = Option<(Option<std::time::SystemTime>, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}

/// Why a reload happens, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    Signal,
    FileChanged,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Signal => "SIGHUP",
            Cause::FileChanged => "the config file changed",
        })
    }
}

/// Calls `reload` on each SIGHUP and, with a `config` file, each time it
/// changes; one reload at a time. Runs until dropped.
pub async fn watch<F, Fut>(config: Option<PathBuf>, mut reload: F)
where
    F: FnMut(Cause) -> Fut,
    Fut: Future<Output = ()>,
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot handle SIGHUP: {e}");
            None
        }
    };
    let mut seen = config.as_deref().map(stamp);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            Some(()) = async { hup.as_mut()?.recv().await } => Cause::Signal,
            _ = tick.tick() => {
                let Some(path) = config.as_deref() else { continue };
                let now = stamp(path);
                if seen.as_ref() == Some(&now) {
                    continue;
                }
                Cause::FileChanged
            }
        };
        // What this reload reads; a change after this is seen next time.
        seen = config.as_deref().map(stamp);
        reload(cause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_what_they_took() {
        let s = Swap::new(Arc::new(1));
        let old = s.load();
        s.store(Arc::new(2));
        assert_eq!((*old, *s.load()), (1, 2));
    }

    #[test]
    fn a_rewritten_file_has_a_new_stamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        assert_eq!(stamp(&p), None);
        std::fs::write(&p, "a").expect("write");
        let one = stamp(&p);
        assert!(one.is_some());
        // A ConfigMap-style swap: a new file renamed over the old path.
        let q = dir.path().join("c.toml.new");
        std::fs::write(&q, "b").expect("write");
        std::fs::rename(&q, &p).expect("rename");
        assert_ne!(stamp(&p), one);
    }
}
