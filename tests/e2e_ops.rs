//! Operating the real binary: connection limits, timeouts and what they
//! leave in the metrics. The images are rootfs tarballs written here, so
//! these tests need neither the fixture script nor skopeo.
mod common;
mod servers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use servers::TestServer;

/// A rootfs tarball holding one file of `size` bytes that do not compress.
fn rootfs(dir: &Path, size: usize) -> std::path::PathBuf {
    let path = dir.join("rootfs.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).expect("create"));
    let mut data = Vec::with_capacity(size);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    let mut h = tar::Header::new_gnu();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "data.bin", &data[..])
        .expect("append");
    b.finish().expect("finish");
    path
}

/// The value of a counter or gauge in `/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    let text = http("GET", &server.url("/metrics"), &[]).text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Reads until the server closes; panics if it is still open after `secs`.
fn read_until_closed(s: &mut TcpStream, secs: u64) -> usize {
    s.set_read_timeout(Some(Duration::from_secs(secs)))
        .expect("timeout");
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return total,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn silent_sockets_under_a_low_fd_limit_leave_others_served() {
    if !e2e("silent_sockets_under_a_low_fd_limit_leave_others_served") {
        return;
    }
    let tmp = tempdir();
    let image = rootfs(tmp.path(), 1 << 16);
    let ng = TestServer::nginx(image.parent().expect("folder"));
    let name = image.file_name().and_then(|n| n.to_str()).expect("name");
    let arg = format!("app:v1={}", ng.url(&format!("/{name}")));
    // 64 descriptors, hard limit too (so start-up cannot raise it), and a
    // connection cap above that: accept hits EMFILE.
    let server = Server::try_start_wrapped(
        &["prlimit", "--nofile=64:64", "--"],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cache-dir",
            "none",
            "--max-connections",
            "1000",
            "--idle-timeout",
            "60s",
            &arg,
        ],
        &[],
    )
    .unwrap_or_else(|(status, stderr)| panic!("did not start ({status}):\n{stderr}"));
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&server.addr).expect("connect"))
        .collect();
    // Let them sit idle for more than a second: the ones shed first.
    std::thread::sleep(Duration::from_millis(1500));
    let r = http(
        "GET",
        &server.url("/v2/app/manifests/v1"),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["layers"].is_array());
    drop(silent);
    let elapsed = started.elapsed().as_secs();
    let stderr = server.stderr();
    let lines = stderr
        .lines()
        .filter(|l| l.contains("cannot accept connections"))
        .count() as u64;
    assert!(lines >= 1, "the fd shortage is logged:\n{stderr}");
    // One line per 5 s period at most, not one per attempt.
    assert!(
        lines <= elapsed / 5 + 2,
        "{lines} lines in {elapsed} s:\n{stderr}"
    );
    assert!(metric(&server, "cartorio_connections_shed_total") >= 1);
}

#[test]
fn idle_connections_and_stalled_readers_are_closed_and_their_fds_freed() {
    if !e2e("idle_connections_and_stalled_readers_are_closed_and_their_fds_freed") {
        return;
    }
    let tmp = tempdir();
    // Larger than the loopback socket buffers a non-reading client leaves.
    let size = 16 << 20;
    let image = rootfs(tmp.path(), size);
    let layer = sha256_file(&image);
    let ng = TestServer::nginx(image.parent().expect("folder"));
    let name = image.file_name().and_then(|n| n.to_str()).expect("name");
    let arg = format!("app:v1={}", ng.url(&format!("/{name}")));
    let server = Server::serve(&[
        "--cache-dir",
        "none",
        "--idle-timeout",
        "2s",
        "--write-timeout",
        "2s",
        &arg,
    ]);
    let pid = server.pid();
    // Warm the index so the measured fds are the connections'.
    let r = http("GET", &server.url("/v2/app/manifests/v1"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    let baseline = open_fds(pid);

    // A connection that says nothing is closed after the idle timeout.
    let mut silent = TcpStream::connect(&server.addr).expect("connect");
    assert_eq!(read_until_closed(&mut silent, 30), 0);

    // A client that asks for the layer and stops reading.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(&server.addr).expect("connect");
        write!(s, "GET /v2/app/blobs/{layer} HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        open_fds(pid) >= baseline + 3,
        "the pulls hold their sockets"
    );
    // Dropped by the write timeout: what arrives afterwards is cut short.
    std::thread::sleep(Duration::from_secs(6));
    for s in &mut stalled {
        let got = read_until_closed(s, 30);
        assert!(got < size, "the stalled response was dropped ({got} bytes)");
    }
    let cut = metric(&server, "cartorio_connections_closed_write_timeout_total");
    assert!(
        cut >= 3,
        "{cut} cut; {}",
        http("GET", &server.url("/metrics"), &[]).text()
    );
    assert!(metric(&server, "cartorio_connections_closed_idle_total") >= 1);
    // Their descriptors are back (the metrics request's own is closed too).
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(pid) > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        open_fds(pid) <= baseline,
        "fds: {} now, {baseline} before",
        open_fds(pid)
    );
    // And a reader that reads gets the whole layer.
    let r = http("GET", &server.url(&format!("/v2/app/blobs/{layer}")), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), layer);
}

