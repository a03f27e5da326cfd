//! Per-source settings, as written in the config (`[image.http]`,
//! `[image.s3]`). Secrets never appear in `Debug` output.
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

const REDACTED: &str = "<redacted>";

/// Per-source settings, deserialized from the config (`[image.http]`,
/// `[image.s3]`), all optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOptions {
    #[serde(default)]
    pub http: HttpOptions,
    #[serde(default)]
    pub s3: S3Options,
}

/// Settings of `http://` and `https://` sources.
///
/// ```toml
/// [image.http]
/// headers = { Authorization = "Bearer ..." }
/// ca_file = "/etc/ssl/internal-ca.pem"   # PEM bundle added to the system roots
/// connect_timeout_secs = 10
/// read_timeout_secs = 60                 # between two reads of the body
/// attempts = 3                           # tries per request (1 = no retry)
/// retry_backoff_ms = 100                 # first backoff; doubles each retry
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpOptions {
    /// Extra request headers (values are treated as secrets).
    pub headers: BTreeMap<String, String>,
    /// A PEM file of CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout_secs: Option<u64>,
    pub read_timeout_secs: Option<u64>,
    /// Tries per request for connection errors, timeouts and 5xx answers,
    /// and per stream for resuming a broken body. Default 3.
    pub attempts: Option<u32>,
    /// Backoff before the first retry, doubled for each further one.
    /// Default 100.
    pub retry_backoff_ms: Option<u64>,
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: BTreeMap<&str, &str> = self
            .headers
            .keys()
            .map(|k| (k.as_str(), REDACTED))
            .collect();
        f.debug_struct("HttpOptions")
            .field("headers", &headers)
            .field("ca_file", &self.ca_file)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("read_timeout_secs", &self.read_timeout_secs)
            .field("attempts", &self.attempts)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .finish()
    }
}

/// How the bucket goes into S3 request URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum S3Addressing {
    /// `https://endpoint/bucket/key` (the default with a custom endpoint).
    Path,
    /// `https://bucket.endpoint/key`.
    Virtual,
}

/// Settings of `s3://bucket/key` sources; each overrides the standard AWS
/// environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).
///
/// ```toml
/// [image.s3]
/// endpoint = "http://minio.internal:9000"
/// region = "eu-west-1"
/// addressing = "path"          # or "virtual"
/// allow_http = true            # implied by an http:// endpoint
/// access_key_id = "AKIA..."
/// secret_access_key = "..."
/// session_token = "..."
/// skip_signature = false       # true: anonymous requests (public buckets)
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub addressing: Option<S3Addressing>,
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub skip_signature: Option<bool>,
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| REDACTED);
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("addressing", &self.addressing)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("skip_signature", &self.skip_signature)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_and_redacts_secrets() {
        let o: SourceOptions = toml::from_str(
            r#"
            [http]
            headers = { Authorization = "Bearer tok-123" }
            ca_file = "/tmp/ca.pem"
            connect_timeout_secs = 5
            attempts = 2
            [s3]
            endpoint = "http://127.0.0.1:9000"
            addressing = "virtual"
            access_key_id = "AKID"
            secret_access_key = "very-secret"
            session_token = "tok-456"
            "#,
        )
        .unwrap();
        assert_eq!(o.http.headers["Authorization"], "Bearer tok-123");
        assert_eq!(o.s3.addressing, Some(S3Addressing::Virtual));
        let dbg = format!("{o:?}");
        assert!(dbg.contains("Authorization"), "{dbg}");
        assert!(dbg.contains("AKID"), "{dbg}");
        for secret in ["tok-123", "very-secret", "tok-456"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(toml::from_str::<SourceOptions>("[s3]\nendpiont = \"x\"").is_err());
        assert!(toml::from_str::<SourceOptions>("[ftp]\n").is_err());
        assert_eq!(
            toml::from_str::<SourceOptions>("").unwrap(),
            SourceOptions::default()
        );
    }
}
