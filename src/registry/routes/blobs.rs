//! `GET|HEAD /v2/<name>/blobs/<digest>`, with single byte ranges so
//! interrupted layer downloads resume.
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};

use super::{DOCKER_CONTENT_DIGEST, content_digest, etag, not_modified, not_modified_response};
use crate::catalog::Images;
use crate::image::{Digest, RepoName};
use crate::registry::body::{self, ResponseBody};
use crate::registry::error::{ErrorCode, RegistryError};
use crate::registry::range::{self, RangeRequest};
use crate::registry::zerocopy::{ZeroCopy, ZeroCopyFill};

pub async fn get(
    images: &dyn Images,
    name: &RepoName,
    raw_digest: &str,
    req: &Parts,
) -> Result<Response<ResponseBody>, RegistryError> {
    let digest = super::digest(raw_digest)?;
    let size = images.blob_size(name, &digest).await?;
    if not_modified(&req.headers, &digest) {
        return Ok(not_modified_response(&digest));
    }

    let head = req.method == Method::HEAD;
    // Range is defined for GET only (RFC 9110 §14.2); HEAD reports the
    // whole blob.
    let wanted = if head {
        RangeRequest::Whole
    } else {
        range_of(req, &digest, size)
    };
    let (status, start, end) = match wanted {
        RangeRequest::Whole => (StatusCode::OK, 0, size.saturating_sub(1)),
        RangeRequest::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => return Ok(unsatisfiable(&digest, size)),
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let mut zero_copy = None;
    let mut fill = None;

    let body = if head {
        body::empty()
    } else if size == 0 {
        // `Images::blob` takes an inclusive range, which cannot be empty;
        // the only content of an empty blob is the empty string, so check
        // the digest instead of asking.
        if digest != Digest::of(b"") {
            return Err(RegistryError::new(
                ErrorCode::Unknown,
                format!("blob {digest} is listed as empty but that is not its digest"),
            ));
        }
        body::empty()
    } else if let Some(span) = images.blob_file(name, &digest).await? {
        // Verified bytes in a file: the plain HTTP/1.1 front sends them
        // with sendfile; other connections stream them from the file.
        let span = std::sync::Arc::new(span);
        zero_copy = Some(ZeroCopy {
            span: span.clone(),
            start,
            end,
        });
        body::streaming(span.stream(start, end), len)
    } else {
        let stream = images.blob(name, &digest, start, end).await?;
        // A cold blob: the fill this request started or joined writes it
        // to a temp file, from which the plain HTTP/1.1 front sends what is
        // written (the last byte once verified) with sendfile.
        fill = images
            .blob_filling(&digest, size)
            .map(|span| ZeroCopyFill { span, start, end });
        body::streaming(stream, len)
    };

    let mut resp = Response::new(body);
    if let Some(z) = zero_copy {
        resp.extensions_mut().insert(z);
    }
    if let Some(z) = fill {
        resp.extensions_mut().insert(z);
    }
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(DOCKER_CONTENT_DIGEST, content_digest(&digest));
    headers.insert(header::ETAG, etag(&digest));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::try_from(format!("bytes {start}-{end}/{size}"))
    {
        headers.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

/// The range a GET asks for. Several `Range` headers are treated like a
/// multi-range request: ignored. So is a range guarded by an `If-Range`
/// that is not this blob's ETag (a date never matches: blobs carry no
/// Last-Modified).
fn range_of(req: &Parts, digest: &Digest, size: u64) -> RangeRequest {
    let mut ranges = req.headers.get_all(header::RANGE).iter();
    let (Some(value), None) = (ranges.next(), ranges.next()) else {
        return RangeRequest::Whole;
    };
    if let Some(if_range) = req.headers.get(header::IF_RANGE)
        && if_range.as_bytes() != etag(digest).as_bytes()
    {
        return RangeRequest::Whole;
    }
    match value.to_str() {
        Ok(v) => range::parse(v, size),
        Err(_) => RangeRequest::Whole,
    }
}

fn unsatisfiable(digest: &Digest, size: u64) -> Response<ResponseBody> {
    tracing::debug!(%digest, size, "range not satisfiable");
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::try_from(format!("bytes */{size}")) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    resp
}
