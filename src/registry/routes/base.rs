//! `GET /v2/`: tells clients this is a v2 registry that needs no auth.
use http::Response;
use serde_json::json;

use crate::registry::body::ResponseBody;

pub fn get() -> Response<ResponseBody> {
    super::json(&json!({}))
}
