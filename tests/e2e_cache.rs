//! End-to-end tests of the blob cache (`--cache-dir`, `--cache-disk`, `--cache-memory`): the
//! real binary, real clients (skopeo, curl) and archives served by nginx as the "upstream"
//! (local uncompressed archives are read in place and never copied into the cache:
//! `tests/e2e_inplace.rs`).
//!
//! An upstream that serves wrong bytes is simulated by rewriting bytes of an archive in place
//! and restoring its mtime: nginx's ETag is mtime + size (and a file source's version mtime +
//! inode + size), so cartorio reads the changed bytes under the same version (the index, and
//! the digests it promises, stay).

mod common;
mod servers;

use std::collections::BTreeMap;
use std::fs::{self, FileTimes};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use servers::TestServer;

/// ARCHIVE as a remote source: nginx serving its folder. Returns the server (keep it alive)
/// and the archive's URL.
fn upstream(archive: &Path) -> (TestServer, String) {
    let ng = TestServer::nginx(archive.parent().unwrap());
    let name = archive.file_name().unwrap().to_str().unwrap();
    let url = ng.url(&format!("/{name}"));
    (ng, url)
}

/// Returns from the test (after a note) when e2e tests are switched off.
macro_rules! e2e {
    () => {
        if !common::e2e(std::thread::current().name().unwrap_or("?")) {
            return;
        }
    };
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Copies a fixture into DIR (the tests change archives; the shared fixtures stay intact).
fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    fs::copy(fixture(name), &to).unwrap();
    to
}

/// The files in `D/sha256`: hex name -> length.
fn cached(cache: &Path) -> BTreeMap<String, u64> {
    let Ok(rd) = fs::read_dir(cache.join("sha256")) else {
        return BTreeMap::new();
    };
    rd.map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// The files in `D/tmp`: name -> length.
fn temps(cache: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(cache.join("tmp"))
        .unwrap_or_else(|e| panic!("{}/tmp: {e}", cache.display()))
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

/// Asserts that `D/sha256/<hex>` exists and hashes to DIGEST.
fn assert_cached(cache: &Path, digest: &str) {
    let p = cache.join("sha256").join(hex(digest));
    assert!(
        p.is_file(),
        "{digest} is not in the disk cache {:?}",
        cached(cache)
    );
    assert_eq!(
        sha256_file(&p),
        digest,
        "cached file does not hash to its name"
    );
}

/// Offset (in the archive file) and size of the data of the tar entry NAME.
fn entry_data(archive: &Path, name: &str) -> (u64, u64) {
    let mut ar = tar::Archive::new(fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            return (e.raw_file_position(), e.size());
        }
    }
    panic!("{name} not in {}", archive.display());
}

/// Where the docker-archive layer DIGEST (its diff_id: the `<hex>.tar` entry) starts.
fn layer_offset(archive: &Path, digest: &str) -> u64 {
    entry_data(archive, &format!("{}.tar", hex(digest))).0
}

/// `(mtime, inode, size)`: what cartorio's file-source version is made of.
fn version(p: &Path) -> (i64, i64, u64, u64) {
    let m = fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec(), m.ino(), m.size())
}

/// Flips the byte at OFFSET of the file in place and restores its mtime, so the file source
/// keeps its version: an upstream serving a wrong byte.  Flipping again restores it.
fn flip_byte_keep_version(p: &Path, offset: u64) {
    let before = version(p);
    let mtime = fs::metadata(p).unwrap().modified().unwrap();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, offset).unwrap();
    f.set_times(FileTimes::new().set_modified(mtime)).unwrap();
    drop(f);
    assert_eq!(version(p), before, "the archive's version changed");
}

/// One GET with curl, not failing on a cut response.
struct Fetched {
    /// curl's exit code (0: complete; 18: transfer closed with bytes remaining; ...)
    code: i32,
    status: u16,
    content_length: Option<u64>,
    body: Vec<u8>,
}

