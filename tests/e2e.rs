//! End-to-end tests: the real `cartorio` binary, real clients (skopeo, umoci, curl, containerd)
//! and archives made by real tools (`tests/fixtures/make.sh`).  See `tests/common/mod.rs` for
//! how fixtures are generated and how to skip these tests (`CARTORIO_SKIP_E2E=1`).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Returns from the test (after a note) when e2e tests are switched off.
macro_rules! e2e {
    () => {
        if !common::e2e(std::thread::current().name().unwrap_or("?")) {
            return;
        }
    };
}

/// Pull NAME:TAG with skopeo into an OCI layout, unpack it with umoci and compare the rootfs
/// with `expected/WANT`.
fn assert_pulls_as(server: &Server, name_tag: &str, want: &str, extra: &[&str]) {
    let (_tmp, rootfs) = pull_and_unpack(server, name_tag, extra);
    assert_same_tree(&rootfs, &fixture(&format!("expected/{want}")));
}

/// Pull with `dir:` and check the blobs hash to their names; returns the manifest.
fn pull_dir_checked(server: &Server, name_tag: &str, extra: &[&str]) -> serde_json::Value {
    let (tmp, m) = pull_dir(server, name_tag, extra);
    check_dir_blobs(tmp.path(), &m);
    m
}

/// The manifest digest the server announces (HEAD, as containerd asks) — checked against the
/// bytes of a GET and against Content-Length.
fn manifest_digest(server: &Server, name: &str, reference: &str) -> String {
    let url = server.url(&format!("/v2/{name}/manifests/{reference}"));
    let head = http("HEAD", &url, &[ACCEPT_MANIFESTS]);
    assert_eq!(head.status, 200, "HEAD {url}: {}", head.status);
    let digest = head
        .header("docker-content-digest")
        .expect("HEAD manifest without Docker-Content-Digest")
        .to_string();
    let get = http("GET", &url, &[ACCEPT_MANIFESTS]);
    assert_eq!(get.status, 200, "GET {url}: {} {}", get.status, get.text());
    assert_eq!(
        sha256(&get.body),
        digest,
        "manifest bytes do not hash to Docker-Content-Digest"
    );
    assert_eq!(get.header("docker-content-digest"), Some(digest.as_str()));
    let len: usize = head
        .header("content-length")
        .expect("HEAD manifest without Content-Length")
        .parse()
        .unwrap();
    assert_eq!(
        len,
        get.body.len(),
        "HEAD Content-Length differs from the GET body length"
    );
    let ct = get.header("content-type").unwrap_or_default();
    let mt = get.json()["mediaType"].as_str().map(str::to_string);
    if let Some(mt) = mt {
        assert_eq!(ct, mt, "Content-Type differs from the manifest's mediaType");
    }
    digest
}

// ------------------------------------------------------------------------------------------
// Formats
// ------------------------------------------------------------------------------------------

#[test]
fn docker_archive_tags_from_archive() {
    e2e!();
    let archive = fixture("docker-archive.tar");
    let s = Server::serve(&[archive.to_str().unwrap()]);
    // RepoTags docker.io/fixture/app:v1 -> fixture/app:v1
    assert_pulls_as(&s, "fixture/app:v1", "app", &[]);
    // dir: keeps the layers as served: they must be the archive's own bytes
    let m = pull_dir_checked(&s, "fixture/app:v1", &[]);
    let images = docker_archive_digests(&archive);
    let (_, config, layers) = &images[0];
    assert_eq!(
        &layer_digests(&m),
        layers,
        "served layers differ from the archive's layer files"
    );
    assert_eq!(
        &config_digest(&m),
        config,
        "served config differs from the archive's config file"
    );
    manifest_digest(&s, "fixture/app", "v1");
}

#[test]
fn docker_archive_with_name() {
    e2e!();
    let archive = fixture("docker-archive.tar");
    let a = archive.to_str().unwrap();
    // NAME:TAG=PATH and NAME=PATH (NAME without tag keeps the archive's tags)
    let s = Server::serve(&[&format!("renamed/app:t1={a}"), &format!("plain={a}")]);
    assert_pulls_as(&s, "renamed/app:t1", "app", &[]);
    let m = pull_dir_checked(&s, "plain:v1", &[]);
    assert_eq!(layer_digests(&m), docker_archive_digests(&archive)[0].2);
}

