//! `/v2/<name>/blobs/<digest>`: whole, ranged, HEAD, empty, and a blob
//! whose bytes turn out wrong halfway.
use http::{Method, StatusCode};

use super::fake::{BLOB, Fake, LIAR_SIZE, blob_digest, empty_digest, liar_digest};
use super::{get, send};

fn blob_uri() -> String {
    format!("/v2/library/app/blobs/{}", blob_digest())
}

async fn ranged(images: &Fake, range: &str) -> super::Reply {
    send(images, Method::GET, &blob_uri(), &[("range", range)]).await
}

#[tokio::test]
async fn whole_blob_with_headers() {
    let images = Fake::default();
    let r = get(&images, &blob_uri()).await;
    let digest = blob_digest().to_string();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body(), BLOB);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("content-length"), Some("26"));
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(r.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-range"), None);
}

#[tokio::test]
async fn head_reports_the_full_size_without_reading() {
    let images = Fake::default();
    let r = send(
        &images,
        Method::HEAD,
        &blob_uri(),
        &[("range", "bytes=0-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("26"));
    assert!(r.body().is_empty());
    assert!(!images.calls().iter().any(|c| c.starts_with("blob ")));
}

#[tokio::test]
async fn single_ranges_are_206_with_exact_bytes() {
    let images = Fake::default();
    let cases = [
        ("bytes=0-4", &b"abcde"[..], "bytes 0-4/26"),
        ("bytes=20-", &b"uvwxyz"[..], "bytes 20-25/26"),
        ("bytes=-3", &b"xyz"[..], "bytes 23-25/26"),
        ("bytes=24-1000", &b"yz"[..], "bytes 24-25/26"),
        ("bytes=3-16", &b"defghijklmnopq"[..], "bytes 3-16/26"),
    ];
    for (range, bytes, content_range) in cases {
        let r = ranged(&images, range).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(r.body(), bytes, "{range}");
        assert_eq!(r.header("content-range"), Some(content_range));
        assert_eq!(
            r.header("content-length"),
            Some(bytes.len().to_string().as_str())
        );
    }
}

#[tokio::test]
async fn unsatisfiable_range_is_416() {
    let images = Fake::default();
    for range in ["bytes=26-", "bytes=100-200", "bytes=-0"] {
        let r = ranged(&images, range).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */26"));
        assert!(r.body().is_empty());
    }
}

#[tokio::test]
async fn malformed_multi_or_stale_ranges_serve_the_whole_blob() {
    let images = Fake::default();
    for range in ["bytes=0-1,4-5", "bytes=5-2", "lines=1-2", "bytes=x-"] {
        let r = ranged(&images, range).await;
        assert_eq!(r.status, StatusCode::OK, "{range}");
        assert_eq!(r.body(), BLOB);
    }
    let r = send(
        &images,
        Method::GET,
        &blob_uri(),
        &[("range", "bytes=0-1"), ("if-range", "\"sha256:other\"")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let etag = format!("\"{}\"", blob_digest());
    let r = send(
        &images,
        Method::GET,
        &blob_uri(),
        &[("range", "bytes=0-1"), ("if-range", etag.as_str())],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body(), b"ab");
}

#[tokio::test]
async fn empty_blob_is_served() {
    let images = Fake::default();
    let uri = format!("/v2/library/app/blobs/{}", empty_digest());
    for range in [None, Some("bytes=0-")] {
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
        let r = send(&images, Method::GET, &uri, &headers).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), Some("0"));
        assert!(r.body().is_empty());
    }
    let r = send(&images, Method::HEAD, &uri, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("0"));
}

#[tokio::test]
async fn a_failing_stream_makes_the_body_fail() {
    let images = Fake::default();
    let r = get(&images, &format!("/v2/library/app/blobs/{}", liar_digest())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-length"),
        Some(LIAR_SIZE.to_string().as_str())
    );
    assert!(r.body.is_err(), "a body with wrong bytes must not complete");
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let images = Fake::default();
    let etag = format!("\"{}\"", blob_digest());
    let r = send(
        &images,
        Method::GET,
        &blob_uri(),
        &[("if-none-match", etag.as_str())],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body().is_empty());
}

#[tokio::test]
async fn bad_or_unknown_digests() {
    let images = Fake::default();
    let upper = format!("sha256:{}", "A".repeat(64));
    for digest in [
        "nope",
        "sha256:123",
        "sha512:00",
        upper.as_str(),
        "sha256%3Aabc",
    ] {
        let r = get(&images, &format!("/v2/library/app/blobs/{digest}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{digest}");
        assert_eq!(r.error_code(), "DIGEST_INVALID", "{digest}");
    }
    assert!(images.calls().is_empty());
    let unknown = format!("sha256:{}", "0".repeat(64));
    let r = get(&images, &format!("/v2/library/app/blobs/{unknown}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
}
