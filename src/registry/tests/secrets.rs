//! What error bodies may say: the image, never its source URL, and client
//! input only up to a cap.
use http::{Method, StatusCode};

use super::fake::{Fake, SECRET_URL};
use super::{get, send};

#[tokio::test]
async fn failures_name_the_image_not_the_source() {
    let images = Fake::default();
    let cases = [
        (
            "/v2/broken/img/manifests/latest",
            StatusCode::INTERNAL_SERVER_ERROR,
            "broken/img:latest",
        ),
        (
            "/v2/remote/img/manifests/v1",
            StatusCode::BAD_GATEWAY,
            "remote/img:v1",
        ),
        (
            "/v2/remote/img/tags/list",
            StatusCode::BAD_GATEWAY,
            "remote/img",
        ),
    ];
    for (uri, status, image) in cases {
        let r = get(&images, uri).await;
        assert_eq!(r.status, status, "{uri}");
        let body = String::from_utf8_lossy(r.body()).into_owned();
        for secret in ["S3CRETPW", "TOPSECRET", "alice", "10.0.0.1", SECRET_URL] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
        let message = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.starts_with(&format!("{image}: ")), "{message}");
    }
}

#[tokio::test]
async fn client_input_is_echoed_only_up_to_a_cap() {
    let images = Fake::default();
    let tag = "t".repeat(10 * 1024);
    let r = get(&images, &format!("/v2/library/app/manifests/{tag}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body().len() < 1024, "{} bytes", r.body().len());

    let name = format!("a{}", "/b".repeat(5 * 1024));
    let r = get(&images, &format!("/v2/{name}/manifests/latest")).await;
    assert!(
        r.body().len() < 1024,
        "{} bytes: {}",
        r.body().len(),
        String::from_utf8_lossy(&r.body()[..300])
    );

    let method = Method::from_bytes(&vec![b'X'; 100 * 1024]).expect("a method");
    let r = send(&images, method, "/v2/", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.body().len() < 1024, "{} bytes", r.body().len());
    assert!(String::from_utf8_lossy(r.body()).contains("XXXX"));
}