#[test]
fn docker_archive_gzip_and_zstd_compressed() {
    e2e!();
    let plain = docker_archive_digests(&fixture("docker-archive.tar"));
    for (name, file) in [
        ("gz", "docker-archive.tar.gz"),
        ("zst", "docker-archive.tar.zst"),
    ] {
        let p = fixture(file);
        let s = Server::serve(&[&format!("{name}:v1={}", p.display())]);
        assert_pulls_as(&s, &format!("{name}:v1"), "app", &[]);
        // the compression of the whole file is transport only: the layers inside are served
        let m = pull_dir_checked(&s, &format!("{name}:v1"), &[]);
        assert_eq!(
            layer_digests(&m),
            plain[0].2,
            "{file}: layers differ from the uncompressed archive's"
        );
        assert_eq!(
            config_digest(&m),
            plain[0].1,
            "{file}: config differs from the uncompressed archive's"
        );
    }
}

#[test]
fn oci_archive() {
    e2e!();
    let archive = fixture("oci-archive.tar");
    // ref.name is just `v1`, so a NAME is needed
    let s = Server::serve(&[&format!("app={}", archive.display())]);
    assert_pulls_as(&s, "app:v1", "app", &[]);
    // the OCI archive holds the same manifest as the layout it was copied from
    let want = std::fs::read_to_string(fixture("digests.env")).unwrap();
    let want = want
        .lines()
        .find_map(|l| l.strip_prefix("OCI_LAYOUT_V1_MANIFEST="))
        .unwrap()
        .to_string();
    assert_eq!(
        manifest_digest(&s, "app", "v1"),
        want,
        "the stored manifest must be served unchanged"
    );
    let m = pull_dir_checked(&s, "app:v1", &[]);
    let src = oci_layout_json(&fixture("oci-layout"), Some(&want));
    assert_eq!(layer_digests(&m), layer_digests(&src));
    // by digest, too
    assert_pulls_as(&s, &format!("app@{want}"), "app", &[]);
}

#[test]
fn oci_archive_without_name_is_refused() {
    e2e!();
    // ref.name `v1` names a tag but no repository: serve must refuse it without NAME=
    let archive = fixture("oci-archive.tar");
    match Server::try_start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        archive.to_str().unwrap(),
    ]) {
        Ok(mut s) => {
            s.assert_alive();
            panic!("cartorio served an OCI archive whose ref.name has no repository without NAME=");
        }
        Err((status, stderr)) => {
            assert!(!status.contains("101"), "cartorio panicked: {stderr}");
            assert!(
                !status.ends_with("status: 0"),
                "cartorio exited 0 without serving: {stderr}"
            );
            assert!(!stderr.trim().is_empty(), "no error message ({status})");
        }
    }
}