/// A bare HTTP/1.1 upstream on 127.0.0.1 answering by path: `/denied…`
/// 401, `/forbidden…` 403, `/garbage…` 4 KiB that are no archive (with
/// ranges), anything else 404. Runs until the test process ends.
fn upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("").to_string();
                let path = words.next().unwrap_or("").to_string();
                let garbage = vec![0x5au8; 4096];
                let range = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("range: bytes=")
                            .map(str::to_string)
                    })
                    .and_then(|r| {
                        let (a, b) = r.trim().split_once('-')?;
                        let a: usize = a.parse().ok()?;
                        let b: usize = b.parse().unwrap_or(garbage.len() - 1);
                        Some((a.min(garbage.len() - 1), b.min(garbage.len() - 1)))
                    });
                let (status, body): (&str, Vec<u8>) = if path.starts_with("/denied") {
                    ("401 Unauthorized", b"no".to_vec())
                } else if path.starts_with("/forbidden") {
                    ("403 Forbidden", b"no".to_vec())
                } else if path.starts_with("/garbage") {
                    match range {
                        Some((a, b)) => ("206 Partial Content", garbage[a..=b].to_vec()),
                        None => ("200 OK", garbage.clone()),
                    }
                } else {
                    ("404 Not Found", b"none".to_vec())
                };
                let mut out = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"g1\"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
                    body.len()
                );
                if let Some((a, b)) = range.filter(|_| status.starts_with("206")) {
                    out.push_str(&format!(
                        "Content-Range: bytes {a}-{b}/{}\r\n",
                        garbage.len()
                    ));
                }
                out.push_str("\r\n");
                let _ = conn.write_all(out.as_bytes());
                if method != "HEAD" {
                    let _ = conn.write_all(&body);
                }
            });
        }
    });
    port
}

