//! Load: N concurrent clients (each its own sequence of requests, so up to
//! N connections) for a fixed time against one `proxy`, mixing manifest
//! GETs, small blobs, large blobs, ranges of large blobs (all warm, from
//! local tarballs) and cold pulls of archives the server has never seen
//! (a templated route over the in-process upstream; a few clients share
//! each cold archive, so fills are joined). Every body is checked.
//!
//! Asserted: 0 errors, 0 wrong bytes, no panic. Reported: requests, p50 /
//! p99 / max latency, peak RSS of the server.
//!
//! Knobs: `REL_LOAD_CLIENTS` (default 50), `REL_LOAD_SECS` (default 5),
//! `REL_LOAD_LARGE_KIB` (large layer, default 1024), `REL_SEED`.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Server, tempdir, write_config};
use crate::upstream::Upstream;
use crate::{client, image, knob, panics, peak_rss_kib};

const WARM_IMAGES: u64 = 4;

#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<u32>>,
    errors: Vec<String>,
    wrong: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load() {
    if !crate::enabled("load") {
        return;
    }
    let clients = knob("LOAD_CLIENTS", 50);
    let secs = knob("LOAD_SECS", 5);
    let large = knob("LOAD_LARGE_KIB", 1024) as usize * 1024;
    let seed = knob("SEED", 13);
    let up = Arc::new(Upstream::start(seed, 1).await);
    let dir = tempdir();
    let mut warm = Vec::new();
    let mut toml = String::from("revalidate = \"1s\"\n");
    for i in 0..WARM_IMAGES {
        let img =
            image::docker_archive(seed * 7 + i, &format!("w/i{i}:t"), &[large, 20_000, 60_000]);
        let path = dir.path().join(format!("w{i}.tar"));
        std::fs::write(&path, &img.tar).expect("write");
        toml.push_str(&format!(
            "[[image]]\nname = \"w/i{i}\"\nsource = \"{}\"\ntags = [\"t\"]\n",
            path.display()
        ));
        warm.push(img);
    }
    toml.push_str(&format!(
        "[[image]]\nname = \"cold/{{repo}}\"\nsource = \"{}/{{repo}}/{{tag}}.tar\"\n[cache]\ndir = \"{}\"\n",
        up.url(""),
        dir.path().join("cache").display()
    ));
    let config = write_config(dir.path(), &toml);
    let mut server = Server::proxy(&config);
    let base = Arc::new(format!("http://{}", server.addr));
    let warm = Arc::new(warm);
    let cold_next = Arc::new(AtomicU64::new(0));
    let cold_images = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let c = client::client();
    // Warm up: one pull of each warm image, so "warm" means warm.
    for (i, img) in warm.iter().enumerate() {
        let p = client::pull(&c, &base, &format!("w/i{i}"), "t", &img.blobs, false).await;
        assert!(
            p.ok,
            "warm-up pull of w/i{i}: {:?} {:?}",
            p.failure, p.wrong
        );
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let (c, base, warm, up) = (c.clone(), base.clone(), warm.clone(), up.clone());
        let (cold_next, cold_images) = (cold_next.clone(), cold_images.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ ((t + 1) * 0x9e37_79b9));
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let i = rng.usize(..warm.len());
                let img = &warm[i];
                let name = format!("w/i{i}");
                let roll = rng.u8(..100);
                let t0 = Instant::now();
                let (kind, outcome): (&'static str, Result<(), (bool, String)>) = match roll {
                    0..=39 => ("manifest", manifest(&c, &base, &name).await),
                    40..=69 => {
                        let d = if rng.bool() {
                            &img.layer_digests[1]
                        } else {
                            &img.layer_digests[2]
                        };
                        (
                            "small blob",
                            blob(&c, &base, &name, d, &img.blobs[d], None).await,
                        )
                    }
                    70..=79 => (
                        "large blob",
                        blob(
                            &c,
                            &base,
                            &name,
                            &img.layer_digests[0],
                            &img.blobs[&img.layer_digests[0]],
                            None,
                        )
                        .await,
                    ),
                    80..=89 => {
                        let d = &img.layer_digests[0];
                        let len = img.blobs[d].len() as u64;
                        let a = rng.u64(..len);
                        let b = (a + rng.u64(..256 * 1024)).min(len - 1);
                        (
                            "large blob range",
                            blob(&c, &base, &name, d, &img.blobs[d], Some((a, b))).await,
                        )
                    }
                    _ => {
                        // three clients per cold archive: one fill, joined
                        let n = cold_next.fetch_add(1, Ordering::Relaxed) / 3;
                        let img = {
                            let mut m = cold_images.lock().expect("lock");
                            m.entry(n)
                                .or_insert_with(|| {
                                    let img = Arc::new(image::docker_archive(
                                        seed * 31 + 1_000 + n,
                                        &format!("cold/r{n}:t"),
                                        &[200_000, 5_000],
                                    ));
                                    up.put(
                                        &format!("/r{n}/t.tar"),
                                        img.tar.clone(),
                                        Vec::new(),
                                        false,
                                    );
                                    img
                                })
                                .clone()
                        };
                        let p =
                            client::pull(&c, &base, &format!("cold/r{n}"), "t", &img.blobs, false)
                                .await;
                        let out = if !p.wrong.is_empty() {
                            Err((true, p.wrong.join("; ")))
                        } else if let Some(f) = p.failure {
                            Err((false, f))
                        } else {
                            Ok(())
                        };
                        ("cold pull", out)
                    }
                };
                let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                tally.latencies.entry(kind).or_default().push(us);
                match outcome {
                    Ok(()) => {}
                    Err((true, w)) => tally.wrong.push(w),
                    Err((false, e)) => tally.errors.push(format!("{kind}: {e}")),
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await.expect("client task");
        for (k, v) in t.latencies {
            all.latencies.entry(k).or_default().extend(v);
        }
        all.errors.extend(t.errors);
        all.wrong.extend(t.wrong);
    }
    let elapsed = started.elapsed().as_secs_f64();
    server.assert_alive();
    let rss = peak_rss_kib(server.pid()).unwrap_or(0);
    let panicked = panics(&server.stderr());
    let mut every: Vec<u32> = all.latencies.values().flatten().copied().collect();
    every.sort_unstable();
    let pct = |v: &[u32], p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0
    };
    let mut per_kind = String::new();
    for (k, v) in all.latencies.iter_mut() {
        v.sort_unstable();
        per_kind.push_str(&format!("{k}: {} (p99 {:.1} ms); ", v.len(), pct(v, 0.99)));
    }
    eprintln!(
        "FIGURE load: {clients} concurrent clients for {elapsed:.0} s: {} requests ({:.0}/s; {per_kind}{} cold archives), \
         {} errors, {} wrong bytes accepted, latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms, \
         server peak RSS {} MiB, {} panics",
        every.len(),
        every.len() as f64 / elapsed,
        cold_images.lock().map(|m| m.len()).unwrap_or(0),
        all.errors.len(),
        all.wrong.len(),
        pct(&every, 0.5),
        pct(&every, 0.99),
        every.last().copied().unwrap_or(0) as f64 / 1000.0,
        rss / 1024,
        panicked.len()
    );
    let sample: Vec<_> = all.errors.iter().take(10).collect();
    assert!(all.wrong.is_empty(), "wrong bytes: {:#?}", all.wrong);
    assert!(
        all.errors.is_empty(),
        "{} errors, e.g. {sample:#?}",
        all.errors.len()
    );
    assert!(panicked.is_empty(), "panics: {panicked:#?}");
}

async fn manifest(c: &reqwest::Client, base: &str, name: &str) -> Result<(), (bool, String)> {
    let url = format!("{base}/v2/{name}/manifests/t");
    match client::get(c, &url, None).await {
        Ok((200, h, body)) => {
            let said = h
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if said != image::digest(&body) {
                return Err((true, format!("{url}: body does not hash to {said}")));
            }
            Ok(())
        }
        Ok((s, _, _)) => Err((false, format!("{url}: {s}"))),
        Err(e) => Err((false, e)),
    }
}

async fn blob(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    digest: &str,
    want: &[u8],
    range: Option<(u64, u64)>,
) -> Result<(), (bool, String)> {
    let url = format!("{base}/v2/{name}/blobs/{digest}");
    let expected = match range {
        Some((a, b)) => (206, &want[a as usize..=b as usize]),
        None => (200, want),
    };
    match client::get(c, &url, range).await {
        Ok((s, _, body)) if s == expected.0 => {
            if body[..] != expected.1[..] {
                return Err((true, format!("{url} {range:?}: wrong bytes")));
            }
            Ok(())
        }
        Ok((s, _, _)) => Err((false, format!("{url} {range:?}: {s}"))),
        Err(e) => Err((false, e)),
    }
}
