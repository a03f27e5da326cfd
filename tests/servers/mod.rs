//! Real HTTP and S3 servers for the source tests, each on 127.0.0.1 with a
//! free port, serving a directory, stopped (killed) on drop.
//!
//! - [`TestServer::nginx`]: honours `Range` (206), strong ETags
//!   (`"<mtime hex>-<size hex>"`), `If-Match`, `If-Unmodified-Since`;
//!   its access log counts what it served ([`TestServer::served`]).
//! - [`TestServer::nginx_no_ranges`]: the same with `max_ranges 0`
//!   (answers every Range request with 200 and the whole file).
//! - [`TestServer::python`]: `python3 -m http.server` (ignores `Range`,
//!   no ETag, sends Last-Modified).
//! - [`TestServer::s3s`]: `s3s-fs` (the directory's subdirectories are
//!   buckets), SigV4 checked against the given keys.
//!
//! With `CARTORIO_SKIP_E2E=1`, [`e2e`] returns false and the tests return
//! early; otherwise a missing tool fails the test.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// False (with a note on stderr) when `CARTORIO_SKIP_E2E=1`; panics when
/// one of `tools` cannot be found.
pub fn e2e(test: &str, tools: &[&str]) -> bool {
    if std::env::var("CARTORIO_SKIP_E2E").as_deref() == Ok("1") {
        // Past libtest's capture, so the skip is visible.
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED e2e test {test}: CARTORIO_SKIP_E2E=1"
        );
        return false;
    }
    let missing: Vec<&&str> = tools.iter().filter(|t| find_tool(t).is_none()).collect();
    assert!(
        missing.is_empty(),
        "{test} needs {missing:?} (run scripts/test.sh, which installs them, \
         or set CARTORIO_SKIP_E2E=1 to skip the e2e tests)"
    );
    true
}

/// A tool on PATH, in /usr/sbin (nginx), or in cargo's bin dir (s3s-fs).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    })
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One line of nginx's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// `GET /path HTTP/1.1`
    pub request: String,
    pub status: u16,
    /// `$body_bytes_sent`: body bytes only, no headers.
    pub body_bytes: u64,
    /// The `Range` header the client sent, empty when none.
    pub range: String,
}

pub struct TestServer {
    child: Child,
    port: u16,
    /// Config, pid, logs and temp dirs.
    state: tempfile::TempDir,
    access_log: Option<PathBuf>,
    what: String,
    /// The CA and server certificate of a TLS server.
    tls: Option<tempfile::TempDir>,
}

impl TestServer {
    /// nginx honouring Range.
    pub fn nginx(root: &Path) -> TestServer {
        Self::start_nginx(root, false, None)
    }

    /// nginx over HTTPS with a certificate for 127.0.0.1 signed by a fresh
    /// test CA (made with `openssl`); the CA's PEM file is [`Self::ca_file`].
    pub fn nginx_tls(root: &Path) -> TestServer {
        let certs = tempfile::tempdir().unwrap();
        make_certs(certs.path());
        let mut s = Self::start_nginx(root, false, Some(certs.path()));
        s.tls = Some(certs);
        s
    }

    /// nginx with `max_ranges 0`: Range requests get the whole file (200).
    pub fn nginx_no_ranges(root: &Path) -> TestServer {
        Self::start_nginx(root, true, None)
    }