#[test]
fn no_secret_reaches_a_client_or_the_log() {
    if !e2e("no_secret_reaches_a_client_or_the_log") {
        return;
    }
    const SECRETS: [&str; 4] = ["S3CRETPW", "TOPSECRET", "HEADERSECRET", "alice"];
    let port = upstream();
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = |port: u16, path: &str| {
        format!("http://alice:S3CRETPW@127.0.0.1:{port}/{path}?X-Amz-Signature=TOPSECRET")
    };
    let image = |name: &str, source: String| {
        let tags = if name.contains('{') {
            ""
        } else {
            "tags = [\"v1\"]\n"
        };
        format!(
            "[[image]]\nname = \"{name}\"\nsource = {}\n{tags}\
             [image.http]\nheaders = {{ Authorization = \"Bearer HEADERSECRET\" }}\nattempts = 1\n",
            toml_str(&source)
        )
    };
    let config = [
        // Static sources are looked at on start-up (and must answer);
        // templated routes only on request.
        image("down/{repo}", url(down, "{repo}.tar")),
        image("denied/{repo}", url(port, "denied/{repo}.tar")),
        image("forbidden/{repo}", url(port, "forbidden/{repo}.tar")),
        image("garbage/{repo}", url(port, "garbage/{repo}.tar")),
        image("builds/{repo}", url(port, "builds/{repo}/{tag}.tar")),
    ]
    .concat();
    let tmp = tempdir();
    let server = Server::try_start_env(
        &[
            "proxy",
            "--config",
            write_config(tmp.path(), &config).to_str().expect("path"),
            "--listen",
            "127.0.0.1:0",
        ],
        &[("RUST_LOG", "debug")],
    )
    .unwrap_or_else(|(status, stderr)| panic!("did not start ({status}):\n{stderr}"));
    let cases = [
        ("/v2/down/app/manifests/v1", 502),
        ("/v2/denied/app/manifests/v1", 502),
        ("/v2/forbidden/app/manifests/v1", 502),
        ("/v2/garbage/app/manifests/v1", 500),
        ("/v2/builds/team/app/manifests/1", 404),
        // Over HTTP, tags/list shows the tags pulled so far: none.
        ("/v2/down/app/tags/list", 200),
    ];
    for (path, status) in cases {
        let r = http("GET", &server.url(path), &[ACCEPT_MANIFESTS]);
        let body = r.text();
        assert_eq!(r.status, status, "{path}: {body}");
        for s in SECRETS {
            assert!(!body.contains(s), "{s} in the answer to {path}: {body}");
        }
    }
    let r = http("GET", &server.url("/metrics"), &[]);
    for s in SECRETS {
        assert!(!r.text().contains(s), "{s} in /metrics");
    }
    let stderr = server.stderr();
    for s in SECRETS {
        assert!(!stderr.contains(s), "{s} in the log:\n{stderr}");
    }
    // The log still says which source failed, redacted.
    assert!(
        stderr.contains(&format!("http://***@127.0.0.1:{port}/denied/app.tar?***")),
        "{stderr}"
    );
}

/// Blob bytes read from the source are counted whether or not the cache
/// keeps them: with no disk tier, and with a disk tier that cannot write.
/// The archive sits behind nginx: a local archive is read in place and
/// never goes through the cache at all.
#[test]
fn source_bytes_are_counted_when_the_cache_cannot_keep_them() {
    if !e2e("source_bytes_are_counted_when_the_cache_cannot_keep_them") {
        return;
    }
    let tmp = tempdir();
    let image = rootfs(tmp.path(), 1 << 20);
    // A rootfs tarball is its own layer: the blob is the whole file.
    let size = std::fs::metadata(&image).expect("stat").len();
    let layer = sha256_file(&image);
    let ng = TestServer::nginx(image.parent().expect("folder"));
    let name = image.file_name().and_then(|n| n.to_str()).expect("name");
    let arg = format!("app:v1={}", ng.url(&format!("/{name}")));
    let pull = |server: &Server| {
        let r = http("GET", &server.url(&format!("/v2/app/blobs/{layer}")), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(sha256(&r.body), layer);
    };

    // No disk tier: every pull reads the source.
    let server = Server::serve(&["--cache-dir", "none", &arg]);
    pull(&server);
    pull(&server);
    assert_eq!(
        metric(&server, "cartorio_upstream_blob_bytes_total"),
        2 * size
    );
    drop(server);

    // A disk tier whose temp folder cannot take a file (a read-only or
    // full disk fails the same way): served from the source, counted, and
    // the write failure counted too.
    let cache = tmp.path().join("cache");
    let server = Server::serve(&["--cache-dir", cache.to_str().expect("path"), &arg]);
    for sub in ["sha256", "tmp"] {
        let _ = std::fs::remove_dir_all(cache.join(sub));
    }
    std::fs::write(cache.join("tmp"), b"not a folder").expect("write");
    pull(&server);
    assert_eq!(metric(&server, "cartorio_upstream_blob_bytes_total"), size);
    assert!(metric(&server, "cartorio_cache_write_errors_total") >= 1);
}

/// The JSON lines of a server's stderr (after the request-line buffer is
/// written out); panics on a line that is not a JSON object.
fn json_log(server: &Server) -> Vec<serde_json::Value> {
    std::thread::sleep(Duration::from_millis(400));
    server
        .stderr()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
        })
        .collect()
}

/// The request lines of a JSON log.
fn access_lines(log: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    log.iter()
        .filter(|v| v["target"] == "cartorio::access")
        .collect()
}

