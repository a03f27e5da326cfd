//! The whole request path of the registry (`cartorio::registry::handle`:
//! routing, name/reference/digest parsing, Range and If-Range, pagination
//! queries) driven in-process with structured random requests against a
//! small catalog. Every response must be one the spec allows, with the
//! spec's error body, and a 200/206 blob body must be exactly the bytes of
//! the blob (or of the range the header asked for).
use std::sync::Mutex;

use bytes::Bytes;
use cartorio::archive::ArchiveError;
use cartorio::catalog::{ByteStream, CatalogError, Images, LoadError, Manifest};
use cartorio::image::{Digest, Reference, RepoName, Tag};
use cartorio::registry::Readiness;
use futures_util::stream;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};

use crate::{Rng, pick, run, string_from};

const REPO: &str = "team/app";
const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn blob() -> Vec<u8> {
    (0..1000u32).map(|i| (i * 7 % 251) as u8).collect()
}

struct Catalog {
    blob: Bytes,
    blob_digest: Digest,
    /// Calls the registry must never make (a range outside the blob).
    bad_calls: Mutex<Vec<String>>,
}

impl Catalog {
    fn new() -> Catalog {
        let b = blob();
        Catalog {
            blob_digest: Digest::of(&b),
            blob: Bytes::from(b),
            bad_calls: Mutex::new(Vec::new()),
        }
    }
    fn known(repo: &RepoName) -> Result<(), CatalogError> {
        match repo.as_str() {
            REPO => Ok(()),
            "broken/img" => Err(CatalogError::Load {
                image: "broken/img".into(),
                error: LoadError::Broken(std::sync::Arc::new(ArchiveError::Corrupt("bad".into()))),
            }),
            _ => Err(CatalogError::NameUnknown(repo.clone())),
        }
    }
    fn size_of(&self, d: &Digest) -> Option<u64> {
        if *d == self.blob_digest {
            Some(self.blob.len() as u64)
        } else if *d == Digest::of(b"") {
            Some(0)
        } else {
            None
        }
    }
}

