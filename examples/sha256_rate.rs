//! Prints the single-core sha256 rate of the hasher cartorio verifies blobs
//! with (`cartorio::image::Hasher`), in MiB/s: the ceiling scripts/bench.sh
//! compares a cold blob stream against, measured in the same run.
//!
//!     cargo run --release --example sha256_rate [MiB]
use std::time::Instant;

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    // A 4 MiB buffer of non-trivial bytes, hashed over and over: cache-resident,
    // so this is the hashing rate, not memory bandwidth.
    let buf: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut h = cartorio::image::Hasher::new();
    let t = Instant::now();
    for _ in 0..mib / 4 {
        h.update(&buf);
    }
    let d = h.finish();
    let secs = t.elapsed().as_secs_f64();
    println!("{:.0}", (mib / 4 * 4) as f64 / secs);
    eprintln!("sha256 of {mib} MiB in {secs:.3} s ({d})");
}
