//! End-to-end tests of what `deploy/` ships: cartorio's own image (`deploy/image/build.sh`),
//! and `cartorio check` as the binary runs it.  Same conventions as `tests/e2e.rs`
//! (`CARTORIO_SKIP_E2E=1` skips; a missing tool fails).
//!
//! The image is built from the binary under test (`CARGO_BIN_EXE_cartorio`, a debug build,
//! stripped by the script) so the suite never needs a release build; the README's command
//! packages `target/release/cartorio` the same way.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

macro_rules! e2e {
    () => {
        if !common::e2e(std::thread::current().name().unwrap_or("?")) {
            return;
        }
    };
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Runs `deploy/image/build.sh OUT` on the binary under test; returns the last line of its
/// output (the manifest digest).
fn build_image(out: &Path) -> String {
    let o = run(Command::new("bash")
        .arg(repo_root().join("deploy/image/build.sh"))
        .arg(out)
        .env("CARTORIO_BIN", bin()));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let digest = stdout.lines().last().unwrap_or("").to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "last line is not a digest: {stdout:?}"
    );
    digest
}

/// A process whose stdout says `listening on ADDR`; killed on drop.
struct Listening {
    child: Child,
    addr: String,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_listening(cmd: &mut Command) -> Listening {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => Listening { child, addr },
        Err(_) => {
            let _ = child.kill();
            panic!("{cmd:?}: no `listening on` line within 60 s");
        }
    }
}

#[test]
fn image_builds_reproducibly_pulls_and_runs_from_its_rootfs() {
    e2e!();
    let tmp = tempdir();
    let (a, b) = (tmp.path().join("a.oci.tar"), tmp.path().join("b.oci.tar"));
    let digest = build_image(&a);
    assert_eq!(build_image(&b), digest, "two builds, two digests");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "two builds differ byte-wise"
    );
    let size = std::fs::metadata(&a).unwrap().len();
    note(&format!(
        "cartorio image {digest}: archive {size} bytes (from {})",
        bin().display()
    ));

    // Serve the archive with cartorio itself; it records the version as its tag.
    let version = env!("CARGO_PKG_VERSION");
    let server = Server::serve(&["--cache-dir", "none", &format!("cartorio={}", a.display())]);
    let name_tag = format!("cartorio:{version}");
    let raw = skopeo_raw(&server, &name_tag, &[]);
    assert_eq!(sha256(&raw), digest, "served manifest is the built one");
    let config = skopeo_config(&server, &name_tag);
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/cartorio"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["proxy", "--config", "/etc/cartorio/images.toml"])
    );
    assert_eq!(c["User"], "65532:65532");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], version);
    let head = sh(&format!("git -C {} rev-parse HEAD", repo_root().display()));
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        String::from_utf8_lossy(&head.stdout).trim()
    );
    assert!(labels["org.opencontainers.image.source"].is_string());
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layer = manifest["layers"][0]["size"].as_u64().unwrap();
    note(&format!("cartorio image: compressed layer {layer} bytes"));

    // Pull and unpack with umoci: the rootfs is complete.
    let (_pulled, rootfs) = pull_and_unpack(&server, &name_tag, &[]);
    for f in [
        "cartorio",
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(rootfs.join(f).is_file(), "{f} missing from the image");
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    let cache = rootfs.join("var/cache/cartorio");
    assert!(cache.is_dir());
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);

    if !is_root() {
        note("SKIPPED the chroot part of the image test: needs root");
        return;
    }
    assert_eq!(std::fs::metadata(&cache).unwrap().uid(), 65532);
    // The binary runs from the unpacked rootfs alone: its libraries are all there.
    let v = run(Command::new("chroot")
        .arg(&rootfs)
        .args(["/cartorio", "--version"]));
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!("cartorio {version}")
    );
    std::fs::copy(fixture("docker-archive.tar"), rootfs.join("tmp/app.tar")).unwrap();
    // The image's environment only (the PATH of this process does not exist in there).
    let chroot = which("chroot").expect("chroot on PATH");
    let inside = start_listening(
        Command::new(chroot)
            .arg(&rootfs)
            .args(["/cartorio", "serve", "--listen", "127.0.0.1:0"])
            .args(["--cache-dir", "/var/cache/cartorio", "app=/tmp/app.tar"])
            .env_clear()
            .env("HOME", "/home/nonroot"),
    );
    let base = http("GET", &format!("http://{}/v2/", inside.addr), &[]);
    assert_eq!(base.status, 200);
    assert_eq!(base.body, b"{}");
    let ready = http("GET", &format!("http://{}/readyz", inside.addr), &[]);
    assert_eq!(ready.status, 200, "{}", ready.text());
    let m = http(
        "GET",
        &format!("http://{}/v2/app/manifests/v1", inside.addr),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(m.status, 200, "{}", m.text());
}

/// `cartorio check` as a user runs it: exit status, stdout, stderr.
fn cartorio_check(config: &Path, reach: bool) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["check", "--config"]).arg(config);
    if reach {
        cmd.arg("--reach");
    }
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run cartorio check");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_exits_non_zero_with_file_line_and_problem() {
    let tmp = tempdir();
    let cfg = write_config(
        tmp.path(),
        "[[image]]\nname = \"app\"\nsource = \"app.tar\"\n\n[[image]]\nname = \"b/{repo}\"\nsource = \"s3://bucket/{repo}/{tag}.tar\"\n",
    );
    let (ok, out, err) = cartorio_check(&cfg, false);
    assert!(ok, "{err}");
    assert!(
        out.contains("app:(the archive's tags) <- app.tar (file)"),
        "{out}"
    );
    let (ok, _, err) = cartorio_check(&cfg, true);
    assert!(!ok);
    let want = format!("{}:4: cannot reach:", cfg.display());
    assert!(err.contains(&want), "want {want:?} in {err:?}");
    let bad: PathBuf = write_config(tmp.path(), "[[image]]\nname = \"app\"\nsourc = \"x\"\n");
    let (ok, _, err) = cartorio_check(&bad, false);
    assert!(!ok);
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("sourc"),
        "{err}"
    );
}