fn curl_get(url: &str, extra: &[&str]) -> Fetched {
    let tmp = tempdir();
    let (h, b) = (tmp.path().join("h"), tmp.path().join("b"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let headers = fs::read_to_string(&h).unwrap_or_default();
    let block = headers.trim_end().rsplit("\r\n\r\n").next().unwrap_or("");
    let status = block
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_length = block
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok());
    Fetched {
        code: out.status.code().unwrap_or(-1),
        status,
        content_length,
        body: fs::read(&b).unwrap_or_default(),
    }
}

/// Asserts that a GET of a blob whose upstream lies never looks complete:
/// either an error status (the fill failed before the answer started) or a
/// body cut short.
fn assert_cut(f: &Fetched, what: &str) {
    let complete = f.code == 0
        && (200..300).contains(&f.status)
        && f.content_length == Some(f.body.len() as u64);
    assert!(
        !complete,
        "{what}: a wrong blob was delivered as a complete response (HTTP {}, {} bytes)",
        f.status,
        f.body.len()
    );
    if (200..300).contains(&f.status)
        && let Some(len) = f.content_length
    {
        assert!(
            (f.body.len() as u64) < len,
            "{what}: got {} of {len} bytes",
            f.body.len()
        );
    }
}

fn blob_url(server: &Server, repo: &str, digest: &str) -> String {
    server.url(&format!("/v2/{repo}/blobs/{digest}"))
}

/// `skopeo copy docker://... dir:...` once; true when it succeeded.
fn skopeo_dir_ok(server: &Server, name_tag: &str) -> bool {
    let tmp = tempdir();
    Command::new("skopeo")
        .args([
            "--command-timeout",
            "60s",
            "copy",
            "-q",
            "--src-tls-verify=false",
        ])
        .arg(server.docker_ref(name_tag))
        .arg(format!("dir:{}", tmp.path().join("dir").display()))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run skopeo")
        .success()
}

/// Pulls NAME:TAG with `skopeo copy dir:`, checks every blob against its digest and returns
/// the layer digests.
fn pull_checked(server: &Server, name_tag: &str) -> Vec<String> {
    let (tmp, m) = pull_dir(server, name_tag, &[]);
    check_dir_blobs(tmp.path(), &m);
    layer_digests(&m)
}

/// A rootfs tarball of one file of MIB MiB of random bytes (served as one uncompressed layer:
/// the tarball itself).  Returns its path.
fn big_rootfs(dir: &Path, mib: usize) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    let tar = dir.join("big.tar");
    sh(&format!(
        "head -c {mib}M /dev/urandom > {}/big && tar cf {} -C {} . && rm -r {}",
        s(&root),
        s(&tar),
        s(&root),
        s(&root)
    ));
    tar
}

/// The single layer of NAME:TAG (digest, size), from the manifest.
fn only_layer(server: &Server, name_tag: &str) -> (String, u64) {
    let (name, tag) = name_tag.split_once(':').unwrap();
    let r = http(
        "GET",
        &server.url(&format!("/v2/{name}/manifests/{tag}")),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    (
        layers[0]["digest"].as_str().unwrap().to_string(),
        layers[0]["size"].as_u64().unwrap(),
    )
}

/// `curl -sS URL | sha256sum`, running in the background.
fn spawn_curl_sha256(url: &str, extra: &str) -> Child {
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; curl -sS --max-time 60 {extra} '{url}' | sha256sum | cut -d' ' -f1"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl")
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ------------------------------------------------------------------------------------------

/// Pulled blobs land in `D/sha256/<hex>` (verified, no temp files left), and a restarted
/// server serves them from there: the archive's layer bytes are wrong by then, yet the pull
/// gets the right ones.
#[test]
fn blobs_are_cached_and_served_after_a_restart() {
    e2e!();
    let tmp = tempdir();
    let archive = copy_fixture("docker-archive.tar", tmp.path());
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let args = ["--cache-dir", s(&cache), &url];
    let server = Server::serve(&args);
    let layers = pull_checked(&server, "fixture/app:v1");
    assert_eq!(layers, docker_archive_digests(&archive)[0].2);
    for d in &layers {
        assert_cached(&cache, d);
    }
    assert!(
        temps(&cache).is_empty(),
        "temp files left: {:?}",
        temps(&cache)
    );
    drop(server);

    // Now every layer in the archive is wrong (same version, so the index is kept).
    for d in &layers {
        flip_byte_keep_version(&archive, layer_offset(&archive, d) + 100);
    }
    // Without the cache the archive's bytes are what gets served: cut, as they are wrong.
    let uncached = Server::serve(&["--cache-dir", "none", &url]);
    for d in &layers {
        assert_cut(
            &curl_get(&blob_url(&uncached, "fixture/app", d), &[]),
            "uncached",
        );
    }
    drop(uncached);

    let server = Server::serve(&args);
    assert_eq!(pull_checked(&server, "fixture/app:v1"), layers);
    for d in &layers {
        assert_cached(&cache, d);
    }
}

/// A layer whose bytes do not match its digest is never delivered whole and never cached;
/// once the upstream is right again, the next pull works and caches it.
#[test]
fn corrupt_upstream_is_cut_and_not_cached() {
    e2e!();
    let tmp = tempdir();
    let archive = copy_fixture("docker-archive.tar", tmp.path());
    let cache = tmp.path().join("cache");
    let layer = docker_archive_digests(&archive)[0].2[0].clone();
    let at = layer_offset(&archive, &layer) + 1000;
    flip_byte_keep_version(&archive, at);

    let (_ng, url) = upstream(&archive);
    let server = Server::serve(&["--cache-dir", s(&cache), &url]);
    assert!(
        !skopeo_dir_ok(&server, "fixture/app:v1"),
        "a pull of a corrupt layer succeeded"
    );
    assert!(
        !cache.join("sha256").join(hex(&layer)).exists(),
        "a corrupt blob was cached"
    );
    let log = server.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("does not match its digest")
                && l.contains(&format!("expected={layer}"))),
        "no digest mismatch naming {layer} in the server log:\n{log}"
    );
    let f = curl_get(&blob_url(&server, "fixture/app", &layer), &[]);
    assert_cut(&f, "corrupt layer");
    assert!(!cache.join("sha256").join(hex(&layer)).exists());
    assert!(
        temps(&cache).is_empty(),
        "temp files left: {:?}",
        temps(&cache)
    );

    // The upstream is fixed (same version): nothing negative was remembered.
    flip_byte_keep_version(&archive, at);
    pull_checked(&server, "fixture/app:v1");
    assert_cached(&cache, &layer);
    assert!(temps(&cache).is_empty());
}

