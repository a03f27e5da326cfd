//! `s3://bucket/key` sources through object_store's `AmazonS3` (SigV4,
//! credential chain and retries are object_store's).
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::ClientConfigKey;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};

use super::{ByteStream, S3Addressing, S3Options, Source, SourceError, Stat};

/// The store for one bucket: the standard AWS environment, overridden by
/// the source's options.
///
/// object_store reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT`,
/// `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, `AWS_ALLOW_HTTP`,
/// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, `AWS_WEB_IDENTITY_TOKEN_FILE` +
/// `AWS_ROLE_ARN` (+ `AWS_ROLE_SESSION_NAME`, `AWS_ENDPOINT_URL_STS`),
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` / `..._FULL_URI` (ECS, EKS Pod
/// Identity) and falls back to instance metadata. It does not read
/// `~/.aws/config` or `~/.aws/credentials` (no `AWS_PROFILE`).
pub(super) fn build_store(bucket: &str, opts: &S3Options) -> Result<AmazonS3, String> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // object_store's default 30 s limit covers a whole request, body
    // included: a multi-gigabyte layer would be cut (and resumed) every
    // 30 s. Bound the silence between reads instead, unless the
    // environment (AWS_TIMEOUT, AWS_READ_TIMEOUT) says otherwise.
    if std::env::var_os("AWS_TIMEOUT").is_none() {
        b = b.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "6h");
    }
    if std::env::var_os("AWS_READ_TIMEOUT").is_none() {
        b = b.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ReadTimeout),
            "60s",
        );
    }
    if let Some(region) = &opts.region {
        b = b.with_region(region);
    }
    if let Some(endpoint) = &opts.endpoint {
        // The option wins over AWS_ENDPOINT_URL_S3, which object_store
        // would otherwise prefer to the generic endpoint.
        b = b
            .with_endpoint(endpoint)
            .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint);
    }
    let endpoint = b
        .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
        .or_else(|| b.get_config_value(&AmazonS3ConfigKey::Endpoint));
    let virtual_hosted = match opts.addressing {
        Some(a) => a == S3Addressing::Virtual,
        None => b
            .get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest)
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    };
    b = b.with_virtual_hosted_style_request(virtual_hosted);
    if let Some(endpoint) = &endpoint
        && virtual_hosted
    {
        // object_store takes a virtual-hosted endpoint to already name
        // the bucket.
        let e = bucket_endpoint(endpoint, bucket)?;
        b = b
            .with_endpoint(&e)
            .with_config(AmazonS3ConfigKey::S3Endpoint, e);
    }
    let allow_http = opts.allow_http.unwrap_or_else(|| {
        endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    });
    if allow_http {
        b = b.with_allow_http(true);
    }
    if let Some(k) = &opts.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &opts.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    if let Some(t) = &opts.session_token {
        b = b.with_token(t);
    }
    if let Some(skip) = opts.skip_signature {
        b = b.with_skip_signature(skip);
    }
    // The error names a missing or malformed setting, never a value.
    b.build().map_err(|e| format!("S3 bucket {bucket}: {e}"))
}

/// `https://host:port/p` → `https://bucket.host:port/p`.
fn bucket_endpoint(endpoint: &str, bucket: &str) -> Result<String, String> {
    if endpoint.contains(&format!("://{bucket}.")) {
        return Ok(endpoint.to_string());
    }
    let mut u = url::Url::parse(endpoint).map_err(|e| format!("S3 endpoint: {e}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| "S3 endpoint has no host".to_string())?
        .to_string();
    u.set_host(Some(&format!("{bucket}.{host}")))
        .map_err(|e| format!("S3 endpoint: {e}"))?;
    Ok(u.as_str().trim_end_matches('/').to_string())
}

/// An object in a bucket.
pub struct S3Source {
    url: String,
    key: ObjectPath,
    store: Arc<AmazonS3>,
}

impl std::fmt::Debug for S3Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Source").field("url", &self.url).finish()
    }
}

fn object_path(key: &str) -> ObjectPath {
    ObjectPath::parse(key).unwrap_or_else(|_| ObjectPath::from(key))
}

fn version_of(meta: &ObjectMeta) -> String {
    match &meta.e_tag {
        Some(e) => e.clone(),
        None => format!(
            "lm:{};{}",
            meta.last_modified.timestamp_nanos_opt().unwrap_or(0),
            meta.size
        ),
    }
}

/// Maps object_store's errors; messages name the URL (bucket and key) and
/// never a credential.
fn map_err(url: &str, e: object_store::Error, pin: Option<&Stat>) -> SourceError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => SourceError::NotFound {
            url: url.to_string(),
        },
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            let status = if matches!(e, E::Unauthenticated { .. }) {
                401
            } else {
                403
            };
            tracing::warn!(url, status, "access denied");
            SourceError::Denied {
                url: url.to_string(),
                status,
            }
        }
        E::Precondition { .. } => SourceError::Changed {
            url: url.to_string(),
            expected: pin.map_or_else(String::new, |p| p.version.clone()),
            actual: "another version".to_string(),
        },
        // Some requests (list) come back as Generic errors wrapping the
        // HTTP status; object_store does not export the wrapper type, so
        // read the status from its message.
        E::Generic { ref source, .. } => match status_in(&**source) {
            Some(404) => SourceError::NotFound {
                url: url.to_string(),
            },
            Some(status @ (401 | 403)) => {
                tracing::warn!(url, status, "access denied");
                SourceError::Denied {
                    url: url.to_string(),
                    status,
                }
            }
            _ => SourceError::io(url, e),
        },
        e => SourceError::io(url, e),
    }
}