/// `--log-format json`: one line per request with the client's request id
/// (or one made up and echoed), what was asked, the status, the body bytes
/// and the tier; lines logged while handling a request carry its id.
#[test]
fn json_request_logs_name_the_request_and_the_tier() {
    if !e2e("json_request_logs_name_the_request_and_the_tier") {
        return;
    }
    let tmp = tempdir();
    let image = rootfs(tmp.path(), 1 << 20);
    let layer = sha256_file(&image);
    let size = std::fs::metadata(&image).expect("stat").len();
    let ng = TestServer::nginx(image.parent().expect("folder"));
    let name = image.file_name().and_then(|n| n.to_str()).expect("name");
    let arg = format!("app:v1={}", ng.url(&format!("/{name}")));
    let cache = tmp.path().join("cache");
    let server = Server::serve(&[
        "--log-format",
        "json",
        "--cache-dir",
        cache.to_str().expect("path"),
        &arg,
    ]);
    let m = http(
        "GET",
        &server.url("/v2/app/manifests/v1"),
        &[
            ACCEPT_MANIFESTS,
            "X-Request-Id: 4bf92f35-77b3-4da6-a3ce-929d0e0e4736",
        ],
    );
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(
        m.header("x-request-id"),
        Some("4bf92f35-77b3-4da6-a3ce-929d0e0e4736")
    );
    let blob = format!("/v2/app/blobs/{layer}");
    // Cold: this request fills the cache. Warm: the verified file goes out
    // with sendfile (plain HTTP/1.1).
    let cold = http("GET", &server.url(&blob), &["X-Request-Id: cold-1"]);
    assert_eq!(sha256(&cold.body), layer);
    let warm = http("GET", &server.url(&blob), &["X-Request-Id: warm-1"]);
    assert_eq!(sha256(&warm.body), layer);
    let head = http("HEAD", &server.url(&blob), &["X-Request-Id: head-1"]);
    assert_eq!(head.status, 200);
    // An id that could forge a log field is replaced, and the new one echoed.
    let odd = http(
        "GET",
        &server.url("/v2/app/manifests/nope"),
        &["X-Request-Id: x\" \"level\":\"ERROR"],
    );
    assert_eq!(odd.status, 404);
    let made = odd.header("x-request-id").expect("an id").to_string();
    assert_eq!(made.len(), 16, "{made}");
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()), "{made}");

    let log = json_log(&server);
    let lines = access_lines(&log);
    let by_id = |id: &str| {
        *lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no request line for {id} in {lines:#?}"))
    };
    let l = by_id("4bf92f35-77b3-4da6-a3ce-929d0e0e4736");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["repository"], "app");
    assert_eq!(l["reference"], "v1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], m.body.len() as u64);
    assert_eq!(l["complete"], true);
    assert!(l["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{l}");
    assert!(l["tier"].is_null(), "a manifest has no blob tier: {l}");
    let l = by_id("cold-1");
    assert_eq!(l["reference"], layer.as_str());
    assert_eq!(l["tier"], "fill", "{l}");
    assert_eq!(l["bytes"], size);
    let l = by_id("warm-1");
    assert_eq!(l["tier"], "zero_copy", "{l}");
    assert_eq!(l["bytes"], size);
    let l = by_id("head-1");
    assert_eq!(
        (l["method"].as_str(), l["bytes"].as_u64()),
        (Some("HEAD"), Some(0))
    );
    let l = by_id(&made);
    assert_eq!(
        (l["status"].as_u64(), l["reference"].as_str()),
        (Some(404), Some("nope"))
    );
    drop(server);

    // A warning logged while handling a request carries its id: a cache
    // folder that cannot take the blob, served from the source.
    let cache = tmp.path().join("cache2");
    let server = Server::serve(&[
        "--log-format",
        "json",
        "--cache-dir",
        cache.to_str().expect("path"),
        &arg,
    ]);
    for sub in ["sha256", "tmp"] {
        let _ = std::fs::remove_dir_all(cache.join(sub));
    }
    std::fs::write(cache.join("tmp"), b"not a folder").expect("write");
    let r = http("GET", &server.url(&blob), &["X-Request-Id: ro-1"]);
    assert_eq!(sha256(&r.body), layer);
    let log = json_log(&server);
    let warn = log
        .iter()
        .find(|v| {
            v["level"] == "WARN"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cannot write"))
        })
        .unwrap_or_else(|| panic!("no cache warning in {log:#?}"));
    assert_eq!(warn["request_id"], "ro-1", "{warn}");
    let l = access_lines(&log)
        .into_iter()
        .find(|l| l["request_id"] == "ro-1")
        .expect("request line");
    assert_eq!(l["tier"], "source", "{l}");

    // A whole pull with skopeo: a request line for each of its requests,
    // every one of them a JSON object.
    let dest = tmp.path().join("pulled");
    skopeo_copy(
        &[],
        &server.docker_ref("app:v1"),
        &format!("dir:{}", dest.display()),
    );
    let log = json_log(&server);
    let lines = access_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l["repository"] == "app" && l["reference"] == "v1" && l["status"] == 200),
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l["request_id"].as_str().is_some()));
}

