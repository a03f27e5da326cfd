//! Counters for operators, exposed in the Prometheus text format at
//! `GET /metrics`. Plain atomics in one static: recording is a relaxed
//! add on the hot path, with no registry, lock or allocation.
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Route kinds, as labels.
pub const ROUTES: [&str; 8] = [
    "base",
    "manifest",
    "blob",
    "tags",
    "catalog",
    "referrers",
    "metrics",
    "other",
];
/// Status classes, as labels.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

const fn zeros<const N: usize>() -> [AtomicU64; N] {
    [const { AtomicU64::new(0) }; N]
}

/// Every counter cartorio keeps.
pub struct Metrics {
    requests: [AtomicU64; ROUTES.len() * CLASSES.len()],
    pub cache_memory_hits: AtomicU64,
    pub cache_disk_hits: AtomicU64,
    /// A cold blob: one fill started.
    pub cache_fills: AtomicU64,
    /// Requests that joined a fill already under way.
    pub cache_fill_joins: AtomicU64,
    pub cache_fill_digest_mismatches: AtomicU64,
    pub cache_fill_upstream_errors: AtomicU64,
    pub cache_write_errors: AtomicU64,
    /// Blob bytes read from sources by cache fills.
    pub upstream_blob_bytes: AtomicU64,
    pub index_loads: AtomicU64,
    pub index_restores: AtomicU64,
    pub index_failures: AtomicU64,
    pub source_listings: AtomicU64,
    /// Connections being served now (a gauge).
    pub connections_open: AtomicU64,
    pub connections_closed_idle: AtomicU64,
    pub connections_closed_write_timeout: AtomicU64,
    /// Connections closed because a request head did not arrive whole
    /// within the idle timeout (slow or half-sent headers).
    pub connections_closed_header_timeout: AtomicU64,
    /// Idle connections closed to make room (at the cap, out of fds).
    pub connections_shed: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Requests refused by auth, by reason (an entry of [`AUTH_REASONS`]).
    pub auth_rejected: [AtomicU64; AUTH_REASONS.len()],
    /// Blob bytes hashed to verify them (fills, in-place first reads,
    /// uncached reads).
    pub blob_bytes_hashed: AtomicU64,
    /// Blob reads served in place from a local archive.
    pub in_place_reads: AtomicU64,
    /// Blob bytes sent with sendfile(2) (the zero-copy path).
    pub zero_copy_bytes: AtomicU64,
    /// Bytes produced by decompressing (whole-archive `.tar.gz`/`.tar.zst`
    /// passes and seek-point reads). Compressed layers are served as
    /// stored and never add to it.
    pub decompressed_bytes: AtomicU64,
}

/// Why auth refused a request, as labels: credentials that do not verify
/// (401), an anonymous request that needs a login (401), a user asking for
/// a repository no rule gives them (404 `NAME_UNKNOWN`).
pub const AUTH_REASONS: [&str; 3] = ["bad_credentials", "login_required", "denied"];

/// The process's counters.
pub static METRICS: Metrics = Metrics::new();

