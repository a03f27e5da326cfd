//! One budget per archive: what indexing one archive may cost, whatever
//! its bytes say. Real images stay far below every limit; a hostile
//! archive that reaches one is refused with an error naming the limit,
//! instead of exhausting memory or hanging the requests that wait on it.
use std::sync::atomic::{AtomicU64, Ordering};

/// A limit of the per-archive budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Bytes of JSON documents (manifests, indexes, configs) read.
    DocumentBytes,
    /// Descriptors (index children, layers) taken in.
    Descriptors,
    /// Manifests and indexes visited by the OCI walk.
    Visits,
    /// Bytes of one PAX or GNU long-name record.
    HeaderRecord,
    /// Bytes of all PAX and GNU long-name records.
    HeaderMetadata,
    /// Tar entries.
    Entries,
    /// Bytes of decompressed tar stream.
    DecompressedBytes,
}

impl Limit {
    /// The most this limit allows.
    pub const fn max(self) -> u64 {
        match self {
            Limit::DocumentBytes => 256 << 20,
            Limit::Descriptors => 100_000,
            Limit::Visits => 10_000,
            Limit::HeaderRecord => 1 << 20,
            Limit::HeaderMetadata => 256 << 20,
            Limit::Entries => 2_000_000,
            Limit::DecompressedBytes => 1 << 40,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Limit::DocumentBytes => "document bytes",
            Limit::Descriptors => "descriptors",
            Limit::Visits => "manifest visits",
            Limit::HeaderRecord => "bytes in one PAX/long-name header record",
            Limit::HeaderMetadata => "bytes of PAX/long-name header records",
            Limit::Entries => "entries",
            Limit::DecompressedBytes => "decompressed bytes",
        }
    }
}

/// Every limit, in the order of [`Budget`]'s slots.
const LIMITS: [Limit; 7] = [
    Limit::DocumentBytes,
    Limit::Descriptors,
    Limit::Visits,
    Limit::HeaderRecord,
    Limit::HeaderMetadata,
    Limit::Entries,
    Limit::DecompressedBytes,
];

/// What one archive has spent so far, from the first header read to the
/// last document its format walk takes in: the TOC walk (entries, header
/// records, decompressed bytes) and the format (documents, descriptors,
/// visits) charge the same budget, held by the [`super::Archive`]. Shared
/// between the blocking walk and the async format code, hence atomics.
#[derive(Debug)]
pub struct Budget {
    spent: [AtomicU64; 7],
    max: [u64; 7],
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            spent: Default::default(),
            max: LIMITS.map(Limit::max),
        }
    }
}

impl Budget {
    /// A budget whose `limit` is `max` instead of the default, so tests
    /// reach a limit with small inputs.
    #[cfg(test)]
    pub fn with_max(mut self, limit: Limit, max: u64) -> Budget {
        if let Some(m) = self.max.get_mut(limit as usize) {
            *m = max;
        }
        self
    }

    fn max_of(&self, limit: Limit) -> u64 {
        self.max.get(limit as usize).copied().unwrap_or(limit.max())
    }

    /// Adds `n` to `limit`; an error once it passes the limit.
    pub fn charge(&self, limit: Limit, n: u64) -> Result<(), super::ArchiveError> {
        let Some(slot) = self.spent.get(limit as usize) else {
            return Ok(());
        };
        let before = slot
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_add(n))
            })
            .unwrap_or_else(|v| v);
        if before.saturating_add(n) > self.max_of(limit) {
            return Err(super::ArchiveError::Budget(limit));
        }
        Ok(())
    }

    /// Checks one item of `n` (a header record) against a per-item limit.
    pub fn check(&self, limit: Limit, n: u64) -> Result<(), super::ArchiveError> {
        if n > self.max_of(limit) {
            return Err(super::ArchiveError::Budget(limit));
        }
        Ok(())
    }

    /// What `limit` has been charged so far.
    pub fn spent(&self, limit: Limit) -> u64 {
        self.spent
            .get(limit as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }
}
