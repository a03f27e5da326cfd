//! `/v2/<name>/manifests/<reference>`.
use http::{Method, StatusCode};

use super::fake::{Fake, MANIFEST, manifest_digest};
use super::{get, send};
use crate::image::media;

#[tokio::test]
async fn by_tag_and_by_digest() {
    let images = Fake::default();
    let digest = manifest_digest().to_string();
    for reference in ["latest", digest.as_str()] {
        let r = get(&images, &format!("/v2/library/app/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some(media::OCI_MANIFEST));
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(r.header("etag"), Some(format!("\"{digest}\"").as_str()));
        assert_eq!(
            r.header("content-length"),
            Some(MANIFEST.len().to_string().as_str())
        );
        assert_eq!(r.body(), MANIFEST);
    }
}

#[tokio::test]
async fn head_has_the_real_length_and_no_body() {
    let images = Fake::default();
    let r = send(&images, Method::HEAD, "/v2/library/app/manifests/v1", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("content-length"),
        Some(MANIFEST.len().to_string().as_str())
    );
    assert_eq!(r.header("content-type"), Some(media::OCI_MANIFEST));
    assert!(r.body().is_empty());
}

#[tokio::test]
async fn accept_values_reach_the_catalog_and_never_cause_406() {
    let images = Fake::default();
    let r = send(
        &images,
        Method::GET,
        "/v2/library/app/manifests/latest?ns=docker.io",
        &[
            (
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json; q=0.9, text/nothing",
            ),
            ("accept", " application/vnd.oci.image.index.v1+json"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let accept = images.accept.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(
        accept,
        [
            "application/vnd.docker.distribution.manifest.v2+json",
            "text/nothing",
            "application/vnd.oci.image.index.v1+json"
        ]
    );
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let images = Fake::default();
    let etag = format!("\"{}\"", manifest_digest());
    for inm in [etag.as_str(), "*", "\"other\", W/\"x\", "] {
        let r = send(
            &images,
            Method::GET,
            "/v2/library/app/manifests/latest",
            &[("if-none-match", inm)],
        )
        .await;
        if inm.contains("other") {
            assert_eq!(r.status, StatusCode::OK);
        } else {
            assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{inm}");
            assert!(r.body().is_empty());
            assert_eq!(r.header("etag"), Some(etag.as_str()));
        }
    }
}

#[tokio::test]
async fn invalid_references_are_manifest_unknown_and_never_reach_the_catalog() {
    let images = Fake::default();
    let long = "a".repeat(129);
    for reference in [
        ".hidden",
        "-x",
        "a%3Ab",
        "sha256:xyz",
        "md5:00",
        long.as_str(),
    ] {
        let r = get(&images, &format!("/v2/library/app/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{reference}");
        assert_eq!(r.error_code(), "MANIFEST_UNKNOWN", "{reference}");
    }
    assert!(images.calls().is_empty());
}