#[test]
fn oci_layout_directory() {
    e2e!();
    let layout = fixture("oci-layout");
    let s = Server::serve(&[&format!("layout={}", layout.display())]);
    assert_pulls_as(&s, "layout:v1", "app", &[]);
    let idx = oci_layout_json(&layout, None);
    let want = idx["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(manifest_digest(&s, "layout", "v1"), want);
    let m = pull_dir_checked(&s, "layout:v1", &[]);
    assert_eq!(
        layer_digests(&m),
        layer_digests(&oci_layout_json(&layout, Some(want)))
    );
}

#[test]
fn multi_image_docker_archive() {
    e2e!();
    let archive = fixture("multi-image.tar");
    let s = Server::serve(&[archive.to_str().unwrap()]);
    assert_pulls_as(&s, "fixture/app:v1", "app", &[]);
    assert_pulls_as(&s, "fixture/other:v2", "other", &[]);
    let images = docker_archive_digests(&archive);
    let m = pull_dir_checked(&s, "fixture/app:latest", &[]);
    assert_eq!(layer_digests(&m), images[0].2);
    let m = pull_dir_checked(&s, "fixture/other:v2", &[]);
    assert_eq!(layer_digests(&m), images[1].2);
    assert_eq!(config_digest(&m), images[1].1);
    // both tags of fixture/app listed
    let r = http("GET", &s.url("/v2/fixture/app/tags/list"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let tags: Vec<String> = r.json()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert!(
        tags.contains(&"v1".into()) && tags.contains(&"latest".into()),
        "tags/list: {tags:?}"
    );
}

#[test]
fn multi_image_select_in_config() {
    e2e!();
    let tmp = tempdir();
    let archive = fixture("multi-image.tar");
    let cfg = write_config(
        tmp.path(),
        &format!(
            "[[image]]\nname = \"picked\"\nsource = {}\ntags = [\"x\", \"y\"]\nselect = \"docker.io/fixture/other:v2\"\n",
            toml_path(&archive)
        ),
    );
    let s = Server::proxy(&cfg);
    assert_pulls_as(&s, "picked:x", "other", &[]);
    assert_eq!(
        manifest_digest(&s, "picked", "x"),
        manifest_digest(&s, "picked", "y")
    );
}

#[test]
fn multi_platform_layout_and_archive() {
    e2e!();
    let index_digest = {
        let idx = oci_layout_json(&fixture("multiarch-layout"), None);
        idx["manifests"][0]["digest"].as_str().unwrap().to_string()
    };
    for src in ["multiarch-layout", "multiarch.tar"] {
        let s = Server::serve(&[&format!("multi={}", fixture(src).display())]);
        assert_pulls_as(&s, "multi:v1", "arm64", &["--override-arch", "arm64"]);
        assert_pulls_as(
            &s,
            "multi:v1",
            "amd64",
            &["--override-arch", "amd64", "--override-os", "linux"],
        );
        // the index itself is served unchanged
        assert_eq!(
            manifest_digest(&s, "multi", "v1"),
            index_digest,
            "{src}: index digest"
        );
        let idx = http("GET", &s.url("/v2/multi/manifests/v1"), &[ACCEPT_MANIFESTS]).json();
        assert_eq!(
            idx["manifests"].as_array().unwrap().len(),
            2,
            "{src}: {idx}"
        );
        // each platform's manifest by digest
        for m in idx["manifests"].as_array().unwrap() {
            let d = m["digest"].as_str().unwrap();
            manifest_digest(&s, "multi", d);
        }
    }
}

#[test]
fn rootfs_tarballs() {
    e2e!();
    for file in ["rootfs.tar", "rootfs.tar.gz", "rootfs.tar.zst"] {
        let p = fixture(file);
        let s = Server::serve(&[&format!("rootfs={}", p.display())]);
        // NAME without tag and no tags in the archive: latest
        assert_pulls_as(&s, "rootfs:latest", "rootfs", &[]);
        // the file itself is the one layer blob
        let m = pull_dir_checked(&s, "rootfs:latest", &[]);
        assert_eq!(
            layer_digests(&m),
            vec![sha256_file(&p)],
            "{file}: the layer must be the file itself"
        );
        let cfg = skopeo_config(&s, "rootfs:latest");
        assert_eq!(cfg["rootfs"]["type"], "layers");
        let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
        assert_eq!(diff_ids.len(), 1);
        assert_eq!(
            diff_ids[0].as_str().unwrap(),
            sha256_file(&fixture("rootfs.tar")),
            "{file}: diff_id"
        );
    }
}

#[test]
fn rootfs_with_image_config() {
    e2e!();
    let tmp = tempdir();
    let cfg = write_config(
        tmp.path(),
        &format!(
            r#"[[image]]
name = "configured/rootfs"
source = "file://{}"
tags = ["v1", "latest"]
[image.config]
os = "linux"
architecture = "arm64"
env = ["A=b", "PATH=/usr/bin:/bin"]
cmd = ["/usr/bin/hi"]
entrypoint = []
user = "1000"
workdir = "/etc"
labels = {{ k = "v" }}
"#,
            fixture("rootfs.tar.gz").display()
        ),
    );
    let s = Server::proxy(&cfg);
    assert_pulls_as(
        &s,
        "configured/rootfs:v1",
        "rootfs",
        &["--override-arch", "arm64"],
    );
    let c = skopeo_config(&s, "configured/rootfs:latest");
    assert_eq!(c["os"], "linux");
    assert_eq!(c["architecture"], "arm64");
    assert_eq!(
        c["config"]["Env"],
        serde_json::json!(["A=b", "PATH=/usr/bin:/bin"])
    );
    assert_eq!(c["config"]["Cmd"], serde_json::json!(["/usr/bin/hi"]));
    assert_eq!(c["config"]["User"], "1000");
    assert_eq!(c["config"]["WorkingDir"], "/etc");
    assert_eq!(c["config"]["Labels"]["k"], "v");
}

#[test]
fn concourse_formats() {
    e2e!();
    for src in [
        "concourse-dir",
        "concourse-tgz-dir",
        "concourse.tar",
        "concourse-rootfs.tar",
    ] {
        let s = Server::serve(&[&format!("ci/image={}", fixture(src).display())]);
        assert_pulls_as(&s, "ci/image:latest", "rootfs", &[]);
        let c = skopeo_config(&s, "ci/image:latest");
        assert_eq!(
            c["config"]["Env"],
            serde_json::json!(["PATH=/usr/bin:/bin", "CONCOURSE=yes"]),
            "{src}: env"
        );
        assert_eq!(c["config"]["User"], "nobody", "{src}: user");
    }
}

#[test]
fn example_config_relative_paths() {
    e2e!();
    // config/example/images.toml names its tarball relative to the config file's directory
    // (the source is `hello.tar`; the tests run in the repository root, so a server resolving
    // it against the working directory would not find it)
    let cfg = repo_root().join("config/example/images.toml");
    let mut child = Server::start(&[
        "proxy",
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let (_t, rootfs) = pull_and_unpack(&child, "example/hello:latest", &[]);
    let hello =
        std::fs::read_to_string(rootfs.join("hello.txt")).expect("hello.txt in example image");
    assert!(hello.contains("Hello"), "hello.txt: {hello:?}");
    child.assert_alive();
}

// ------------------------------------------------------------------------------------------
// Registry API details real clients rely on
// ------------------------------------------------------------------------------------------

#[test]
fn registry_api_basics() {
    e2e!();
    let archive = fixture("docker-archive.tar");
    let s = Server::serve(&[archive.to_str().unwrap()]);
    let r = http("GET", &s.url("/v2/"), &[]);
    assert_eq!(r.status, 200, "GET /v2/");
    let digest = manifest_digest(&s, "fixture/app", "v1");
    // by digest, and with containerd's mirror `?ns=` query
    assert_eq!(manifest_digest(&s, "fixture/app", &digest), digest);
    let r = http(
        "GET",
        &s.url("/v2/fixture/app/manifests/v1?ns=docker.io"),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(r.status, 200, "unknown query parameters must be ignored");
    // blobs: HEAD gives the size, GET the bytes
    let m = http(
        "GET",
        &s.url("/v2/fixture/app/manifests/v1"),
        &[ACCEPT_MANIFESTS],
    )
    .json();
    let layer = &m["layers"][0];
    let url = s.url(&format!(
        "/v2/fixture/app/blobs/{}",
        layer["digest"].as_str().unwrap()
    ));
    let h = http("HEAD", &url, &[]);
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length")
            .map(|v| v.parse::<u64>().unwrap()),
        layer["size"].as_u64()
    );
    let g = http("GET", &url, &[]);
    assert_eq!(sha256(&g.body), layer["digest"].as_str().unwrap());
    // unknown things: 404 with a JSON errors body
    for path in [
        "/v2/fixture/app/manifests/nope",
        "/v2/no/such/repo/manifests/v1",
        "/v2/fixture/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let r = http("GET", &s.url(path), &[ACCEPT_MANIFESTS]);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(
            r.json()["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "{path}: {}",
            r.text()
        );
    }
    // read-only
    let r = http(
        "PUT",
        &s.url("/v2/fixture/app/manifests/v2"),
        &["Content-Type: application/json"],
    );
    assert!(
        r.status >= 400 && r.status < 500 && r.status != 404,
        "PUT answered {}",
        r.status
    );
}

// ------------------------------------------------------------------------------------------
// Determinism
// ------------------------------------------------------------------------------------------

#[test]
fn determinism_across_runs_paths_and_mtimes() {
    e2e!();
    let tmp = tempdir();
    for file in [
        "docker-archive.tar",
        "rootfs.tar.gz",
        "concourse.tar",
        "docker-archive.tar.zst",
    ] {
        let orig = fixture(file);
        let copy = tmp.path().join(format!("moved-{file}"));
        std::fs::copy(&orig, &copy).unwrap();
        sh(&format!(
            "touch -d '2001-02-03 04:05:06' '{}'",
            copy.display()
        ));
        let digest = |p: &Path| {
            let s = Server::serve(&[&format!("det:v1={}", p.display())]);
            let d = manifest_digest(&s, "det", "v1");
            let raw = skopeo_raw(&s, "det:v1", &[]);
            assert_eq!(
                sha256(&raw),
                d,
                "skopeo inspect --raw disagrees with Docker-Content-Digest"
            );
            d
        };
        let a = digest(&orig);
        let b = digest(&orig);
        let c = digest(&copy);
        assert_eq!(
            a, b,
            "{file}: two runs over the same file gave different manifests"
        );
        assert_eq!(
            a, c,
            "{file}: a copy with another path and mtime gave a different manifest"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Hostile archives
// ------------------------------------------------------------------------------------------

/// (file, words of which the error message must contain at least one, lower-cased)
const HOSTILE: &[(&str, &[&str])] = &[
    (
        "truncated.tar",
        &[
            "truncat",
            "unexpected end",
            "eof",
            "end of",
            "manifest.json",
        ],
    ),
    (
        "missing-file.tar",
        &["missing-layer.tar", "missing", "not found"],
    ),
    ("bad-json.tar", &["manifest.json", "json"]),
    (
        "traversal.tar",
        &["../evil", "travers", "unsafe", "invalid path", ".."],
    ),
    (
        "oversize-entry.tar",
        &["truncat", "unexpected end", "eof", "end of", "past", "size"],
    ),
    ("pax-size.tar", &["pax", "size"]),
    ("manifest-symlink.tar", &["not a regular file"]),
    ("pax-malformed.tar", &["pax record"]),
    ("pax-overflow.tar", &["not a number that fits"]),
    ("pax-huge.tar", &["per-archive limit"]),
    (
        "dup-names.tar",
        &["named \"manifest.json\" once normalized"],
    ),
];

#[test]
fn inspect_good_archive() {
    e2e!();
    let archive = fixture("docker-archive.tar");
    let images = docker_archive_digests(&archive);
    let out = run(Command::new(bin()).args(["inspect", archive.to_str().unwrap(), "--json"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let _: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("--json output ({e}): {text}"));
    for l in &images[0].2 {
        assert!(
            text.contains(l.trim_start_matches("sha256:")),
            "inspect --json lacks layer {l}: {text}"
        );
    }
    assert!(
        text.contains("fixture/app"),
        "inspect --json lacks the repository: {text}"
    );
    let out = run(Command::new(bin()).args(["inspect", archive.to_str().unwrap()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("v1") && text.contains("amd64"),
        "inspect: {text}"
    );
}

#[test]
fn inspect_rejects_hostile_archives() {
    e2e!();
    let mut failures = Vec::new();
    for (file, words) in HOSTILE {
        let p = fixture(&format!("hostile/{file}"));
        let out = Command::new(bin())
            .args(["inspect", p.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .expect("run cartorio inspect");
        // the file name itself must not count as naming the problem
        let stderr = String::from_utf8_lossy(&out.stderr)
            .replace(p.to_str().unwrap(), "<ARCHIVE>")
            .replace(file, "<FILE>");
        let stderr = stderr.to_lowercase();
        if out.status.success() {
            failures.push(format!(
                "{file}: inspect succeeded:\n{}",
                String::from_utf8_lossy(&out.stdout)
            ));
        } else if out.status.code() == Some(101) || stderr.contains("panicked") {
            failures.push(format!("{file}: inspect panicked:\n{stderr}"));
        } else if !words.iter().any(|w| stderr.contains(w)) {
            failures.push(format!(
                "{file}: message names none of {words:?}:\n{stderr}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "hostile archives:\n{}",
        failures.join("\n")
    );
}

#[test]
fn hostile_images_do_not_break_good_ones() {
    e2e!();
    let tmp = tempdir();
    let mut body = format!(
        "[[image]]\nname = \"good\"\nsource = {}\n",
        toml_path(&fixture("docker-archive.tar"))
    );
    for (i, (file, _)) in HOSTILE.iter().enumerate() {
        body += &format!(
            "\n[[image]]\nname = \"bad{i}\"\nsource = {}\ntags = [\"v1\"]\n",
            toml_path(&fixture(&format!("hostile/{file}")))
        );
    }
    let cfg = write_config(tmp.path(), &body);
    let mut s = Server::proxy(&cfg);
    for (i, (file, _)) in HOSTILE.iter().enumerate() {
        let r = http(
            "GET",
            &s.url(&format!("/v2/bad{i}/manifests/v1")),
            &[ACCEPT_MANIFESTS],
        );
        let ok = r.status >= 500
            || (r.status == 404
                && serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .is_some_and(|v| v["errors"].is_array()));
        assert!(ok, "{file}: manifest answered {} {}", r.status, r.text());
        s.assert_alive();
    }
    assert_pulls_as(&s, "good:v1", "app", &[]);
    s.assert_alive();
}

// ------------------------------------------------------------------------------------------
// containerd (the kubelet's path): HEAD manifests by tag, then GET by digest
// ------------------------------------------------------------------------------------------

/// containerd as a Kubernetes node uses cartorio: `deploy/containerd/hosts.toml`
/// with cartorio's address makes a pull of `docker.io/fixture/app:v1` go to
/// cartorio (there is no other network here, so a fall back to Docker Hub
/// would fail), and the unpacked files are the image's.
#[test]
fn containerd_mirror() {
    e2e!();
    let ctd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => {
            note(&format!(
                "SKIPPED containerd_mirror: containerd cannot run here: {why}"
            ));
            return;
        }
    };
    let s = Server::serve(&[fixture("docker-archive.tar").to_str().unwrap()]);
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/containerd/hosts.toml"),
    )
    .unwrap();
    assert!(example.contains("http://127.0.0.1:5000"));
    let hosts = ctd.dir.path().join("certs.d");
    std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
    std::fs::write(
        hosts.join("docker.io/hosts.toml"),
        example.replace("127.0.0.1:5000", &s.addr),
    )
    .unwrap();
    let image = "docker.io/fixture/app:v1";
    ctd.ctr_ok(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "--snapshotter",
        "native",
        image,
    ]);
    let mnt = ctd.dir.path().join("mnt-mirror");
    std::fs::create_dir_all(&mnt).unwrap();
    ctd.ctr_ok(&[
        "images",
        "mount",
        "--snapshotter",
        "native",
        image,
        mnt.to_str().unwrap(),
    ]);
    let result = std::panic::catch_unwind(|| assert_same_tree(&mnt, &fixture("expected/app")));
    ctd.ctr_ok(&["images", "unmount", mnt.to_str().unwrap()]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn containerd_pulls() {
    e2e!();
    let ctd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => {
            note(&format!(
                "SKIPPED containerd_pulls: containerd cannot run here: {why}"
            ));
            return;
        }
    };
    let a = |f: &str| fixture(f).display().to_string();
    let s = Server::serve(&[
        &a("docker-archive.tar"),
        &format!("oci={}", a("oci-archive.tar")),
        &format!("rootfs={}", a("rootfs.tar.zst")),
        &format!("multi={}", a("multiarch-layout")),
    ]);
    for (reference, want) in [
        ("fixture/app:v1", "app"),
        ("oci:v1", "app"),
        ("rootfs:latest", "rootfs"),
        ("multi:v1", "amd64"),
    ] {
        let full = format!("{}/{}", s.addr, reference);
        // A mount point per image: the native snapshotter's bind mounts
        // stack if one is left behind.
        let mnt = ctd
            .dir
            .path()
            .join(format!("mnt-{}", reference.replace([':', '/'], "_")));
        std::fs::create_dir_all(&mnt).unwrap();
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        if want == "amd64" {
            args.extend(["--platform", "linux/amd64"]);
        }
        args.push(&full);
        ctd.ctr_ok(&args);
        ctd.ctr_ok(&[
            "images",
            "mount",
            "--snapshotter",
            "native",
            &full,
            mnt.to_str().unwrap(),
        ]);
        let result = std::panic::catch_unwind(|| {
            assert_same_tree(&mnt, &fixture(&format!("expected/{want}")))
        });
        ctd.ctr_ok(&["images", "unmount", mnt.to_str().unwrap()]);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}
