//! Reliability runs of the real binary: injected upstream faults, `kill -9`
//! during cold pulls, a hostile-archive corpus in one server, and load.
//!
//! Each test prints `FIGURE ...` lines that `scripts/reliability.sh`
//! collects, and fails on any wrong byte a client accepts, any corrupt
//! cache file, any panic of the server. Sizes and counts come from
//! environment variables (`REL_*`, documented in each module) with small
//! defaults, so a plain `cargo test` runs them in seconds.
//!
//! Network: 127.0.0.1 only.
#[path = "../common/mod.rs"]
mod common;

mod client;
mod corpus;
mod crash;
mod faults;
mod image;
mod load;
mod upstream;

/// False (with a note) under `CARTORIO_SKIP_E2E=1`, like the e2e tests:
/// these start the real binary.
pub fn enabled(test: &str) -> bool {
    if std::env::var("CARTORIO_SKIP_E2E").as_deref() == Ok("1") {
        common::note(&format!(
            "SKIPPED reliability test {test}: CARTORIO_SKIP_E2E=1"
        ));
        return false;
    }
    true
}

/// `REL_<KEY>` as a number, else `default`.
pub fn knob(key: &str, default: u64) -> u64 {
    std::env::var(format!("REL_{key}"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of a process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Lines of a server's stderr that report a panic.
pub fn panics(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE"))
        .map(str::to_string)
        .collect()
}

/// Every file under `<cache>/sha256/` whose content does not hash to its
/// name, and every file left in `<cache>/tmp/`.
pub fn audit_cache(dir: &std::path::Path) -> (u64, Vec<String>, Vec<String>) {
    let mut checked = 0;
    let mut corrupt = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir.join("sha256")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(data) = std::fs::read(e.path()) else {
                corrupt.push(format!("{name}: unreadable"));
                continue;
            };
            checked += 1;
            let got = common::sha256(&data);
            if got.strip_prefix("sha256:") != Some(name.as_str()) {
                corrupt.push(format!("{name}: {} bytes hash to {got}", data.len()));
            }
        }
    }
    let stray = std::fs::read_dir(dir.join("tmp"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (checked, corrupt, stray)
}
