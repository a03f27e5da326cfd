//! Which format an archive is, decided by its content, and what the
//! formats produce: images, manifests and a map of where blobs are.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use bytes::Bytes;

use super::toc::{Entry, EntryKind, Meta, Toc};
use super::{Archive, ArchiveError, docker, oci, rootfs};
use crate::image::{Digest, ImageConfig, RepoName, Tag, split_image_ref};

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
    Repack(std::sync::Arc<super::repack::Repack>),
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
                        if let super::repack::Segment::Member(n) = s {
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

/// Whether a name is a legacy docker image folder's `<64 hex>/json`.
fn is_legacy_id_json(name: &str) -> bool {
    name.strip_suffix("/json")
        .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a 512-byte block is a tar header: its checksum adds up.
pub(crate) fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..512])
        .map(|&b| b as u32)
        .sum::<u32>()
        + 8 * 32;
    sum == stored
}

/// Lists a directory as a TOC. Symlinks are recorded, not followed, so a
/// layout cannot point outside its folder. Returns a version string (the
/// newest mtime and the file count).
pub(crate) fn walk_dir(root: &Path) -> Result<(Toc, String), ArchiveError> {
    use std::os::unix::fs::MetadataExt;
    let mut toc = Toc::default();
    let mut stack = vec![String::new()];
    let mut newest = (0i64, 0i64);
    let mut count = 0u64;
    let io = |p: &Path, e: std::io::Error| {
        ArchiveError::Source(crate::source::SourceError::io(&p.display().to_string(), e))
    };
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| io(&dir, e))?
            .filter_map(|e| e.ok())
            .collect();
        names.sort_by_key(|e| e.file_name());
        for de in names {
            let Some(fname) = de.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let name = if rel.is_empty() {
                fname
            } else {
                format!("{rel}/{fname}")
            };
            let path = de.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
            newest = newest.max((meta.mtime(), meta.mtime_nsec()));
            count += 1;
            let kind = if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&path).map_err(|e| io(&path, e))?;
                EntryKind::Symlink(t.to_string_lossy().into_owned())
            } else if meta.is_dir() {
                stack.push(name.clone());
                EntryKind::Dir
            } else if meta.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            toc.push(Entry {
                name,
                kind,
                size: if meta.is_file() { meta.len() } else { 0 },
                offset: 0,
                head: None,
                meta: Meta {
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid().into(),
                    gid: meta.gid().into(),
                    mtime: meta.mtime().max(0) as u64,
                },
            });
        }
    }
    Ok((toc, format!("dir-{}.{}-{count}", newest.0, newest.1)))
}

/// Decides the format from the TOC and builds what it serves.
/// `config` is the image config override for formats that synthesize one.
pub async fn index(
    archive: &std::sync::Arc<Archive>,
    config: &ImageConfig,
) -> Result<Indexed, ArchiveError> {
    let toc = &archive.toc;
    let has = |n: &str| toc.get(n).is_some();
    // Markers are entries stored under these exact names, whatever they
    // are: an archive carrying one is that format or refused with its
    // error, never served as a rootfs of the whole tar.
    let oci = ["oci-layout", "index.json"]
        .into_iter()
        .find(|n| toc.entry(n).is_some());
    let docker = ["manifest.json", "repositories"]
        .into_iter()
        .find(|n| toc.entry(n).is_some())
        .or_else(|| {
            toc.entries()
                .iter()
                .find(|e| is_legacy_id_json(&e.name))
                .map(|_| "<id>/json")
        });
    let regular = |n: &str, format: &str| match toc.entry(n).map(|e| &e.kind) {
        Some(EntryKind::File) => Ok(()),
        Some(_) => Err(ArchiveError::Format(format!(
            "{format}: {n} is not a regular file (a link, a folder or a device)"
        ))),
        None => Err(ArchiveError::Format(format!("{format}: no {n}"))),
    };
    let mut oci_ok = false;
    if let Some(marker) = oci {
        let checked = regular("oci-layout", "OCI layout").and(regular("index.json", "OCI layout"));
        match checked {
            Ok(()) => oci_ok = true,
            Err(e) if docker.is_none() => return Err(e),
            Err(e) => tracing::warn!(
                archive = archive.describe(),
                "{e} (it has {marker}); using manifest.json"
            ),
        }
    }
    if let Some(marker) = docker {
        let checked = regular("manifest.json", "docker archive").map_err(|e| {
            ArchiveError::Format(format!(
                "{e} (it has {marker}; the legacy format without manifest.json is not supported)"
            ))
        });
        if oci.is_none() {
            checked?;
        }
    }
    if oci_ok {
        match oci::index(archive).await {
            Ok(ix) if !ix.images.is_empty() => return Ok(ix),
            // Some `docker save` versions write an index that misses
            // entries; their manifest.json still describes the images.
            Ok(_) | Err(_) if has("manifest.json") => {
                tracing::warn!(
                    archive = archive.describe(),
                    "index.json lists no usable image; using manifest.json"
                );
            }
            Ok(_) => return Err(ArchiveError::Format("index.json lists no image".into())),
            Err(e) => return Err(e),
        }
    }
    if docker.is_some() {
        regular("manifest.json", "docker archive")?;
        return docker::index(archive).await;
    }
    if has("metadata.json")
        && (toc.contains_prefix("rootfs/") || rootfs::concourse_layer(toc).is_some())
    {
        return rootfs::index_concourse(archive, config).await;
    }
    rootfs::index_rootfs(archive, config).await
}
