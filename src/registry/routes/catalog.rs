//! `GET /v2/_catalog`, paginated like tag lists.
use http::request::Parts;
use http::{Response, header};
use serde_json::json;

use crate::catalog::Images;
use crate::registry::body::ResponseBody;
use crate::registry::pagination::Page;

/// Lists the repositories `visible` lets through (the caller may pull
/// them), before pagination, so pages stay full.
pub async fn get(
    images: &dyn Images,
    req: &Parts,
    visible: impl Fn(&str) -> bool,
) -> Response<ResponseBody> {
    let repos = images.repositories().await;
    let repos = repos
        .iter()
        .map(|r| r.as_str())
        .filter(|r| visible(r))
        .map(str::to_string)
        .collect();
    let page = Page::from_query(req.uri.query());
    let (repos, link) = page.apply(repos, "/v2/_catalog");
    let mut resp = super::json(&json!({ "repositories": repos }));
    if let Some(link) = link {
        resp.headers_mut().insert(header::LINK, link);
    }
    resp
}
