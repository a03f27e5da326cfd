//! `http://` and `https://` sources: HEAD for size and version, `Range`
//! requests pinned with `If-Match` (strong ETag) or `If-Unmodified-Since`.
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, Response, StatusCode};

use super::{ByteStream, HttpOptions, Source, SourceError, Stat};

const DEFAULT_ATTEMPTS: u32 = 3;
const DEFAULT_BACKOFF_MS: u64 = 100;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the client shared by every source with these options.
pub(super) fn build_client(opts: &HttpOptions) -> Result<Client, String> {
    let mut headers = HeaderMap::new();
    for (k, v) in &opts.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        // Never echo the value: it is usually a credential.
        let mut value =
            HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {k}"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let mut b = Client::builder()
        .default_headers(headers)
        .connect_timeout(
            opts.connect_timeout_secs
                .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs),
        )
        .read_timeout(
            opts.read_timeout_secs
                .map_or(DEFAULT_READ_TIMEOUT, Duration::from_secs),
        );
    if let Some(ca) = &opts.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("CA file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("CA file {}: no certificate in it", ca.display()));
        }
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| format!("HTTP client: {e}"))
}

/// An object behind an HTTP(S) URL.
#[derive(Clone)]
pub struct HttpSource {
    /// The URL as configured, secrets included: only requests see it.
    request_url: String,
    /// The URL redacted (no userinfo, no query, which may hold a presigned
    /// signature): for errors, logs and index keys.
    shown: String,
    client: Client,
    attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource")
            .field("url", &self.shown)
            .finish()
    }
}

/// A validator taken from a response.
#[derive(Debug, Default)]
struct Validators {
    size: Option<u64>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Encodes the version: a strong ETag as it is (it starts with `"`), else
/// `lm:<Last-Modified>;<size>`, else `size:<size>` (no validator at all).
fn version_of(v: &Validators, size: u64) -> String {
    match (&v.etag, &v.last_modified) {
        (Some(e), _) => e.clone(),
        (None, Some(lm)) => format!("lm:{lm};{size}"),
        (None, None) => format!("size:{size}"),
    }
}

/// The conditional header that pins a request to `version`.
fn pin_header(version: &str) -> Option<(HeaderName, &str)> {
    if version.starts_with('"') {
        Some((header::IF_MATCH, version))
    } else if let Some(rest) = version.strip_prefix("lm:") {
        let lm = rest.rsplit_once(';').map_or(rest, |(lm, _)| lm);
        Some((header::IF_UNMODIFIED_SINCE, lm))
    } else {
        None
    }
}

fn header_str<'a>(r: &'a Response, name: &HeaderName) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

fn validators(r: &Response) -> Validators {
    // A weak ETag (W/"...") never matches If-Match: use Last-Modified then.
    let etag = header_str(r, &header::ETAG)
        .filter(|e| e.starts_with('"'))
        .map(str::to_string);
    Validators {
        size: None,
        etag,
        last_modified: header_str(r, &header::LAST_MODIFIED).map(str::to_string),
    }
}

/// `Content-Range: bytes a-b/N` → (a, b, Some(N)); `bytes */N` → None
/// for the range.
/// What a `Content-Range` says: the range sent (None for `*`) and the total.
type ContentRange = (Option<(u64, u64)>, Option<u64>);

