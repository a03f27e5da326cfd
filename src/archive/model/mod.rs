//! The typed model of what an archive holds: the images it describes,
//! the documents served from memory and where every blob's bytes are —
//! what format readers (docker.rs, oci.rs, rootfs.rs) build and the
//! catalog serves. The documents an archive stores are parsed into typed
//! structs ([`oci`]: oci-spec's manifests, indexes and descriptors;
//! [`docker`]: `manifest.json` and configs), but always served as the
//! stored bytes, so their digests never move.
pub mod docker;
pub mod oci;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use crate::image::{Digest, RepoName, Tag, split_image_ref};

/// The archive formats cartorio serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    Oci,
    /// Legacy `docker save` (`manifest.json`, layer tars, config JSON).
    DockerArchive,
    /// Concourse image resource (`rootfs/` or `rootfs.tgz` + `metadata.json`).
    Concourse,
    /// A plain root file system.
    Rootfs,
}

/// A document held in memory: a manifest, index or generated config.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Doc {
    pub media_type: String,
    #[serde(with = "crate::image::hex_bytes")]
    pub bytes: Bytes,
}

/// Where a blob's bytes are.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum BlobAt {
    /// A member of the archive, by TOC name.
    Member(String),
    /// The archive file itself, as stored.
    Whole,
    /// Generated or already read and verified.
    Memory(#[serde(with = "crate::image::hex_bytes")] Bytes),
    /// A layer re-packed from a subtree of the archive.
    Repack(std::sync::Arc<crate::archive::repack::Repack>),
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Blob {
    pub size: u64,
    pub at: BlobAt,
}

/// The manifest a reference resolves to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Root {
    /// The archive's own manifest or index, served as it is.
    Stored(Digest),
    /// Generated: an OCI rendering, and a Docker schema 2 one when every
    /// layer has a Docker media type.
    Generated { oci: Digest, docker: Option<Digest> },
}

impl Root {
    pub fn digests(&self) -> Vec<Digest> {
        match self {
            Root::Stored(d) => vec![*d],
            Root::Generated { oci, docker } => std::iter::once(*oci).chain(*docker).collect(),
        }
    }
}

/// A name an archive records for an image: `docker.io/app:1` (a name and a
/// tag, registry host dropped), or a bare `v1` (an OCI `ref.name` that is
/// only a tag).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ArchiveRef {
    pub name: Option<RepoName>,
    pub tag: Option<Tag>,
}

impl ArchiveRef {
    /// Parses a recorded name; None (with the caller logging it) when it is
    /// not a valid reference.
    pub fn parse(s: &str) -> Option<ArchiveRef> {
        if !s.contains(':') && !s.contains('/') {
            return Some(ArchiveRef {
                name: None,
                tag: Some(s.parse().ok()?),
            });
        }
        let (name, tag) = split_image_ref(s)?;
        Some(ArchiveRef {
            name: Some(name),
            tag,
        })
    }
}

impl std::fmt::Display for ArchiveRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.name, &self.tag) {
            (Some(n), Some(t)) => write!(f, "{n}:{t}"),
            (Some(n), None) => write!(f, "{n}"),
            (None, Some(t)) => write!(f, ":{t}"),
            (None, None) => Ok(()),
        }
    }
}

/// One image (or index) an archive holds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FoundImage {
    /// Names the archive records for it; may be empty.
    pub refs: Vec<ArchiveRef>,
    pub root: Root,
    /// Every manifest, config and layer digest reachable from the root.
    pub digests: BTreeSet<Digest>,
    /// Platform (`linux/amd64`) of each image manifest, for `inspect`.
    pub platforms: Vec<String>,
    /// Layer digests and sizes of each image manifest, for `inspect`.
    pub layers: Vec<(Digest, u64)>,
}

/// Everything served from one archive.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Indexed {
    pub format: Option<Format>,
    pub images: Vec<FoundImage>,
    pub docs: HashMap<Digest, Doc>,
    pub blobs: HashMap<Digest, Blob>,
    /// subject digest -> descriptors of manifests that refer to it.
    pub referrers: BTreeMap<Digest, Vec<serde_json::Value>>,
}

impl Indexed {
    /// The archive entries blobs are read from: all that serving needs of
    /// the TOC.
    pub fn members(&self) -> std::collections::HashSet<String> {
        let mut out = std::collections::HashSet::new();
        for b in self.blobs.values() {
            match &b.at {
                BlobAt::Member(n) => {
                    out.insert(n.clone());
                }
                BlobAt::Repack(r) => {
                    for s in &r.segments {
                        if let crate::archive::repack::Segment::Member(n) = s {
                            out.insert(n.clone());
                        }
                    }
                }
                BlobAt::Whole | BlobAt::Memory(_) => {}
            }
        }
        out
    }

    /// Records the config and the generated manifests of an image; returns
    /// its root. Their digests are added to `reach`.
    pub(crate) fn add_generated(
        &mut self,
        config: &Bytes,
        layers: &[crate::image::build::Layer],
        reach: &mut BTreeSet<Digest>,
    ) -> Root {
        use crate::image::{build, media};
        let config_digest = Digest::of(config);
        self.blobs.insert(
            config_digest,
            Blob {
                size: config.len() as u64,
                at: BlobAt::Memory(config.clone()),
            },
        );
        reach.insert(config_digest);
        let (oci, docker) = build::manifests((config_digest, config.len() as u64), layers);
        let mut add = |bytes: Bytes, media_type: &str| {
            let d = Digest::of(&bytes);
            self.docs.insert(
                d,
                Doc {
                    media_type: media_type.into(),
                    bytes,
                },
            );
            reach.insert(d);
            d
        };
        let oci = add(oci, media::OCI_MANIFEST);
        let docker = docker.map(|d| add(d, media::DOCKER_MANIFEST));
        Root::Generated { oci, docker }
    }
}