    fn start_nginx(root: &Path, no_ranges: bool, tls: Option<&Path>) -> TestServer {
        let nginx = find_tool("nginx").expect("nginx not found");
        let state = tempfile::tempdir().unwrap();
        let s = state.path();
        let port = free_port();
        let root = root.canonicalize().unwrap();
        // Temp dirs of every module built in, so nginx never touches
        // /var/lib/nginx (absent or not writable for a non-root user).
        let built =
            String::from_utf8_lossy(&Command::new(&nginx).arg("-V").output().unwrap().stderr)
                .into_owned();
        let mut temps = format!(
            "client_body_temp_path {0}/body;\n  proxy_temp_path {0}/proxy;\n",
            s.display()
        );
        for m in ["fastcgi", "uwsgi", "scgi"] {
            if !built.contains(&format!("--without-http_{m}_module")) {
                temps.push_str(&format!("  {m}_temp_path {}/{m};\n", s.display()));
            }
        }
        let is_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {s}/nginx.pid;
error_log {s}/error.log info;
{user}
events {{ worker_connections 128; }}
http {{
  {temps}
  log_format served '$request|$status|$body_bytes_sent|$http_range';
  access_log {s}/access.log served;
  default_type application/octet-stream;
  sendfile on;
  server {{
    listen 127.0.0.1:{port}{ssl};
    root {root};
    {ranges}
  }}
}}
"#,
            s = s.display(),
            user = if is_root { "user root;" } else { "" },
            root = root.display(),
            ranges = if no_ranges { "max_ranges 0;" } else { "" },
            ssl = match tls {
                Some(d) => format!(
                    " ssl;\n    ssl_certificate {0}/server.pem;\n    ssl_certificate_key {0}/server.key",
                    d.display()
                ),
                None => String::new(),
            },
        );
        let conf_path = s.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(nginx);
        cmd.arg("-p")
            .arg(s)
            .arg("-e")
            .arg(s.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let what = if no_ranges {
            "nginx (max_ranges 0)"
        } else {
            "nginx"
        };
        let mut server = Self::spawn(cmd, port, state, what);
        server.access_log = Some(server.state.path().join("access.log"));
        server
    }

    /// `python3 -m http.server`, which ignores Range.
    pub fn python(root: &Path) -> TestServer {
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(find_tool("python3").expect("python3 not found"));
        cmd.args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(root)
            .arg(port.to_string());
        Self::spawn(cmd, port, state, "python3 -m http.server")
    }

    /// `s3s-fs` serving `root` (its subdirectories are the buckets), with
    /// SigV4 checked against these keys.
    pub fn s3s(root: &Path, access_key: &str, secret_key: &str) -> TestServer {
        let state = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(find_tool("s3s-fs").expect("s3s-fs not found"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(root);
        Self::spawn(cmd, port, state, "s3s-fs")
    }

    fn spawn(mut cmd: Command, port: u16, state: tempfile::TempDir, what: &str) -> TestServer {
        let log = state.path().join("output.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut server = TestServer {
            child,
            port,
            state,
            access_log: None,
            what: what.to_string(),
            tls: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "{what} exited ({status}) before listening:\n{}",
                    server.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{what} not listening on {port} after 30 s:\n{}",
                    server.output()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (the S3 endpoint for s3s-fs), `https://`
    /// for [`Self::nginx_tls`].
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.tls
            .as_ref()
            .expect("not a TLS server")
            .path()
            .join("ca.pem")
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.endpoint(), path.trim_start_matches('/'))
    }

    /// What the server printed, plus nginx's error log.
    pub fn output(&self) -> String {
        let mut s =
            std::fs::read_to_string(self.state.path().join("output.log")).unwrap_or_default();
        if let Ok(e) = std::fs::read_to_string(self.state.path().join("error.log")) {
            s.push_str(&e);
        }
        s
    }

    /// nginx's access log so far (empty for the other servers).
    pub fn served(&self) -> Vec<Served> {
        let Some(p) = &self.access_log else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(p).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.splitn(4, '|');
                let request = f.next()?.to_string();
                let status = f.next()?.parse().ok()?;
                let body_bytes = f.next()?.parse().ok()?;
                let range = f.next().unwrap_or("").trim();
                Some(Served {
                    request,
                    status,
                    body_bytes,
                    range: if range == "-" {
                        String::new()
                    } else {
                        range.to_string()
                    },
                })
            })
            .collect()
    }

    /// The access log once it has at least `lines` lines (nginx writes a
    /// line when it finalizes a request, which may be a moment after the
    /// client has read the last byte); panics after 5 s.
    pub fn served_at_least(&self, lines: usize) -> Vec<Served> {
        self.served_until(|s| s.len() >= lines)
    }

    /// The access log once `done` holds for it; panics after 5 s.
    pub fn served_until(&self, done: impl Fn(&[Served]) -> bool) -> Vec<Served> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.served();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the access log never got there: {s:#?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Body bytes nginx has sent so far.
    pub fn bytes_served(&self) -> u64 {
        self.served().iter().map(|s| s.body_bytes).sum()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`), with `openssl`.
fn make_certs(dir: &Path) {
    let openssl = find_tool("openssl").expect("openssl not found");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl)
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-new"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.csr",
            "-subj",
            "/CN=cartorio test CA",
        ],
    ]
    .concat());
    run(&[
        "x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.pem", "-days", "2",
        "-extfile", "ca.ext",
    ]);
    run(&[
        &["req", "-new"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}
