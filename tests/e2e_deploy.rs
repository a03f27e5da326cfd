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

// ------------------------------------------------------------------------------------------
// Kubernetes: deploy/kubernetes rendered, validated, and checked against the binary
// ------------------------------------------------------------------------------------------

/// What the tests render: every overlay, the base, and the PVC component on the bucket overlay
/// (composed in a temp kustomization, since kustomize wants relative paths).
fn kustomizations() -> Vec<(String, PathBuf)> {
    let k = repo_root().join("deploy/kubernetes");
    let mut out = vec![("base".to_string(), k.join("base"))];
    let mut overlays: Vec<_> = std::fs::read_dir(k.join("overlays"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    overlays.sort();
    for o in overlays {
        let name = format!("overlays/{}", o.file_name().unwrap().to_string_lossy());
        out.push((name, o));
    }
    let composed = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kustomize-bucket-pvc");
    std::fs::create_dir_all(&composed).unwrap();
    // CARGO_TARGET_TMPDIR is <repo>/target/tmp: three levels below the repo root.
    std::fs::write(
        composed.join("kustomization.yaml"),
        "resources: [../../../deploy/kubernetes/overlays/bucket]\n\
         components: [../../../deploy/kubernetes/components/pvc-cache]\n",
    )
    .unwrap();
    out.push(("bucket + components/pvc-cache".into(), composed));
    out
}

/// `kubectl kustomize DIR`, validated strictly offline with kubernetes-validate; the documents
/// as JSON.
fn render(dir: &Path, tmp: &Path) -> Vec<serde_json::Value> {
    let yaml = tmp.join("rendered.yaml");
    let o = run(Command::new("kubectl").arg("kustomize").arg(dir));
    std::fs::write(&yaml, &o.stdout).unwrap();
    let v = run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&yaml));
    let report =
        String::from_utf8_lossy(&v.stdout).to_string() + &String::from_utf8_lossy(&v.stderr);
    assert!(!report.contains("ERROR"), "{}: {report}", dir.display());
    let j = run(Command::new("python3").arg("-c").arg(
        "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
    ).arg(&yaml));
    serde_json::from_slice(&j.stdout).unwrap()
}

/// "10Gi", "512Mi" (the quantities these manifests use) in bytes.
fn quantity(q: &str) -> u64 {
    for (suffix, mult) in [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * mult;
        }
    }
    q.parse().unwrap_or_else(|_| panic!("quantity {q:?}"))
}

