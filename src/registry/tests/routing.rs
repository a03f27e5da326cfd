//! The base endpoint, method refusal, unknown paths and hostile names.
use http::{Method, StatusCode};

use super::fake::{Fake, REPO, blob_digest};
use super::{get, send};

#[tokio::test]
async fn base_answers_empty_json() {
    let images = Fake::default();
    for uri in ["/v2/", "/v2"] {
        let r = get(&images, uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body(), b"{}");
    }
    let r = send(&images, Method::HEAD, "/v2/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), Some("2"));
    assert!(r.body().is_empty());
}

#[tokio::test]
async fn writes_are_unsupported_everywhere() {
    let images = Fake::default();
    let blob = format!("/v2/{REPO}/blobs/{}", blob_digest());
    let paths = [
        "/v2/",
        "/v2/library/app/manifests/latest",
        blob.as_str(),
        "/v2/library/app/blobs/uploads/",
        "/v2/library/app/blobs/uploads/some-id",
        "/v2/library/app/tags/list",
        "/v2/_catalog",
        "/v2/../etc/manifests/x",
        "/nowhere",
    ];
    let methods = [
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ];
    for path in paths {
        for method in methods.iter() {
            let r = send(&images, method.clone(), path, &[]).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"));
            assert_eq!(r.error_code(), "UNSUPPORTED");
        }
    }
    assert!(images.calls().is_empty());
}

#[tokio::test]
async fn upload_sessions_do_not_exist() {
    let images = Fake::default();
    let r = get(&images, "/v2/library/app/blobs/uploads/abc").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    assert!(images.calls().is_empty());
}

#[tokio::test]
async fn unknown_paths_are_404_not_found() {
    let images = Fake::default();
    for uri in [
        "/",
        "/v1/_ping",
        "/v2/library/app",
        "/v2/library/app/tags/all",
        "/v2/library/app/whatever/x",
    ] {
        let r = get(&images, uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(r.error_code(), "NOT_FOUND", "{uri}");
    }
    assert!(images.calls().is_empty());
}

#[tokio::test]
async fn hostile_names_are_name_invalid_and_never_reach_the_catalog() {
    let images = Fake::default();
    let long = format!("/v2/{}/manifests/latest", "a".repeat(300));
    let uris = [
        "/v2/../manifests/latest",
        "/v2/library/../app/manifests/latest",
        "/v2/%2e%2e/manifests/latest",
        "/v2/library%2fapp/manifests/latest",
        "/v2/%2E%2E/%2e%2e/blobs/sha256:00",
        "/v2/Library/App/manifests/latest",
        "/v2//app/tags/list",
        "/v2/app//tags/list",
        "/v2/./app/referrers/sha256:00",
        "/v2/app%00/manifests/latest",
        long.as_str(),
    ];
    for uri in uris {
        for method in [Method::GET, Method::HEAD] {
            let r = send(&images, method.clone(), uri, &[]).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{method} {uri}");
            if method == Method::GET {
                assert_eq!(r.error_code(), "NAME_INVALID", "{uri}");
                let message = r.json()["errors"][0]["message"].to_string();
                assert!(message.len() < 300, "long names are not echoed whole");
            } else {
                assert!(r.body().is_empty());
            }
        }
    }
    assert!(images.calls().is_empty(), "{:?}", images.calls());
}

#[tokio::test]
async fn catalog_failures_map_to_status_and_code() {
    let images = Fake::default();
    let cases = [
        (
            "/v2/nobody/manifests/latest",
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
        (
            "/v2/library/app/manifests/nope",
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        ),
        (
            "/v2/broken/img/manifests/latest",
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
        ),
        (
            "/v2/remote/img/tags/list",
            StatusCode::BAD_GATEWAY,
            "UNKNOWN",
        ),
    ];
    for (uri, status, code) in cases {
        let r = get(&images, uri).await;
        assert_eq!(r.status, status, "{uri}");
        assert_eq!(r.error_code(), code, "{uri}");
        assert!(r.json()["errors"][0]["message"].is_string());
    }
}
