//! Sources against real servers: nginx (with and without Range), Python's
//! http.server, s3s-fs; plus an in-process HTTP server that fails on
//! purpose, for retries and resumed streams.
#[path = "servers/mod.rs"]
mod servers;

use std::path::Path;
use std::sync::{Arc, Mutex};

use cartorio::source::{ByteStream, S3Options, Source, SourceError, SourceOptions, Sources, Stat};
use futures_util::TryStreamExt;
use servers::{TestServer, e2e};

fn data(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn collect(s: ByteStream) -> std::io::Result<Vec<u8>> {
    let chunks: Vec<bytes::Bytes> = s.try_collect().await?;
    Ok(chunks.concat())
}

fn open(url: &str) -> Arc<dyn Source> {
    Sources::new()
        .open(url, &SourceOptions::default(), None)
        .unwrap()
}

/// Replaces `path` by a rename, as an uploader would.
fn replace(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const SIZE: usize = 300_000;

#[tokio::test]
async fn nginx_ranges_pins_and_bytes_served() {
    if !e2e("nginx_ranges_pins_and_bytes_served", &["nginx"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = data(SIZE, 1);
    std::fs::write(dir.path().join("image.tar"), &content).unwrap();
    let nginx = TestServer::nginx(dir.path());
    let src = open(&nginx.url("image.tar"));

    let stat = src.stat().await.unwrap();
    assert_eq!(stat.size, SIZE as u64);
    assert!(stat.version.starts_with('"'), "strong ETag: {stat:?}");

    // One 64 KiB window, as the tar walk reads: about 64 KiB leave nginx.
    let lines = nginx.served_at_least(1).len();
    let b = src.read_range(0, 65536, Some(&stat)).await.unwrap();
    assert_eq!(&b[..], &content[..65536]);
    let served = nginx.served_at_least(lines + 1);
    let read = &served[lines..];
    assert_eq!(read.len(), 1, "one request: {read:?}");
    assert_eq!(read[0].status, 206, "{read:?}");
    assert_eq!(read[0].range, "bytes=0-65535");
    let sent = read[0].body_bytes;
    assert!((65536..65536 + 1024).contains(&sent), "{sent} bytes served");

    let b = src.read_range(1000, 5000, Some(&stat)).await.unwrap();
    assert_eq!(&b[..], &content[1000..6000]);
    // Short at the end, empty past it (pinned or not: 416 is EOF).
    let b = src
        .read_range(SIZE as u64 - 10, 100, Some(&stat))
        .await
        .unwrap();
    assert_eq!(&b[..], &content[SIZE - 10..]);
    assert!(
        src.read_range(SIZE as u64, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        src.read_range(SIZE as u64, 10, Some(&stat))
            .await
            .unwrap()
            .is_empty()
    );

    let s = src.stream(100, Some(200_000), Some(&stat)).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), &content[100..200_100]);
    let s = src.stream(250_000, None, Some(&stat)).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), &content[250_000..]);
    let s = src.stream(0, None, None).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), content);

    // Replaced (new size, so a new ETag even within the same second).
    replace(&dir.path().join("image.tar"), &data(SIZE + 1, 2));
    let now = src.stat().await.unwrap();
    assert_ne!(now.version, stat.version);
    match src.read_range(0, 100, Some(&stat)).await {
        Err(SourceError::Changed {
            expected, actual, ..
        }) => {
            assert_eq!(expected, stat.version);
            assert_eq!(actual, now.version);
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    // nginx answered 412 (waits for the log line).
    nginx.served_until(|s| s.iter().any(|s| s.status == 412));
    match src.stream(10, Some(100), Some(&stat)).await {
        Err(SourceError::Changed { .. }) => {}
        other => panic!("expected Changed, got {:?}", other.map(|_| ())),
    }
    match src.stream(0, None, Some(&stat)).await {
        Err(SourceError::Changed { .. }) => {}
        other => panic!("expected Changed, got {:?}", other.map(|_| ())),
    }
    // The new version reads fine when pinned to it.
    let b = src.read_range(SIZE as u64, 10, Some(&now)).await.unwrap();
    assert_eq!(b.len(), 1);

    let missing = open(&nginx.url("nope.tar"));
    assert!(matches!(
        missing.stat().await,
        Err(SourceError::NotFound { .. })
    ));
    assert!(matches!(
        missing.read_range(0, 10, None).await,
        Err(SourceError::NotFound { .. })
    ));
    assert!(matches!(
        missing.stream(0, None, None).await.map(|_| ()),
        Err(SourceError::NotFound { .. })
    ));
}

/// A server that ignores Range: `read_range` says so (without reading the
/// body), a whole-object stream still works.
async fn range_less(server: &TestServer, content: &[u8]) {
    let src = open(&server.url("image.tar"));
    let stat = src.stat().await.unwrap();
    assert_eq!(stat.size, content.len() as u64);
    match src.read_range(1000, 65536, Some(&stat)).await {
        Err(SourceError::RangeUnsupported { url }) => assert!(url.ends_with("/image.tar")),
        other => panic!("expected RangeUnsupported, got {other:?}"),
    }
    let s = src.stream(0, None, None).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), content);
    let s = src.stream(0, None, Some(&stat)).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), content);
    // From 0 with a length: the head of the 200 answer.
    let s = src.stream(0, Some(1000), Some(&stat)).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), &content[..1000]);
    match src.stream(10, None, Some(&stat)).await {
        Err(SourceError::RangeUnsupported { .. }) => {}
        other => panic!("expected RangeUnsupported, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn nginx_without_ranges() {
    if !e2e("nginx_without_ranges", &["nginx"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = data(SIZE, 3);
    std::fs::write(dir.path().join("image.tar"), &content).unwrap();
    let nginx = TestServer::nginx_no_ranges(dir.path());
    range_less(&nginx, &content).await;
    let refused = nginx
        .served_until(|s| s.iter().any(|s| s.range == "bytes=1000-66535"))
        .into_iter()
        .find(|s| s.range == "bytes=1000-66535")
        .unwrap();
    assert_eq!(refused.status, 200);
    eprintln!(
        "nginx max_ranges 0: {} body bytes went out for the refused range (of {SIZE})",
        refused.body_bytes
    );
}

#[tokio::test]
async fn python_http_server_ignores_ranges() {
    if !e2e("python_http_server_ignores_ranges", &["python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = data(SIZE, 4);
    std::fs::write(dir.path().join("image.tar"), &content).unwrap();
    let py = TestServer::python(dir.path());
    range_less(&py, &content).await;
    // No ETag: the version is Last-Modified + size.
    let stat = open(&py.url("image.tar")).stat().await.unwrap();
    assert!(stat.version.starts_with("lm:"), "{stat:?}");
    assert!(matches!(
        open(&py.url("nope.tar")).stat().await,
        Err(SourceError::NotFound { .. })
    ));
}

const KEY: &str = "cartorio-test-key";
const SECRET: &str = "cartorio-test-secret-0123456789";

fn s3_opts(server: &TestServer, secret: &str) -> SourceOptions {
    SourceOptions {
        s3: S3Options {
            endpoint: Some(server.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(KEY.into()),
            secret_access_key: Some(secret.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn s3s_fs_reads_lists_and_denies() {
    if !e2e("s3s_fs_reads_lists_and_denies", &["s3s-fs"]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let bucket = root.path().join("artifacts");
    std::fs::create_dir_all(bucket.join("builds/app/1")).unwrap();
    std::fs::create_dir_all(bucket.join("builds/app/2")).unwrap();
    std::fs::create_dir_all(bucket.join("other")).unwrap();
    let content = data(SIZE, 5);
    std::fs::write(bucket.join("builds/app/1/image.tar"), &content).unwrap();
    std::fs::write(bucket.join("builds/app/2/image.tar"), data(10, 6)).unwrap();
    std::fs::write(bucket.join("other/x.tar"), b"x").unwrap();
    let s3 = TestServer::s3s(root.path(), KEY, SECRET);
    let sources = Sources::new();
    let opts = s3_opts(&s3, SECRET);
    let url = "s3://artifacts/builds/app/1/image.tar";
    let src = sources.open(url, &opts, None).unwrap();

    let stat = src.stat().await.unwrap();
    assert_eq!(stat.size, SIZE as u64);
    assert!(!stat.version.is_empty());
    let b = src.read_range(70_000, 65536, Some(&stat)).await.unwrap();
    assert_eq!(&b[..], &content[70_000..135_536]);
    let b = src.read_range(SIZE as u64 - 5, 100, None).await.unwrap();
    assert_eq!(&b[..], &content[SIZE - 5..]);
    assert!(
        src.read_range(SIZE as u64, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    let s = src.stream(1, Some(250_000), Some(&stat)).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), &content[1..250_001]);
    let s = src.stream(0, None, Some(&stat)).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), content);

    let listed = sources
        .list("s3://artifacts/builds/", &opts, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        listed,
        [
            "s3://artifacts/builds/app/1/image.tar",
            "s3://artifacts/builds/app/2/image.tar"
        ]
    );
    let all = sources
        .list("s3://artifacts", &opts, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[2], "s3://artifacts/other/x.tar");
    // Capped: the first keys in key order, and whether there were more.
    let capped = sources
        .list_capped("s3://artifacts", &opts, None, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(capped.urls, all[..2]);
    assert!(capped.truncated);

    let missing = sources
        .open("s3://artifacts/nope.tar", &opts, None)
        .unwrap();
    assert!(matches!(
        missing.stat().await,
        Err(SourceError::NotFound { .. })
    ));

    // A wrong secret: 403, named by bucket/key, the secret nowhere.
    let wrong = "not-the-secret-987654321";
    let bad = sources.open(url, &s3_opts(&s3, wrong), None).unwrap();
    for err in [
        bad.stat().await.unwrap_err(),
        bad.read_range(0, 10, None).await.unwrap_err(),
    ] {
        assert!(matches!(err, SourceError::Denied { .. }), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains("artifacts/builds/app/1/image.tar"),
            "{shown}"
        );
        assert!(!shown.contains(wrong) && !shown.contains(SECRET), "{shown}");
    }
    let err = sources
        .list("s3://artifacts/", &s3_opts(&s3, wrong), None)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Denied { .. }), "{err:?}");

    // Replaced: s3s-fs ignores If-Match and answers 200/206 with the new
    // object, whose ETag differs; the source compares it to the pin.
    replace(&bucket.join("builds/app/1/image.tar"), &data(SIZE, 7));
    let now = src.stat().await.unwrap();
    assert_ne!(now.version, stat.version, "s3s-fs ETag follows the content");
    match src.read_range(0, 100, Some(&stat)).await {
        Err(SourceError::Changed { actual, .. }) => assert_eq!(actual, now.version),
        other => panic!("expected Changed, got {other:?}"),
    }
    assert!(matches!(
        src.stream(0, None, Some(&stat)).await.map(|_| ()),
        Err(SourceError::Changed { .. })
    ));
}

#[tokio::test]
async fn directories_list_recursively() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("a/b/z.tar"), b"z").unwrap();
    std::fs::write(dir.path().join("a/y.tar"), b"y").unwrap();
    std::fs::write(dir.path().join("x.tar"), b"x").unwrap();
    std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("loop")).unwrap();
    let sources = Sources::new();
    let o = SourceOptions::default();
    let d = dir.path().to_str().unwrap();
    let paths = sources.list(d, &o, None).await.unwrap().unwrap();
    assert_eq!(
        paths,
        [
            format!("{d}/a/b/z.tar"),
            format!("{d}/a/y.tar"),
            format!("{d}/x.tar")
        ]
    );
    let urls = sources
        .list(&format!("file://{d}/"), &o, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(urls[0], format!("file://{d}/a/b/z.tar"));
    // Capped: the same first objects on every run (each folder's files in name order, then its
    // folders), and whether there were more.
    for _ in 0..3 {
        let capped = sources.list_capped(d, &o, None, 2).await.unwrap().unwrap();
        assert_eq!(capped.urls, [format!("{d}/a/y.tar"), format!("{d}/x.tar")]);
        assert!(capped.truncated);
    }
    let whole = sources.list_capped(d, &o, None, 3).await.unwrap().unwrap();
    assert_eq!(whole.urls, paths);
    assert!(!whole.truncated);
    // Relative to the config's directory.
    let rel = sources
        .list("a", &o, Some(dir.path()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rel, ["a/b/z.tar", "a/y.tar"]);
    assert!(
        sources
            .list("http://127.0.0.1:1/x/", &o, None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        sources.list(&format!("{d}/missing"), &o, None).await,
        Err(SourceError::NotFound { .. })
    ));
    assert!(matches!(
        sources.open("ftp://h/x", &o, None),
        Err(SourceError::Unsupported(_))
    ));
}

/// What the fake server does with the n-th request (from 0).
#[derive(Clone, Copy)]
enum Act {
    /// 503, no body.
    Unavailable,
    /// The asked range with a full Content-Length, cut after this many bytes.
    Cut(usize),
    /// The asked range.
    Serve,
    /// 405 to HEAD (like some object stores and presigned URLs).
    RefuseHead,
}

/// A request the fake server saw.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    range: String,
    if_match: String,
    authorization: String,
}

type Seen = Arc<Mutex<Vec<Req>>>;

/// (range, if-match) of each request.
fn ranges(seen: &Seen) -> Vec<(String, String)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|r| (r.range.clone(), r.if_match.clone()))
        .collect()
}

/// An HTTP/1.1 server that answers one request per connection with `acts`
/// in turn (then `Serve`), recording the requests' Range and If-Match.
async fn fake_server(content: Vec<u8>, acts: Vec<Act>) -> (String, Seen) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = sock.read(&mut buf).await.unwrap();
                if k == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..k]);
            }
            let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
            let header = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            let range = header("range");
            let method = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
            log.lock().unwrap().push(Req {
                method: method.clone(),
                range: range.clone(),
                if_match: header("if-match"),
                authorization: header("authorization"),
            });
            let act = acts.get(n).copied().unwrap_or(Act::Serve);
            n += 1;
            let total = content.len();
            let (start, end) = match range.strip_prefix("bytes=") {
                Some(r) => {
                    let (a, b) = r.split_once('-').unwrap();
                    let a: usize = a.parse().unwrap();
                    let b = if b.is_empty() {
                        total - 1
                    } else {
                        b.parse().unwrap()
                    };
                    (a, b.min(total - 1))
                }
                None => (0, total - 1),
            };
            let body = &content[start..=end];
            let act = match act {
                Act::RefuseHead if method != "HEAD" => Act::Serve,
                a => a,
            };
            let head = match act {
                Act::RefuseHead => {
                    "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                }
                Act::Unavailable => {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_string()
                }
                _ => format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{end}/{total}\r\n\
                     content-length: {}\r\netag: \"v1\"\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n",
                    body.len()
                ),
            };
            let _ = sock.write_all(head.as_bytes()).await;
            match act {
                _ if method == "HEAD" => {}
                Act::Unavailable | Act::RefuseHead => {}
                Act::Cut(k) => {
                    let _ = sock.write_all(&body[..k.min(body.len())]).await;
                }
                Act::Serve => {
                    let _ = sock.write_all(body).await;
                }
            }
            let _ = sock.shutdown().await;
        }
    });
    (format!("http://{addr}/image.tar"), seen)
}