fn content_range(r: &Response) -> Option<ContentRange> {
    let v = header_str(r, &header::CONTENT_RANGE)?.trim();
    let rest = v.strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse().ok();
    let range = if range.trim() == "*" {
        None
    } else {
        let (a, b) = range.trim().split_once('-')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    Some((range, total))
}

fn content_length(r: &Response) -> Option<u64> {
    // Not `Response::content_length`: that is the body's size hint, 0 for HEAD.
    header_str(r, &header::CONTENT_LENGTH)?.trim().parse().ok()
}

impl HttpSource {
    pub(super) fn new(
        url: &str,
        client: Client,
        opts: &HttpOptions,
    ) -> Result<HttpSource, SourceError> {
        reqwest::Url::parse(url).map_err(|e| SourceError::io(url, e))?;
        Ok(HttpSource {
            request_url: url.to_string(),
            shown: super::redact(url),
            client,
            attempts: opts.attempts.unwrap_or(DEFAULT_ATTEMPTS).max(1),
            backoff: Duration::from_millis(opts.retry_backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS)),
        })
    }

    fn io(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::io(&self.shown, e)
    }

    fn backoff(&self, retry: u32) -> Duration {
        self.backoff.saturating_mul(1u32 << retry.min(16))
    }

    /// Sends a request, retrying connection errors, timeouts and 5xx
    /// answers (before any body byte) with exponential backoff.
    async fn send(
        &self,
        method: Method,
        range: Option<(u64, Option<u64>)>,
        pin: Option<&Stat>,
    ) -> Result<Response, SourceError> {
        let mut attempt = 0;
        loop {
            let mut req = self.client.request(method.clone(), &self.request_url);
            if let Some((start, end)) = range {
                let v = match end {
                    Some(end) => format!("bytes={start}-{end}"),
                    None => format!("bytes={start}-"),
                };
                req = req.header(header::RANGE, v);
            }
            if let Some((name, value)) = pin.and_then(|p| pin_header(&p.version)) {
                req = req.header(name, value);
            }
            let last = attempt + 1 >= self.attempts;
            match req.send().await {
                Ok(r) if r.status().is_server_error() && !last => {
                    tracing::debug!(url = %self.shown, status = r.status().as_u16(), attempt, "retrying");
                }
                Ok(r) => return Ok(r),
                Err(e) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tracing::debug!(url = %self.shown, error = %super::Redacted(&e.to_string()), attempt, "retrying");
                }
                Err(e) => return Err(self.io(error_chain(&e))),
            }
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// The error for an answer that is not what we asked for.
    fn status_error(&self, r: &Response) -> SourceError {
        let status = r.status();
        match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => SourceError::NotFound {
                url: self.shown.clone(),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                tracing::warn!(url = %self.shown, status = status.as_u16(), "access denied");
                SourceError::Denied {
                    url: self.shown.clone(),
                    status: status.as_u16(),
                }
            }
            _ => self.io(format!("unexpected HTTP status {status}")),
        }
    }

    /// `Changed`, naming the version there now when a HEAD can tell.
    async fn changed(&self, pin: &Stat) -> SourceError {
        let actual = match self.stat().await {
            Ok(s) => s.version,
            Err(_) => "unknown".to_string(),
        };
        SourceError::Changed {
            url: self.shown.clone(),
            expected: pin.version.clone(),
            actual,
        }
    }

    /// Checks a 2xx answer against the pin: the server may not implement
    /// conditional requests, so compare what it says it sent.
    async fn check_pin(
        &self,
        r: &Response,
        total: Option<u64>,
        pin: Option<&Stat>,
    ) -> Result<(), SourceError> {
        let Some(pin) = pin else { return Ok(()) };
        let v = validators(r);
        let etag_differs =
            pin.version.starts_with('"') && v.etag.as_deref().is_some_and(|e| e != pin.version);
        let size_differs = total.is_some_and(|t| t != pin.size);
        if etag_differs || size_differs {
            let actual = match v.etag {
                Some(e) => e,
                None => format!("size:{}", total.unwrap_or(0)),
            };
            return Err(SourceError::Changed {
                url: self.shown.clone(),
                expected: pin.version.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Stat from an answer to HEAD, or to GET with `Range: bytes=0-0`.
    fn stat_of(&self, r: &Response) -> Result<Stat, SourceError> {
        let size = if r.status() == StatusCode::PARTIAL_CONTENT {
            content_range(r).and_then(|(_, t)| t)
        } else {
            content_length(r)
        }
        .ok_or_else(|| self.io("the server did not say how big the object is"))?;
        let mut v = validators(r);
        v.size = Some(size);
        Ok(Stat {
            size,
            version: version_of(&v, size),
        })
    }

    /// A ranged (or, from 0 to the end, plain) GET; returns the response
    /// and whether the server honoured the range.
    async fn get(
        &self,
        offset: u64,
        end: Option<u64>,
        pin: Option<&Stat>,
    ) -> Result<(Response, bool), SourceError> {
        let plain = offset == 0 && end.is_none();
        let range = (!plain).then(|| (offset, end.map(|e| e - 1)));
        let r = self.send(Method::GET, range, pin).await?;
        match r.status() {
            StatusCode::PARTIAL_CONTENT => {
                let (got, total) = content_range(&r)
                    .ok_or_else(|| self.io("206 without a valid Content-Range"))?;
                match got {
                    Some((a, _)) if a == offset => {}
                    other => {
                        return Err(self.io(format!(
                            "asked for bytes from {offset}, the server sent {other:?}"
                        )));
                    }
                }
                self.check_pin(&r, total, pin).await?;
                Ok((r, true))
            }
            StatusCode::OK if plain || offset == 0 => {
                self.check_pin(&r, content_length(&r), pin).await?;
                Ok((r, false))
            }
            // The whole object in answer to a range: don't read it.
            StatusCode::OK => Err(SourceError::RangeUnsupported {
                url: self.shown.clone(),
            }),
            StatusCode::PRECONDITION_FAILED => match pin {
                Some(pin) => Err(self.changed(pin).await),
                None => Err(self.status_error(&r)),
            },
            _ => Err(self.status_error(&r)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Where a stream is and how it can go on after its body breaks.
struct Streaming {
    src: HttpSource,
    body: Body,
    pos: u64,
    end: Option<u64>,
    pin: Option<Stat>,
    /// A broken body is resumed with a new range request only on a
    /// range-capable server and with a pin, so the bytes are the same
    /// object's.
    resumable: bool,
    resumes: u32,
    done: bool,
}

impl Streaming {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            if self.end.is_some_and(|e| self.pos >= e) {
                self.done = true;
                return None;
            }
            let failure = match self.body.next().await {
                Some(Ok(mut chunk)) => {
                    if let Some(end) = self.end {
                        let room = end - self.pos;
                        if chunk.len() as u64 > room {
                            chunk.truncate(room as usize);
                        }
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.pos += chunk.len() as u64;
                    return Some(Ok(chunk));
                }
                None => match self.end {
                    Some(end) if self.pos < end => {
                        format!("body ended at byte {} before byte {end}", self.pos)
                    }
                    _ => {
                        self.done = true;
                        return None;
                    }
                },
                Some(Err(e)) => error_chain(&e),
            };
            if !self.resumable || self.resumes + 1 >= self.src.attempts {
                self.done = true;
                return Some(Err(io::Error::other(self.src.io(failure))));
            }
            tracing::debug!(url = %self.src.shown, pos = self.pos, error = %super::Redacted(&failure), "resuming");
            tokio::time::sleep(self.src.backoff(self.resumes)).await;
            self.resumes += 1;
            match self.src.get(self.pos, self.end, self.pin.as_ref()).await {
                Ok((r, true)) => self.body = Box::pin(r.bytes_stream()),
                Ok((_, false)) => {
                    self.done = true;
                    return Some(Err(io::Error::other(SourceError::RangeUnsupported {
                        url: self.src.shown.clone(),
                    })));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(io::Error::other(e)));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Source for HttpSource {
    fn url(&self) -> &str {
        &self.shown
    }

    async fn stat(&self) -> Result<Stat, SourceError> {
        let r = self.send(Method::HEAD, None, None).await?;
        let status = r.status();
        if status.is_success() && content_length(&r).is_some() {
            return self.stat_of(&r);
        }
        // Some servers refuse HEAD (405, 501; a presigned GET URL gives
        // 403) or don't size it: ask for the first byte instead.
        if !status.is_success()
            && !matches!(
                status,
                StatusCode::METHOD_NOT_ALLOWED
                    | StatusCode::NOT_IMPLEMENTED
                    | StatusCode::FORBIDDEN
            )
        {
            return Err(self.status_error(&r));
        }
        let r = self.send(Method::GET, Some((0, Some(0))), None).await?;
        match r.status() {
            StatusCode::PARTIAL_CONTENT | StatusCode::OK => self.stat_of(&r),
            // An empty object.
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let mut v = validators(&r);
                v.size = Some(0);
                Ok(Stat {
                    size: 0,
                    version: version_of(&v, 0),
                })
            }
            _ => Err(self.status_error(&r)),
        }
    }

    async fn read_range(
        &self,
        offset: u64,
        len: u64,
        pin: Option<&Stat>,
    ) -> Result<Bytes, SourceError> {
        if len == 0 || pin.is_some_and(|p| offset >= p.size) {
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(len);
        let mut attempt = 0;
        loop {
            let r = self
                .send(Method::GET, Some((offset, Some(end - 1))), pin)
                .await?;
            match r.status() {
                StatusCode::PARTIAL_CONTENT => {}
                StatusCode::OK => {
                    return Err(SourceError::RangeUnsupported {
                        url: self.shown.clone(),
                    });
                }
                StatusCode::PRECONDITION_FAILED => {
                    return Err(match pin {
                        Some(pin) => self.changed(pin).await,
                        None => self.status_error(&r),
                    });
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    let total = content_range(&r).and_then(|(_, t)| t);
                    if total.is_some_and(|t| offset >= t) {
                        if let (Some(pin), Some(t)) = (pin, total)
                            && t != pin.size
                        {
                            return Err(self.changed(pin).await);
                        }
                        return Ok(Bytes::new());
                    }
                    return Err(self.io("416 Range Not Satisfiable"));
                }
                _ => return Err(self.status_error(&r)),
            }
            let (got, total) =
                content_range(&r).ok_or_else(|| self.io("206 without a valid Content-Range"))?;
            if got.map(|(a, _)| a) != Some(offset) {
                return Err(self.io(format!(
                    "asked for bytes from {offset}, the server sent {got:?}"
                )));
            }
            self.check_pin(&r, total, pin).await?;
            // Read at most what was asked: a server that sends more than its
            // Content-Range says must not make this allocate without bound.
            match read_capped(r, len).await {
                Ok(b) => return Ok(b),
                // A small read: ask again rather than resume.
                Err(e) if attempt + 1 < self.attempts => {
                    tracing::debug!(url = %self.shown, error = %super::Redacted(&error_chain(&e)), "retrying range");
                }
                Err(e) => return Err(self.io(error_chain(&e))),
            }
            tokio::time::sleep(self.backoff(attempt)).await;
            attempt += 1;
        }
    }

    async fn stream(
        &self,
        offset: u64,
        len: Option<u64>,
        pin: Option<&Stat>,
    ) -> Result<ByteStream, SourceError> {
        let end = len.map(|l| offset.saturating_add(l));
        if len == Some(0) {
            return Ok(Box::pin(stream::empty()));
        }
        let (r, ranged) = self.get(offset, end, pin).await?;
        // A plain GET from a pinned source may still be resumed with ranges
        // when the server says it can.
        let accepts_ranges =
            ranged || header_str(&r, &header::ACCEPT_RANGES).is_some_and(|v| v.contains("bytes"));
        let resumable = accepts_ranges && pin.is_some_and(|p| pin_header(&p.version).is_some());
        let state = Streaming {
            src: self.clone(),
            body: Box::pin(r.bytes_stream()),
            pos: offset,
            end,
            pin: pin.cloned(),
            resumable,
            resumes: 0,
            done: false,
        };
        Ok(Box::pin(stream::unfold(state, |mut s| async move {
            s.next().await.map(|item| (item, s))
        })))
    }
}

/// Reads a response body up to `cap` bytes and drops the rest.
async fn read_capped(mut r: reqwest::Response, cap: u64) -> Result<Bytes, reqwest::Error> {
    let mut out = bytes::BytesMut::with_capacity(cap.min(1 << 20) as usize);
    while (out.len() as u64) < cap {
        let Some(mut chunk) = r.chunk().await? else {
            break;
        };
        let room = (cap - out.len() as u64).min(chunk.len() as u64) as usize;
        chunk.truncate(room);
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_pins() {
        let strong = Validators {
            size: Some(3),
            etag: Some("\"abc\"".into()),
            last_modified: Some("Mon, 01 Jan 2024 00:00:00 GMT".into()),
        };
        let v = version_of(&strong, 3);
        assert_eq!(v, "\"abc\"");
        assert_eq!(pin_header(&v), Some((header::IF_MATCH, "\"abc\"")));
        let lm = Validators {
            etag: None,
            ..strong
        };
        let v = version_of(&lm, 3);
        assert_eq!(
            pin_header(&v),
            Some((header::IF_UNMODIFIED_SINCE, "Mon, 01 Jan 2024 00:00:00 GMT"))
        );
        assert_eq!(pin_header(&version_of(&Validators::default(), 3)), None);
    }

    #[test]
    fn shows_no_secret() {
        let s = HttpSource::new(
            "https://u:pw@h/a?X-Amz-Signature=s",
            Client::new(),
            &HttpOptions::default(),
        )
        .expect("source");
        assert_eq!(s.url(), "https://***@h/a?***");
        assert!(!format!("{s:?}").contains("pw"));
    }
}
