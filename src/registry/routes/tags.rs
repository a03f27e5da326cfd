//! `GET /v2/<name>/tags/list`, paginated.
use http::request::Parts;
use http::{Response, header};
use serde_json::json;

use crate::catalog::Images;
use crate::image::RepoName;
use crate::registry::body::ResponseBody;
use crate::registry::error::RegistryError;
use crate::registry::pagination::Page;

pub async fn get(
    images: &dyn Images,
    name: &RepoName,
    req: &Parts,
) -> Result<Response<ResponseBody>, RegistryError> {
    let tags = images.tags(name).await?;
    let tags = tags.iter().map(|t| t.as_str().to_string()).collect();
    let page = Page::from_query(req.uri.query());
    let (tags, link) = page.apply(tags, &format!("/v2/{name}/tags/list"));
    let mut resp = super::json(&json!({ "name": name.as_str(), "tags": tags }));
    if let Some(link) = link {
        resp.headers_mut().insert(header::LINK, link);
    }
    Ok(resp)
}