/// Adds one.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// All counters at zero.
    pub const fn new() -> Metrics {
        Metrics {
            requests: zeros(),
            cache_memory_hits: AtomicU64::new(0),
            cache_disk_hits: AtomicU64::new(0),
            cache_fills: AtomicU64::new(0),
            cache_fill_joins: AtomicU64::new(0),
            cache_fill_digest_mismatches: AtomicU64::new(0),
            cache_fill_upstream_errors: AtomicU64::new(0),
            cache_write_errors: AtomicU64::new(0),
            upstream_blob_bytes: AtomicU64::new(0),
            index_loads: AtomicU64::new(0),
            index_restores: AtomicU64::new(0),
            index_failures: AtomicU64::new(0),
            source_listings: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_closed_idle: AtomicU64::new(0),
            connections_closed_write_timeout: AtomicU64::new(0),
            connections_closed_header_timeout: AtomicU64::new(0),
            connections_shed: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            auth_rejected: zeros(),
            blob_bytes_hashed: AtomicU64::new(0),
            in_place_reads: AtomicU64::new(0),
            zero_copy_bytes: AtomicU64::new(0),
            decompressed_bytes: AtomicU64::new(0),
        }
    }

    /// Counts a request by route kind (an entry of [`ROUTES`]) and status.
    pub fn request(&self, route: &str, status: u16) {
        let r = ROUTES
            .iter()
            .position(|x| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        let c = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        if let Some(n) = self.requests.get(r * CLASSES.len() + c) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition; `disk_bytes` is the disk cache's
    /// current size, when there is one.
    pub fn render(&self, disk_bytes: Option<u64>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP cartorio_http_requests_total Requests answered, by route and status class.\n",
        );
        out.push_str("# TYPE cartorio_http_requests_total counter\n");
        for (r, row) in ROUTES.iter().zip(self.requests.chunks(CLASSES.len())) {
            for (c, v) in CLASSES.iter().zip(row) {
                let v = v.load(Relaxed);
                let _ = writeln!(
                    out,
                    "cartorio_http_requests_total{{route=\"{r}\",code=\"{c}\"}} {v}"
                );
            }
        }
        let counters: [(&str, &str, &AtomicU64); 21] = [
            (
                "cartorio_cache_memory_hits_total",
                "Blob reads served from the memory tier.",
                &self.cache_memory_hits,
            ),
            (
                "cartorio_cache_disk_hits_total",
                "Blob reads served from the disk tier.",
                &self.cache_disk_hits,
            ),
            (
                "cartorio_cache_fills_total",
                "Cold blobs read from their source into the cache.",
                &self.cache_fills,
            ),
            (
                "cartorio_cache_fill_joins_total",
                "Blob reads that followed a fill already under way.",
                &self.cache_fill_joins,
            ),
            (
                "cartorio_cache_fill_digest_mismatches_total",
                "Fills whose bytes did not match their digest.",
                &self.cache_fill_digest_mismatches,
            ),
            (
                "cartorio_cache_fill_upstream_errors_total",
                "Fills cut by a source error.",
                &self.cache_fill_upstream_errors,
            ),
            (
                "cartorio_cache_write_errors_total",
                "Fills the cache could not write (served from the source).",
                &self.cache_write_errors,
            ),
            (
                "cartorio_upstream_blob_bytes_total",
                "Blob bytes read from sources (into the cache or straight to clients).",
                &self.upstream_blob_bytes,
            ),
            (
                "cartorio_index_loads_total",
                "Archives indexed by reading them.",
                &self.index_loads,
            ),
            (
                "cartorio_index_restores_total",
                "Archive indexes restored from the cache.",
                &self.index_restores,
            ),
            (
                "cartorio_index_failures_total",
                "Archives that could not be indexed.",
                &self.index_failures,
            ),
            (
                "cartorio_source_listings_total",
                "Listings of a templated route's prefix sent to its source (for _catalog and tags/list).",
                &self.source_listings,
            ),
            (
                "cartorio_connections_closed_idle_total",
                "Connections closed after the idle timeout.",
                &self.connections_closed_idle,
            ),
            (
                "cartorio_connections_closed_write_timeout_total",
                "Connections dropped because their client took no bytes for the write timeout.",
                &self.connections_closed_write_timeout,
            ),
            (
                "cartorio_connections_closed_header_timeout_total",
                "Connections closed because a request head did not arrive whole within the idle timeout.",
                &self.connections_closed_header_timeout,
            ),
            (
                "cartorio_connections_shed_total",
                "Idle connections closed to make room (at the connection cap or out of file descriptors).",
                &self.connections_shed,
            ),
            (
                "cartorio_accept_errors_total",
                "Failed accepts (EMFILE and the like).",
                &self.accept_errors,
            ),
            (
                "cartorio_blob_bytes_hashed_total",
                "Blob bytes hashed to verify them (verified blobs are served without hashing).",
                &self.blob_bytes_hashed,
            ),
            (
                "cartorio_in_place_reads_total",
                "Blob reads served in place from a local archive (no copy in the cache).",
                &self.in_place_reads,
            ),
            (
                "cartorio_zero_copy_bytes_total",
                "Verified blob bytes sent with sendfile(2).",
                &self.zero_copy_bytes,
            ),
            (
                "cartorio_decompressed_bytes_total",
                "Bytes decompressed from compressed archives (layers are served as stored, never decompressed).",
                &self.decompressed_bytes,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.load(Relaxed)
            );
        }
        out.push_str("# HELP cartorio_connections_open Open client connections, from accept to close (silent ones included).\n");
        out.push_str("# TYPE cartorio_connections_open gauge\n");
        let _ = writeln!(
            out,
            "cartorio_connections_open {}",
            self.connections_open.load(Relaxed)
        );
        out.push_str("# HELP cartorio_auth_rejected_total Requests refused by authentication or authorization, by reason.\n");
        out.push_str("# TYPE cartorio_auth_rejected_total counter\n");
        for (reason, c) in AUTH_REASONS.iter().zip(&self.auth_rejected) {
            let _ = writeln!(
                out,
                "cartorio_auth_rejected_total{{reason=\"{reason}\"}} {}",
                c.load(Relaxed)
            );
        }
        if let Some(b) = disk_bytes {
            out.push_str("# HELP cartorio_cache_disk_bytes Bytes stored in the disk cache.\n");
            out.push_str("# TYPE cartorio_cache_disk_bytes gauge\n");
            let _ = writeln!(out, "cartorio_cache_disk_bytes {b}");
        }
        out
    }
}

