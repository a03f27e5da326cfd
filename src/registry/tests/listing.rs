//! Tag lists, the catalog and referrers: the JSON listing endpoints.
use http::StatusCode;
use serde_json::json;

use super::fake::{Fake, manifest_digest};
use super::get;
use crate::image::media;

#[tokio::test]
async fn tags_list_whole_sorted() {
    let images = Fake::default();
    let r = get(&images, "/v2/library/app/tags/list?ns=docker.io").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("link"), None);
    assert_eq!(
        r.json(),
        json!({"name": "library/app", "tags": ["latest", "v1", "v10", "v2", "v3"]})
    );
}

#[tokio::test]
async fn tags_list_pages_with_link_headers() {
    let images = Fake::default();
    let r = get(&images, "/v2/library/app/tags/list?n=2").await;
    assert_eq!(r.json()["tags"], json!(["latest", "v1"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/library/app/tags/list?n=2&last=v1>; rel=\"next\"")
    );
    let r = get(&images, "/v2/library/app/tags/list?n=2&last=v1").await;
    assert_eq!(r.json()["tags"], json!(["v10", "v2"]));
    assert_eq!(
        r.header("link"),
        Some("</v2/library/app/tags/list?n=2&last=v2>; rel=\"next\"")
    );
    let r = get(&images, "/v2/library/app/tags/list?last=v%32&n=2").await;
    assert_eq!(r.json()["tags"], json!(["v3"]));
    assert_eq!(r.header("link"), None);
    let r = get(&images, "/v2/library/app/tags/list?n=0").await;
    assert_eq!(r.json()["tags"], json!([]));
    assert_eq!(r.header("link"), None);
}

#[tokio::test]
async fn catalog_pages_the_same_way() {
    let images = Fake::default();
    let r = get(&images, "/v2/_catalog").await;
    assert_eq!(
        r.json(),
        json!({"repositories": ["library/app", "other", "zeta/x"]})
    );
    let r = get(&images, "/v2/_catalog?n=1&last=library/app").await;
    assert_eq!(r.json(), json!({"repositories": ["other"]}));
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?n=1&last=other>; rel=\"next\"")
    );
}

#[tokio::test]
async fn referrers_as_an_index_with_optional_filter() {
    let images = Fake::default();
    let uri = format!("/v2/library/app/referrers/{}", manifest_digest());
    let r = get(&images, &uri).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some(media::OCI_INDEX));
    assert_eq!(r.header("oci-filters-applied"), None);
    let body = r.json();
    assert_eq!(body["schemaVersion"], json!(2));
    assert_eq!(body["mediaType"], json!(media::OCI_INDEX));
    assert_eq!(body["manifests"].as_array().map(Vec::len), Some(2));

    // `+` unescaped and escaped both mean `+`.
    for filter in [
        "application/vnd.example.sbom+json",
        "application%2Fvnd.example.sbom%2Bjson",
    ] {
        let r = get(&images, &format!("{uri}?artifactType={filter}")).await;
        assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
        let manifests = r.json()["manifests"].clone();
        assert_eq!(manifests.as_array().map(Vec::len), Some(1), "{filter}");
        assert_eq!(
            manifests[0]["artifactType"],
            json!("application/vnd.example.sbom+json")
        );
    }

    let other = format!("/v2/library/app/referrers/sha256:{}", "1".repeat(64));
    let r = get(&images, &other).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["manifests"], json!([]));

    let r = get(&images, "/v2/library/app/referrers/latest").await;
    assert_eq!(r.error_code(), "DIGEST_INVALID");
}
