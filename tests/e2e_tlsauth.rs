//! TLS, authentication and the admin listener, end to end: the real binary, certificates made
//! by `openssl`, pulls with skopeo and containerd's `ctr`, requests with curl.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

macro_rules! e2e {
    () => {
        if !common::e2e(std::thread::current().name().unwrap_or("?")) {
            return;
        }
    };
}

/// A test CA (EC P-256, `openssl req -x509`) in `dir/NAME/ca.crt`, and a server certificate
/// for `IP:127.0.0.1` signed by it, written to `cert` and `key` (through temp files and a
/// rename, as cert-manager's secret updates are atomic).
struct Ca {
    dir: PathBuf,
}

impl Ca {
    fn new(parent: &Path, name: &str) -> Ca {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN=cartorio test CA {name}")])
            .arg("-keyout")
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(dir.join("ca.crt")));
        Ca { dir }
    }

    /// The folder skopeo's `--src-cert-dir` takes (it holds `ca.crt` only).
    fn cert_dir(&self) -> PathBuf {
        let d = self.dir.join("certs.d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.dir.join("ca.crt"), d.join("ca.crt")).unwrap();
        d
    }

    fn ca_crt(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues a certificate for 127.0.0.1 and installs it at `cert`/`key`.
    fn issue(&self, cert: &Path, key: &Path) {
        let d = &self.dir;
        let ext = d.join("ext.cnf");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=127.0.0.1", "-keyout"])
            .arg(d.join("new.key"))
            .arg("-out")
            .arg(d.join("new.csr")));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-in"])
            .arg(d.join("new.csr"))
            .arg("-CA")
            .arg(d.join("ca.crt"))
            .arg("-CAkey")
            .arg(d.join("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(d.join("new.crt")));
        std::fs::rename(d.join("new.key"), key).unwrap();
        std::fs::rename(d.join("new.crt"), cert).unwrap();
    }
}

/// `curl -sS` with extra arguments; returns (exit success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server with TLS from `cert`/`key`, serving the docker-archive fixture as `fixture/app:v1`.
fn tls_server(cert: &Path, key: &Path, extra: &[&str]) -> Server {
    let archive = fixture("docker-archive.tar");
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(archive.to_str().unwrap());
    Server::start(&args)
}

/// skopeo copy over HTTPS, verifying the server against the CA in `cert_dir`.
fn skopeo_tls_pull(server: &Server, name_tag: &str, cert_dir: &Path, extra: &[&str]) -> Output {
    let tmp = tempdir();
    Command::new("skopeo")
        .args(["--command-timeout", "90s", "copy", "-q", "--src-cert-dir"])
        .arg(cert_dir)
        .args(extra)
        .arg(server.docker_ref(name_tag))
        .arg(format!("dir:{}", tmp.path().display()))
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo")
}

use std::process::Output;

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_pull_h2_and_rotation() {
    e2e!();
    let tmp = tempdir();
    let (cert, key) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    let ca1 = Ca::new(tmp.path(), "one");
    ca1.issue(&cert, &key);
    let mut s = tls_server(&cert, &key, &[]);
    let https = format!("https://{}/v2/", s.addr);
    let ca1_crt = ca1.ca_crt();

    // skopeo verifies the chain against --src-cert-dir (no --src-tls-verify=false).
    let out = skopeo_tls_pull(&s, "fixture/app:v1", &ca1.cert_dir(), &[]);
    assert_ok(&out, "skopeo pull over TLS");

    // HTTP/2 is negotiated by ALPN.
    let (ok, out, err) = curl(&[
        "--http2",
        "--cacert",
        ca1_crt.to_str().unwrap(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &https,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out, "2 200");
    // Plain HTTP on the TLS port is refused, not served.
    let (ok, _, _) = curl(&[&format!("http://{}/v2/", s.addr)]);
    assert!(!ok, "plain HTTP answered on a TLS port");

    // One keep-alive connection spans the rotation: curl makes its first request, we rotate,
    // and its second request (3 s later) reuses the connection it opened under the old cert.
    let mut held = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--http1.1", "--rate", "20/m"])
        .args(["--cacert", ca1_crt.to_str().unwrap()])
        .args(["-o", "/dev/null", "-o", "/dev/null"])
        // %{stderr}: unbuffered, each line as its transfer ends
        .args(["-w", "%{stderr}%{http_code} %{num_connects}\\n"])
        .args([&https, &https])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let mut lines = BufReader::new(held.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a first answer").unwrap();
    assert_eq!(first, "200 1");

    let ca2 = Ca::new(tmp.path(), "two");
    ca2.issue(&cert, &key);
    let second = lines.next().expect("a second answer").unwrap();
    assert_eq!(
        second, "200 0",
        "the connection opened before the rotation was not kept"
    );
    assert!(held.wait().unwrap().success());

    // New connections get the new certificate once the server looked at the files again.
    let ca2_crt = ca2.ca_crt();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, code, _) = curl(&[
            "--cacert",
            ca2_crt.to_str().unwrap(),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &https,
        ]);
        if ok && code == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, _, err) = curl(&["--cacert", ca1_crt.to_str().unwrap(), &https]);
    assert!(!ok, "the old certificate is still served");
    assert!(err.contains("certificate"), "{err}");
    let out = skopeo_tls_pull(&s, "fixture/app:v1", &ca2.cert_dir(), &[]);
    assert_ok(&out, "skopeo pull after the rotation");

    // A broken new pair (key of another certificate) keeps the current one, with a log line.
    std::fs::copy(ca1.dir.join("ca.key"), &key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.stderr().contains("do not load") {
        let _ = curl(&["--cacert", ca2_crt.to_str().unwrap(), &https]);
        assert!(Instant::now() < deadline, "no log line for a bad pair");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, _, err) = curl(&["--cacert", ca2_crt.to_str().unwrap(), &https]);
    assert!(ok, "a bad new pair replaced the served certificate: {err}");
    s.assert_alive();
}

#[test]
fn tls_containerd_with_ca_in_hosts_toml() {
    e2e!();
    let ctd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => {
            note(&format!(
                "SKIPPED tls_containerd: containerd cannot run here: {why}"
            ));
            return;
        }
    };
    let tmp = tempdir();
    let (cert, key) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    let ca = Ca::new(tmp.path(), "ctr");
    ca.issue(&cert, &key);
    let s = tls_server(&cert, &key, &[]);
    let hosts = ctd.dir.path().join("certs.d");
    std::fs::create_dir_all(hosts.join(&s.addr)).unwrap();
    std::fs::write(
        hosts.join(&s.addr).join("hosts.toml"),
        format!(
            "server = \"https://{a}\"\n[host.\"https://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {ca}\n",
            a = s.addr,
            ca = toml_path(&ca.ca_crt()),
        ),
    )
    .unwrap();
    let image = format!("{}/fixture/app:v1", s.addr);
    ctd.ctr_ok(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "--snapshotter",
        "native",
        &image,
    ]);
    let mnt = ctd.dir.path().join("mnt-tls");
    std::fs::create_dir_all(&mnt).unwrap();
    ctd.ctr_ok(&[
        "images",
        "mount",
        "--snapshotter",
        "native",
        &image,
        mnt.to_str().unwrap(),
    ]);
    let result = std::panic::catch_unwind(|| assert_same_tree(&mnt, &fixture("expected/app")));
    ctd.ctr_ok(&["images", "unmount", mnt.to_str().unwrap()]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A free port on 127.0.0.1 (bound and released; the server binds it right after).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn admin_listener_takes_the_operations_endpoints() {
    e2e!();
    let admin = free_addr();
    let s = Server::serve(&[
        "--admin-listen",
        &admin,
        fixture("docker-archive.tar").to_str().unwrap(),
    ]);
    for path in ["/metrics", "/healthz", "/readyz"] {
        let on_main = http("GET", &s.url(path), &[]);
        assert_eq!(on_main.status, 404, "{path} still on the main port");
        let on_admin = http("GET", &format!("http://{admin}{path}"), &[]);
        assert_eq!(on_admin.status, 200, "{path} not on the admin port");
    }
    let v2 = http("GET", &format!("http://{admin}/v2/"), &[]);
    assert_eq!(v2.status, 404, "the registry API on the admin port");
    assert_eq!(http("GET", &s.url("/v2/"), &[]).status, 200);
}

/// `htpasswd -Bbn USER PASSWORD` lines (apache2-utils: the tool operators use).
fn htpasswd_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (u, p) in users {
        let out = run(Command::new("htpasswd").args(["-Bbn", u, p]));
        text.push_str(String::from_utf8(out.stdout).unwrap().trim());
        text.push('\n');
    }
    // A non-bcrypt line is ignored with a log line, not fatal.
    text.push_str("md5user:$apr1$abc$def\n");
    let f = dir.join("htpasswd");
    std::fs::write(&f, text).unwrap();
    f
}

fn curl_status(args: &[&str]) -> (u16, String, String) {
    let (ok, out, err) = curl(&[&["-D", "-"][..], args].concat());
    assert!(ok, "curl {args:?}: {err}");
    let status = out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        out.clone(),
        out.rsplit("\r\n\r\n").next().unwrap_or("").to_string(),
    )
}

fn skopeo_creds(server: &Server, name_tag: &str, creds: Option<&str>) -> Output {
    let tmp = tempdir();
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--command-timeout",
        "90s",
        "copy",
        "-q",
        "--src-tls-verify=false",
    ]);
    if let Some(c) = creds {
        cmd.args(["--src-creds", c]);
    } else {
        cmd.arg("--src-no-creds");
    }
    cmd.arg(server.docker_ref(name_tag))
        .arg(format!("dir:{}", tmp.path().display()))
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo")
}

