//! Errors as the OCI Distribution Spec renders them: a status code and a
//! JSON body `{"errors":[{"code","message","detail"}]}`.
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::body::{self, ResponseBody};
use crate::catalog::{BlobError, CatalogError, LoadError};
use crate::source::Redacted;

/// The OCI Distribution Spec's error codes that a read-only registry
/// answers with, plus [`ErrorCode::NotFound`] for paths the API does not
/// have (the spec names no code for that; a JSON body still keeps clients'
/// error decoders happy). Each has the status the spec pairs it with;
/// `UNKNOWN` is overridden with 502 when the source failed. The spec's
/// other codes (`DENIED`, `TOOMANYREQUESTS`, `TAG_INVALID`, the upload and
/// push codes) have no case here yet: a malformed tag is
/// `MANIFEST_UNKNOWN`, as distribution answers it, and there is no
/// per-repository authorization or rate limit to refuse with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    Unauthorized,
    Unsupported,
    RangeInvalid,
    /// A failure on the server's side, which the spec has no code for:
    /// what distribution sends.
    Unknown,
    NotFound,
}

impl ErrorCode {
    /// The code as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::NotFound => "NOT_FOUND",
        }
    }

    /// The status the spec answers this code with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown
            | ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::DigestInvalid | ErrorCode::NameInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            // Every method but GET and HEAD, on a read-only registry.
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One OCI error, ready to render. Every failure path in the registry ends
/// as one of these, so the client always gets the spec's error shape.
#[derive(Debug)]
pub struct RegistryError {
    pub status: StatusCode,
    pub code: ErrorCode,
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
    // Whole characters only: the cut must not split a multi-byte one.
    let end = s
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= MAX_ECHO)
        .last()
        .unwrap_or(0);
    format!("{}...", s.get(..end).unwrap_or_default())
}

impl RegistryError {
    /// An error with the code's own status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            status: code.status(),
            code,
            message: message.into(),
            detail: None,
            log: None,
        }
    }

    /// Answers with `status` instead of the code's own.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
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
            ErrorCode::NameInvalid,
            format!("invalid repository name {:?}", clip(name)),
        )
    }

    pub fn digest_invalid(digest: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorCode::DigestInvalid,
            format!("invalid digest {:?}: {why}", clip(digest)),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("no such endpoint: {}", clip(path)),
        )
    }

    /// 401 `UNAUTHORIZED`, with the Basic challenge (see `into_response`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// Any method but GET and HEAD: this registry is read-only.
    pub fn unsupported(method: &http::Method) -> Self {
        Self::new(
            ErrorCode::Unsupported,
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
            tracing::warn!(status = self.status.as_u16(), code = self.code.as_str(), message = %logged, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), code = self.code.as_str(), message = %logged, "request refused");
        }
        let mut entry = serde_json::Map::new();
        entry.insert("code".into(), json!(self.code.as_str()));
        entry.insert("message".into(), json!(self.message));
        if let Some(detail) = self.detail {
            entry.insert("detail".into(), detail);
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
        let logged = || Redacted(&message).to_string();
        match e {
            CatalogError::NameUnknown(name) => {
                let name = clip(name.as_str());
                Self::new(
                    ErrorCode::NameUnknown,
                    format!("repository {name} is not known"),
                )
                .with_detail(json!({ "name": name }))
            }
            CatalogError::ManifestUnknown(name, reference) => {
                let (name, reference) = (clip(name.as_str()), clip(&reference.to_string()));
                Self::new(
                    ErrorCode::ManifestUnknown,
                    format!("manifest {reference} is not known in repository {name}"),
                )
                .with_detail(json!({ "name": name, "reference": reference }))
            }
            CatalogError::BlobUnknown(name, digest) => {
                let name = clip(name.as_str());
                Self::new(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} is not known in repository {name}"),
                )
                .with_detail(json!({ "name": name, "digest": digest.to_string() }))
            }
            CatalogError::RangeInvalid { start, end, size } => Self::new(
                ErrorCode::RangeInvalid,
                format!("range {start}-{end} is outside the blob's {size} bytes"),
            ),
            // The spec has no code for server-side failures; UNKNOWN is
            // what distribution sends. The client learns which image failed
            // and how (see `for_image`), never where its archive lives: a
            // source URL may carry credentials; the log has the rest.
            //
            // The source failed while the image was indexed or revalidated:
            // not the archive's fault, and asked again (`RETRY_BACKOFF`). A
            // gateway error tells the operator where to look and lets
            // clients retry.
            CatalogError::Load {
                error: LoadError::Unavailable(_) | LoadError::Missing(_),
                ..
            }
            | CatalogError::Open { .. }
            | CatalogError::Blob {
                error: BlobError::Read(_),
                ..
            } => Self::new(
                ErrorCode::Unknown,
                "the image's source is unavailable, try again later (the server log says why)",
            )
            .with_status(StatusCode::BAD_GATEWAY)
            .logged_as(logged()),
            CatalogError::Load {
                error: LoadError::Bug(_),
                ..
            } => Self::new(
                ErrorCode::Unknown,
                "internal error: a bug in the server (the server log says where)",
            )
            .logged_as(format!("a bug in cartorio: {}", logged())),
            CatalogError::Load {
                error: LoadError::Broken(_) | LoadError::Select(_),
                ..
            }
            | CatalogError::Blob {
                error: BlobError::Mismatch(_),
                ..
            } => Self::new(
                ErrorCode::Unknown,
                "the image's archive cannot be served (the server log says why)",
            )
            .logged_as(logged()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        let fits = "a".repeat(MAX_ECHO);
        assert_eq!(clip(&fits), fits);
        assert_eq!(clip(&"a".repeat(MAX_ECHO + 1)), format!("{fits}..."));
        // Two-byte characters that end exactly on the limit.
        assert_eq!(
            clip(&"é".repeat(MAX_ECHO)),
            format!("{}...", "é".repeat(MAX_ECHO / 2))
        );
        // ... and one that would straddle it is left out whole.
        let odd = format!("a{}", "é".repeat(MAX_ECHO));
        assert_eq!(
            clip(&odd),
            format!("a{}...", "é".repeat((MAX_ECHO - 1) / 2))
        );
        // Four-byte characters, and one larger than what is left.
        let emoji = format!("{}😀", "a".repeat(MAX_ECHO - 2));
        assert_eq!(clip(&emoji), format!("{}...", "a".repeat(MAX_ECHO - 2)));
        assert_eq!(clip(""), "");
    }

    #[test]
    fn codes_have_the_specs_names_and_statuses() {
        for (code, name, status) in [
            (ErrorCode::BlobUnknown, "BLOB_UNKNOWN", 404),
            (ErrorCode::ManifestUnknown, "MANIFEST_UNKNOWN", 404),
            (ErrorCode::NameUnknown, "NAME_UNKNOWN", 404),
            (ErrorCode::NameInvalid, "NAME_INVALID", 400),
            (ErrorCode::DigestInvalid, "DIGEST_INVALID", 400),
            (ErrorCode::Unauthorized, "UNAUTHORIZED", 401),
            (ErrorCode::Unsupported, "UNSUPPORTED", 405),
            (ErrorCode::RangeInvalid, "RANGE_INVALID", 416),
            (ErrorCode::Unknown, "UNKNOWN", 500),
        ] {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.status().as_u16(), status, "{name}");
        }
    }
}