/// The text format names the same fields.
#[test]
fn text_request_logs_carry_the_request_id() {
    if !e2e("text_request_logs_carry_the_request_id") {
        return;
    }
    let tmp = tempdir();
    let image = rootfs(tmp.path(), 4096);
    let arg = format!("app:v1={}", image.display());
    let server = Server::serve(&[&arg]);
    let r = http(
        "GET",
        &server.url("/v2/app/manifests/v1"),
        &[ACCEPT_MANIFESTS, "X-Request-Id: text-1"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("text-1"));
    std::thread::sleep(Duration::from_millis(400));
    let stderr = server.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("cartorio::access") && l.contains("request_id=\"text-1\""))
        .unwrap_or_else(|| panic!("no request line:\n{stderr}"));
    for want in [
        "method=\"GET\"",
        "repository=\"app\"",
        "reference=\"v1\"",
        "status=200",
    ] {
        assert!(line.contains(want), "{want} in {line}");
    }
}

/// `/metrics` counts open connections (a gauge) and says why connections
/// were closed: idle (nothing sent), header timeout (a head that never
/// finished), as each happens.
#[test]
fn metrics_count_open_connections_and_each_timeout() {
    if !e2e("metrics_count_open_connections_and_each_timeout") {
        return;
    }
    let tmp = tempdir();
    let image = rootfs(tmp.path(), 4096);
    let arg = format!("app:v1={}", image.display());
    let server = Server::serve(&["--idle-timeout", "2s", &arg]);
    // Only the metrics request's own connection.
    assert_eq!(metric(&server, "cartorio_connections_open"), 1);
    let idle0 = metric(&server, "cartorio_connections_closed_idle_total");
    let head0 = metric(&server, "cartorio_connections_closed_header_timeout_total");
    let silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&server.addr).expect("connect"))
        .collect();
    let mut slow: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&server.addr).expect("connect"))
        .collect();
    for s in &mut slow {
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n")
            .expect("write");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric(&server, "cartorio_connections_open"), 6);
    for mut s in silent.into_iter().chain(slow) {
        read_until_closed(&mut s, 30);
    }
    assert_eq!(
        metric(&server, "cartorio_connections_closed_idle_total") - idle0,
        3
    );
    assert_eq!(
        metric(&server, "cartorio_connections_closed_header_timeout_total") - head0,
        2
    );
    assert_eq!(metric(&server, "cartorio_connections_open"), 1);
}

