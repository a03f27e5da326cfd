//! One budget per archive: what indexing one archive may cost, whatever
//! its bytes say. Real images stay far below every limit; a hostile
//! archive that reaches one is refused with an error naming the limit,
//! instead of exhausting memory or hanging the requests that wait on it.

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

/// What one archive has spent so far.
#[derive(Debug, Default)]
pub struct Budget {
    spent: [u64; 7],
}

impl Budget {
    /// Adds `n` to `limit`; an error once it passes the limit.
    pub fn charge(&mut self, limit: Limit, n: u64) -> Result<(), super::ArchiveError> {
        let slot = match self.spent.get_mut(limit as usize) {
            Some(s) => s,
            None => return Ok(()),
        };
        *slot = slot.saturating_add(n);
        if *slot > limit.max() {
            return Err(super::ArchiveError::Budget(limit));
        }
        Ok(())
    }
}
