//! OCI documents — image indexes, image manifests and their descriptors —
//! as oci-spec's types, and Docker's schema 2 manifests and manifest
//! lists, which have the same shape. Parsing is strict (a descriptor
//! without a media type, digest or size, a digest that is not one, makes
//! its document invalid); what is served is always the stored bytes.
use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::archive::ArchiveError;
use crate::image::{Digest, media};

/// Annotation naming an image in an OCI layout (podman, skopeo, BuildKit).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation naming an image in a `ctr images export`.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A descriptor as the index needs it: the digest as cartorio's sha256
/// type (a descriptor of any other algorithm names no blob cartorio
/// serves), the rest as oci-spec parsed it.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Whether it lists URLs (a non-distributable layer may be absent).
    pub has_urls: bool,
    pub annotations: BTreeMap<String, String>,
    pub platform: Option<PlatformFields>,
}

impl Desc {
    pub fn from_spec(d: &Descriptor) -> Result<Desc, ArchiveError> {
        let digest = d
            .digest()
            .to_string()
            .parse()
            .map_err(|e| ArchiveError::Format(format!("descriptor: {e}")))?;
        Ok(Desc {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
            has_urls: d.urls().as_ref().is_some_and(|u| !u.is_empty()),
            annotations: sorted(d.annotations()),
            platform: d.platform().as_ref().map(|p| PlatformFields {
                os: Some(p.os().to_string()),
                architecture: Some(p.architecture().to_string()),
                variant: p.variant().clone(),
            }),
        })
    }
}

fn sorted(a: &Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    a.iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The platform fields of an image config (OCI or Docker) or of a
/// descriptor. All optional: an artifact's config is often `{}`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PlatformFields {
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
}

impl PlatformFields {
    /// The fields of a config document; none when it is not a JSON
    /// object (an artifact's config may be anything).
    pub fn of_config(bytes: &[u8]) -> PlatformFields {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// These fields, each missing one taken from `or`.
    pub fn or(self, or: Option<&PlatformFields>) -> PlatformFields {
        let Some(or) = or else { return self };
        PlatformFields {
            os: self.os.or_else(|| or.os.clone()),
            architecture: self.architecture.or_else(|| or.architecture.clone()),
            variant: self.variant.or_else(|| or.variant.clone()),
        }
    }
}

/// The fields that tell a document's kind, read before the whole of it.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
}

/// A manifest or index a descriptor points to.
#[derive(Debug)]
pub enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

impl Document {
    /// Parses a stored document; `declared` is the media type of the
    /// descriptor that pointed to it. Returns the media type it is served
    /// with: its own `mediaType`, else the descriptor's, else an index
    /// when it lists manifests, else an OCI manifest.
    pub fn parse(
        bytes: &[u8],
        declared: Option<&str>,
        digest: &Digest,
    ) -> Result<(String, Document), ArchiveError> {
        let bad = |e: serde_json::Error| {
            ArchiveError::Format(format!("manifest {digest} is not valid: {e}"))
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(bad)?;
        let media_type = probe
            .media_type
            .or_else(|| declared.map(str::to_string))
            .or_else(|| probe.manifests.map(|_| media::OCI_INDEX.to_string()))
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        let doc = if media::is_index(&media_type) {
            Document::Index(serde_json::from_slice(bytes).map_err(bad)?)
        } else if media::is_manifest(&media_type) {
            Document::Manifest(serde_json::from_slice(bytes).map_err(bad)?)
        } else {
            return Err(ArchiveError::Format(format!(
                "{digest} has unsupported media type {media_type}"
            )));
        };
        Ok((media_type, doc))
    }

    /// The manifest this one refers to (OCI 1.1 referrers).
    pub fn subject(&self) -> Option<&Descriptor> {
        match self {
            Document::Index(i) => i.subject().as_ref(),
            Document::Manifest(m) => m.subject().as_ref(),
        }
    }

    /// What a referrers list reports as its artifact type: the
    /// `artifactType`, else a manifest's config media type.
    pub fn artifact_type(&self) -> Option<String> {
        match self {
            Document::Index(i) => i.artifact_type().as_ref().map(|t| t.to_string()),
            Document::Manifest(m) => Some(
                m.artifact_type()
                    .as_ref()
                    .unwrap_or(m.config().media_type())
                    .to_string(),
            ),
        }
    }

    pub fn annotations(&self) -> Option<BTreeMap<String, String>> {
        let a = match self {
            Document::Index(i) => i.annotations(),
            Document::Manifest(m) => m.annotations(),
        };
        a.as_ref().map(|_| sorted(a))
    }
}

/// An OCI layout's `index.json`.
pub fn parse_index_json(bytes: &[u8]) -> Result<ImageIndex, ArchiveError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ArchiveError::Format(format!("index.json is not valid: {e}")))
}
