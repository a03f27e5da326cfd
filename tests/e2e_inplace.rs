//! End-to-end tests of local archives served in place: the real binary, skopeo and curl,
//! archives on disk. A local uncompressed archive's blobs are read from the archive itself,
//! never copied into the disk cache; each is hashed the first time it is served at a file
//! version and served without hashing afterwards (`cartorio_blob_bytes_hashed_total`).

mod common;

use std::fs::{self, FileTimes};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

macro_rules! e2e {
    () => {
        if !common::e2e(std::thread::current().name().unwrap_or("?")) {
            return;
        }
    };
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn copy_fixture(name: &str, dir: &Path) -> PathBuf {
    let to = dir.join(name);
    fs::copy(fixture(name), &to).unwrap();
    to
}

/// Every file under DIR (recursively), with its length.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push((e.path(), m.len()));
        }
    }
    out
}

fn metric(server: &Server, name: &str) -> u64 {
    let text = http("GET", &server.url("/metrics"), &[]).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

fn hashed(server: &Server) -> u64 {
    metric(server, "cartorio_blob_bytes_hashed_total")
}

fn pull_checked(server: &Server, name_tag: &str) -> Vec<String> {
    let (tmp, m) = pull_dir(server, name_tag, &[]);
    check_dir_blobs(tmp.path(), &m);
    layer_digests(&m)
}

/// Offset of the data of the tar entry NAME.
fn entry_offset(archive: &Path, name: &str) -> u64 {
    let mut ar = tar::Archive::new(fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy() == name {
            return e.raw_file_position();
        }
    }
    panic!("{name} not in {}", archive.display());
}

/// Flips a byte in place and restores the mtime: same version, wrong bytes.
fn flip_byte_keep_version(p: &Path, offset: u64) {
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
}

/// `curl URL`: (exit code, status, body length, Content-Length).
fn curl(url: &str) -> (i32, u16, u64, Option<u64>) {
    let tmp = tempdir();
    let (h, b) = (tmp.path().join("h"), tmp.path().join("b"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-D"])
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let headers = fs::read_to_string(&h).unwrap_or_default();
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let cl = headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok());
    let len = fs::metadata(&b).map(|m| m.len()).unwrap_or(0);
    (out.status.code().unwrap_or(-1), status, len, cl)
}

/// A full pull of a local docker-archive writes no blob into the cache folder (only the
/// saved index and one empty marker per verified blob); the layers are hashed on the first
/// pull only, also after a restart.
#[test]
fn local_pull_copies_nothing_and_hashes_once() {
    e2e!();
    let tmp = tempdir();
    let archive = copy_fixture("docker-archive.tar", tmp.path());
    let cache = tmp.path().join("cache");
    let args = ["--cache-dir", s(&cache), s(&archive)];
    let server = Server::serve(&args);
    let layers = pull_checked(&server, "fixture/app:v1");
    let layer_bytes: u64 = layers
        .iter()
        .map(|d| {
            let name = format!("{}.tar", d.trim_start_matches("sha256:"));
            let mut ar = tar::Archive::new(fs::File::open(&archive).unwrap());
            ar.entries()
                .unwrap()
                .map(|e| e.unwrap())
                .find(|e| e.path().unwrap().to_string_lossy() == name)
                .map(|e| e.size())
                .unwrap()
        })
        .sum();
    let first = hashed(&server);
    assert!(
        first >= layer_bytes,
        "the first pull hashed {first} bytes, less than its layers ({layer_bytes})"
    );
    assert!(metric(&server, "cartorio_in_place_reads_total") >= layers.len() as u64);
    assert!(files_under(&cache.join("sha256")).is_empty());
    assert!(files_under(&cache.join("tmp")).is_empty());
    let markers = files_under(&cache.join("verified"));
    assert_eq!(markers.len(), layers.len(), "{markers:?}");
    assert!(markers.iter().all(|(_, len)| *len == 0));

    pull_checked(&server, "fixture/app:v1");
    assert_eq!(hashed(&server), first, "a warm pull hashed again");
    drop(server);

    let server = Server::serve(&args);
    pull_checked(&server, "fixture/app:v1");
    assert_eq!(
        hashed(&server),
        0,
        "a restarted server hashed verified blobs"
    );
    assert!(files_under(&cache.join("sha256")).is_empty());
}

/// A rewritten archive (new version: same bytes, new inode) is re-indexed and its blobs are
/// verified again before they are served without hashing.
#[test]
fn a_changed_archive_is_verified_again() {
    e2e!();
    let tmp = tempdir();
    let archive = copy_fixture("docker-archive.tar", tmp.path());
    let server = Server::serve(&["--cache-dir", "none", s(&archive)]);
    pull_checked(&server, "fixture/app:v1");
    let first = hashed(&server);
    pull_checked(&server, "fixture/app:v1");
    assert_eq!(hashed(&server), first);

    let copy = tmp.path().join("copy.tar");
    fs::copy(&archive, &copy).unwrap();
    fs::rename(&copy, &archive).unwrap();
    // Past the revalidation window (1 s by default).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pull_checked(&server, "fixture/app:v1");
    assert!(
        hashed(&server) >= 2 * first,
        "the new version was served without being verified"
    );
}

/// A local archive whose layer bytes are wrong (same version) is cut before the last byte,
/// on every request, and never recorded as verified; once fixed, it pulls.
#[test]
fn a_corrupt_local_archive_is_cut_and_never_marked_verified() {
    e2e!();
    let tmp = tempdir();
    let archive = copy_fixture("docker-archive.tar", tmp.path());
    let layer = docker_archive_digests(&archive)[0].2[0].clone();
    let at = entry_offset(
        &archive,
        &format!("{}.tar", layer.trim_start_matches("sha256:")),
    ) + 1000;
    flip_byte_keep_version(&archive, at);
    let cache = tmp.path().join("cache");
    let server = Server::serve(&["--cache-dir", s(&cache), s(&archive)]);
    let url = server.url(&format!("/v2/fixture/app/blobs/{layer}"));
    for _ in 0..2 {
        let (code, status, len, cl) = curl(&url);
        let complete = code == 0 && status == 200 && cl == Some(len);
        assert!(!complete, "a corrupt layer was served whole ({len} bytes)");
    }
    assert!(files_under(&cache.join("verified")).is_empty());
    assert!(files_under(&cache.join("sha256")).is_empty());
    assert_eq!(
        metric(&server, "cartorio_zero_copy_bytes_total"),
        0,
        "unverified bytes took the sendfile path"
    );
    let log = server.stderr();
    assert!(
        log.contains("does not match its digest") && log.contains(&layer),
        "no mismatch naming {layer} in the log:\n{log}"
    );
    flip_byte_keep_version(&archive, at);
    pull_checked(&server, "fixture/app:v1");
}

// ------------------------------------------------------------------------------------------
// The zero-copy path: verified bytes go out with sendfile(2) on plain HTTP/1.1.
// ------------------------------------------------------------------------------------------

fn zero_copied(server: &Server) -> u64 {
    metric(server, "cartorio_zero_copy_bytes_total")
}

/// A rootfs tarball of MIB MiB of random bytes: one uncompressed layer, the file itself.
fn big_rootfs(dir: &Path, mib: usize) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    let tar = dir.join("big.tar");
    sh(&format!(
        "head -c {mib}M /dev/urandom > {r}/big && tar cf {t} -C {r} . && rm -r {r}",
        r = s(&root),
        t = s(&tar),
    ));
    tar
}

/// Writes REQUESTS on one connection and reads as many responses: (status, headers, body).
fn raw_exchange(addr: &str, requests: &str, heads: &[bool]) -> Vec<(u16, String, Vec<u8>)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    conn.write_all(requests.as_bytes()).unwrap();
    let mut r = BufReader::new(conn);
    let mut out = Vec::new();
    for &head in heads {
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            headers.push_str(&line.to_ascii_lowercase());
        }
        let status = headers[9..12].parse().unwrap();
        let len: usize = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; if head { 0 } else { len }];
        r.read_exact(&mut body).unwrap();
        out.push((status, headers, body));
    }
    out
}

