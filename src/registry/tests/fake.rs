//! A tiny in-memory catalog: one repository with one manifest, a few
//! blobs (one of which lies about its bytes), tags for pagination, and
//! repositories whose images fail in each way a catalog can fail.
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::{StreamExt, stream};

use crate::archive::ArchiveError;
use crate::catalog::{ByteStream, CatalogError, Images, LoadError, Manifest};
use crate::image::{Digest, Reference, RepoName, Tag, media};
use crate::source::SourceError;

pub const REPO: &str = "library/app";
pub const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
pub const BLOB: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
/// The size the liar blob claims; its stream fails after `LIAR_GOOD` bytes.
pub const LIAR_SIZE: usize = 100;
pub const LIAR_GOOD: usize = 40;
/// Where the failing images live, as a config could write it.
pub const SECRET_URL: &str = "http://alice:S3CRETPW@10.0.0.1/x.tar?X-Amz-Signature=TOPSECRET";
pub const TAGS: [&str; 5] = ["latest", "v1", "v2", "v3", "v10"];

pub fn manifest_digest() -> Digest {
    Digest::of(MANIFEST)
}
pub fn blob_digest() -> Digest {
    Digest::of(BLOB)
}
pub fn empty_digest() -> Digest {
    Digest::of(b"")
}
/// A good blob whose stream takes a while, to catch requests in flight.
pub const SLOW: &[u8] = b"slow and steady wins the race";
pub fn slow_digest() -> Digest {
    Digest::of(SLOW)
}
/// A blob larger than a loopback socket's buffers, so a client that stops
/// reading leaves the server holding bytes it cannot send.
pub fn big() -> &'static Bytes {
    static BIG: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BIG.get_or_init(|| (0..24u32 << 20).map(|i| (i % 251) as u8).collect())
}
pub fn big_digest() -> Digest {
    static D: std::sync::OnceLock<Digest> = std::sync::OnceLock::new();
    *D.get_or_init(|| Digest::of(big()))
}
pub fn liar_digest() -> Digest {
    Digest::of(b"the liar's real content")
}

#[derive(Default)]
pub struct Fake {
    /// Every call, as "method repo", so tests can prove what never got here.
    pub calls: Mutex<Vec<String>>,
    /// The Accept values of the last manifest call.
    pub accept: Mutex<Vec<String>>,
}

impl Fake {
    fn record(&self, what: &str, repo: &RepoName) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("{what} {repo}"));
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn known(repo: &RepoName) -> Result<(), CatalogError> {
        match repo.as_str() {
            REPO => Ok(()),
            // As the catalog labels them: by source URL, with secrets.
            "broken/img" => Err(CatalogError::Load {
                image: SECRET_URL.into(),
                error: LoadError::Broken(std::sync::Arc::new(ArchiveError::Corrupt(format!(
                    "{SECRET_URL}: truncated archive"
                )))),
            }),
            "remote/img" => Err(CatalogError::Load {
                image: SECRET_URL.into(),
                error: LoadError::Unavailable(SourceError::Io {
                    url: SECRET_URL.into(),
                    message: format!(
                        "error sending request for url ({SECRET_URL}): connection refused"
                    ),
                }),
            }),
            _ => Err(CatalogError::NameUnknown(repo.clone())),
        }
    }

    fn blob_bytes(digest: &Digest) -> Option<&'static [u8]> {
        if *digest == blob_digest() {
            Some(BLOB)
        } else if *digest == slow_digest() {
            Some(SLOW)
        } else if *digest == empty_digest() {
            Some(b"")
        } else if *digest == big_digest() {
            Some(big())
        } else {
            None
        }
    }
}

#[async_trait::async_trait]
impl Images for Fake {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &[&str],
    ) -> Result<Manifest, CatalogError> {
        self.record("manifest", repo);
        if let Ok(mut a) = self.accept.lock() {
            *a = accept.iter().map(|s| s.to_string()).collect();
        }
        Self::known(repo)?;
        let found = match reference {
            Reference::Tag(t) => TAGS.contains(&t.as_str()),
            Reference::Digest(d) => *d == manifest_digest(),
        };
        if !found {
            return Err(CatalogError::ManifestUnknown(
                repo.clone(),
                reference.clone(),
            ));
        }
        Ok(Manifest {
            media_type: media::OCI_MANIFEST.into(),
            digest: manifest_digest(),
            bytes: Bytes::from_static(MANIFEST),
        })
    }

    async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64, CatalogError> {
        self.record("blob_size", repo);
        Self::known(repo)?;
        if *digest == liar_digest() {
            return Ok(LIAR_SIZE as u64);
        }
        Self::blob_bytes(digest)
            .map(|b| b.len() as u64)
            .ok_or_else(|| CatalogError::BlobUnknown(repo.clone(), *digest))
    }

    async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, CatalogError> {
        self.record("blob", repo);
        Self::known(repo)?;
        if *digest == liar_digest() {
            // Good bytes first, then a pause (so a server flushes them, as
            // it would with a real archive), then the failure.
            let good = Bytes::from(vec![b'x'; LIAR_GOOD]);
            let failure = async {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Err(std::io::Error::other("digest mismatch"))
            };
            let items = stream::iter([Ok(good)]).chain(stream::once(failure));
            return Ok(Box::pin(items));
        }
        if *digest == big_digest() {
            let part = big().slice(start as usize..=end as usize);
            let chunks: Vec<std::io::Result<Bytes>> = (0..part.len())
                .step_by(64 << 10)
                .map(|at| Ok(part.slice(at..part.len().min(at + (64 << 10)))))
                .collect();
            return Ok(Box::pin(stream::iter(chunks)));
        }
        let bytes = Self::blob_bytes(digest)
            .ok_or_else(|| CatalogError::BlobUnknown(repo.clone(), *digest))?;
        let part = &bytes[start as usize..=end as usize];
        // Small chunks, so the body is more than one frame.
        let chunks: Vec<std::io::Result<Bytes>> = part
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if *digest == slow_digest() {
            let paced = stream::iter(chunks).then(|chunk| async {
                tokio::time::sleep(std::time::Duration::from_millis(40)).await;
                chunk
            });
            return Ok(Box::pin(paced));
        }
        Ok(Box::pin(stream::iter(chunks)))
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>, CatalogError> {
        self.record("tags", repo);
        Self::known(repo)?;
        let mut tags: Vec<Tag> = TAGS.iter().filter_map(|t| t.parse().ok()).collect();
        tags.sort();
        Ok(tags)
    }

    async fn repositories(&self) -> Vec<RepoName> {
        ["library/app", "other", "zeta/x"]
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect()
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>, CatalogError> {
        self.record("referrers", repo);
        Self::known(repo)?;
        if *digest != manifest_digest() {
            return Ok(vec![]);
        }
        Ok(vec![
            serde_json::json!({
                "mediaType": media::OCI_MANIFEST,
                "digest": Digest::of(b"sig").to_string(),
                "size": 3,
                "artifactType": "application/vnd.example.sig",
            }),
            serde_json::json!({
                "mediaType": media::OCI_MANIFEST,
                "digest": Digest::of(b"sbom").to_string(),
                "size": 4,
                "artifactType": "application/vnd.example.sbom+json",
            }),
        ])
    }
}