#[async_trait::async_trait]
impl Images for Catalog {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        _accept: &[&str],
    ) -> Result<Manifest, CatalogError> {
        Self::known(repo)?;
        let found = match reference {
            Reference::Tag(t) => t.as_str() == "latest" || t.as_str() == "v1",
            Reference::Digest(d) => *d == Digest::of(MANIFEST),
        };
        if !found {
            return Err(CatalogError::ManifestUnknown(
                repo.clone(),
                reference.clone(),
            ));
        }
        Ok(Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: Digest::of(MANIFEST),
            bytes: Bytes::from_static(MANIFEST),
        })
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, CatalogError> {
        Self::known(repo)?;
        self.size_of(digest)
            .ok_or_else(|| CatalogError::BlobUnknown(repo.clone(), *digest))
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, CatalogError> {
        Self::known(repo)?;
        let size = self
            .size_of(digest)
            .ok_or_else(|| CatalogError::BlobUnknown(repo.clone(), *digest))?;
        if start > end || end >= size {
            if let Ok(mut b) = self.bad_calls.lock() {
                b.push(format!(
                    "blob({digest}, {start}, {end}) of a {size}-byte blob"
                ));
            }
            return Err(CatalogError::RangeInvalid { start, end, size });
        }
        let data = self.blob.slice(start as usize..=end as usize);
        // Uneven chunks, as a cache or source would give them.
        let mut chunks = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let n = (data.len() - at).min(1 + (at * 31 + 7) % 300);
            chunks.push(Ok(data.slice(at..at + n)));
            at += n;
        }
        Ok(Box::pin(stream::iter(chunks)))
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, CatalogError> {
        Self::known(repo)?;
        Ok(["latest", "v1", "v2"]
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect())
    }

    async fn repositories(&self) -> Vec<RepoName> {
        [REPO, "broken/img"]
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect()
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        _digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, CatalogError> {
        Self::known(repo)?;
        Ok(Vec::new())
    }
}

/// What a well-formed single `bytes=` range must give on a blob of `size`
/// bytes per RFC 9110 §14.1.2: Some((start, end)) for 206, None for 416.
#[derive(Debug, Clone, Copy)]
enum Want {
    Part(u64, u64),
    Unsatisfiable,
}

fn spec_range(first: Option<u64>, last: Option<u64>, size: u64) -> Option<Want> {
    match (first, last) {
        (Some(a), Some(b)) if a <= b => Some(if a >= size {
            Want::Unsatisfiable
        } else {
            Want::Part(a, b.min(size - 1))
        }),
        (Some(a), None) => Some(if a >= size {
            Want::Unsatisfiable
        } else {
            Want::Part(a, size - 1)
        }),
        (None, Some(0)) => Some(Want::Unsatisfiable),
        (None, Some(n)) => Some(Want::Part(size.saturating_sub(n), size - 1)),
        _ => None,
    }
}

fn number(rng: &mut Rng, size: u64) -> u64 {
    match rng.u8(..6) {
        0 => rng.u64(..size.max(1)),
        1 => size.saturating_sub(rng.u64(..3)),
        2 => size + rng.u64(..3),
        3 => u64::MAX - rng.u64(..2),
        4 => rng.u64(..5),
        _ => rng.u64(..),
    }
}

struct Case {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    /// The oracle for a canonical single range on the real blob.
    want: Option<Want>,
}

fn segment(rng: &mut Rng, c: &Catalog) -> String {
    let hex = c.blob_digest.hex();
    match rng.u8(..14) {
        0 => REPO.into(),
        1 => "broken/img".into(),
        2 => "nope/x".into(),
        3 => "latest".into(),
        4 => format!("sha256:{hex}"),
        5 => Digest::of(MANIFEST).to_string(),
        6 => format!("sha256:{}", &hex[..63]),
        7 => format!("sha512:{hex}"),
        8 => pick(
            rng,
            &[
                "..", ".", "%2e%2e", "%2F", "", "A", "_catalog", "v2", "uploads",
            ],
        )
        .into(),
        9 => pick(rng, &["manifests", "blobs", "tags", "list", "referrers"]).into(),
        10 => {
            let len = rng.usize(0..300);
            string_from(rng, b"abz09._-:/%", len)
        }
        11 => Digest::of(b"").to_string(),
        12 => "team".into(),
        _ => {
            let len = rng.usize(0..12);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(33..127)).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

fn generate(rng: &mut Rng, c: &Catalog) -> Case {
    let method = match rng.u8(..10) {
        0..=5 => Method::GET,
        6..=7 => Method::HEAD,
        8 => pick(
            rng,
            &[&Method::PUT, &Method::POST, &Method::DELETE, &Method::PATCH],
        )
        .clone(),
        _ => Method::OPTIONS,
    };
    let blob_path = format!("/v2/{REPO}/blobs/{}", c.blob_digest);
    let mut path = match rng.u8(..8) {
        0..=2 => blob_path.clone(),
        3 => format!("/v2/{REPO}/manifests/{}", segment(rng, c)),
        4 => format!(
            "/v2/{}/{}/{}",
            segment(rng, c),
            segment(rng, c),
            segment(rng, c)
        ),
        5 => pick(
            rng,
            &["/v2/", "/v2", "/v2/_catalog", "/", "/healthz", "/metrics"],
        )
        .into(),
        6 => format!("/v2/{}/tags/list", segment(rng, c)),
        _ => {
            let mut p = String::from("/v2");
            for _ in 0..rng.usize(1..7) {
                p.push('/');
                p.push_str(&segment(rng, c));
            }
            p
        }
    };
    if rng.u8(..4) == 0 {
        let q = pick(
            rng,
            &[
                "n=",
                "last=",
                "n=0",
                "n=-1",
                "n=99999999999999999999",
                "ns=docker.io",
            ],
        );
        let v = segment(rng, c);
        path = format!(
            "{path}?{q}{v}&{}",
            pick(rng, &["n=2", "last=v1", "", "&&", "=%"])
        );
    }
    let size = c.blob.len() as u64;
    let mut headers = Vec::new();
    let mut want = None;
    if rng.bool() {
        let (first, last) = match rng.u8(..4) {
            0 => (Some(number(rng, size)), Some(number(rng, size))),
            1 => (Some(number(rng, size)), None),
            2 => (None, Some(number(rng, size))),
            _ => (None, None),
        };
        let show = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
        let canonical = format!("bytes={}-{}", show(first), show(last));
        let value = match rng.u8(..6) {
            0..=2 => {
                if path == blob_path {
                    want = spec_range(first, last, size);
                }
                canonical
            }
            3 => format!("{canonical},0-1"),
            4 => pick(
                rng,
                &[
                    "bytes=",
                    "bytes",
                    "items=0-1",
                    "bytes=a-b",
                    "bytes=--1",
                    "bytes=1-2-3",
                    " bytes = 1 - 2 ",
                ],
            )
            .into(),
            _ => {
                let mut v = canonical.into_bytes();
                if !v.is_empty() {
                    let i = rng.usize(..v.len());
                    v[i] = rng.u8(32..127);
                }
                String::from_utf8_lossy(&v).into_owned()
            }
        };
        headers.push(("range", value));
        if rng.u8(..4) == 0 {
            let etag = pick(rng, &["\"x\"", "W/\"y\"", ""]).to_string();
            let etag = if rng.bool() {
                format!("\"{}\"", c.blob_digest)
            } else {
                etag
            };
            // A stale If-Range makes any Range be ignored.
            if etag != format!("\"{}\"", c.blob_digest) {
                want = None;
            }
            headers.push(("if-range", etag));
        }
        if rng.u8(..8) == 0 {
            headers.push(("range", "bytes=0-0".into()));
            want = None;
        }
    }
    if rng.u8(..3) == 0 {
        let accept = pick(
            rng,
            &[
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json;q=0.5, */*",
                "",
                ",,,;;;",
            ],
        );
        headers.push(("accept", accept.into()));
    }
    if method != Method::GET {
        want = None;
    }
    Case {
        method,
        path,
        headers,
        want,
    }
}

const CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "UNSUPPORTED",
    "UNKNOWN",
    "NOT_FOUND",
    "RANGE_INVALID",
    "PAGINATION_NUMBER_INVALID",
];

async fn check(c: &Catalog, ready: &Readiness, case: &Case) -> Result<(), String> {
    let mut req = Request::builder()
        .method(case.method.clone())
        .uri(&case.path);
    for (k, v) in &case.headers {
        req = req.header(*k, v);
    }
    let Ok(req) = req.body(Empty::<Bytes>::new()) else {
        return Ok(()); // not a request hyper would hand over
    };
    let resp = cartorio::registry::handle(c, ready, req).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| format!("body failed: {e}"))?;
    let what = format!(
        "{} {} {:?} -> {status}",
        case.method, case.path, case.headers
    );
    if !matches!(status, 200 | 206 | 400 | 404 | 405 | 416 | 500 | 502) {
        return Err(format!("{what}: unexpected status"));
    }
    if headers.get("docker-distribution-api-version").is_none() {
        return Err(format!("{what}: no Docker-Distribution-Api-Version"));
    }
    if status >= 400 && case.method == Method::GET && status != 416 {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{what}: error body is not JSON: {e}"))?;
        let code = v["errors"][0]["code"].as_str().unwrap_or("");
        if !CODES.contains(&code) {
            return Err(format!("{what}: error code {code:?} in {v}"));
        }
    }
    let is_blob =
        case.path.split('?').next() == Some(&format!("/v2/{REPO}/blobs/{}", c.blob_digest));
    if is_blob && case.method == Method::GET {
        let size = c.blob.len() as u64;
        let content_range = headers
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match status {
            200 => {
                if body != c.blob {
                    return Err(format!("{what}: 200 body is not the blob"));
                }
            }
            206 => {
                let (range, total) = content_range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split_once('/'))
                    .ok_or_else(|| format!("{what}: Content-Range {content_range:?}"))?;
                let (a, b) = range
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                    .ok_or_else(|| format!("{what}: Content-Range {content_range:?}"))?;
                if total != size.to_string() || a > b || b >= size {
                    return Err(format!("{what}: Content-Range {content_range:?}"));
                }
                if body[..] != c.blob[a as usize..=b as usize] {
                    return Err(format!("{what}: 206 body is not bytes {a}-{b} of the blob"));
                }
                if let Some(Want::Part(x, y)) = case.want
                    && (x, y) != (a, b)
                {
                    return Err(format!("{what}: served {a}-{b}, RFC 9110 says {x}-{y}"));
                }
            }
            416 => {
                if content_range != format!("bytes */{size}") {
                    return Err(format!("{what}: 416 with Content-Range {content_range:?}"));
                }
            }
            _ => return Err(format!("{what}: a known blob answered {status}")),
        }
        match (case.want, status) {
            (Some(Want::Part(..)), 206) | (Some(Want::Unsatisfiable), 416) | (None, _) => {}
            (Some(w), s) => return Err(format!("{what}: RFC 9110 says {w:?}, got {s}")),
        }
    }
    if let Ok(bad) = c.bad_calls.lock()
        && !bad.is_empty()
    {
        return Err(format!("{what}: the registry asked for {bad:?}"));
    }
    Ok(())
}

#[test]
fn routes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let catalog = Catalog::new();
    let ready = Readiness::new(None);
    ready.set_loaded(true);
    run("routes", 3_000, |rng| {
        let case = generate(rng, &catalog);
        rt.block_on(check(&catalog, &ready, &case))
    });
}
