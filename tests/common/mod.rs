//! Helpers for cartorio's end-to-end tests: fixtures, starting the server, driving
//! skopeo / umoci / curl / containerd, and comparing file trees.
//!
//! Fixtures: `tests/fixtures/make.sh` is run once per test process (a `OnceLock`) into
//! `$CARGO_TARGET_TMPDIR/e2e-fixtures-<pid>`; directories left by earlier runs whose process is
//! gone are removed.  Setting `CARTORIO_FIXTURES=DIR` uses `DIR` instead: it is generated there
//! unless `DIR/.complete` already exists (so `scripts/test.sh` or a developer can build them once).
//!
//! Binary: `CARGO_BIN_EXE_cartorio`, or `$CARTORIO_BIN` when set.
//!
//! Skipping: with `CARTORIO_SKIP_E2E=1` every e2e test prints that it was skipped and passes.
//! Otherwise a missing tool (skopeo, umoci, python3, curl, zstd, tar) is a test failure.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The binary under test: cargo's build of `cartorio`, or `$CARTORIO_BIN` (e.g. a release build).
pub fn bin() -> PathBuf {
    match std::env::var_os("CARTORIO_BIN") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_cartorio")),
    }
}
/// A server that accepts connections and never answers must fail a test, not hang it.
const SKOPEO_TIMEOUT: &str = "90s";
const REQUIRED_TOOLS: &[&str] = &["skopeo", "umoci", "python3", "curl", "zstd", "tar", "gzip"];

/// Returns false (after printing a note) when e2e tests are switched off with
/// `CARTORIO_SKIP_E2E=1`; panics when a required tool is missing.
pub fn e2e(test: &str) -> bool {
    if std::env::var("CARTORIO_SKIP_E2E").as_deref() == Ok("1") {
        note(&format!("SKIPPED e2e test {test}: CARTORIO_SKIP_E2E=1"));
        return false;
    }
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let missing: Vec<_> = REQUIRED_TOOLS
            .iter()
            .filter(|t| which(t).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "e2e tests need {missing:?} on PATH (run scripts/test.sh, which installs them, \
             or set CARTORIO_SKIP_E2E=1 to skip the e2e tests)"
        );
    });
    true
}

/// A line on the real stderr, past libtest's output capture (so skips are visible).
pub fn note(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| {
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    })
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture directory (see the module docs).
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os("CARTORIO_FIXTURES") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
                remove_stale_fixture_dirs(&base);
                base.join(format!("e2e-fixtures-{}", std::process::id()))
            }
        };
        if !dir.join(".complete").exists() {
            let t = Instant::now();
            let out = Command::new("bash")
                .arg(repo_root().join("tests/fixtures/make.sh"))
                .arg(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("run tests/fixtures/make.sh");
            assert!(
                out.status.success(),
                "tests/fixtures/make.sh {} failed ({}):\n{}\n{}",
                dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!(
                "fixtures generated in {} ({:.1?})",
                dir.display(),
                t.elapsed()
            );
        }
        dir
    })
}

fn remove_stale_fixture_dirs(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("e2e-fixtures-")
            && pid.parse::<u32>().is_ok()
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    let p = fixtures().join(rel);
    assert!(p.exists(), "fixture {} missing", p.display());
    p
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cartorio-e2e-")
        .tempdir()
        .expect("tempdir")
}

// ------------------------------------------------------------------------------------------
// The server under test
// ------------------------------------------------------------------------------------------

pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    stderr_path: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Server {
    /// `cartorio serve --listen 127.0.0.1:0 ARGS...`
    pub fn serve(args: &[&str]) -> Server {
        let mut a = vec!["serve", "--listen", "127.0.0.1:0"];
        a.extend_from_slice(args);
        Self::start(&a)
    }

    /// `cartorio proxy --config CONFIG --listen 127.0.0.1:0`
    pub fn proxy(config: &Path) -> Server {
        let c = config.to_str().unwrap();
        Self::start(&["proxy", "--config", c, "--listen", "127.0.0.1:0"])
    }

    /// Start cartorio with ARGS and wait (up to 60 s) for `listening on ADDR` on stdout.
    pub fn start(args: &[&str]) -> Server {
        match Self::try_start(args) {
            Ok(s) => s,
            Err((status, stderr)) => {
                panic!("cartorio {args:?} did not start ({status}); stderr:\n{stderr}")
            }
        }
    }

    /// Like `start`, but returns `Err((exit description, stderr))` if the process exits first.
    pub fn try_start(args: &[&str]) -> Result<Server, (String, String)> {
        Self::try_start_env(args, &[])
    }

    /// Like `try_start`, with extra environment variables for the server process.
    pub fn try_start_env(args: &[&str], env: &[(&str, &str)]) -> Result<Server, (String, String)> {
        Self::try_start_wrapped(&[], args, env)
    }

    /// Like `try_start_env`, run under a wrapper command (e.g. `prlimit --nofile=64:64`).
    pub fn try_start_wrapped(
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, (String, String)> {
        let logdir = tempdir();
        let stderr_path = logdir.path().join("stderr.log");
        let bin = bin();
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = cmd
            .args(args)
            .env("RUST_BACKTRACE", "1")
            // Each server gets its own default cache folder, gone with it.
            .env("XDG_CACHE_HOME", logdir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                    sent = true;
                } else {
                    eprintln!("cartorio stdout: {line}");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                assert!(
                    addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
                    "bad listen line: {addr:?}"
                );
                return Ok(Server {
                    child,
                    addr,
                    stderr_path,
                    _logdir: logdir,
                });
            }
            if let Some(status) = child.try_wait().unwrap() {
                // give the reader a moment in case the line raced the exit
                if let Ok(addr) = rx.recv_timeout(Duration::from_millis(200)) {
                    panic!("cartorio printed `listening on {addr}` and then exited ({status})");
                }
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err((status.to_string(), stderr));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("cartorio {args:?}: no `listening on` line within 60 s; stderr:\n{stderr}");
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Panics if the server has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("cartorio exited ({status}); stderr:\n{}", self.stderr());
        }
    }

    /// `docker://127.0.0.1:PORT/REF`
    pub fn docker_ref(&self, name_tag: &str) -> String {
        format!("docker://{}/{}", self.addr, name_tag)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- cartorio stderr ----\n{}", self.stderr());
        }
    }
}

// ------------------------------------------------------------------------------------------
// Running tools
// ------------------------------------------------------------------------------------------