/// Once verified, a blob goes out with sendfile: whole, ranges (first byte, last byte, a
/// middle, a suffix) and HEAD have the right bytes and headers, and the connection is kept
/// alive after each (pipelined requests, a manifest after a blob).
#[test]
fn zero_copy_ranges_head_and_keep_alive() {
    e2e!();
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 4);
    let bytes = fs::read(&archive).unwrap();
    let size = bytes.len();
    let server = Server::serve(&["--cache-dir", "none", &format!("big={}", s(&archive))]);
    let layer = sha256(&bytes);
    let path = format!("/v2/big/blobs/{layer}");
    // First request: hashed, not zero-copy (not verified yet).
    let r = http("GET", &server.url(&path), &[]);
    assert_eq!((r.status, sha256(&r.body)), (200, layer.clone()));
    assert_eq!(
        zero_copied(&server),
        0,
        "unverified bytes took the sendfile path"
    );

    let get = |range: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n");
    let requests = [
        get(""),
        get("Range: bytes=0-0\r\n"),
        get(&format!("Range: bytes={}-{}\r\n", size - 1, size - 1)),
        get("Range: bytes=1000-200999\r\n"),
        get("Range: bytes=-4096\r\n"),
        format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"),
        "GET /v2/big/manifests/latest HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
    ]
    .concat();
    let got = raw_exchange(
        &server.addr,
        &requests,
        &[false, false, false, false, false, true, false],
    );
    assert_eq!((got[0].0, got[0].2.len()), (200, size));
    assert!(got[0].2 == bytes, "whole blob differs");
    assert_eq!((got[1].0, &got[1].2[..]), (206, &bytes[..1]));
    assert!(
        got[1]
            .1
            .contains(&format!("content-range: bytes 0-0/{size}"))
    );
    assert_eq!((got[2].0, &got[2].2[..]), (206, &bytes[size - 1..]));
    assert_eq!((got[3].0, &got[3].2[..]), (206, &bytes[1000..201000]));
    assert_eq!((got[4].0, &got[4].2[..]), (206, &bytes[size - 4096..]));
    assert_eq!(got[5].0, 200);
    assert!(got[5].1.contains(&format!("content-length: {size}")));
    assert_eq!(got[6].0, 200);
    assert!(got[6].2.starts_with(b"{"));
    let sent = (size + 1 + 1 + 200000 + 4096) as u64;
    assert_eq!(
        zero_copied(&server),
        sent,
        "not every verified byte took sendfile"
    );
}