/// With `--cache-disk` below what two images need, the stored bytes stay within the bound
/// after each pull, and what goes is the least recently used blob (neither the oldest stored
/// nor the largest).
#[test]
fn disk_bound_evicts_least_recently_used() {
    e2e!();
    let archive = fixture("multi-image.tar");
    // Layer sizes as cartorio itself reports them.
    let out = run(Command::new(bin()).args(["inspect", "--json", s(&archive)]));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut size = BTreeMap::new();
    let mut image_layers = BTreeMap::new();
    for img in info["images"].as_array().unwrap() {
        let mut ds = Vec::new();
        for l in img["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap().to_string();
            size.insert(d.clone(), l["size"].as_u64().unwrap());
            ds.push(d);
        }
        for r in img["refs"].as_array().unwrap() {
            image_layers.insert(r.as_str().unwrap().to_string(), ds.clone());
        }
    }
    let app = &image_layers["fixture/app:v1"];
    let other = &image_layers["fixture/other:v2"];
    assert_eq!(app.len(), 3, "fixture changed: {app:?}");
    let (a, b, c) = (&app[0], &app[1], &app[2]);
    assert_eq!(other.len(), 2, "fixture changed: {other:?}");
    assert_eq!(
        &other[0], a,
        "fixture changed: the images no longer share a layer"
    );
    let d = &other[1];
    // app:v1 fits; app:v1 + other:v2 does not (by one byte less than D's size).
    let bound = size[a] + size[b] + size[c] + size[d] - 1;
    assert!(size[c] > size[b], "fixture changed: want B smaller than C");

    let tmp = tempdir();
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let server = Server::serve(&[
        "--cache-dir",
        s(&cache),
        "--cache-disk",
        &bound.to_string(),
        "--cache-memory",
        "0",
        &url,
    ]);
    let stored = |cache: &Path| -> u64 { cached(cache).values().sum() };

    pull_checked(&server, "fixture/app:v1");
    let have = cached(&cache);
    assert!(stored(&cache) <= bound, "{have:?} over {bound}");
    for l in app {
        assert_eq!(have.get(hex(l)), Some(&size[l]), "{l} not cached: {have:?}");
    }
    // Recency: B, then C (A was read by the pull above and is read again by the next one).
    for l in [b, c] {
        let r = http("GET", &blob_url(&server, "fixture/app", l), &[]);
        assert_eq!((r.status, sha256(&r.body)), (200, l.clone()));
    }

    pull_checked(&server, "fixture/other:v2");
    let have = cached(&cache);
    assert!(stored(&cache) <= bound, "{have:?} over {bound}");
    assert!(
        !have.contains_key(hex(b)),
        "the least recently used blob {b} is still there: {have:?}"
    );
    for l in [a, c, d] {
        assert!(have.contains_key(hex(l)), "{l} was evicted: {have:?}");
    }

    // An evicted blob is fetched again, and the bound still holds.
    pull_checked(&server, "fixture/app:v1");
    assert!(stored(&cache) <= bound, "{:?} over {bound}", cached(&cache));
    assert_cached(&cache, b);
    assert!(temps(&cache).is_empty());
}