/// The HTTP status named in an object_store error chain, if any.
fn status_in(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        let msg = e.to_string();
        if let Some((_, after)) = msg.split_once("status code: ") {
            let digits: String = after.chars().take(3).collect();
            if let Ok(s) = digits.parse() {
                return Some(s);
            }
        }
        cur = e.source();
    }
    None
}

impl S3Source {
    pub(super) fn new(url: &str, key: &str, store: Arc<AmazonS3>) -> S3Source {
        S3Source {
            url: url.to_string(),
            key: object_path(key),
            store,
        }
    }

    async fn get(
        &self,
        range: Option<GetRange>,
        pin: Option<&Stat>,
    ) -> Result<object_store::GetResult, SourceError> {
        let opts = GetOptions {
            range,
            if_match: pin
                .filter(|p| !p.version.starts_with("lm:"))
                .map(|p| p.version.clone()),
            ..Default::default()
        };
        let r = self
            .store
            .get_opts(&self.key, opts)
            .await
            .map_err(|e| map_err(&self.url, e, pin))?;
        // Servers that ignore If-Match (s3s-fs) still say which version
        // they sent: never hand out bytes of another one.
        if let Some(pin) = pin {
            let now = version_of(&r.meta);
            if now != pin.version || r.meta.size != pin.size {
                return Err(SourceError::Changed {
                    url: self.url.clone(),
                    expected: pin.version.clone(),
                    actual: now,
                });
            }
        }
        Ok(r)
    }
}

#[async_trait::async_trait]
impl Source for S3Source {
    fn url(&self) -> &str {
        &self.url
    }

    async fn stat(&self) -> Result<Stat, SourceError> {
        let meta = self
            .store
            .head(&self.key)
            .await
            .map_err(|e| map_err(&self.url, e, None))?;
        Ok(Stat {
            size: meta.size,
            version: version_of(&meta),
        })
    }

    async fn read_range(
        &self,
        offset: u64,
        len: u64,
        pin: Option<&Stat>,
    ) -> Result<Bytes, SourceError> {
        // S3 refuses a range that starts at or after the end.
        if len == 0 || pin.is_some_and(|p| offset >= p.size) {
            return Ok(Bytes::new());
        }
        let mut end = offset.saturating_add(len);
        if let Some(p) = pin {
            end = end.min(p.size);
        }
        let r = match self.get(Some(GetRange::Bounded(offset..end)), pin).await {
            Ok(r) => r,
            Err(e @ SourceError::Io { .. }) if pin.is_none() => {
                // Perhaps a read at the end (416): empty, as for a file.
                match self.stat().await {
                    Ok(s) if offset >= s.size => return Ok(Bytes::new()),
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        r.bytes().await.map_err(|e| map_err(&self.url, e, pin))
    }

    async fn stream(
        &self,
        offset: u64,
        len: Option<u64>,
        pin: Option<&Stat>,
    ) -> Result<ByteStream, SourceError> {
        if len == Some(0) {
            return Ok(Box::pin(stream::empty()));
        }
        let range = match len {
            Some(len) => Some(GetRange::Bounded(offset..offset.saturating_add(len))),
            None if offset > 0 => Some(GetRange::Offset(offset)),
            None => None,
        };
        let r = self.get(range, pin).await?;
        if let Some(len) = len {
            let got = r.range.end - r.range.start;
            if got < len {
                return Err(SourceError::io(
                    &self.url,
                    format!("object ends before byte {}", offset + len),
                ));
            }
        }
        let url = self.url.clone();
        Ok(Box::pin(r.into_stream().map_err(move |e| {
            std::io::Error::other(map_err(&url, e, None))
        })))
    }
}

/// The objects under `prefix` (taken as a folder), as `s3://bucket/key`.
/// The first `limit` keys under `prefix` (S3 lists in key order; pages
/// past them are never asked for).
pub(super) async fn list(
    store: &AmazonS3,
    bucket: &str,
    prefix: &str,
    limit: usize,
) -> Result<super::Listing, SourceError> {
    let url = format!("s3://{bucket}/{prefix}");
    let prefix = prefix.trim_end_matches('/');
    let p = (!prefix.is_empty()).then(|| object_path(prefix));
    let mut out: Vec<String> = store
        .list(p.as_ref())
        .take(limit.saturating_add(1))
        .map_ok(|m| format!("s3://{bucket}/{}", m.location))
        .try_collect()
        .await
        .map_err(|e| map_err(&url, e, None))?;
    out.sort();
    let truncated = out.len() > limit;
    out.truncate(limit);
    Ok(super::Listing {
        urls: out,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_read_from_the_error_text() {
        let status = |msg: &str| status_in(&std::io::Error::other(msg.to_string()));
        assert_eq!(
            status("Client error with status code: 403 Forbidden"),
            Some(403)
        );
        assert_eq!(status("status code: 404"), Some(404));
        assert_eq!(status("no status here"), None);
        // Nothing, or multi-byte text, after the marker.
        assert_eq!(status("status code: "), None);
        assert_eq!(status("status code: 4é1"), None);
        assert_eq!(status("é status code: 500 é"), Some(500));
    }

    #[test]
    fn virtual_hosted_endpoint() {
        assert_eq!(
            bucket_endpoint("http://127.0.0.1.nip.io:9000", "b").unwrap(),
            "http://b.127.0.0.1.nip.io:9000"
        );
        assert_eq!(
            bucket_endpoint("https://b.s3.example.com", "b").unwrap(),
            "https://b.s3.example.com"
        );
    }
}