/// A client that goes away mid-blob does not disturb the server: the next client gets the
/// whole blob, on the zero-copy path.
#[test]
fn zero_copy_client_disconnect_mid_blob() {
    e2e!();
    use std::io::{Read, Write};
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 32);
    let layer = sha256_file(&archive);
    let server = Server::serve(&["--cache-dir", "none", &format!("big={}", s(&archive))]);
    let url = server.url(&format!("/v2/big/blobs/{layer}"));
    assert_eq!(sha256(&http("GET", &url, &[]).body), layer);
    for _ in 0..3 {
        let mut c = std::net::TcpStream::connect(&server.addr).unwrap();
        write!(c, "GET /v2/big/blobs/{layer} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut some = [0u8; 65536];
        c.read_exact(&mut some).unwrap();
        drop(c);
    }
    let before = zero_copied(&server);
    let r = http("GET", &url, &[]);
    assert_eq!((r.status, sha256(&r.body)), (200, layer));
    assert!(zero_copied(&server) - before >= r.body.len() as u64);
}

/// A verified archive rewritten in place while a slow client is being sent a blob with
/// sendfile: the response is cut before its last byte, never completed with mixed bytes.
#[test]
fn zero_copy_cuts_a_blob_whose_file_changes_mid_send() {
    e2e!();
    let tmp = tempdir();
    let archive = big_rootfs(tmp.path(), 16);
    let layer = sha256_file(&archive);
    let server = Server::serve(&["--cache-dir", "none", &format!("big={}", s(&archive))]);
    let url = server.url(&format!("/v2/big/blobs/{layer}"));
    assert_eq!(sha256(&http("GET", &url, &[]).body), layer);
    let out = tmp.path().join("out");
    let mut curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "4M", "-o"])
        .arg(&out)
        .arg(&url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < 1 << 20 {
        assert!(std::time::Instant::now() < deadline, "curl got nothing");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Rewritten in place (a new mtime: a new version).
    let f = fs::OpenOptions::new().write(true).open(&archive).unwrap();
    f.write_all_at(b"changed", 4096).unwrap();
    drop(f);
    let status = curl.wait().unwrap();
    let got = fs::metadata(&out).unwrap().len();
    assert!(
        !status.success() && got < fs::metadata(&archive).unwrap().len(),
        "a blob whose file changed mid-send was delivered whole ({got} bytes)"
    );
    assert!(zero_copied(&server) > 0);
}

/// `docker-archive.tar` rewritten with gzip'ed layers (`<id>.tar.gz`, as some
/// tools write them): a plain archive holding compressed layers.
fn docker_archive_with_gzip_layers(dir: &Path) -> PathBuf {
    use std::io::{Read, Write};
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(fs::File::open(fixture("docker-archive.tar")).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        members.push((name, data));
    }
    let mut renamed = std::collections::HashMap::new();
    for (name, data) in members.iter_mut() {
        if name.ends_with(".tar") {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).unwrap();
            *data = gz.finish().unwrap();
            let new = format!("{name}.gz");
            renamed.insert(name.clone(), new.clone());
            *name = new;
        }
    }
    assert!(!renamed.is_empty(), "no layer in the fixture");
    for (name, data) in members.iter_mut() {
        if name == "manifest.json" {
            let mut m: serde_json::Value = serde_json::from_slice(data).unwrap();
            for img in m.as_array_mut().unwrap() {
                for l in img["Layers"].as_array_mut().unwrap() {
                    let new = renamed[l.as_str().unwrap()].clone();
                    *l = serde_json::Value::String(new);
                }
            }
            *data = serde_json::to_vec(&m).unwrap();
        }
    }
    let out = dir.join("gz-layers.tar");
    let mut b = tar::Builder::new(fs::File::create(&out).unwrap());
    for (name, data) in &members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
    out
}

