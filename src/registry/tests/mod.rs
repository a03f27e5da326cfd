//! In-process tests of the whole API through [`handle`], against a small
//! in-memory catalog, plus one test over a real socket.
mod blobs;
mod fake;
mod limits;
mod listing;
mod manifests;
mod ready;
mod routing;
mod secrets;
mod socket;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};

use super::{Readiness, handle};
use fake::Fake;

/// What a test sees of a response. `body` is `Err` when the body stream
/// failed (the server would abort the connection).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Bytes, std::io::Error>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn body(&self) -> &[u8] {
        match &self.body {
            Ok(b) => b,
            Err(e) => panic!("body failed: {e}"),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.body()).expect("JSON body")
    }

    /// The `code` of the first OCI error in the body.
    fn error_code(&self) -> String {
        assert_eq!(self.header("content-type"), Some("application/json"));
        self.json()["errors"][0]["code"]
            .as_str()
            .expect("an error code")
            .to_string()
    }
}

/// A readiness handle whose config is loaded and which has no disk cache.
fn loaded() -> Readiness {
    let r = Readiness::new(None);
    r.set_loaded(true);
    r
}

async fn send(images: &Fake, method: Method, uri: &str, headers: &[(&str, &str)]) -> Reply {
    send_ready(images, &loaded(), method, uri, headers).await
}

async fn send_ready(
    images: &Fake,
    ready: &Readiness,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("request");
    let resp = handle(images, ready, req).await;
    let (parts, body) = resp.into_parts();
    assert_eq!(
        parts
            .headers
            .get("docker-distribution-api-version")
            .map(|v| v.as_bytes()),
        Some(&b"registry/2.0"[..]),
        "every response carries the API version"
    );
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.map(|c| c.to_bytes()),
    }
}

async fn get(images: &Fake, uri: &str) -> Reply {
    send(images, Method::GET, uri, &[]).await
}
