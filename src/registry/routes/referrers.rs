//! `GET /v2/<name>/referrers/<digest>`: the manifests whose `subject` is
//! the digest, as an image index, optionally filtered by artifact type.
use http::request::Parts;
use http::{HeaderValue, Response, header};
use serde_json::json;

use crate::catalog::Images;
use crate::image::{RepoName, media};
use crate::registry::body::ResponseBody;
use crate::registry::error::RegistryError;
use crate::registry::query;

pub async fn get(
    images: &dyn Images,
    name: &RepoName,
    raw_digest: &str,
    req: &Parts,
) -> Result<Response<ResponseBody>, RegistryError> {
    let digest = super::digest(raw_digest)?;
    let mut manifests = images.referrers(name, &digest).await?;
    let filter = query::param(req.uri.query(), "artifactType").filter(|t| !t.is_empty());
    if let Some(wanted) = &filter {
        manifests.retain(|d| d.get("artifactType").and_then(|t| t.as_str()) == Some(wanted));
    }
    let mut resp = super::json(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    }));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media::OCI_INDEX),
    );
    if filter.is_some() {
        // Tells the client it need not filter again itself.
        headers.insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