/// Compressed layers inside a plain archive (OCI with gzip layers, a
/// docker-archive with `.tar.gz` layers) are served as stored: the bytes a
/// client gets are the gzip members of the archive, and nothing is ever
/// decompressed, neither to index the archive nor to serve it.
#[test]
fn compressed_layers_of_a_plain_archive_are_never_decompressed() {
    e2e!();
    let tmp = tempdir();
    let oci = copy_fixture("oci-archive.tar", tmp.path());
    let docker = docker_archive_with_gzip_layers(tmp.path());
    let cache = tmp.path().join("cache");
    for (archive, name_tag) in [(&oci, "fixture/oci:v1"), (&docker, "fixture/app:v1")] {
        let arg = format!("{}={}", name_tag, s(archive));
        let server = Server::serve(&["--cache-dir", s(&cache), &arg]);
        let (dir, m) = pull_dir(&server, name_tag, &[]);
        check_dir_blobs(dir.path(), &m);
        let layers = layer_digests(&m);
        assert!(!layers.is_empty());
        for d in &layers {
            let data =
                fs::read(dir.path().join("dir").join(d.trim_start_matches("sha256:"))).unwrap();
            assert_eq!(
                data.get(..2),
                Some(&[0x1f, 0x8b][..]),
                "{}: layer {d} was not served as the stored gzip member",
                archive.display()
            );
        }
        assert_eq!(
            metric(&server, "cartorio_decompressed_bytes_total"),
            0,
            "{}: a compressed layer was decompressed",
            archive.display()
        );
        // The unpacked image is right.
        let (_t, rootfs) = pull_and_unpack(&server, name_tag, &[]);
        assert_same_tree(&rootfs, &fixture("expected/app"));
        assert_eq!(metric(&server, "cartorio_decompressed_bytes_total"), 0);
    }
}
