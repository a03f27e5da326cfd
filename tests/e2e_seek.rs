//! End-to-end tests of compressed archives with and without a published
//! sidecar index (`cartorio index`): `.tar.gz` and `.tar.zst` docker
//! archives on nginx and s3s-fs, pulled with skopeo and unpacked; what
//! cartorio read upstream before the first manifest; a stale sidecar
//! after the tarball was replaced.
mod common;
#[path = "servers/mod.rs"]
mod servers;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use servers::TestServer;

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

/// `cartorio index ARCHIVE`: writes ARCHIVE.cartorio-index.
fn index(archive: &Path) {
    let out = run(Command::new(bin()).arg("index").arg(archive));
    assert!(
        Path::new(&format!("{}.cartorio-index", archive.display())).exists(),
        "no sidecar: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `DIR/app.tar.gz` and `DIR/app.tar.zst` with sidecars, `DIR/bare.tar.gz`
/// and `DIR/bare.tar.zst` without.
fn archives(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let tar = fixture("docker-archive.tar");
    for name in ["app", "bare"] {
        std::fs::copy(
            fixture("docker-archive.tar.gz"),
            dir.join(format!("{name}.tar.gz")),
        )
        .unwrap();
        run(Command::new("zstd")
            .args(["-q", "-f", "-o"])
            .arg(dir.join(format!("{name}.tar.zst")))
            .arg(&tar));
    }
    index(&dir.join("app.tar.gz"));
    index(&dir.join("app.tar.zst"));
}

fn pull_and_check(server: &Server, name_tag: &str) {
    let (_tmp, rootfs) = pull_and_unpack(server, name_tag, &[]);
    assert_same_tree(&rootfs, &fixture("expected/app"));
    let (tmp, m) = pull_dir(server, name_tag, &[]);
    check_dir_blobs(tmp.path(), &m);
}

fn config(source: impl Fn(&str) -> String, extra: &str) -> String {
    let mut body = "[cache]\ndir = \"none\"\n\n".to_string();
    for (name, file) in [
        ("fx/gz", "app.tar.gz"),
        ("fx/zst", "app.tar.zst"),
        ("fx/bare-gz", "bare.tar.gz"),
        ("fx/bare-zst", "bare.tar.zst"),
    ] {
        body += &format!(
            "[[image]]\nname = \"{name}\"\nsource = {}\n{extra}\n",
            toml_str(&source(file))
        );
    }
    body
}

fn sidecar_lines(s: &Server) -> usize {
    s.stderr()
        .lines()
        .filter(|l| l.contains("index read from the sidecar"))
        .count()
}

#[test]
fn sidecars_from_nginx() {
    e2e!("nginx", "zstd");
    let root = tempdir();
    let images = root.path().join("images");
    archives(&images);
    let nginx = TestServer::nginx(root.path());
    let tmp = tempdir();
    let s = Server::proxy(&write_config(
        tmp.path(),
        &config(|f| nginx.url(&format!("images/{f}")), ""),
    ));

    // The first manifest of an archive with a sidecar: the sidecar, and
    // 64 KiB at each end of the archive to bind it; no pass.
    for (name, file) in [("fx/gz", "app.tar.gz"), ("fx/zst", "app.tar.zst")] {
        let r = http(
            "GET",
            &s.url(&format!("/v2/{name}/manifests/v1")),
            &[ACCEPT_MANIFESTS],
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let from_archive: u64 = nginx
            .served()
            .iter()
            .filter(|l| l.request.contains(&format!("/images/{file} ")))
            .map(|l| l.body_bytes)
            .sum();
        let size = std::fs::metadata(images.join(file)).unwrap().len();
        assert!(
            from_archive <= (2 * 64 * 1024).min(2 * size),
            "{name}: read {from_archive} bytes of the archive for its manifest"
        );
    }
    assert_eq!(sidecar_lines(&s), 2, "{}", s.stderr());
    for name in ["fx/gz", "fx/zst", "fx/bare-gz", "fx/bare-zst"] {
        pull_and_check(&s, &format!("{name}:v1"));
    }
    // Without a sidecar: the one pass, silently.
    assert_eq!(sidecar_lines(&s), 2, "{}", s.stderr());
    assert!(!s.stderr().contains("sidecar ignored"), "{}", s.stderr());

    // The tarball is replaced (gzip -1 instead of -9: other bytes, the
    // same content), its sidecar is not: ignored with one line, the new
    // tarball indexed and served.
    let tar = fixture("docker-archive.tar");
    run(Command::new("sh").arg("-c").arg(format!(
        "gzip -1 -n -c {} > {}.new && mv {}.new {}",
        tar.display(),
        images.join("app.tar.gz").display(),
        images.join("app.tar.gz").display(),
        images.join("app.tar.gz").display()
    )));
    std::thread::sleep(Duration::from_millis(1200));
    pull_and_check(&s, "fx/gz:v1");
    let ignored: Vec<_> = s
        .stderr()
        .lines()
        .filter(|l| l.contains("sidecar ignored"))
        .map(str::to_string)
        .collect();
    assert_eq!(ignored.len(), 1, "{}", s.stderr());
    assert!(
        ignored[0].contains("app.tar.gz.cartorio-index"),
        "{ignored:?}"
    );
}

#[test]
fn sidecars_from_s3() {
    e2e!("s3s-fs", "zstd");
    let root = tempdir();
    archives(&root.path().join("fixtures/images"));
    let s3 = TestServer::s3s(root.path(), KEY, SECRET);
    let table = format!(
        "[image.s3]\nendpoint = {}\nregion = \"us-east-1\"\naccess_key_id = {}\nsecret_access_key = {}\n",
        toml_str(&s3.endpoint()),
        toml_str(KEY),
        toml_str(SECRET)
    );
    let tmp = tempdir();
    let s = Server::proxy(&write_config(
        tmp.path(),
        &config(|f| format!("s3://fixtures/images/{f}"), &table),
    ));
    for name in ["fx/gz", "fx/zst", "fx/bare-gz", "fx/bare-zst"] {
        pull_and_check(&s, &format!("{name}:v1"));
    }
    assert_eq!(sidecar_lines(&s), 2, "{}", s.stderr());
    assert!(!s.stderr().contains("sidecar ignored"), "{}", s.stderr());
}

/// `index = "URL"` names the sidecar when it is not next to the tarball:
/// it is read instead of walking the archive, from nginx.
#[test]
fn a_sidecar_named_by_the_index_key() {
    e2e!("nginx");
    let root = tempdir();
    let images = root.path().join("images");
    std::fs::create_dir_all(images.join("indexes")).unwrap();
    let archive = images.join("app.tar.gz");
    std::fs::copy(fixture("docker-archive.tar.gz"), &archive).unwrap();
    let elsewhere = images.join("indexes/app.idx");
    run(Command::new(bin())
        .arg("index")
        .arg(&archive)
        .arg("-o")
        .arg(&elsewhere));
    assert!(elsewhere.exists());
    let nginx = TestServer::nginx(root.path());
    let tmp = tempdir();
    let s = Server::proxy(&write_config(
        tmp.path(),
        &format!(
            "[cache]\ndir = \"none\"\n\n[[image]]\nname = \"fx/gz\"\nsource = {}\nindex = {}\n",
            toml_str(&nginx.url("images/app.tar.gz")),
            toml_str(&nginx.url("images/indexes/app.idx"))
        ),
    ));
    let r = http("GET", &s.url("/v2/fx/gz/manifests/v1"), &[ACCEPT_MANIFESTS]);
    assert_eq!(r.status, 200, "{}", r.text());
    let from_archive: u64 = nginx
        .served()
        .iter()
        .filter(|l| l.request.contains("/images/app.tar.gz "))
        .map(|l| l.body_bytes)
        .sum();
    assert!(
        from_archive <= 2 * 64 * 1024,
        "read {from_archive} bytes of the archive for its manifest"
    );
    assert!(
        nginx
            .served()
            .iter()
            .any(|l| l.request.contains("/images/indexes/app.idx ")),
        "the configured index was not fetched"
    );
    assert_eq!(sidecar_lines(&s), 1, "{}", s.stderr());
    pull_and_check(&s, "fx/gz:v1");
}
