//! Fuzz targets on stable Rust: seeded loops of structured random inputs.
//!
//! Each target runs `FUZZ_CASES_<TARGET>` cases (else `FUZZ_CASES`, else a
//! small default so `cargo test` stays quick). Case `i` is generated from
//! seed `FUZZ_SEED + i` (default seed fixed, so plain `cargo test` is
//! repeatable); a failing case prints the command that replays it alone:
//!
//! ```text
//! FUZZ_SEED=<seed> FUZZ_CASES=1 cargo test --release --test fuzz <target> -- --nocapture
//! ```
//!
//! A case fails when the code under test panics or breaks an invariant
//! (a served document whose digest is not its content, a parse that does
//! not round-trip, an error response without the spec's body, ...).
//! Every target prints one `FIGURE fuzz ...` line that
//! `scripts/reliability.sh` collects.
//!
//! Why a seeded loop over `fastrand` rather than proptest: the inputs that
//! matter are structured (tar headers with mutated fields, PAX records,
//! documents that reference each other by digest) and written by hand
//! here either way; a seed replays a case exactly; the generator costs
//! nanoseconds, so a million cases per target fit on two shared cores; and
//! it adds no crate to the tree.
mod config;
mod names;
mod routes;
mod tars;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

pub use fastrand::Rng;

/// The default seed of plain `cargo test` runs.
const DEFAULT_SEED: u64 = 0x5eed_cafe;

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

/// How many cases `target` runs.
pub fn cases(target: &str, default: u64) -> u64 {
    env_u64(&format!("FUZZ_CASES_{}", target.to_uppercase()))
        .or_else(|| env_u64("FUZZ_CASES"))
        .unwrap_or(default)
}

/// Runs `case` for each seed; panics (failing the test) at the first case
/// that panics or returns an error, after printing how to replay it.
pub fn run(target: &str, default_cases: u64, mut case: impl FnMut(&mut Rng) -> Result<(), String>) {
    let n = cases(target, default_cases);
    let base = env_u64("FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let started = Instant::now();
    let mut slowest = (Duration::ZERO, base);
    for i in 0..n {
        let seed = base.wrapping_add(i);
        let mut rng = Rng::with_seed(seed);
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| case(&mut rng)));
        let took = t.elapsed();
        if took > slowest.0 {
            slowest = (took, seed);
        }
        let problem = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(msg)) => format!("invariant broken: {msg}"),
            Err(p) => format!(
                "panic: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        eprintln!(
            "FIGURE fuzz {target}: FAILED at case {} of {n}: {problem}\n  \
             replay: FUZZ_SEED={seed} FUZZ_CASES=1 cargo test --release --test fuzz {target} -- --nocapture",
            i + 1
        );
        panic!("fuzz target {target} failed (seed {seed}): {problem}");
    }
    eprintln!(
        "FIGURE fuzz {target}: {n} cases, 0 panics, 0 invariant failures, {:.1} s, \
         slowest case {:.1} ms (seed {}), first seed {base}",
        started.elapsed().as_secs_f64(),
        slowest.0.as_secs_f64() * 1000.0,
        slowest.1,
    );
}

/// A string of `len` characters drawn from `alphabet`.
pub fn string_from(rng: &mut Rng, alphabet: &[u8], len: usize) -> String {
    (0..len)
        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
        .collect()
}

/// One of `items`.
pub fn pick<'a, T: ?Sized>(rng: &mut Rng, items: &[&'a T]) -> &'a T {
    items[rng.usize(..items.len())]
}