/// `kill -9` while a blob is being filled leaves a partial temp file; the next start removes
/// it and serves (and caches) the whole, verified blob.
#[test]
fn crash_mid_fill_leaves_no_trace_after_restart() {
    e2e!();
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 48);
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let args = ["--cache-dir", s(&cache), &format!("big={url}")];
    let mut server = Server::serve(&args);
    let (layer, size) = only_layer(&server, "big:latest");
    let curl = spawn_curl_sha256(&blob_url(&server, "big", &layer), "--limit-rate 20M");
    // Kill as soon as the fill has written something.
    wait_until("a temp file with bytes", Duration::from_secs(30), || {
        fs::read_dir(cache.join("tmp"))
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
            })
            .unwrap_or(false)
    });
    server.kill9();
    let left = temps(&cache);
    assert_eq!(left.len(), 1, "{left:?}");
    let partial = *left.values().next().unwrap();
    assert!(
        partial > 0 && partial < size,
        "the temp file is not partial: {partial} of {size}"
    );
    assert!(cached(&cache).is_empty(), "{:?}", cached(&cache));
    let out = curl.wait_with_output().unwrap();
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != hex(&layer),
        "curl got the whole blob from a killed server"
    );

    let server = Server::serve(&args);
    assert!(
        temps(&cache).is_empty(),
        "temp files survived the restart: {:?}",
        temps(&cache)
    );
    assert_eq!(pull_checked(&server, "big:latest"), vec![layer.clone()]);
    assert_cached(&cache, &layer);
    assert!(temps(&cache).is_empty());
}

/// Ten clients (half through another repository name for the same archive) and two ranged
/// requests on the same cold blob: everyone gets the exact bytes, and it is stored once.
#[test]
fn concurrent_cold_pulls_share_one_fill() {
    e2e!();
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 32);
    let bytes = fs::read(&archive).unwrap();
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let server = Server::serve(&[
        "--cache-dir",
        s(&cache),
        &format!("big={url}"),
        &format!("again={url}"),
    ]);
    let (layer, size) = only_layer(&server, "big:latest");
    assert_eq!(only_layer(&server, "again:latest").0, layer);
    assert_eq!(
        size,
        bytes.len() as u64,
        "a rootfs tarball is its own layer"
    );
    assert_eq!(sha256(&bytes), layer);

    let whole: Vec<Child> = (0..10)
        .map(|i| {
            let repo = if i % 2 == 0 { "big" } else { "again" };
            spawn_curl_sha256(&blob_url(&server, repo, &layer), "")
        })
        .collect();
    let ranges = [(1000u64, 5_000_000u64), (size - 100, size - 1)];
    let ranged: Vec<_> = ranges
        .iter()
        .map(|&(a, b)| {
            let url = blob_url(&server, "again", &layer);
            std::thread::spawn(move || curl_get(&url, &["-r", &format!("{a}-{b}")]))
        })
        .collect();
    for c in whole {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex(&layer));
    }
    for (t, (a, b)) in ranged.into_iter().zip(ranges) {
        let f = t.join().unwrap();
        assert_eq!((f.code, f.status), (0, 206), "range {a}-{b}");
        assert!(
            f.body == bytes[a as usize..=b as usize],
            "range {a}-{b}: wrong bytes ({} bytes)",
            f.body.len()
        );
    }
    let have = cached(&cache);
    assert_eq!(have.len(), 1, "{have:?}");
    assert_cached(&cache, &layer);
    assert!(temps(&cache).is_empty(), "{:?}", temps(&cache));
}