fn fast_retries() -> SourceOptions {
    let mut o = SourceOptions::default();
    o.http.attempts = Some(3);
    o.http.retry_backoff_ms = Some(5);
    o
}

#[tokio::test]
async fn http_retries_5xx_and_resumes_a_broken_body() {
    let content = data(200_000, 8);
    let (url, seen) = fake_server(
        content.clone(),
        vec![Act::Unavailable, Act::Cut(50_000), Act::Cut(20_000)],
    )
    .await;
    let src = Sources::new().open(&url, &fast_retries(), None).unwrap();
    let pin = Stat {
        size: content.len() as u64,
        version: "\"v1\"".into(),
    };
    let s = src.stream(1000, Some(150_000), Some(&pin)).await.unwrap();
    assert_eq!(collect(s).await.unwrap(), &content[1000..151_000]);
    assert_eq!(
        ranges(&seen),
        [
            ("bytes=1000-150999".to_string(), "\"v1\"".to_string()),
            ("bytes=1000-150999".into(), "\"v1\"".into()),
            ("bytes=51000-150999".into(), "\"v1\"".into()),
            ("bytes=71000-150999".into(), "\"v1\"".into()),
        ]
    );
}

#[tokio::test]
async fn http_gives_up_after_bounded_tries() {
    let content = data(100_000, 9);
    // Always 503: three tries, then an error naming the status.
    let (url, seen) = fake_server(content.clone(), vec![Act::Unavailable; 10]).await;
    let src = Sources::new().open(&url, &fast_retries(), None).unwrap();
    let err = src.read_range(0, 10, None).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 3);

    // Unpinned, a broken body is not resumed: the stream ends in an error.
    let (url, seen) = fake_server(content.clone(), vec![Act::Cut(10_000)]).await;
    let src = Sources::new().open(&url, &fast_retries(), None).unwrap();
    let s = src.stream(5, None, None).await.unwrap();
    assert!(collect(s).await.is_err());
    assert_eq!(seen.lock().unwrap().len(), 1);

    // Pinned, resumed at most `attempts` - 1 times.
    let (url, seen) = fake_server(content.clone(), vec![Act::Cut(1000); 10]).await;
    let src = Sources::new().open(&url, &fast_retries(), None).unwrap();
    let pin = Stat {
        size: content.len() as u64,
        version: "\"v1\"".into(),
    };
    let s = src.stream(0, Some(50_000), Some(&pin)).await.unwrap();
    assert!(collect(s).await.is_err());
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn http_sends_extra_headers_and_stats_without_head() {
    let content = data(5000, 10);
    let (url, seen) = fake_server(content.clone(), vec![Act::RefuseHead]).await;
    let mut opts = fast_retries();
    opts.http
        .headers
        .insert("Authorization".into(), "Bearer sekrit-token".into());
    let sources = Sources::new();
    let src = sources.open(&url, &opts, None).unwrap();
    // HEAD refused (405): the size comes from GET Range: bytes=0-0.
    let stat = src.stat().await.unwrap();
    assert_eq!(stat.size, 5000);
    assert_eq!(stat.version, "\"v1\"");
    let b = src.read_range(10, 20, Some(&stat)).await.unwrap();
    assert_eq!(&b[..], &content[10..30]);
    let reqs = seen.lock().unwrap().clone();
    let methods: Vec<&str> = reqs.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["HEAD", "GET", "GET"]);
    assert_eq!(reqs[1].range, "bytes=0-0");
    assert!(
        reqs.iter()
            .all(|r| r.authorization == "bearer sekrit-token")
    );
    // Neither the source, the options nor the factory show the token.
    let shown = format!("{src:?} {opts:?} {sources:?}");
    assert!(!shown.contains("sekrit"), "{shown}");
}

#[tokio::test]
async fn https_with_a_custom_ca() {
    if !e2e("https_with_a_custom_ca", &["nginx", "openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = data(100_000, 11);
    std::fs::write(dir.path().join("image.tar"), &content).unwrap();
    let nginx = TestServer::nginx_tls(dir.path());
    let url = nginx.url("image.tar");
    assert!(url.starts_with("https://"));
    let sources = Sources::new();

    // The system roots don't know the test CA.
    let err = sources
        .open(&url, &fast_retries(), None)
        .unwrap()
        .stat()
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");

    let mut opts = fast_retries();
    opts.http.ca_file = Some(nginx.ca_file());
    let src = sources.open(&url, &opts, None).unwrap();
    let stat = src.stat().await.unwrap();
    assert_eq!(stat.size, 100_000);
    let b = src.read_range(500, 1000, Some(&stat)).await.unwrap();
    assert_eq!(&b[..], &content[500..1500]);

    // A file that is not a CA bundle is an error when the source is opened.
    opts.http.ca_file = Some(dir.path().join("image.tar"));
    assert!(sources.open(&url, &opts, None).is_err());
}