#[test]
fn auth_users_rules_and_anonymous() {
    e2e!();
    let tmp = tempdir();
    let pw = htpasswd_file(tmp.path(), &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let a = |f: &str| fixture(f).display().to_string();
    let s = Server::serve(&[
        "--htpasswd",
        pw.to_str().unwrap(),
        "--anonymous",
        "public/**",
        "--allow",
        "alice=fixture/*,team/*",
        "--allow",
        "bob=team/*",
        &a("docker-archive.tar"),
        &format!("team/app={}", a("oci-archive.tar")),
        &format!("public/base/rootfs={}", a("rootfs.tar.zst")),
    ]);
    assert!(s.stderr().contains("only bcrypt"), "{}", s.stderr());

    // Good credentials pull.
    assert_ok(
        &skopeo_creds(&s, "fixture/app:v1", Some("alice:alice-pw")),
        "alice pulls fixture/app",
    );
    // The anonymous rule: no credentials needed under public/.
    assert_ok(
        &skopeo_creds(&s, "public/base/rootfs:latest", None),
        "anonymous pulls public/**",
    );
    // Wrong password, unknown user, anonymous outside public/: refused.
    for creds in [Some("alice:nope"), Some("mallory:alice-pw"), None] {
        let out = skopeo_creds(&s, "fixture/app:v1", creds);
        assert!(!out.status.success(), "{creds:?} pulled fixture/app");
    }
    // bob has no rule for fixture/*: the repository does not exist for him.
    let out = skopeo_creds(&s, "fixture/app:v1", Some("bob:bob-pw"));
    assert!(!out.status.success(), "bob pulled fixture/app");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        err.contains("name unknown") || err.contains("name_unknown"),
        "{err}"
    );
    assert_ok(
        &skopeo_creds(&s, "team/app:v1", Some("bob:bob-pw")),
        "bob pulls team/app",
    );

    let url = |p: &str| s.url(p);
    // 401: the challenge and the spec's error body.
    let (st, head, body) = curl_status(&["-u", "alice:nope", &url("/v2/fixture/app/manifests/v1")]);
    assert_eq!(st, 401);
    assert!(
        head.to_lowercase()
            .contains("www-authenticate: basic realm=\"cartorio\""),
        "{head}"
    );
    assert!(body.contains("\"UNAUTHORIZED\""), "{body}");
    let (st, _, _) = curl_status(&[&url("/v2/fixture/app/manifests/v1")]);
    assert_eq!(st, 401, "anonymous outside the anonymous rule");
    // A malformed or non-UTF-8 Basic header is a 401, not a 500.
    for bad in [
        "Authorization: Basic !!!",
        "Authorization: Basic /w==",
        "Authorization: Bearer x",
    ] {
        let (st, _, _) = curl_status(&["-H", bad, &url("/v2/")]);
        assert_eq!(st, 401, "{bad}");
    }
    // Hidden and missing look the same to bob.
    let (st1, _, hidden) = curl_status(&["-u", "bob:bob-pw", &url("/v2/fixture/app/manifests/v1")]);
    let (st2, _, missing) =
        curl_status(&["-u", "bob:bob-pw", &url("/v2/fixture/nothere/manifests/v1")]);
    assert_eq!((st1, st2), (404, 404));
    assert_eq!(
        hidden.replace("fixture/app", "X"),
        missing.replace("fixture/nothere", "X"),
        "a hidden repository must answer like a missing one"
    );
    assert!(hidden.contains("NAME_UNKNOWN"), "{hidden}");
    // /v2/ challenges anonymous callers whenever there are users (clients send credentials
    // only after that), and they still pull public/** without any (above).
    assert_eq!(curl_status(&[&url("/v2/")]).0, 401);
    assert_eq!(curl_status(&["-u", "bob:bob-pw", &url("/v2/")]).0, 200);
    // The catalog lists what the caller may pull.
    let (_, _, anon) = curl_status(&[&url("/v2/_catalog")]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&anon).unwrap()["repositories"],
        serde_json::json!(["public/base/rootfs"])
    );
    let (_, _, alice) = curl_status(&["-u", "alice:alice-pw", &url("/v2/_catalog")]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&alice).unwrap()["repositories"],
        serde_json::json!(["fixture/app", "public/base/rootfs", "team/app"])
    );
    let (_, _, metrics) = curl_status(&[&url("/metrics")]);
    for reason in ["bad_credentials", "login_required", "denied"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "cartorio_auth_rejected_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {reason} counter:\n{metrics}"));
        assert_ne!(line.rsplit(' ').next(), Some("0"), "{line}");
    }
}