/// A client that goes away mid-transfer does not stop the fill: the blob still lands in the
/// cache, verified, and no temp file stays behind.
#[test]
fn client_disconnect_mid_fill_still_caches() {
    e2e!();
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 16);
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let server = Server::serve(&["--cache-dir", s(&cache), &format!("big={url}")]);
    let (layer, _) = only_layer(&server, "big:latest");
    let mut curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "1M", "-o", "/dev/null"])
        .arg(blob_url(&server, "big", &layer))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("a temp file", Duration::from_secs(30), || {
        !temps(&cache).is_empty()
    });
    curl.kill().unwrap();
    curl.wait().unwrap();
    wait_until("the blob in the cache", Duration::from_secs(30), || {
        cache.join("sha256").join(hex(&layer)).exists()
    });
    assert_cached(&cache, &layer);
    wait_until("no temp files", Duration::from_secs(5), || {
        temps(&cache).is_empty()
    });
}

/// A fill whose temp file cannot be written (its name taken by a link to /dev/full, where
/// every write fails with ENOSPC) still serves the whole blob, verified: the clients it was
/// sending from the temp file go on from the source, and nothing is cached.
#[test]
fn a_fill_that_cannot_write_still_serves_the_whole_blob() {
    e2e!();
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 16);
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let server = Server::serve(&["--cache-dir", s(&cache), &format!("big={url}")]);
    let (layer, size) = only_layer(&server, "big:latest");
    // The fill's temp file is `tmp/<hex>.<pid>.<n>`: take the first names.
    for n in 0..8 {
        let at = cache
            .join("tmp")
            .join(format!("{}.{}.{n}", hex(&layer), server.pid()));
        std::os::unix::fs::symlink("/dev/full", at).unwrap();
    }
    let url = blob_url(&server, "big", &layer);
    let whole: Vec<Child> = (0..3).map(|_| spawn_curl_sha256(&url, "")).collect();
    let ranged = curl_get(&url, &["-r", "100000-"]);
    for c in whole {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex(&layer));
    }
    assert_eq!((ranged.code, ranged.status), (0, 206));
    let bytes = fs::read(&archive).unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert!(ranged.body == bytes[100_000..], "the range's bytes differ");
    assert!(cached(&cache).is_empty(), "{:?}", cached(&cache));
    let m = String::from_utf8(curl_get(&server.url("/metrics"), &[]).body).unwrap();
    assert!(metric(&m, "cartorio_cache_write_errors_total") >= 1);
}

/// `--cache-dir` naming a regular file: the server says so and serves from the archive.
#[test]
fn unusable_cache_dir_serves_from_source() {
    e2e!();
    let tmp = tempdir();
    let file = tmp.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let archive = fixture("docker-archive.tar");
    let server = Server::serve(&["--cache-dir", s(&file), s(&archive)]);
    let layers = pull_checked(&server, "fixture/app:v1");
    assert_eq!(layers, docker_archive_digests(&archive)[0].2);
    // a second pull as well (nothing half-cached in the way)
    pull_checked(&server, "fixture/app:v1");
    let log = server.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("disk cache unavailable")),
        "no warning about the cache folder:\n{log}"
    );
    assert_eq!(fs::read(&file).unwrap(), b"x", "the file was touched");
}

/// A range of a cold blob whose upstream lies is cut like a whole-blob request: with the
/// cache on, as without it (`--cache-dir none`), the range's last byte waits for the verdict
/// on the whole blob.  (Clients resuming a layer download send such ranges.)
#[test]
fn range_of_a_cold_corrupt_blob_is_cut() {
    e2e!();
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 8);
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let cached_server = Server::serve(&["--cache-dir", s(&cache), &format!("big={url}")]);
    let uncached = Server::serve(&["--cache-dir", "none", &format!("big={url}")]);
    let (layer, _) = only_layer(&cached_server, "big:latest");
    // Both servers indexed the good bytes; now byte 5000 is wrong.
    flip_byte_keep_version(&archive, 5000);
    // A small range is sent from the fill's buffers; a large one, on this
    // plain HTTP/1.1 connection, with sendfile from the fill's temp file.
    for (server, what) in [(&uncached, "without cache"), (&cached_server, "with cache")] {
        for range in ["0-9999", "0-999999"] {
            let f = curl_get(&blob_url(server, "big", &layer), &["-r", range]);
            assert_cut(&f, &format!("range {range} of a corrupt cold blob {what}"));
        }
    }
    assert!(!cache.join("sha256").join(hex(&layer)).exists());
}

