//! `GET|HEAD /v2/<name>/manifests/<reference>`.
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, header};

use super::{DOCKER_CONTENT_DIGEST, content_digest, etag, not_modified, not_modified_response};
use crate::catalog::Images;
use crate::image::{Reference, RepoName};
use crate::registry::body::{self, ResponseBody};
use crate::registry::error::{ErrorCode, RegistryError, clip};

pub async fn get(
    images: &dyn Images,
    name: &RepoName,
    raw_reference: &str,
    req: &Parts,
) -> Result<Response<ResponseBody>, RegistryError> {
    // A reference outside the tag and digest grammars cannot name a
    // manifest. distribution answers such paths with 404 (its routes do
    // not match them), and the spec keeps MANIFEST_INVALID for pushed
    // manifests, so: 404 MANIFEST_UNKNOWN, with the reason in the message.
    // The parse error quotes the input whole: only the clipped input goes
    // back.
    let reference: Reference = raw_reference.parse().map_err(|_| {
        RegistryError::new(
            ErrorCode::ManifestUnknown,
            format!("{:?} is not a tag or sha256 digest", clip(raw_reference)),
        )
    })?;
    let accept = accept_values(&req.headers);
    let accept: Vec<&str> = accept.iter().map(String::as_str).collect();
    let manifest = images.manifest(name, &reference, &accept).await?;

    if let Reference::Digest(wanted) = &reference
        && *wanted != manifest.digest
    {
        // Serving it would hand out content under the wrong digest.
        return Err(RegistryError::new(
            ErrorCode::Unknown,
            format!(
                "catalog answered {wanted} with manifest {}",
                manifest.digest
            ),
        ));
    }
    let content_type = HeaderValue::try_from(manifest.media_type.as_str()).map_err(|_| {
        RegistryError::new(
            ErrorCode::Unknown,
            format!("manifest {} has an unusable media type", manifest.digest),
        )
    })?;
    if not_modified(&req.headers, &manifest.digest) {
        return Ok(not_modified_response(&manifest.digest));
    }

    let len = manifest.bytes.len();
    let mut resp = Response::new(if req.method == Method::HEAD {
        body::empty()
    } else {
        body::full(manifest.bytes)
    });
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    // HEAD too: containerd reads the manifest size from a HEAD.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(DOCKER_CONTENT_DIGEST, content_digest(&manifest.digest));
    headers.insert(header::ETAG, etag(&manifest.digest));
    Ok(resp)
}

/// The media types the client accepts, from every `Accept` header, with
/// parameters (`;q=0.5`) stripped. Used only to pick between renderings;
/// the registry never answers 406.
pub fn accept_values(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| item.split(';').next())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_values_split_and_strip() {
        let mut h = HeaderMap::new();
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/a ; q=0.5, application/b"),
        );
        h.append(header::ACCEPT, HeaderValue::from_static(" application/c,"));
        assert_eq!(
            accept_values(&h),
            ["application/a", "application/b", "application/c"]
        );
    }
}