pub fn run(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{desc}: {e}"));
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn sh(cmd: &str) -> Output {
    run(Command::new("bash").arg("-c").arg(cmd))
}

/// `skopeo copy --src-tls-verify=false EXTRA... SRC DEST`, retried once (skopeo's HTTPS-then-HTTP
/// fallback is timing-sensitive on loaded machines).
pub fn skopeo_copy(extra: &[&str], src: &str, dest: &str) {
    let mut last = None;
    for _ in 0..2 {
        let t = Instant::now();
        let out = Command::new("skopeo")
            .args([
                "--command-timeout",
                SKOPEO_TIMEOUT,
                "copy",
                "-q",
                "--src-tls-verify=false",
            ])
            .args(extra)
            .args([src, dest])
            .stdin(Stdio::null())
            .output()
            .expect("run skopeo");
        if out.status.success() {
            return;
        }
        last = Some(out);
        if t.elapsed() > Duration::from_secs(20) {
            break; // a timeout, not a flaky connection: do not wait twice
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = last.unwrap();
    panic!(
        "skopeo copy {extra:?} {src} {dest} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `skopeo inspect --raw` (the manifest bytes as served).
pub fn skopeo_raw(server: &Server, name_tag: &str, extra: &[&str]) -> Vec<u8> {
    run(Command::new("skopeo")
        .args([
            "--command-timeout",
            SKOPEO_TIMEOUT,
            "inspect",
            "--raw",
            "--tls-verify=false",
        ])
        .args(extra)
        .arg(server.docker_ref(name_tag)))
    .stdout
}

/// `skopeo inspect --config` (the image config as JSON).
pub fn skopeo_config(server: &Server, name_tag: &str) -> serde_json::Value {
    let out = run(Command::new("skopeo")
        .args([
            "--command-timeout",
            SKOPEO_TIMEOUT,
            "inspect",
            "--config",
            "--tls-verify=false",
        ])
        .arg(server.docker_ref(name_tag)));
    serde_json::from_slice(&out.stdout).expect("config JSON")
}

/// Pull NAME:TAG into an OCI layout with skopeo (layers forced to gzip so umoci can read them)
/// and unpack it with umoci.  Returns the temp dir and the unpacked rootfs path.
pub fn pull_and_unpack(
    server: &Server,
    name_tag: &str,
    extra: &[&str],
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempdir();
    let layout = tmp.path().join("oci");
    let mut args = vec!["--dest-compress-format", "gzip"];
    args.extend_from_slice(extra);
    skopeo_copy(
        &args,
        &server.docker_ref(name_tag),
        &format!("oci:{}:t", layout.display()),
    );
    // `raw unpack` lays out only the file tree: the runtime config that
    // `umoci unpack` also writes would need the image's user to exist in
    // its /etc/passwd, which is beside the point here.
    let rootfs = tmp.path().join("rootfs");
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&rootfs));
    (tmp, rootfs)
}

/// Pull NAME:TAG with `skopeo copy ... dir:DIR` (no re-compression).  Returns the dir and the
/// manifest it wrote.
pub fn pull_dir(
    server: &Server,
    name_tag: &str,
    extra: &[&str],
) -> (tempfile::TempDir, serde_json::Value) {
    let tmp = tempdir();
    let dir = tmp.path().join("dir");
    skopeo_copy(
        extra,
        &server.docker_ref(name_tag),
        &format!("dir:{}", dir.display()),
    );
    let m = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    (tmp, m)
}

/// Digests of the layers (in order) and the config of a manifest.
pub fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .expect("manifest has layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

pub fn config_digest(manifest: &serde_json::Value) -> String {
    manifest["config"]["digest"].as_str().unwrap().to_string()
}

/// Checks that every blob skopeo stored in a `dir:` copy hashes to its name.
pub fn check_dir_blobs(dir: &Path, manifest: &serde_json::Value) {
    let mut digests = layer_digests(manifest);
    digests.push(config_digest(manifest));
    for d in digests {
        let hex = d.strip_prefix("sha256:").unwrap();
        let data =
            std::fs::read(dir.join("dir").join(hex)).unwrap_or_else(|e| panic!("blob {d}: {e}"));
        assert_eq!(sha256(&data), d, "blob content does not match its digest");
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn sha256_file(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// The Docker archive's manifest.json and, for each image, (config digest, layer digests)
/// computed from the bytes stored in the archive (following symlinked entries).
pub fn docker_archive_digests(archive: &Path) -> Vec<(Vec<String>, String, Vec<String>)> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        match e.header().entry_type() {
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let base = Path::new(&name).parent().unwrap().join(target);
                links.insert(name, normalize(&base));
            }
            _ => {
                let mut v = Vec::new();
                e.read_to_end(&mut v).unwrap();
                files.insert(name, v);
            }
        }
    }
    let get = |n: &str| -> &Vec<u8> {
        let n = links.get(n).map(String::as_str).unwrap_or(n);
        files.get(n).unwrap_or_else(|| panic!("{n} not in archive"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(get("manifest.json")).unwrap();
    manifest
        .as_array()
        .unwrap()
        .iter()
        .map(|img| {
            let tags = img["RepoTags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            let config = sha256(get(img["Config"].as_str().unwrap()));
            let layers = img["Layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| sha256(get(l.as_str().unwrap())))
                .collect();
            (tags, config, layers)
        })
        .collect()
}

fn normalize(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}

/// Read a blob or index.json from an OCI layout directory.
pub fn oci_layout_json(layout: &Path, digest: Option<&str>) -> serde_json::Value {
    let p = match digest {
        None => layout.join("index.json"),
        Some(d) => layout
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap()),
    };
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

// ------------------------------------------------------------------------------------------
// Plain HTTP (curl)
// ------------------------------------------------------------------------------------------

pub struct Response {
    pub status: u16,
    /// lower-cased header names
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP request with curl (`method` HEAD uses `-I`).
pub fn http(method: &str, url: &str, headers: &[&str]) -> Response {
    let tmp = tempdir();
    let hfile = tmp.path().join("h");
    let bfile = tmp.path().join("b");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-D"])
        .arg(&hfile)
        .arg("-o")
        .arg(&bfile);
    if method == "HEAD" {
        cmd.arg("-I");
    } else {
        cmd.args(["-X", method]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    run(&mut cmd);
    let raw = std::fs::read_to_string(&hfile).unwrap();
    // with redirects or 100-continue there may be several header blocks: take the last
    let block = raw.trim_end().rsplit("\r\n\r\n").next().unwrap_or("");
    let mut lines = block.lines();
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = std::fs::read(&bfile).unwrap_or_default();
    Response {
        status,
        headers,
        body,
    }
}

/// The Accept header skopeo/containerd send for manifests.
pub const ACCEPT_MANIFESTS: &str = "Accept: application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

// ------------------------------------------------------------------------------------------
// File trees
// ------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File {
        sha256: String,
        size: u64,
        exec: bool,
    },
    Symlink(String),
    Other(String),
}

/// Every path under ROOT (relative, '/'-separated) with its type, content hash, exec bit and
/// symlink target.  Directory permissions and ownership are not compared.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let node = if ft.is_symlink() {
                Node::Symlink(
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if ft.is_dir() {
                walk(root, &p, out);
                Node::Dir
            } else if ft.is_file() {
                Node::File {
                    sha256: sha256_file(&p),
                    size: md.len(),
                    exec: md.permissions().mode() & 0o111 != 0,
                }
            } else {
                Node::Other(format!("{ft:?}"))
            };
            out.insert(rel, node);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Panics with a readable diff if the trees under GOT and WANT differ.
pub fn assert_same_tree(got: &Path, want: &Path) {
    let g = tree(got);
    let w = tree(want);
    if g == w {
        return;
    }
    let mut diff = String::new();
    for (k, v) in &w {
        match g.get(k) {
            None => diff += &format!("  missing: {k} ({v:?})\n"),
            Some(gv) if gv != v => diff += &format!("  differs: {k}: got {gv:?}, want {v:?}\n"),
            _ => {}
        }
    }
    for (k, v) in &g {
        if !w.contains_key(k) {
            diff += &format!("  unexpected: {k} ({v:?})\n");
        }
    }
    panic!(
        "tree {} differs from expected {}:\n{diff}",
        got.display(),
        want.display()
    );
}

// ------------------------------------------------------------------------------------------
// Config files
// ------------------------------------------------------------------------------------------

/// Writes an images.toml into DIR and returns its path.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("images.toml");
    std::fs::write(&p, format!("listen = \"127.0.0.1:0\"\n\n{body}")).unwrap();
    p
}

/// TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().unwrap())
}

pub fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// ------------------------------------------------------------------------------------------
// containerd
// ------------------------------------------------------------------------------------------

/// A private containerd (own root, state and socket under a temp dir), killed on drop.
pub struct Containerd {
    child: Child,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd if this machine can run it (binary present, running as root).
    /// Returns Err(reason) otherwise.
    pub fn start() -> Result<Containerd, String> {
        if which("containerd").is_none() || which("ctr").is_none() {
            return Err("containerd/ctr not installed".into());
        }
        // SAFETY-free check for root: /proc/self/status Uid line
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1));
        if uid != Some("0") {
            return Err("not running as root".into());
        }
        // short path: unix socket names are limited to 108 bytes
        let dir = tempfile::Builder::new()
            .prefix("ctd-")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let sock = d.join("c.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {}\nstate = {}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {}\n[ttrpc]\n  address = {}\n[debug]\n  address = \"\"\n",
                toml_path(&d.join("root")),
                toml_path(&d.join("state")),
                toml_path(&sock),
                toml_path(&d.join("c.sock.ttrpc")),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn containerd: {e}"))?;
        let mut c = Containerd { child, sock, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = c.child.try_wait().unwrap() {
                return Err(format!("containerd exited ({st}): {}", c.log()));
            }
            if c.sock.exists() && c.ctr(&["version"]).status.success() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(format!("containerd did not come up: {}", c.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -a SOCK -n e2e ARGS...` (not checked)
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["--timeout", "120s", "-n", "e2e"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    pub fn ctr_ok(&self, args: &[&str]) -> Output {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------------
// Crashing the server
// ------------------------------------------------------------------------------------------

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or the OOM killer would: no cleanup runs.  Waits for the exit.
    pub fn kill9(&mut self) {
        // `Child::kill` sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