/// The OCI error code of an error response.
fn error_code(r: &Response) -> String {
    r.json()["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn sighup(server: &Server) {
    let st = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// Polls `path` until it answers `status` (a reload is asynchronous).
fn wait_status(server: &Server, path: &str, status: u16, secs: u64) -> Response {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = http("GET", &server.url(path), &[ACCEPT_MANIFESTS]);
        if r.status == status || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGHUP and config-file changes reload the config: added images pull,
/// removed ones are NAME_UNKNOWN, changed rules apply, a blob download
/// under way finishes whole, unchanged images keep their indexes; a
/// broken config is logged with its file and line and the old one keeps
/// serving.
#[test]
fn reload_on_sighup_and_on_file_change_keeps_serving() {
    if !e2e("reload_on_sighup_and_on_file_change_keeps_serving") {
        return;
    }
    let tmp = tempdir();
    let mk = |name: &str, size: usize| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        rootfs(&d, size)
    };
    let (a, b, c) = (mk("a", 4096), mk("b", 8192), mk("c", 24 << 20));
    let c_layer = sha256_file(&c);
    let entry = |name: &str, path: &Path| {
        format!(
            "[[image]]\nname = \"{name}\"\nsource = {}\ntags = [\"v1\"]\n",
            toml_str(&path.display().to_string())
        )
    };
    let cfg_path = tmp.path().join("images.toml");
    let write = |body: String| {
        // Written aside and renamed, as a ConfigMap update does.
        let t = tmp.path().join("images.toml.tmp");
        std::fs::write(&t, body).expect("write");
        std::fs::rename(&t, &cfg_path).expect("rename");
    };
    write(format!(
        "[auth]\nanonymous = [\"a\", \"c\"]\n{}{}{}",
        entry("a", &a),
        entry("c", &c),
        entry("x", &b)
    ));
    let server = Server::proxy(&cfg_path);
    let pull = |name: &str| {
        let (dir, m) = pull_dir(&server, &format!("{name}:v1"), &[]);
        check_dir_blobs(dir.path(), &m);
    };
    pull("a");
    let r = http(
        "GET",
        &server.url("/v2/x/manifests/v1"),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(
        (r.status, error_code(&r)),
        (404, "NAME_UNKNOWN".into()),
        "x is not allowed yet"
    );
    let indexed = || {
        metric(&server, "cartorio_index_loads_total")
            + metric(&server, "cartorio_index_restores_total")
    };
    let indexed_before = indexed();

    // A slow download of c's layer, under way across the reload.
    let slow_out = tmp.path().join("slow.bin");
    let mut slow = std::process::Command::new("curl")
        .args(["-sSf", "--limit-rate", "4M", "-o"])
        .arg(&slow_out)
        .arg(server.url(&format!("/v2/c/blobs/{c_layer}")))
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(700));

    // Add b, remove c, allow x.
    write(format!(
        "[auth]\nanonymous = [\"a\", \"b\", \"x\"]\n{}{}{}",
        entry("a", &a),
        entry("b", &b),
        entry("x", &b)
    ));
    sighup(&server);
    let r = wait_status(&server, "/v2/b/manifests/v1", 200, 30);
    assert_eq!(
        r.status,
        200,
        "b after the reload: {}\n{}",
        r.text(),
        server.stderr()
    );
    assert!(
        slow.try_wait().expect("curl").is_none(),
        "the slow download finished before the reload; make it slower"
    );
    let r = http(
        "GET",
        &server.url("/v2/c/manifests/v1"),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(
        (r.status, error_code(&r)),
        (404, "NAME_UNKNOWN".into()),
        "{}",
        r.text()
    );
    pull("b");
    pull("x");
    pull("a");
    // Only b's archive was new: a's index (and x's, the same entry as
    // before under a new rule) were kept.
    assert_eq!(indexed() - indexed_before, 1);
    let st = slow.wait().expect("curl");
    assert!(st.success(), "the download under way failed: {st}");
    assert_eq!(sha256_file(&slow_out), c_layer);

    // A broken config: logged with file and line; the old one serves.
    write(format!(
        "{}[[image]]\nname = \"b\"\nsource = \n",
        entry("a", &a)
    ));
    sighup(&server);
    let want = format!("{}:7", cfg_path.display());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.stderr().contains("not reloaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let stderr = server.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("not reloaded"))
        .unwrap_or_else(|| panic!("no reload error logged:\n{stderr}"));
    assert!(line.contains(&want), "{want} in {line}");
    pull("b");

    // A config-file change alone, no signal: c is back.
    write(format!("{}{}", entry("a", &a), entry("c", &c)));
    let r = wait_status(&server, "/v2/c/manifests/v1", 200, 30);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), server.stderr());
    let r = http(
        "GET",
        &server.url("/v2/b/manifests/v1"),
        &[ACCEPT_MANIFESTS],
    );
    assert_eq!(error_code(&r), "NAME_UNKNOWN");
}