/// Which tier served a blob read, for the request log. The cache and the
/// in-place reader say so where they decide; the server reads it back
/// after the handler (a task-local, set only inside [`tracking_tier`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tier {
    /// No blob bytes (manifests, lists, errors, HEAD).
    #[default]
    None,
    /// The memory tier.
    Memory,
    /// A verified file in the disk tier, streamed.
    Disk,
    /// A cold blob: this request started the fill.
    Fill,
    /// A fill under way that this request followed.
    Follower,
    /// Straight from the source, the cache not taking it.
    Source,
    /// A local uncompressed archive read where it lies.
    InPlace,
    /// A verified file sent with sendfile(2) (disk tier or in place).
    ZeroCopy,
}

impl Tier {
    /// The label in log lines; None for [`Tier::None`].
    pub fn label(self) -> Option<&'static str> {
        match self {
            Tier::None => None,
            Tier::Memory => Some("memory"),
            Tier::Disk => Some("disk"),
            Tier::Fill => Some("fill"),
            Tier::Follower => Some("follower"),
            Tier::Source => Some("source"),
            Tier::InPlace => Some("in_place"),
            Tier::ZeroCopy => Some("zero_copy"),
        }
    }
}

tokio::task_local! {
    static TIER: std::cell::Cell<Tier>;
}

/// Records the tier serving the current request (nothing outside
/// [`tracking_tier`]).
pub fn served(tier: Tier) {
    let _ = TIER.try_with(|t| t.set(tier));
}

/// Runs `f`, returning its output and the last tier it recorded.
pub async fn tracking_tier<F: std::future::Future>(f: F) -> (F::Output, Tier) {
    TIER.scope(std::cell::Cell::new(Tier::None), async {
        let out = f.await;
        (out, TIER.try_with(|t| t.get()).unwrap_or_default())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_by_route_and_class() {
        let m = Metrics::new();
        m.cache_disk_hits.store(3, Relaxed);
        m.request("blob", 200);
        m.request("blob", 206);
        m.request("manifest", 404);
        m.request("nonsense", 503);
        let text = m.render(Some(42));
        assert!(text.contains("cartorio_http_requests_total{route=\"blob\",code=\"2xx\"} 2\n"));
        assert!(text.contains("cartorio_http_requests_total{route=\"manifest\",code=\"4xx\"} 1\n"));
        assert!(text.contains("cartorio_http_requests_total{route=\"other\",code=\"5xx\"} 1\n"));
        assert!(text.contains("cartorio_cache_disk_hits_total 3\n"));
        assert!(text.contains("cartorio_cache_disk_bytes 42\n"));
        // Every sample line is NAME{labels} VALUE or NAME VALUE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<u64>().is_ok(), "{l}");
        }
    }
}
