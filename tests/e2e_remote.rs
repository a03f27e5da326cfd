//! End-to-end tests of remote sources: the real `cartorio` binary serving archives that live
//! on nginx (with and without Range), `python3 -m http.server` and s3s-fs (SigV4 checked),
//! pulled with skopeo and compared with the fixtures (`tests/common/mod.rs`); nginx's access
//! log (`tests/servers/mod.rs`) tells what cartorio read upstream.

mod common;
#[path = "servers/mod.rs"]
mod servers;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use servers::TestServer;

/// Returns from the test (after a note) when e2e tests are switched off; fails it when a tool
/// (the common ones, plus those named) is missing.
macro_rules! e2e {
    ($($tool:expr),*) => {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        if !common::e2e(&test) || !servers::e2e(&test, &[$($tool),*]) {
            return;
        }
    };
}

const KEY: &str = "cartorio-e2e-key";
const SECRET: &str = "cartorio-e2e-secret-5f0c1d2e3a4b";
const WRONG_SECRET: &str = "not-the-secret-8d7c6b5a49382716";

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Copies fixtures into `root/REL` (creating folders).
fn put(root: &Path, files: &[(&str, &str)]) {
    for (rel, fixture_name) in files {
        let dest = root.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(fixture(fixture_name), &dest).unwrap();
    }
}

/// `cartorio inspect ARG --json`.
fn inspect_json(arg: &str) -> serde_json::Value {
    let out = run(Command::new(bin()).args(["inspect", arg, "--json"]));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "inspect --json {arg} ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The image of an `inspect --json` answer served under `tag`: the one whose refs end in
/// `:tag`, or the only one.
fn inspected_image<'a>(ix: &'a serde_json::Value, tag: &str) -> &'a serde_json::Value {
    let images = ix["images"].as_array().unwrap();
    let suffix = format!(":{tag}");
    images
        .iter()
        .find(|i| {
            i["refs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().ends_with(&suffix))
        })
        .or_else(|| (images.len() == 1).then(|| &images[0]))
        .unwrap_or_else(|| panic!("no image for tag {tag} in {ix:#}"))
}

fn inspected_layers(image: &serde_json::Value) -> Vec<String> {
    image["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// Pulls NAME:TAG twice: unpacked (tree compared with `expected/WANT`) and as `dir:` (blobs
/// checked against their digests).  Returns the `dir:` manifest.
fn pull_and_check(server: &Server, name_tag: &str, want: &str) -> serde_json::Value {
    let (_tmp, rootfs) = pull_and_unpack(server, name_tag, &[]);
    assert_same_tree(&rootfs, &fixture(&format!("expected/{want}")));
    let (tmp, m) = pull_dir(server, name_tag, &[]);
    check_dir_blobs(tmp.path(), &m);
    m
}

/// Pulls NAME:TAG and checks that its manifest (by HEAD, as clients ask) and layers are those
/// `cartorio inspect` reports for the local copy of the same archive.
fn pull_matches_local(server: &Server, name: &str, tag: &str, want: &str, local: &Path) {
    let m = pull_and_check(server, &format!("{name}:{tag}"), want);
    let ix = inspect_json(local.to_str().unwrap());
    let image = inspected_image(&ix, tag);
    assert_eq!(
        layer_digests(&m),
        inspected_layers(image),
        "{name}:{tag}: layers differ from the local file's ({})",
        local.display()
    );
    let head = http(
        "HEAD",
        &server.url(&format!("/v2/{name}/manifests/{tag}")),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(head.status, 200, "HEAD {name}:{tag}");
    assert_eq!(
        head.header("docker-content-digest"),
        image["manifest"].as_str(),
        "{name}:{tag}: manifest digest differs from the local file's"
    );
}

/// One request sent as written (`curl --path-as-is`, no `..` squashing).
fn http_as_is(method: &str, url: &str) -> Response {
    let tmp = tempdir();
    let body = tmp.path().join("b");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "--max-time", "30"]);
    if method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    let out = run(cmd
        .args(["-o"])
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .arg(url));
    Response {
        status: String::from_utf8_lossy(&out.stdout).trim().parse().unwrap(),
        headers: Default::default(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

/// The first OCI error code of an error body (panics if the body is not one).
fn error_code(r: &Response) -> String {
    let v = r.json();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an OCI error body: {}", r.text()))
        .to_string()
}

/// `[image.s3]` for s3s-fs with the test key and `secret`.
fn s3_table(s3: &TestServer, secret: &str) -> String {
    format!(
        "[image.s3]\nendpoint = {}\nregion = \"us-east-1\"\naccess_key_id = {}\nsecret_access_key = {}\n",
        toml_str(&s3.endpoint()),
        toml_str(KEY),
        toml_str(secret)
    )
}

/// A legacy docker-archive built by hand: one layer holding `big.bin` of SIZE bytes of FILL
/// (`zero`: a hole, so the archive is sparse on disk), the config, and `manifest.json` at the
/// end (as skopeo writes it).  Prints the layer's diff_id, the config digest and sizes.
const BIG_ARCHIVE_PY: &str = r#"
import hashlib, json, sys, tarfile
out, size, fill, repotag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
CH = 1 << 20
def hdr(name, n, mode=0o644):
    ti = tarfile.TarInfo(name); ti.size = n; ti.mode = mode; ti.mtime = 0
    return ti.tobuf(format=tarfile.USTAR_FORMAT)
def pad(n): return b"\0" * ((512 - n % 512) % 512)
lh = hdr("big.bin", size)
tail = pad(size) + b"\0" * 1024
layer_size = len(lh) + size + len(tail)
chunk = (b"\0" if fill == "zero" else fill.encode()) * CH
full, rest = divmod(size, CH)
h = hashlib.sha256(lh)
for _ in range(full): h.update(chunk)
h.update(chunk[:rest]); h.update(tail)
diff_id = h.hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]}},
                    sort_keys=True).encode()