#[test]
fn kubernetes_manifests_render_validate_and_match_the_binary() {
    e2e!();
    for tool in ["kubectl", "kubernetes-validate"] {
        assert!(
            which(tool).is_some(),
            "{tool} missing (scripts/test.sh installs it)"
        );
    }
    assert_eq!(
        std::fs::read(repo_root().join("deploy/kubernetes/components/containerd-hosts/hosts.toml"))
            .unwrap(),
        std::fs::read(repo_root().join("deploy/containerd/hosts.toml")).unwrap(),
        "the init container's hosts.toml is a copy of deploy/containerd/hosts.toml"
    );
    for (name, dir) in kustomizations() {
        let tmp = tempdir();
        let docs = render(&dir, tmp.path());
        let find = |kinds: &[&str]| {
            docs.iter()
                .filter(|d| kinds.contains(&d["kind"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
        };
        // The config the pods get loads in cartorio.
        let cms = find(&["ConfigMap"]);
        let cm = cms
            .iter()
            .find(|c| {
                c["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("cartorio-config")
            })
            .unwrap_or_else(|| panic!("{name}: no cartorio-config ConfigMap"));
        let toml_text = cm["data"]["images.toml"].as_str().unwrap();
        let cfg_path = tmp.path().join("images.toml");
        std::fs::write(&cfg_path, toml_text).unwrap();
        let (ok, out, err) = cartorio_check(&cfg_path, false);
        assert!(ok, "{name}: cartorio check failed: {err}");
        note(&format!("{name}: {}", out.lines().last().unwrap_or("")));
        let cfg = cartorio::config::Config::load(&cfg_path).unwrap();
        let cache = cfg.cache.settings(&cfg.base).unwrap();

        // One workload, hardened, its numbers derived from the config.
        let workloads = find(&["Deployment", "DaemonSet"]);
        assert_eq!(workloads.len(), 1, "{name}: one workload");
        let w = workloads[0];
        let pod = &w["spec"]["template"]["spec"];
        if w["kind"] == "Deployment" {
            assert_eq!(w["spec"]["replicas"], 2, "{name}");
            assert!(pod["topologySpreadConstraints"].is_array(), "{name}");
            assert_eq!(find(&["PodDisruptionBudget"]).len(), 1, "{name}");
        } else {
            assert_eq!(pod["hostNetwork"], true, "{name}");
        }
        assert_eq!(find(&["Service"]).len(), 1, "{name}");
        assert_eq!(find(&["ServiceAccount"]).len(), 1, "{name}");
        // The drain after SIGTERM (30 s, ops' --drain-timeout default) plus margin.
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 40,
            "{name}"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["securityContext"]["runAsUser"], 65532, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "cartorio")
            .unwrap_or_else(|| panic!("{name}: no cartorio container"));
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        assert_eq!(
            c["args"],
            serde_json::json!(["proxy", "--config", "/etc/cartorio/images.toml"]),
            "{name}"
        );
        // Ports: the config listens where the container port and the probes point.
        let port = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "http")
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap();
        assert_eq!(cfg.listen, format!("0.0.0.0:{port}"), "{name}");
        // Memory: the limit holds the memory-cache bound plus the process (~64 MiB).
        let limit = quantity(c["resources"]["limits"]["memory"].as_str().unwrap());
        assert!(
            limit >= cache.memory + (64 << 20),
            "{name}: memory limit {limit}"
        );
        // Volumes: config at /etc/cartorio, cache where the config says.
        let mounts = c["volumeMounts"].as_array().unwrap();
        let mount = |vol: &str| {
            mounts.iter().find(|m| m["name"] == vol).unwrap()["mountPath"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(mount("config"), "/etc/cartorio", "{name}");
        assert_eq!(Some(PathBuf::from(mount("cache"))), cache.dir, "{name}");
        let vols = pod["volumes"].as_array().unwrap();
        let cache_vol = vols.iter().find(|v| v["name"] == "cache").unwrap();
        let capacity = if let Some(e) = cache_vol.get("emptyDir") {
            quantity(e["sizeLimit"].as_str().expect("emptyDir sizeLimit"))
        } else {
            let claim = cache_vol["persistentVolumeClaim"]["claimName"]
                .as_str()
                .unwrap();
            let pvc = find(&["PersistentVolumeClaim"])
                .into_iter()
                .find(|p| p["metadata"]["name"] == claim)
                .unwrap_or_else(|| panic!("{name}: claim {claim} not rendered"));
            quantity(
                pvc["spec"]["resources"]["requests"]["storage"]
                    .as_str()
                    .unwrap(),
            )
        };
        // cache.disk bounds the blobs; temp files and indexes need room beside them.
        assert!(
            capacity >= cache.disk + cache.disk / 10,
            "{name}: cache volume {capacity} for cache.disk {}",
            cache.disk
        );

        // The binary with this config answers the probes the manifest names.
        let served_cache = tmp.path().join("cache");
        let local = toml_text.replace(
            &format!("dir = {}", toml_str(&mount("cache"))),
            &format!("dir = {}", toml_path(&served_cache)),
        );
        assert_ne!(local, toml_text, "{name}: cache dir line not found");
        std::fs::write(&cfg_path, local).unwrap();
        let server = Server::proxy(&cfg_path);
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(get) = c.get(probe).map(|p| &p["httpGet"]) else {
                continue;
            };
            assert_eq!(get["port"], "http", "{name} {probe}");
            let path = get["path"].as_str().unwrap();
            let r = http("GET", &server.url(path), &[]);
            assert_eq!(r.status, 200, "{name} {probe} {path}: {}", r.text());
        }
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}: readiness is /readyz"
        );
    }
}

#[test]
fn readyz_fails_when_the_cache_folder_is_unusable() {
    e2e!();
    let tmp = tempdir();
    let blocked = tmp.path().join("not-a-folder");
    std::fs::write(&blocked, b"").unwrap();
    let s = Server::serve(&[
        "--cache-dir",
        blocked.to_str().unwrap(),
        &format!("app={}", fixture("docker-archive.tar").display()),
    ]);
    assert_eq!(http("GET", &s.url("/healthz"), &[]).status, 200);
    let r = http("GET", &s.url("/readyz"), &[]);
    assert_eq!(r.status, 503);
    assert!(r.text().contains("not-a-folder"), "{}", r.text());
}

// ------------------------------------------------------------------------------------------
// CI recipes: deploy/ci/*.yml validated, and their shell steps run against a fixture
// ------------------------------------------------------------------------------------------

/// A CI job: name, environment (variables), and its shells `(step, script)`.
type CiJob = (String, serde_json::Value, Vec<(String, String)>);

/// The shell parts of a CI file, per job in order: `(job, env, [(step, script)])`.  GitHub:
/// every `run:` step, each its own bash (as Actions runs them); GitLab: `before_script` +
/// `script` as one shell, then `after_script`.
fn ci_shells(file: &Path) -> Vec<CiJob> {
    const EXTRACT: &str = r#"
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
out = []
if "jobs" in doc:  # GitHub Actions
    for name, job in doc["jobs"].items():
        env = {**doc.get("env", {}), **job.get("env", {})}
        steps = [(s.get("name", "run"), s["run"]) for s in job["steps"] if "run" in s]
        out.append((name, env, steps))
else:  # GitLab CI: jobs in stage order
    stages = doc.get("stages", ["build", "test", "deploy"])
    jobs = [(k, v) for k, v in doc.items() if isinstance(v, dict) and "script" in v]
    jobs.sort(key=lambda kv: stages.index(kv[1].get("stage", "test")))
    for name, job in jobs:
        env = {**doc.get("variables", {}), **job.get("variables", {})}
        steps = [("script", "\n".join(job.get("before_script", []) + job["script"]))]
        if "after_script" in job:
            steps.append(("after_script", "\n".join(job["after_script"])))
        out.append((name, env, steps))
print(json.dumps(out))
"#;
    let o = run(Command::new("python3").args(["-c", EXTRACT]).arg(file));
    let v: Vec<CiJob> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!v.is_empty(), "{}: no jobs", file.display());
    v
}

