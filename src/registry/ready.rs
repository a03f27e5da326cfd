//! Readiness: whether this process should be sent traffic (`/readyz`).
//!
//! Liveness (`/healthz`) only says the process answers; readiness says a
//! load balancer may route pulls here. The server owns one [`Readiness`]
//! and the `/readyz` route asks it on every probe, so whoever learns
//! something (the config is loaded, shutdown began) flips a flag on the
//! shared handle and the next probe sees it.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The readiness state shared by the server and whoever starts it.
#[derive(Debug)]
pub struct Readiness {
    loaded: AtomicBool,
    stopping: AtomicBool,
    /// The disk cache folder, probed on each check; `None`: no disk tier.
    cache_dir: Option<PathBuf>,
    probe_seq: AtomicU64,
}

/// Why `/readyz` answers 503.
#[derive(Debug)]
pub enum NotReady {
    /// The configuration is not (yet) loaded.
    Loading,
    /// Shutdown began: in-flight requests drain, new ones go elsewhere.
    Stopping,
    /// The configured cache folder is missing or cannot be written.
    Cache(PathBuf, std::io::Error),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::Loading => f.write_str("configuration not loaded"),
            NotReady::Stopping => f.write_str("shutting down"),
            NotReady::Cache(dir, e) => {
                write!(f, "cache folder {} is not usable: {e}", dir.display())
            }
        }
    }
}

impl Readiness {
    /// Not ready until [`Readiness::set_loaded`]. `cache_dir` is the disk
    /// cache folder, if one is configured.
    pub fn new(cache_dir: Option<PathBuf>) -> Readiness {
        Readiness {
            loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            cache_dir,
            probe_seq: AtomicU64::new(0),
        }
    }

    /// The configuration is loaded (or reloaded) and the catalog built.
    pub fn set_loaded(&self, loaded: bool) {
        self.loaded.store(loaded, Ordering::SeqCst);
    }

    /// Shutdown began: every later check fails, at once.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Ready when the config is loaded, shutdown has not begun, and the
    /// cache folder (if any) exists and takes a new file. The folder is
    /// probed each time, so a volume that went read-only or vanished
    /// takes the pod out of rotation instead of it serving every pull
    /// from the source.
    pub async fn check(&self) -> Result<(), NotReady> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(NotReady::Stopping);
        }
        if !self.loaded.load(Ordering::SeqCst) {
            return Err(NotReady::Loading);
        }
        let Some(dir) = &self.cache_dir else {
            return Ok(());
        };
        let probe = dir.join(format!(
            ".readyz-{}-{}",
            std::process::id(),
            self.probe_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || probe_writable(&dir, &probe))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| NotReady::Cache(self.cache_dir.clone().unwrap_or_default(), e))
    }
}

/// Creates and removes an empty file in `dir`.
fn probe_writable(dir: &Path, probe: &Path) -> std::io::Result<()> {
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(probe)?;
    std::fs::remove_file(probe)
}