#[test]
fn auth_without_anonymous_and_ctr_user() {
    e2e!();
    let tmp = tempdir();
    let pw = htpasswd_file(tmp.path(), &[("alice", "alice-pw")]);
    let s = Server::serve(&[
        "--htpasswd",
        pw.to_str().unwrap(),
        "--catalog-authenticated",
        fixture("docker-archive.tar").to_str().unwrap(),
    ]);
    // Anonymous may pull nothing: /v2/ itself asks for a login.
    let (st, head, _) = curl_status(&[&s.url("/v2/")]);
    assert_eq!(st, 401);
    assert!(
        head.to_lowercase().contains("www-authenticate: basic"),
        "{head}"
    );
    assert_eq!(
        curl_status(&["-u", "alice:alice-pw", &s.url("/v2/")]).0,
        200
    );
    assert_eq!(curl_status(&[&s.url("/v2/_catalog")]).0, 401);
    assert_eq!(
        curl_status(&["-u", "alice:alice-pw", &s.url("/v2/_catalog")]).0,
        200
    );

    let ctd = match Containerd::start() {
        Ok(c) => c,
        Err(why) => {
            note(&format!(
                "SKIPPED ctr part: containerd cannot run here: {why}"
            ));
            return;
        }
    };
    let image = format!("{}/fixture/app:v1", s.addr);
    let out = ctd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        &image,
    ]);
    assert!(!out.status.success(), "ctr pulled without credentials");
    ctd.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--user",
        "alice:alice-pw",
        "--snapshotter",
        "native",
        &image,
    ]);
}