/// Stand-ins for the tools a CI machine has and this one does not: they log their arguments,
/// "build" by copying a fixture archive, and turn `docker|podman run REF` into a skopeo pull.
const SHIM: &str = r#"#!/bin/bash
set -euo pipefail
tool=$(basename "$0")
echo "$tool $*" >> "$SHIM_LOG"
pull() { skopeo --command-timeout 90s copy -q --src-tls-verify=false "docker://$1" "oci:$SHIM_OUT/$tool-$RANDOM:ci"; }
case "$tool $1" in
  "docker buildx") for a in "$@"; do case $a in *dest=*) cp "$FIXTURE" "${a##*dest=}";; esac; done ;;
  "podman build"|"buildah build") ;;
  "podman save") while [ $# -gt 0 ]; do [ "$1" = -o ] && cp "$FIXTURE" "$2"; shift; done ;;
  "buildah push") dest=${3#docker-archive:}; cp "$FIXTURE" "${dest%%:*}" ;;
  "docker run"|"podman run") pull "${@: -1}" ;;
  "cargo install") ;;
  *) echo "shim: unexpected $tool $*" >&2; exit 2 ;;
esac
"#;

#[test]
fn ci_recipes_validate_and_their_steps_pass_against_a_fixture() {
    e2e!();
    assert!(
        which("check-jsonschema").is_some(),
        "check-jsonschema missing (scripts/test.sh installs it)"
    );
    for (file, schema) in [
        ("github-actions.yml", "vendor.github-workflows"),
        ("gitlab-ci.yml", "vendor.gitlab-ci"),
    ] {
        let path = repo_root().join("deploy/ci").join(file);
        run(Command::new("check-jsonschema")
            .args(["--builtin-schema", schema])
            .arg(&path));

        // One work folder per file: a later job sees an earlier one's artifacts (image.tar).
        let file_tmp = tempdir();
        let work = file_tmp.path().to_path_buf();
        for (job, env, steps) in ci_shells(&path) {
            let tmp = tempdir();
            let (shims, out) = (tmp.path().join("shims"), tmp.path().join("pulled"));
            for d in [&shims, &out] {
                std::fs::create_dir(d).unwrap();
            }
            for tool in ["docker", "podman", "buildah", "cargo"] {
                let p = shims.join(tool);
                std::fs::write(&p, SHIM).unwrap();
                sh(&format!("chmod +x {}", p.display()));
            }
            std::os::unix::fs::symlink(bin(), shims.join("cartorio")).unwrap();
            let addr = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().to_string()
            };
            let log = tmp.path().join("shim.log");
            std::fs::write(&log, "").unwrap();
            let path = format!(
                "{}:{}",
                shims.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            for (step, script) in &steps {
                let mut cmd = Command::new("bash");
                cmd.args(["--noprofile", "--norc", "-eo", "pipefail", "-c", script])
                    .current_dir(&work)
                    .env("PATH", &path)
                    .env("SHIM_LOG", &log)
                    .env("SHIM_OUT", &out)
                    .env("FIXTURE", fixture("docker-archive.tar"));
                for (k, v) in env.as_object().unwrap() {
                    cmd.env(k, v.as_str().unwrap());
                }
                cmd.env("CARTORIO_ADDR", &addr);
                let o = cmd
                    .stdin(Stdio::null())
                    .output()
                    .expect("run a recipe step");
                assert!(
                    o.status.success(),
                    "{file} {job} {step:?} failed ({}):\n{}\n{}\nshims:\n{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            // The recipe stopped its cartorio; make sure, whatever happened.
            let pid_file = work.join("cartorio.pid");
            if let Ok(pid) = std::fs::read_to_string(&pid_file) {
                // It drains before exiting (up to the drain timeout): wait for it.
                let alive = || {
                    Command::new("kill")
                        .args(["-0", pid.trim()])
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(40);
                while alive() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let alive = alive();
                let _ = Command::new("kill")
                    .arg(pid.trim())
                    .stderr(Stdio::null())
                    .status();
                assert!(!alive, "{file} {job}: cartorio still running after the job");
            }
            let calls = std::fs::read_to_string(&log).unwrap();
            let cartorio_log =
                std::fs::read_to_string(work.join("cartorio.log")).unwrap_or_default();
            if job == "build-image" {
                assert!(work.join("image.tar").is_file(), "{file} {job}: {calls}");
                continue;
            }
            assert!(
                cartorio_log.contains(&format!("listening on {addr}")),
                "{file} {job}: {cartorio_log}"
            );
            let want = "run --rm";
            assert!(
                calls
                    .lines()
                    .any(|l| l.contains(want) && l.ends_with(&format!("{addr}/app:ci"))),
                "{file} {job}: no run of {addr}/app:ci in {calls}"
            );
            // Every pull the shims made (and skopeo's own in the podman recipes) unpacked an
            // image layout.
            let pulled: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
            assert!(!pulled.is_empty(), "{file} {job}: nothing pulled");
            for p in pulled {
                assert!(
                    p.path().join("index.json").is_file(),
                    "{}",
                    p.path().display()
                );
            }
            note(&format!("{file} {job}: {} step(s) passed", steps.len()));
        }
    }
}