cfg = hashlib.sha256(config).hexdigest()
manifest = json.dumps([{"Config": cfg + ".json", "RepoTags": [repotag],
                        "Layers": [diff_id + ".tar"]}]).encode()
with open(out, "wb") as f:
    f.write(hdr(diff_id + ".tar", layer_size, 0o444)); f.write(lh)
    if fill == "zero":
        f.seek(size, 1)
    else:
        for _ in range(full): f.write(chunk)
        f.write(chunk[:rest])
    f.write(tail); f.write(pad(layer_size))
    for name, data in ((cfg + ".json", config), ("manifest.json", manifest)):
        f.write(hdr(name, len(data))); f.write(data); f.write(pad(len(data)))
    f.write(b"\0" * 1024)
print(json.dumps({"diff_id": "sha256:" + diff_id, "config": "sha256:" + cfg,
                  "layer_size": layer_size}))
"#;

/// `sha256:HEX` of a file, with coreutils (this debug-built test hashes slowly).
fn sha256sum(p: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(p));
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

struct BigArchive {
    diff_id: String,
    layer_size: u64,
}

fn big_archive(out: &Path, size: u64, fill: &str, repotag: &str) -> BigArchive {
    let o = run(Command::new("python3")
        .args(["-c", BIG_ARCHIVE_PY])
        .arg(out)
        .args([&size.to_string(), fill, repotag]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    BigArchive {
        diff_id: v["diff_id"].as_str().unwrap().to_string(),
        layer_size: v["layer_size"].as_u64().unwrap(),
    }
}

/// GET a manifest as skopeo would; panics unless 200.
fn get_manifest(server: &Server, name: &str, reference: &str) -> serde_json::Value {
    let r = http(
        "GET",
        &server.url(&format!("/v2/{name}/manifests/{reference}")),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(r.status, 200, "GET {name}:{reference}: {}", r.text());
    r.json()
}

// ------------------------------------------------------------------------------------------
// 1. Every format from nginx, Range honoured
// ------------------------------------------------------------------------------------------

/// (fixture, repository, tag, expected tree)
const FORMATS: &[(&str, &str, &str, &str)] = &[
    ("docker-archive.tar", "fx/docker", "v1", "app"),
    ("oci-archive.tar", "fx/oci", "v1", "app"),
    ("rootfs.tar", "fx/rootfs", "latest", "rootfs"),
    ("rootfs.tar.gz", "fx/rootfs-gz", "latest", "rootfs"),
    ("rootfs.tar.zst", "fx/rootfs-zst", "latest", "rootfs"),
    ("docker-archive.tar.gz", "fx/docker-gz", "v1", "app"),
    ("concourse.tar", "fx/concourse", "latest", "rootfs"),
    ("multi-image.tar", "fx/multi", "v1", "app"),
    ("multi-image.tar", "fx/multi", "v2", "other"),
];

#[test]
fn nginx_serves_every_format() {
    e2e!("nginx");
    let root = tempdir();
    let files: BTreeSet<&str> = FORMATS.iter().map(|f| f.0).collect();
    for f in &files {
        put(root.path(), &[(&format!("images/{f}"), f)]);
    }
    let nginx = TestServer::nginx(root.path());
    let tmp = tempdir();
    let mut body = String::new();
    let mut names = BTreeSet::new();
    for (file, name, _, _) in FORMATS {
        if names.insert(*name) {
            body += &format!(
                "[[image]]\nname = \"{name}\"\nsource = {}\n\n",
                toml_str(&nginx.url(&format!("images/{file}")))
            );
        }
    }
    let s = Server::proxy(&write_config(tmp.path(), &body));
    for (file, name, tag, want) in FORMATS {
        pull_matches_local(&s, name, tag, want, &fixture(file));
    }
    // Range was used and honoured: every ranged request got a 206.
    let served = nginx.served();
    let ranged: Vec<_> = served.iter().filter(|l| !l.range.is_empty()).collect();
    assert!(!ranged.is_empty(), "no range request reached nginx");
    assert!(
        ranged.iter().all(|l| l.status == 206),
        "ranged requests not answered 206: {ranged:#?}"
    );
    assert!(
        !s.stderr().contains("no range support"),
        "fell back to streaming on a range-capable server:\n{}",
        s.stderr()
    );
}

// ------------------------------------------------------------------------------------------
// 2. Range-less upstreams
// ------------------------------------------------------------------------------------------

const RANGELESS: &[(&str, &str, &str, &str)] = &[
    ("docker-archive.tar", "fx/docker", "v1", "app"),
    ("oci-archive.tar", "fx/oci", "v1", "app"),
    ("rootfs.tar.gz", "fx/rootfs-gz", "latest", "rootfs"),
];

fn pulls_from_rangeless(upstream: &TestServer, cache: &str) {
    let tmp = tempdir();
    let mut body = cache.to_string();
    for (file, name, _, _) in RANGELESS {
        body += &format!(
            "[[image]]\nname = \"{name}\"\nsource = {}\n\n",
            toml_str(&upstream.url(&format!("images/{file}")))
        );
    }
    let s = Server::proxy(&write_config(tmp.path(), &body));
    for (file, name, tag, want) in RANGELESS {
        pull_matches_local(&s, name, tag, want, &fixture(file));
    }
    let log = s.stderr();
    for (file, _, _, _) in RANGELESS {
        assert!(
            log.lines()
                .any(|l| l.contains("no range support") && l.contains(file)),
            "no streaming fallback logged for {file}:\n{log}"
        );
    }
}

#[test]
fn rangeless_upstreams() {
    e2e!("nginx");
    let root = tempdir();
    for (file, _, _, _) in RANGELESS {
        put(root.path(), &[(&format!("images/{file}"), file)]);
    }
    let nginx = TestServer::nginx_no_ranges(root.path());
    pulls_from_rangeless(&nginx, "");
    assert!(
        nginx.served().iter().all(|l| l.status != 206),
        "max_ranges 0 answered a 206"
    );
    let python = TestServer::python(root.path());
    pulls_from_rangeless(&python, "");
    // Without a disk cache, every blob costs a pass from the start of the archive.
    pulls_from_rangeless(&python, "[cache]\ndir = \"none\"\n\n");
}

// ------------------------------------------------------------------------------------------
// 3. S3 with signature checking
// ------------------------------------------------------------------------------------------

const S3_IMAGES: &[(&str, &str, &str, &str)] = &[
    ("docker-archive.tar", "fx/docker", "v1", "app"),
    ("oci-archive.tar", "fx/oci", "v1", "app"),
    ("rootfs.tar.gz", "fx/rootfs-gz", "latest", "rootfs"),
];

fn s3_config(s3: &TestServer, secret: &str) -> String {
    let mut body = String::new();
    for (file, name, _, _) in S3_IMAGES {
        body += &format!(
            "[[image]]\nname = \"{name}\"\nsource = \"s3://fixtures/images/{file}\"\n{}\n",
            s3_table(s3, secret)
        );
    }
    body
}

#[test]
fn s3_with_signature_checking() {
    e2e!("s3s-fs");
    let root = tempdir();
    for (file, _, _, _) in S3_IMAGES {
        put(root.path(), &[(&format!("fixtures/images/{file}"), file)]);
    }
    let s3 = TestServer::s3s(root.path(), KEY, SECRET);

    // Keys in images.toml.
    let tmp = tempdir();
    let s = Server::proxy(&write_config(tmp.path(), &s3_config(&s3, SECRET)));
    for (file, name, tag, want) in S3_IMAGES {
        pull_matches_local(&s, name, tag, want, &fixture(file));
    }
    drop(s);

    // Keys and endpoint from the standard AWS environment, no config file.
    let endpoint = s3.endpoint();
    let env = [
        ("AWS_ACCESS_KEY_ID", KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
    ];
    let s = Server::try_start_env(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "fx/docker=s3://fixtures/images/docker-archive.tar",
        ],
        &env,
    )
    .unwrap_or_else(|(st, err)| panic!("serve with AWS_* did not start ({st}):\n{err}"));
    pull_matches_local(&s, "fx/docker", "v1", "app", &fixture("docker-archive.tar"));
    drop(s);

    // A wrong secret: cartorio checks static sources before it listens, so it refuses to
    // start, naming the source (the config line and the bucket/key), never the secret.
    let bad = tempdir();
    match Server::try_start(&[
        "proxy",
        "--config",
        write_config(bad.path(), &s3_config(&s3, WRONG_SECRET))
            .to_str()
            .unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]) {
        Ok(s) => panic!("cartorio started with a wrong S3 secret:\n{}", s.stderr()),
        Err((_, stderr)) => {
            assert!(
                stderr.contains("s3://fixtures/images/docker-archive.tar")
                    && stderr.contains("images.toml:"),
                "the refusal does not name the source:\n{stderr}"
            );
            assert!(stderr.contains("denied"), "{stderr}");
            assert!(
                !stderr.contains(WRONG_SECRET) && !stderr.contains(SECRET),
                "the secret leaked into stderr:\n{stderr}"
            );
        }
    }
    // The same with the environment.
    match Server::try_start_env(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "fx/docker=s3://fixtures/images/docker-archive.tar",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", KEY),
            ("AWS_SECRET_ACCESS_KEY", WRONG_SECRET),
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_REGION", "us-east-1"),
        ],
    ) {
        Ok(s) => panic!("cartorio started with a wrong S3 secret:\n{}", s.stderr()),
        Err((_, stderr)) => {
            assert!(
                stderr.contains("s3://fixtures/images/docker-archive.tar"),
                "{stderr}"
            );
            assert!(!stderr.contains(WRONG_SECRET), "{stderr}");
        }
    }
    // A templated route is only resolved on request: the server starts and the manifest
    // request gets a 502 OCI error that names the object, not the secret.
    let route = tempdir();
    let s = Server::proxy(&write_config(
        route.path(),
        &format!(
            "[[image]]\nname = \"builds/{{repo}}\"\nsource = \"s3://fixtures/images/{{repo}}.tar\"\n{}",
            s3_table(&s3, WRONG_SECRET)
        ),
    ));
    let r = http(
        "GET",
        &s.url("/v2/builds/docker-archive/manifests/v1"),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(r.status, 502, "wrong secret: {}", r.text());
    assert_eq!(error_code(&r), "UNKNOWN");
    // The answer names the image, never where its archive lives.
    assert!(
        r.text().contains("builds/docker-archive:v1")
            && !r.text().contains("s3://fixtures/images/docker-archive.tar"),
        "{}",
        r.text()
    );
    for leak in [WRONG_SECRET, SECRET] {
        assert!(!r.text().contains(leak), "secret in the body: {}", r.text());
        assert!(
            !s.stderr().contains(leak),
            "secret in stderr:\n{}",
            s.stderr()
        );
    }
}

// ------------------------------------------------------------------------------------------
// 4. Lazy reads
// ------------------------------------------------------------------------------------------

#[test]
fn manifest_of_a_1gib_archive_reads_little() {
    e2e!("nginx");
    let root = tempdir();
    let path = root.path().join("big.tar");
    let big = big_archive(&path, 1 << 30, "zero", "big/image:v1");
    let nginx = TestServer::nginx(root.path());
    let url = nginx.url("big.tar");

    let ix = inspect_json(&url);
    let read = ix["bytes_read"].as_u64().unwrap();
    assert!(
        read <= 1 << 20,
        "inspect read {read} bytes of a 1 GiB archive"
    );
    assert_eq!(
        inspected_layers(&ix["images"][0]),
        vec![big.diff_id.clone()]
    );

    let before = nginx.bytes_served();
    let tmp = tempdir();
    let s = Server::proxy(&write_config(
        tmp.path(),
        &format!("[[image]]\nname = \"big\"\nsource = {}\n", toml_str(&url)),
    ));
    let m = get_manifest(&s, "big", "v1");
    assert_eq!(layer_digests(&m), vec![big.diff_id.clone()]);
    assert_eq!(m["layers"][0]["size"].as_u64(), Some(big.layer_size));
    let c = skopeo_config(&s, "big:v1");
    assert_eq!(
        c["rootfs"]["diff_ids"][0].as_str(),
        Some(big.diff_id.as_str())
    );
    let served = nginx.bytes_served() - before;
    assert!(
        served <= 1 << 20,
        "{served} bytes left nginx for the manifest of a 1 GiB archive: {:#?}",
        nginx.served()
    );
    note(&format!(
        "1 GiB archive: inspect read {read} bytes, the server {served} bytes"
    ));
    drop(s);
    drop(nginx);
    std::fs::remove_file(&path).unwrap();
}

// ------------------------------------------------------------------------------------------
// 5. The archive replaced while a blob is being pulled
// ------------------------------------------------------------------------------------------

fn replace_mid_pull(cache_dir: Option<&str>) {
    const SIZE: u64 = 200 << 20;
    let root = tempdir();
    let path = root.path().join("big.tar");
    let old = big_archive(&path, SIZE, "A", "big:v1");
    let nginx = TestServer::nginx(root.path());
    let tmp = tempdir();
    let cache = match cache_dir {
        Some(d) => format!("[cache]\ndir = {}\n\n", toml_str(d)),
        None => String::new(),
    };
    let s = Server::proxy(&write_config(
        tmp.path(),
        &format!(
            "revalidate = \"200ms\"\n{cache}[[image]]\nname = \"big\"\nsource = {}\ntags = [\"v1\"]\n",
            toml_str(&nginx.url("big.tar"))
        ),
    ));
    let m = get_manifest(&s, "big", "v1");
    assert_eq!(layer_digests(&m), vec![old.diff_id.clone()]);

    // A slow client: 50 MB/s, about 4 s for the layer.
    let out = tmp.path().join("blob");
    let mut curl = Command::new("curl")
        .args(["-sS", "--limit-rate", "50M", "--max-time", "60", "-o"])
        .arg(&out)
        .arg(s.url(&format!("/v2/big/blobs/{}", old.diff_id)))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < 30 << 20 {
        assert!(Instant::now() < deadline, "the blob fetch did not progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Replaced by another image (another fill, another size) as an uploader does it.
    let new_path = root.path().join("big.tar.new");
    let new = big_archive(&new_path, SIZE + 4096, "B", "big:v1");
    std::fs::rename(&new_path, &path).unwrap();
    let got = std::fs::metadata(&out).map_or(0, |m| m.len());
    assert!(
        got < old.layer_size,
        "the fetch ended before the replacement"
    );

    let status = curl.wait().unwrap();
    let len = std::fs::metadata(&out).map_or(0, |m| m.len());
    if status.success() && len == old.layer_size {
        assert_eq!(
            sha256sum(&out),
            old.diff_id,
            "a complete body that is not the old blob"
        );
        note(&format!(
            "replace mid-pull (cache {cache_dir:?}): the fetch completed with the old blob"
        ));
    } else {
        assert!(
            len < old.layer_size || sha256sum(&out) != old.diff_id,
            "curl failed on a whole, correct body"
        );
        assert!(!status.success() || len != old.layer_size);
        note(&format!(
            "replace mid-pull (cache {cache_dir:?}): the fetch failed ({status}) after {len} bytes"
        ));
    }
    std::fs::remove_file(&out).unwrap();

    // Past `revalidate`, the tag is the new image; the old layer is no longer served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let m = get_manifest(&s, "big", "v1");
        if layer_digests(&m) == vec![new.diff_id.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old manifest 10 s after the replacement: {m}"
        );
    }
    let r = http(
        "GET",
        &s.url(&format!("/v2/big/blobs/{}", old.diff_id)),
        &[],
    );
    assert_eq!(r.status, 404, "old blob after the replacement");
    assert_eq!(error_code(&r), "BLOB_UNKNOWN");
    let (dir, m) = pull_dir(&s, "big:v1", &[]);
    assert_eq!(layer_digests(&m), vec![new.diff_id.clone()]);
    let layer = new.diff_id.strip_prefix("sha256:").unwrap();
    assert_eq!(sha256sum(&dir.path().join("dir").join(layer)), new.diff_id);
}

#[test]
fn replace_mid_pull_without_disk_cache() {
    e2e!("nginx");
    // Without a disk tier the upstream read goes at the client's pace.
    replace_mid_pull(Some("none"));
}

#[test]
fn replace_mid_pull_with_disk_cache() {
    e2e!("nginx");
    replace_mid_pull(None);
}

// ------------------------------------------------------------------------------------------
// 6, 7. Templated routes
// ------------------------------------------------------------------------------------------

/// builds/app/1 (docker archive), builds/app/3 (OCI archive), builds/team/web/2 (rootfs).
fn builds_tree(root: &Path) {
    put(
        root,
        &[
            ("builds/app/1/image.tar", "docker-archive.tar"),
            ("builds/app/3/image.tar", "oci-archive.tar"),
            ("builds/team/web/2/image.tar", "rootfs.tar.gz"),
        ],
    );
}

fn route_config(dir: &Path, source: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[[image]]\nname = \"builds/{{repo}}\"\nsource = {}\n{extra}",
            toml_str(source)
        ),
    )
}

fn pulls_templated(s: &Server) {
    pull_matches_local(s, "builds/app", "1", "app", &fixture("docker-archive.tar"));
    pull_matches_local(
        s,
        "builds/team/web",
        "2",
        "rootfs",
        &fixture("rootfs.tar.gz"),
    );
}

fn tags_of(s: &Server, name: &str) -> Vec<String> {
    let r = http("GET", &s.url(&format!("/v2/{name}/tags/list")), &[]);
    assert_eq!(r.status, 200, "tags/list {name}: {}", r.text());
    let v = r.json();
    assert_eq!(v["name"], name);
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// Names and tags outside the grammar: each is refused without asking the upstream.
fn hostile_requests(s: &Server) {
    let long_name = format!("/v2/builds/{}/manifests/1", "a".repeat(300));
    let long_tag = format!("/v2/builds/app/manifests/{}", "t".repeat(200));
    for path in [
        "/v2/builds/..%2f..%2fetc/manifests/1",
        "/v2/builds/app/manifests/..%2f1",
        "/v2/builds/%2e%2e/manifests/1",
        "/v2/builds/%2E%2E/manifests/1",
        "/v2/builds/APP/manifests/1",
        "/v2/builds/app/../../etc/manifests/1",
        "/v2/builds/app/manifests/..",
        "/v2/builds/app/manifests/%2e%2e",
        "/v2/builds/app/tags/list/../../..%2f",
        "/v2/builds/..%2fapp/tags/list",
        long_name.as_str(),
        long_tag.as_str(),
    ] {
        for method in ["GET", "HEAD"] {
            let r = http_as_is(method, &s.url(path));
            assert!(
                r.status == 400 || r.status == 404,
                "{method} {path}: {} {}",
                r.status,
                r.text()
            );
            if method == "GET" {
                let code = error_code(&r);
                if r.status == 400 {
                    assert_eq!(code, "NAME_INVALID", "{path}");
                } else {
                    assert!(
                        ["NAME_UNKNOWN", "MANIFEST_UNKNOWN", "NOT_FOUND"].contains(&code.as_str()),
                        "{path}: {code}"
                    );
                }
            }
        }
    }
}

#[test]
fn templated_routes_on_s3() {
    e2e!("s3s-fs");
    let root = tempdir();
    let bucket = root.path().join("cibuilds");
    builds_tree(&bucket);
    // Keys that fit no valid name and tag, or not the template: not images.
    put(
        &bucket,
        &[
            ("builds/UPPER/1/image.tar", "docker-archive.tar"),
            ("builds/app/.v1/image.tar", "docker-archive.tar"),
            ("builds/app/4/other.tar", "docker-archive.tar"),
            ("builds/image.tar", "docker-archive.tar"),
        ],
    );
    let s3 = TestServer::s3s(root.path(), KEY, SECRET);
    let tmp = tempdir();
    let s = Server::proxy(&route_config(
        tmp.path(),
        "s3://cibuilds/builds/{repo}/{tag}/image.tar",
        &s3_table(&s3, SECRET),
    ));
    pulls_templated(&s);
    // S3 can list: tags and repositories come from the bucket, pulled or not.
    assert_eq!(tags_of(&s, "builds/app"), ["1", "3"]);
    assert_eq!(tags_of(&s, "builds/team/web"), ["2"]);
    let r = http("GET", &s.url("/v2/_catalog"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!(["builds/app", "builds/team/web"])
    );
    // A tag found by listing is pullable.
    pull_matches_local(&s, "builds/app", "3", "app", &fixture("oci-archive.tar"));
    hostile_requests(&s);
    s.stderr()
        .lines()
        .filter(|l| l.contains("s3://"))
        .for_each(|l| {
            assert!(
                !l.contains("..") && !l.contains("%2") && !l.contains("APP"),
                "a hostile name reached the S3 source: {l}"
            )
        });
}

#[test]
fn templated_routes_on_nginx() {
    e2e!("nginx");
    let root = tempdir();
    builds_tree(root.path());
    let nginx = TestServer::nginx(root.path());
    let tmp = tempdir();
    let source = format!("{}/builds/{{repo}}/{{tag}}/image.tar", nginx.endpoint());
    let s = Server::proxy(&route_config(tmp.path(), &source, ""));
    pulls_templated(&s);
    // HTTP cannot list: the tags pulled so far.
    let tags = tags_of(&s, "builds/app");
    assert!(tags.contains(&"1".to_string()), "{tags:?}");
    assert!(tags_of(&s, "builds/team/web").contains(&"2".to_string()));
    let r = http("GET", &s.url("/v2/_catalog"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());

    let before = nginx.served().len();
    hostile_requests(&s);
    let after = nginx.served();
    for l in &after {
        let lower = l.request.to_ascii_lowercase();
        assert!(
            !l.request.contains("..")
                && !lower.contains("%2e")
                && !lower.contains("%2f")
                && !l.request.contains("APP")
                && !l.request.contains("aaaaaaaaaa")
                && !l.request.contains("tttttttttt"),
            "a hostile name or tag reached nginx: {l:?}"
        );
    }
    assert_eq!(
        after.len(),
        before,
        "hostile requests reached nginx: {:#?}",
        &after[before..]
    );
}

#[test]
fn missing_upstream_objects() {
    e2e!("nginx", "s3s-fs");
    let root = tempdir();
    builds_tree(&root.path().join("cibuilds"));
    std::fs::create_dir_all(root.path().join("cibuilds/builds/empty")).unwrap();
    let s3 = TestServer::s3s(root.path(), KEY, SECRET);
    let tmp = tempdir();
    let on_s3 = Server::proxy(&route_config(
        tmp.path(),
        "s3://cibuilds/builds/{repo}/{tag}/image.tar",
        &s3_table(&s3, SECRET),
    ));
    let www = tempdir();
    builds_tree(www.path());
    let nginx = TestServer::nginx(www.path());
    let tmp2 = tempdir();
    let on_nginx = Server::proxy(&route_config(
        tmp2.path(),
        &format!("{}/builds/{{repo}}/{{tag}}/image.tar", nginx.endpoint()),
        "",
    ));
    for s in [&on_s3, &on_nginx] {
        for path in ["/v2/builds/app/manifests/9", "/v2/builds/ghost/manifests/1"] {
            let r = http("GET", &s.url(path), &[ACCEPT_MANIFESTS]);
            assert_eq!(r.status, 404, "{path}: {}", r.text());
            assert_eq!(error_code(&r), "MANIFEST_UNKNOWN", "{path}");
            let h = http("HEAD", &s.url(path), &[ACCEPT_MANIFESTS]);
            assert_eq!(h.status, 404, "HEAD {path}");
        }
        // The existing tag next to them still works.
        get_manifest(s, "builds/app", "1");
    }
    for name in ["builds/ghost", "builds/empty"] {
        let r = http("GET", &on_s3.url(&format!("/v2/{name}/tags/list")), &[]);
        assert_eq!(r.status, 404, "tags/list {name}: {}", r.text());
        assert_eq!(error_code(&r), "NAME_UNKNOWN", "{name}");
    }
    let r = http("GET", &on_nginx.url("/v2/builds/ghost/tags/list"), &[]);
    assert_eq!(r.status, 404, "tags/list on nginx: {}", r.text());
    assert_eq!(error_code(&r), "NAME_UNKNOWN");
}

/// `cartorio_source_listings_total` from `/metrics`.
fn listings(s: &Server) -> u64 {
    let r = http("GET", &s.url("/metrics"), &[]);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("cartorio_source_listings_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("cartorio_source_listings_total in /metrics")
}

/// Unauthenticated requests cannot drive unbounded upstream work: `_catalog` and tags/list
/// reuse one listing per prefix for 30 s (`LIST_TTL`), concurrent ones share it, and a
/// templated name whose archive is not there costs one upstream stat per 10 s
/// (`MISSING_TTL`), however often it is asked. Allowed counts grow with the time the test
/// took, so a slow machine does not fail it.
#[test]
fn upstream_work_is_bounded() {
    e2e!("nginx", "s3s-fs");
    const N: usize = 20;
    // S3: listings.
    let root = tempdir();
    builds_tree(&root.path().join("cibuilds"));
    let s3 = TestServer::s3s(root.path(), KEY, SECRET);
    let tmp = tempdir();
    let on_s3 = Server::proxy(&route_config(
        tmp.path(),
        "s3://cibuilds/builds/{repo}/{tag}/image.tar",
        &s3_table(&s3, SECRET),
    ));
    let started = Instant::now();
    let before = listings(&on_s3);
    for _ in 0..N {
        let r = http("GET", &on_s3.url("/v2/_catalog"), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(tags_of(&on_s3, "builds/app"), ["1", "3"]);
        let r = http("GET", &on_s3.url("/v2/builds/ghost/tags/list"), &[]);
        assert_eq!(r.status, 404, "{}", r.text());
    }
    // Concurrent listings of a new prefix share one.
    std::thread::scope(|t| {
        for _ in 0..8 {
            t.spawn(|| assert_eq!(tags_of(&on_s3, "builds/team/web"), ["2"]));
        }
    });
    let windows = 1 + started.elapsed().as_secs() / 30;
    let sent = listings(&on_s3) - before;
    note(&format!(
        "upstream work: {} _catalog and {} tags/list requests (4 prefixes) cost {sent} S3 listings",
        N,
        2 * N + 8
    ));
    assert!(sent >= 4, "the four prefixes were listed: {sent}");
    assert!(
        sent <= 4 * windows,
        "{sent} listings for 4 prefixes in {windows} TTL window(s)"
    );

    // HTTP: stats of names that are not there.
    let www = tempdir();
    builds_tree(www.path());
    let nginx = TestServer::nginx(www.path());
    let tmp2 = tempdir();
    let on_nginx = Server::proxy(&route_config(
        tmp2.path(),
        &format!("{}/builds/{{repo}}/{{tag}}/image.tar", nginx.endpoint()),
        "",
    ));
    let names: Vec<String> = (0..5).map(|i| format!("builds/ghost{i}")).collect();
    let mark = nginx.served().len();
    let started = Instant::now();
    for _ in 0..N {
        for name in &names {
            let r = http(
                "GET",
                &on_nginx.url(&format!("/v2/{name}/manifests/1")),
                &[ACCEPT_MANIFESTS],
            );
            assert_eq!(r.status, 404, "{name}: {}", r.text());
        }
    }
    let windows = 1 + started.elapsed().as_secs() / 10;
    // nginx logs a request when it is done: wait for at least one per name.
    let served = nginx.served_until(|l| {
        names.iter().all(|n| {
            l[mark..]
                .iter()
                .any(|s| s.request.contains(&format!("/{n}/")))
        })
    });
    for name in &names {
        let asked = served[mark..]
            .iter()
            .filter(|s| s.request.contains(&format!("/{name}/")))
            .count() as u64;
        assert!(
            asked <= windows,
            "{name}: {asked} upstream requests for {N} pulls in {windows} window(s)"
        );
    }
    note(&format!(
        "upstream work: {} pulls of {} missing names cost {} nginx requests",
        N * names.len(),
        names.len(),
        served.len() - mark
    ));
    // A real image next to them still pulls.
    get_manifest(&on_nginx, "builds/app", "1");
}

// ------------------------------------------------------------------------------------------
// 8. Cold and warm pulls
// ------------------------------------------------------------------------------------------

/// Where each layer's bytes start in a docker archive, and their sizes.
fn layer_spans(archive: &Path) -> Vec<(u64, u64)> {
    let mut offsets = std::collections::BTreeMap::new();
    let mut manifest = None;
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "manifest.json" {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            manifest = Some(serde_json::from_slice::<serde_json::Value>(&v).unwrap());
        } else if e.header().entry_type().is_file() {
            offsets.insert(name, (e.raw_file_position(), e.size()));
        }
    }
    let manifest = manifest.expect("manifest.json");
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| offsets[l.as_str().unwrap()])
        .collect()
}

/// Whether an nginx request read a whole layer (index reads only sniff a layer's first
/// bytes): a range from a layer's start to its end or the file's, or the whole file.
fn reads_a_layer(l: &servers::Served, spans: &[(u64, u64)]) -> bool {
    spans.iter().any(|(o, n)| {
        l.range == format!("bytes={o}-{}", o + n - 1) || l.range == format!("bytes={o}-")
    }) || (l.request.starts_with("GET") && l.range.is_empty())
}

fn blob_reads(
    lines: &[servers::Served],
    from: usize,
    spans: &[(u64, u64)],
) -> Vec<servers::Served> {
    lines[from.min(lines.len())..]
        .iter()
        .filter(|l| reads_a_layer(l, spans))
        .cloned()
        .collect()
}

#[test]
fn warm_pulls_read_no_blob_upstream() {
    e2e!("nginx");
    let root = tempdir();
    put(
        root.path(),
        &[("images/docker-archive.tar", "docker-archive.tar")],
    );
    let spans = layer_spans(&fixture("docker-archive.tar"));
    let nginx = TestServer::nginx(root.path());
    let cache = tempdir();
    let arg = format!("fx/app={}", nginx.url("images/docker-archive.tar"));
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--cache-dir",
        cache.path().to_str().unwrap(),
        arg.as_str(),
    ];

    let s = Server::start(&args);
    let mark = nginx.served().len();
    pull_and_check(&s, "fx/app:v1", "app");
    // nginx logs a request when it is done, which may be a moment after the client.
    let cold = nginx.served_until(|l| blob_reads(l, mark, &spans).len() >= spans.len());
    let cold = blob_reads(&cold, mark, &spans);
    assert_eq!(
        cold.len(),
        spans.len(),
        "the cold pull should read each layer once: {cold:#?}"
    );
    let layer_bytes: u64 = cold.iter().map(|l| l.body_bytes).sum();
    assert_eq!(layer_bytes, spans.iter().map(|s| s.1).sum::<u64>());

    // The same server again: from the cache.
    let mark = nginx.served().len();
    pull_and_check(&s, "fx/app:v1", "app");
    std::thread::sleep(Duration::from_millis(300));
    let warm = blob_reads(&nginx.served(), mark, &spans);
    assert!(
        warm.is_empty(),
        "second pull read layers upstream: {warm:#?}"
    );
    drop(s);

    // A new server on the same cache folder: it indexes the archive again (header reads),
    // and reads no layer.
    let mark = nginx.served().len();
    let s = Server::start(&args);
    pull_and_check(&s, "fx/app:v1", "app");
    std::thread::sleep(Duration::from_millis(300));
    let after = nginx.served();
    let restarted = blob_reads(&after, mark, &spans);
    assert!(
        restarted.is_empty(),
        "pull after a restart read layers upstream: {restarted:#?}"
    );
    note(&format!(
        "warm pulls: the cold pull read {layer_bytes} layer bytes, the warm ones 0; \
         after the restart nginx served {} bytes in {} requests (indexing and revalidation)",
        after[mark..].iter().map(|l| l.body_bytes).sum::<u64>(),
        after.len() - mark
    ));
}

// ------------------------------------------------------------------------------------------
// The upstream gone
// ------------------------------------------------------------------------------------------

#[test]
fn upstream_down() {
    e2e!("nginx");
    let root = tempdir();
    put(
        root.path(),
        &[
            ("images/docker-archive.tar", "docker-archive.tar"),
            ("images/multi-image.tar", "multi-image.tar"),
        ],
    );
    let nginx = TestServer::nginx(root.path());
    let tmp = tempdir();
    let s = Server::proxy(&write_config(
        tmp.path(),
        &format!(
            "revalidate = \"100ms\"\n\
             [[image]]\nname = \"fx/app\"\nsource = {}\n\
             [[image]]\nname = \"fx/other\"\nsource = {}\nselect = \"v2\"\ntags = [\"v2\"]\n",
            toml_str(&nginx.url("images/docker-archive.tar")),
            toml_str(&nginx.url("images/multi-image.tar")),
        ),
    ));
    // fx/app is pulled (its blobs land in the cache), fx/other only indexed.
    let (_dir, pulled) = pull_dir(&s, "fx/app:v1", &[]);
    let other = get_manifest(&s, "fx/other", "v2");
    drop(nginx);
    std::thread::sleep(Duration::from_millis(300));

    // The tag cannot be checked: the source failed, a gateway error naming
    // the image (the log names the source).
    let r = http(
        "GET",
        &s.url("/v2/fx/app/manifests/v1"),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(error_code(&r), "UNKNOWN");
    assert!(
        r.text().contains("fx/app:v1") && !r.text().contains("images/docker-archive.tar"),
        "{}",
        r.text()
    );

    // Blobs already pulled are still served, whole, from the cache.
    for d in layer_digests(&pulled) {
        let r = http("GET", &s.url(&format!("/v2/fx/app/blobs/{d}")), &[]);
        assert_eq!(r.status, 200, "cached blob {d} with the upstream down");
        assert_eq!(sha256(&r.body), d);
    }
    // A blob never fetched.
    let d = &layer_digests(&other)[1];
    let url = s.url(&format!("/v2/fx/other/blobs/{d}"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // The source fails before any byte: a gateway error a client can retry,
    // not a 200 cut short.
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        code, "502",
        "uncached blob with the upstream down: curl {}",
        out.status
    );
}