/// A cached file shorter than its blob (a power loss after the rename, before the bytes
/// reached the disk; a full disk; a careless admin) is dropped and fetched again instead of
/// failing every pull of that blob for good.
#[test]
fn short_cached_file_is_fetched_again() {
    e2e!();
    let tmp = tempdir();
    let archive = fixture("docker-archive.tar");
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let args = ["--cache-dir", s(&cache), &url];
    let server = Server::serve(&args);
    let layers = pull_checked(&server, "fixture/app:v1");
    drop(server);
    let victim = cache.join("sha256").join(hex(&layers[0]));
    fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(100)
        .unwrap();
    // Restarted: the memory tier is empty, the disk tier has the short file.
    let server = Server::serve(&args);
    for _ in 0..2 {
        let r = http("GET", &blob_url(&server, "fixture/app", &layers[0]), &[]);
        assert_eq!((r.status, sha256(&r.body)), (200, layers[0].clone()));
    }
    pull_checked(&server, "fixture/app:v1");
    assert_cached(&cache, &layers[0]);
}

/// A cached file of the right length with a flipped bit (disk rot) is hashed before a
/// restarted server first serves it: evicted and fetched again, not served wrong for ever.
/// `cartorio cache verify DIR` finds and removes such a file on demand, and says so.
#[test]
fn flipped_bit_in_a_cached_file_heals() {
    e2e!();
    let tmp = tempdir();
    let archive = fixture("docker-archive.tar");
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let args = ["--cache-dir", s(&cache), &url];
    let server = Server::serve(&args);
    let layers = pull_checked(&server, "fixture/app:v1");
    drop(server);
    let victim = cache.join("sha256").join(hex(&layers[0]));
    let flip = || {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&victim)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 50).unwrap();
        f.write_all_at(&[b[0] ^ 1], 50).unwrap();
    };
    flip();
    let server = Server::serve(&args);
    let r = http("GET", &blob_url(&server, "fixture/app", &layers[0]), &[]);
    assert_eq!((r.status, sha256(&r.body)), (200, layers[0].clone()));
    drop(server);
    assert_cached(&cache, &layers[0]);

    flip();
    let verify = |want_ok: bool, want: &str| {
        let out = Command::new(bin())
            .args(["cache", "verify", s(&cache)])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), want_ok, "{stdout}");
        assert!(stdout.contains(want), "{stdout}");
    };
    let n = cached(&cache).len();
    verify(false, &format!("{} good, 1 bad", n - 1));
    assert!(!victim.exists());
    verify(true, &format!("{} good, 0 bad", n - 1));
}

/// The value of an unlabelled counter in `/metrics`, or of a labelled
/// sample when `name` includes its labels.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Operators see the cache work in `/metrics`: a cold pull fills, a warm one
/// hits the disk tier and reads nothing more from the source.
#[test]
fn metrics_count_fills_hits_and_requests() {
    e2e!();
    let tmp = tempdir();
    let archive = copy_fixture("docker-archive.tar", tmp.path());
    let (_ng, url) = upstream(&archive);
    let cache = tmp.path().join("cache");
    let server = Server::serve(&["--cache-dir", s(&cache), "--cache-memory", "0", &url]);
    let health = curl_get(&server.url("/healthz"), &[]);
    assert_eq!((health.status, &health.body[..]), (200, &b"ok\n"[..]));
    let layers = pull_checked(&server, "fixture/app:v1");
    let cold = String::from_utf8(curl_get(&server.url("/metrics"), &[]).body).unwrap();
    assert_eq!(
        metric(&cold, "cartorio_cache_fills_total"),
        layers.len() as u64
    );
    let upstream = metric(&cold, "cartorio_upstream_blob_bytes_total");
    assert!(upstream > 0);
    assert!(
        metric(
            &cold,
            "cartorio_http_requests_total{route=\"blob\",code=\"2xx\"}"
        ) >= layers.len() as u64
    );
    assert_eq!(metric(&cold, "cartorio_index_loads_total"), 1);
    assert!(metric(&cold, "cartorio_cache_disk_bytes") > 0);

    pull_checked(&server, "fixture/app:v1");
    let warm = String::from_utf8(curl_get(&server.url("/metrics"), &[]).body).unwrap();
    assert_eq!(
        metric(&warm, "cartorio_cache_fills_total"),
        layers.len() as u64
    );
    assert!(metric(&warm, "cartorio_cache_disk_hits_total") >= layers.len() as u64);
    assert_eq!(
        metric(&warm, "cartorio_upstream_blob_bytes_total"),
        upstream
    );
}
