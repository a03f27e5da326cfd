//! What each `/v2/...` path means, and the endpoint groups that answer.
//!
//! Repository names contain slashes, so a path is read from its end: the
//! last segments say which endpoint (`manifests/<ref>`, `blobs/<digest>`,
//! `tags/list`, `referrers/<digest>`, `blobs/uploads/...`) and everything
//! before them is the name. The path is never percent-decoded: a name like
//! `%2e%2e` stays as it is and fails the name grammar, rather than turning
//! into something that looks valid.
pub mod base;
pub mod blobs;
pub mod catalog;
pub mod manifests;
pub mod referrers;
pub mod tags;

use http::{HeaderValue, Response, StatusCode, header};

use super::body::{self, ResponseBody};
use super::error::RegistryError;
use crate::image::{Digest, RepoName};

/// An endpoint of the API, with the raw (unvalidated) path pieces it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: &'a str, reference: &'a str },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: &'a str, digest: &'a str },
    /// `/v2/<name>/tags/list`
    Tags { name: &'a str },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: &'a str, digest: &'a str },
    /// `/v2/<name>/blobs/uploads/` and `/v2/<name>/blobs/uploads/<id>`:
    /// the push protocol, which a read-only registry has no sessions for.
    Upload { name: &'a str },
    /// Anything else.
    Unknown,
}

impl<'a> Route<'a> {
    pub fn parse(path: &'a str) -> Route<'a> {
        let rest = match path {
            "/v2" | "/v2/" => return Route::Base,
            "/v2/_catalog" => return Route::Catalog,
            _ => match path.strip_prefix("/v2/") {
                Some(rest) => rest,
                None => return Route::Unknown,
            },
        };
        // Uploads first: `blobs/uploads/` ends in an empty segment, and
        // `blobs/uploads` must not be read as a blob named "uploads".
        if let Some(name) = rest.strip_suffix("/blobs/uploads") {
            return Route::Upload { name };
        }
        // `<name>/<kind>/<last>`: the name is everything before the last
        // two segments, so it may itself hold slashes.
        let Some((head, last)) = rest.rsplit_once('/') else {
            return Route::Unknown;
        };
        if let Some(name) = head.strip_suffix("/blobs/uploads") {
            return Route::Upload { name };
        }
        let Some((name, kind)) = head.rsplit_once('/') else {
            return Route::Unknown;
        };
        match kind {
            "manifests" => Route::Manifest {
                name,
                reference: last,
            },
            "blobs" => Route::Blob { name, digest: last },
            "referrers" => Route::Referrers { name, digest: last },
            "tags" if last == "list" => Route::Tags { name },
            _ => Route::Unknown,
        }
    }

    /// The raw repository name this route names, if any.
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. }
            | Route::Upload { name } => Some(name),
            Route::Base | Route::Catalog | Route::Unknown => None,
        }
    }
}

/// The name grammar is the only gate between the path and the catalog.
pub fn repo_name(raw: &str) -> Result<RepoName, RegistryError> {
    raw.parse().map_err(|_| RegistryError::name_invalid(raw))
}

/// A digest from a blob or referrers path. Only sha256 parses; other
/// algorithms are reported as invalid with the reason saying so.
pub fn digest(raw: &str) -> Result<Digest, RegistryError> {
    raw.parse()
        .map_err(|e| RegistryError::digest_invalid(raw, e))
}

/// The strong ETag cartorio uses: content-addressed, so the digest.
pub fn etag(digest: &Digest) -> HeaderValue {
    // A digest's text is `sha256:` and hex: always a valid header value.
    HeaderValue::try_from(format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// Whether `If-None-Match` lists this digest's ETag (or `*`), so the client
/// already holds the content and gets 304.
pub fn not_modified(headers: &http::HeaderMap, digest: &Digest) -> bool {
    let ours = format!("\"{digest}\"");
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t == ours || t.strip_prefix("W/") == Some(ours.as_str()))
}

/// 304 for a digest the client already has.
pub fn not_modified_response(digest: &Digest) -> Response<ResponseBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = resp.headers_mut();
    headers.insert(header::ETAG, etag(digest));
    headers.insert(DOCKER_CONTENT_DIGEST, content_digest(digest));
    resp
}

/// The digest as a header value, for `Docker-Content-Digest`.
pub fn content_digest(digest: &Digest) -> HeaderValue {
    HeaderValue::try_from(digest.to_string()).unwrap_or(HeaderValue::from_static(""))
}

pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// A JSON response with an exact `Content-Length`.
pub fn json(value: &serde_json::Value) -> Response<ResponseBody> {
    text("application/json", value.to_string())
}

/// A text response (JSON, metrics, health) with an exact `Content-Length`.
pub fn text(content_type: &'static str, text: String) -> Response<ResponseBody> {
    let len = text.len();
    let mut resp = Response::new(body::full(text));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// `/readyz`: 200 `ready`, or 503 with the reason (for people reading
/// `kubectl describe`; probes look only at the status).
pub async fn readyz(ready: &super::ready::Readiness) -> Response<ResponseBody> {
    match ready.check().await {
        Ok(()) => text("text/plain", "ready\n".to_string()),
        Err(why) => {
            tracing::debug!("not ready: {why}");
            let mut resp = text("text/plain", format!("not ready: {why}\n"));
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Route::*;
    use super::*;

    #[test]
    fn reads_paths_from_the_end() {
        assert_eq!(Route::parse("/v2/"), Base);
        assert_eq!(Route::parse("/v2"), Base);
        assert_eq!(Route::parse("/v2/_catalog"), Catalog);
        assert_eq!(
            Route::parse("/v2/a/b/manifests/v1"),
            Manifest {
                name: "a/b",
                reference: "v1"
            }
        );
        assert_eq!(
            Route::parse("/v2/a/manifests/x/blobs/sha256:00"),
            Blob {
                name: "a/manifests/x",
                digest: "sha256:00"
            }
        );
        assert_eq!(Route::parse("/v2/a/b/tags/list"), Tags { name: "a/b" });
        assert_eq!(
            Route::parse("/v2/a/referrers/d"),
            Referrers {
                name: "a",
                digest: "d"
            }
        );
        assert_eq!(Route::parse("/v2/a/blobs/uploads/"), Upload { name: "a" });
        assert_eq!(Route::parse("/v2/a/blobs/uploads"), Upload { name: "a" });
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/123"),
            Upload { name: "a/b" }
        );
        assert_eq!(Route::parse("/v2/a/tags/other"), Unknown);
        assert_eq!(Route::parse("/v2/manifests/v1"), Unknown);
        assert_eq!(Route::parse("/v3/a/manifests/v1"), Unknown);
        assert_eq!(Route::parse("/"), Unknown);
        assert_eq!(
            Route::parse("/v2/%2e%2e/manifests/v1"),
            Manifest {
                name: "%2e%2e",
                reference: "v1"
            }
        );
        assert_eq!(
            Route::parse("/v2//manifests/v1"),
            Manifest {
                name: "",
                reference: "v1"
            }
        );
    }
}
