//! `kill -9` at random points of cold pulls: each run serves a new archive
//! from a throttled upstream into the same cache folder, starts a pull,
//! kills the server after a random delay (during indexing, mid-fill or
//! after), restarts it on the same folder and pulls again.
//!
//! Asserted: the pull after the restart gets the right bytes, no temp file
//! is left once it is done, every cached file hashes to its name, no panic.
//!
//! Knobs: `REL_CRASH_RUNS` (default 3), `REL_CRASH_LAYER_KIB` (default
//! 1024), `REL_CRASH_RATE_KIB` (upstream bytes/s, default 4096), `REL_SEED`.
use std::time::Duration;

use crate::common::{Server, tempdir};
use crate::upstream::Upstream;
use crate::{audit_cache, client, image, knob, panics};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash() {
    if !crate::enabled("crash") {
        return;
    }
    let runs = knob("CRASH_RUNS", 3);
    let layer = knob("CRASH_LAYER_KIB", 1024) as usize * 1024;
    let rate = knob("CRASH_RATE_KIB", 4096) * 1024;
    let seed = knob("SEED", 13);
    let mut rng = fastrand::Rng::with_seed(seed);
    let up = Upstream::start(seed, 1).await;
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let cache_arg = cache.display().to_string();
    let c = client::client();
    // The time a cold pull takes at this rate; kills land in 0..1.2× that.
    let pull_ms = (layer as u64 * 1000 / rate).max(50);
    let (mut mid_fill, mut wrong, mut corrupt_total, mut stray_total, mut panicked) =
        (0, Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..runs {
        let img = image::docker_archive(seed * 1_000 + r, &format!("c/r{r}:t"), &[layer, 2000]);
        let obj = up.put(
            &format!("/c{r}.tar"),
            img.tar.clone(),
            img.layer_ranges.clone(),
            false,
        );
        obj.rate.store(rate, std::sync::atomic::Ordering::Relaxed);
        let arg = format!("c/r{r}:t={}", up.url(&format!("/c{r}.tar")));
        let args = ["--cache-dir", cache_arg.as_str(), arg.as_str()];
        let mut first = Server::serve(&args);
        let base = format!("http://{}", first.addr);
        let (c2, base2, blobs) = (c.clone(), base.clone(), img.blobs.clone());
        let name = format!("c/r{r}");
        let name2 = name.clone();
        let pulling =
            tokio::spawn(
                async move { client::pull(&c2, &base2, &name2, "t", &blobs, false).await },
            );
        let delay = rng.u64(..pull_ms * 6 / 5 + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        first.kill9();
        panicked.extend(panics(&first.stderr()));
        if std::fs::read_dir(cache.join("tmp")).is_ok_and(|mut d| d.next().is_some()) {
            mid_fill += 1;
        }
        // A pull cut by the crash may have failed; what it accepted must
        // still be right.
        if let Ok(p) = pulling.await {
            wrong.extend(p.wrong);
        }
        drop(first);

        let second = Server::serve(&args);
        let base = format!("http://{}", second.addr);
        let (p, w) =
            client::pull_until_ok(&c, &base, &name, "t", &img.blobs, Duration::from_secs(60)).await;
        wrong.extend(w);
        assert!(
            p.ok,
            "run {r}: the pull after the restart failed: {:?}",
            p.failure
        );
        let (_, corrupt, stray) = audit_cache(&cache);
        corrupt_total.extend(corrupt);
        stray_total.extend(stray.into_iter().map(|s| format!("run {r}: {s}")));
        panicked.extend(panics(&second.stderr()));
        drop(second);
    }
    let (checked, corrupt_end, _) = audit_cache(&cache);
    corrupt_total.extend(corrupt_end);
    eprintln!(
        "FIGURE crash: {runs} kill -9 runs during cold pulls ({mid_fill} with a fill under way), \
         {runs} pulls after restart correct; {} wrong bytes accepted; {} corrupt cache entries \
         (of {checked} at the end); {} stray tmp files; {} panics",
        wrong.len(),
        corrupt_total.len(),
        stray_total.len(),
        panicked.len()
    );
    assert!(wrong.is_empty(), "wrong bytes accepted: {wrong:#?}");
    assert!(
        corrupt_total.is_empty(),
        "corrupt cache entries: {corrupt_total:#?}"
    );
    assert!(
        stray_total.is_empty(),
        "temp files left after a restart and a pull: {stray_total:#?}"
    );
    assert!(panicked.is_empty(), "panics: {panicked:#?}");
}
