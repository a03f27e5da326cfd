//! Errors as the OCI Distribution Spec renders them: a status code and a
//! JSON body `{"errors":[{"code","message","detail"}]}`.
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::body::{self, ResponseBody};
use crate::catalog::{CatalogError, LoadError};
use crate::source::Redacted;

/// One OCI error, ready to render. Every failure path in the registry ends
/// as one of these, so the client always gets the spec's error shape.
#[derive(Debug)]
pub struct RegistryError {
    pub status: StatusCode,
    /// The spec's error code (`NAME_INVALID`, `BLOB_UNKNOWN`, ...), or
    /// `NOT_FOUND` for paths the API does not have (the spec names no code
    /// for that; a JSON body still keeps clients' error decoders happy).
    pub code: &'static str,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// What the operator's log gets instead of `message`, when the client
    /// must not see it (a source's URL, an archive's path).
    pub log: Option<String>,
}

/// Longest piece of client input echoed back in a message, so a hostile
/// 60 KiB path does not come back (or go into the log) whole.
pub const MAX_ECHO: usize = 256;

/// `s` for a message, cut to a sane length.
pub fn clip(s: &str) -> String {
    if s.len() <= MAX_ECHO {
        return s.to_string();
    }
    let mut end = MAX_ECHO;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl RegistryError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RegistryError {
            status,
            code,
            message: message.into(),
            detail: None,
            log: None,
        }
    }

    fn logged_as(mut self, log: String) -> Self {
        self.log = Some(log);
        self
    }

    /// Names the image a server-side failure is about (`app:v1`), for
    /// errors whose message names none.
    pub fn for_image(mut self, name: &str, reference: Option<&str>) -> Self {
        if self.log.is_some() {
            let image = match reference {
                Some(r) if r.starts_with("sha256:") => format!("{name}@{}", clip(r)),
                Some(r) => format!("{name}:{}", clip(r)),
                None => name.to_string(),
            };
            self.message = format!("{image}: {}", self.message);
            self.log = self.log.map(|l| format!("{image}: {l}"));
        }
        self
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn name_invalid(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name {:?}", clip(name)),
        )
    }

    pub fn digest_invalid(digest: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("invalid digest {:?}: {why}", clip(digest)),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no such endpoint: {}", clip(path)),
        )
    }

    /// 401 `UNAUTHORIZED`, with the Basic challenge (see `into_response`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    /// Any method but GET and HEAD: this registry is read-only.
    pub fn unsupported(method: &http::Method) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!(
                "{} is not supported: this registry is read-only",
                clip(method.as_str())
            ),
        )
    }

    /// The response, logging the error on the way: 5xx are the operator's
    /// problem (warn), 4xx the client's (debug).
    pub fn into_response(self) -> Response<ResponseBody> {
        let logged = self.log.as_deref().unwrap_or(&self.message);
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %logged, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), code = self.code, message = %logged, "request refused");
        }
        let mut entry = json!({ "code": self.code, "message": self.message });
        if let Some(detail) = self.detail {
            entry["detail"] = detail;
        }
        let text = json!({ "errors": [entry] }).to_string();
        let mut resp = Response::new(body::full(text.clone()));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        if self.status == StatusCode::UNAUTHORIZED {
            // The only scheme cartorio speaks (distribution spec: a 401
            // carries the challenge).
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cartorio\""),
            );
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}

impl From<CatalogError> for RegistryError {
    fn from(e: CatalogError) -> Self {
        // Names and references come from the client: echoed clipped.
        let message = e.to_string();
        match e {
            CatalogError::NameUnknown(name) => {
                let name = clip(name.as_str());
                Self::new(
                    StatusCode::NOT_FOUND,
                    "NAME_UNKNOWN",
                    format!("repository {name} is not known"),
                )
                .with_detail(json!({ "name": name }))
            }
            CatalogError::ManifestUnknown(name, reference) => {
                let (name, reference) = (clip(name.as_str()), clip(&reference.to_string()));
                Self::new(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    format!("manifest {reference} is not known in repository {name}"),
                )
                .with_detail(json!({ "name": name, "reference": reference }))
            }
            CatalogError::BlobUnknown(name, digest) => {
                let name = clip(name.as_str());
                Self::new(
                    StatusCode::NOT_FOUND,
                    "BLOB_UNKNOWN",
                    format!("blob {digest} is not known in repository {name}"),
                )
                .with_detail(json!({ "name": name, "digest": digest.to_string() }))
            }
            // The source failed while the image was indexed or revalidated:
            // not the archive's fault, and retried (see `RETRY_BACKOFF`).
            CatalogError::Load {
                error: LoadError::Unavailable(_) | LoadError::Missing(_),
                ..
            } => Self::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                "the image's source is unavailable, try again later (the server log says why)",
            )
            .logged_as(Redacted(&message).to_string()),
            CatalogError::Load {
                error: LoadError::Bug(_),
                ..
            } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal error: a bug in the server (the server log says where)",
            )
            .logged_as(format!("a bug in cartorio: {}", Redacted(&message))),
            CatalogError::Load { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "the image's archive cannot be served (the server log says why)",
            )
            .logged_as(Redacted(&message).to_string()),
            // The spec has no code for server-side failures; UNKNOWN is
            // what distribution sends. The client learns which image failed
            // and how (see `for_image`), never where its archive lives: a
            // source URL may carry credentials; the log has the rest.
            CatalogError::Broken(..) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "the image's archive cannot be served (the server log says why)",
            )
            .logged_as(Redacted(&message).to_string()),
            // The archive's home failed, not us: a gateway error tells the
            // operator where to look and lets clients retry.
            CatalogError::Source(..) => Self::new(
                StatusCode::BAD_GATEWAY,
                "UNKNOWN",
                "the image's source failed (the server log says why)",
            )
            .logged_as(Redacted(&message).to_string()),
        }
    }
}
