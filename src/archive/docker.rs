//! Legacy `docker save` archives (Docker ≤ 24, `skopeo copy docker-archive:`,
//! `podman save`): `manifest.json` lists each image's config and layer
//! files. The config's `rootfs.diff_ids` are the sha256 of the uncompressed
//! layer tars, so a manifest is built from manifest.json, the config and
//! the tar headers alone, without reading a layer.
use std::collections::{BTreeSet, HashMap};

use super::budget::Limit;
use super::model::docker::{Config, ManifestEntry, parse_manifest};
use super::model::{ArchiveRef, Blob, BlobAt, Format, FoundImage, Indexed};
use super::{Archive, ArchiveError, Compression};
use crate::image::Digest;
use crate::image::build::{Layer, LayerKind};
use bytes::Bytes;

/// The digest a `blobs/sha256/<hex>` path names (Docker ≥ 25 and
/// `ctr images export` put layers there).
pub(crate) fn digest_from_blob_path(path: &str) -> Option<Digest> {
    let hex = path
        .trim_start_matches("./")
        .strip_prefix("blobs/sha256/")?;
    Digest::from_hex(hex).ok()
}

pub(crate) fn platform(os: Option<&str>, arch: Option<&str>, variant: Option<&str>) -> String {
    let mut p = format!("{}/{}", os.unwrap_or("unknown"), arch.unwrap_or("unknown"));
    if let Some(v) = variant {
        p.push('/');
        p.push_str(v);
    }
    p
}

pub async fn index(archive: &Archive) -> Result<Indexed, ArchiveError> {
    let raw = archive.read_doc("manifest.json").await?;
    let entries = parse_manifest(&raw)?;
    let mut ix = Indexed {
        format: Some(Format::DockerArchive),
        ..Default::default()
    };
    let mut seen = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        archive.budget.charge(Limit::Visits, 1)?;
        let img = image(archive, e, &mut ix, &mut seen)
            .await
            .map_err(|err| match err {
                ArchiveError::Budget(_) => err,
                err => {
                    ArchiveError::Format(format!("manifest.json image {i} ({}): {err}", e.config))
                }
            })?;
        ix.images.push(img);
    }
    Ok(ix)
}

/// What one layer member turned out to be: learnt once per archive, so a
/// layer that several images (or one image twice) list is sniffed and, when
/// compressed outside `blobs/`, read and hashed once, not once per mention.
#[derive(Clone, Copy)]
struct Seen {
    kind: LayerKind,
    digest: Digest,
    /// Whether the digest is the config's diff_id (an uncompressed layer
    /// outside `blobs/`): a claim, which another mention must repeat.
    claimed: bool,
}

/// The kind and digest of the layer stored in `entry`, whose uncompressed
/// digest is `diff_id`.
async fn layer(
    archive: &Archive,
    entry: &super::Entry,
    diff_id: Digest,
) -> Result<Seen, ArchiveError> {
    let head = archive.member_head(entry).await?;
    let (kind, compression) = match Compression::sniff(&head) {
        None => (LayerKind::Tar, None),
        Some(Compression::Gzip) => (LayerKind::Gzip, Some(Compression::Gzip)),
        Some(Compression::Zstd) => (LayerKind::Zstd, Some(Compression::Zstd)),
    };
    let claimed = compression.is_none() && digest_from_blob_path(&entry.name).is_none();
    let digest = match (digest_from_blob_path(&entry.name), compression) {
        (Some(d), _) => d,
        (None, None) => diff_id,
        (None, Some(_)) => {
            // A compressed layer outside blobs/: its digest is not
            // written anywhere, so its stored bytes are read and hashed
            // once. Never decompressed: the diff_id is the config's, and
            // the client checks it when it unpacks the layer.
            tracing::info!(
                archive = archive.describe(),
                layer = entry.name,
                "hashing a compressed layer to learn its digest"
            );
            let s = archive.member_stream(entry, 0, entry.size).await?;
            Archive::hash_stream(s, None).await?.stored.0
        }
    };
    Ok(Seen {
        kind,
        digest,
        claimed,
    })
}

async fn image(
    archive: &Archive,
    e: &ManifestEntry,
    ix: &mut Indexed,
    seen: &mut HashMap<String, Seen>,
) -> Result<FoundImage, ArchiveError> {
    let config_bytes: Bytes = archive.read_doc(&e.config).await?;
    let config = Config::parse(&config_bytes, &e.config)?;
    if config.rootfs.diff_ids.len() != e.layers.len() {
        return Err(ArchiveError::Format(format!(
            "config has {} diff_ids but manifest.json lists {} layers",
            config.rootfs.diff_ids.len(),
            e.layers.len()
        )));
    }
    let config_digest = Digest::of(&config_bytes);
    let mut digests = BTreeSet::from([config_digest]);
    let mut layers = Vec::new();
    for (path, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
        archive.budget.charge(Limit::Descriptors, 1)?;
        let entry = archive.member(path)?;
        // Keyed by the entry links resolve to: `abc/layer.tar` and the
        // file it links to are one layer.
        let Seen { kind, digest, .. } = match seen.get(&entry.name) {
            Some(s) if s.claimed && s.digest != *diff_id => {
                return Err(ArchiveError::Format(format!(
                    "layer {path} is listed with diff_id {diff_id}, and elsewhere with {}",
                    s.digest
                )));
            }
            Some(s) => *s,
            None => {
                let s = layer(archive, entry, *diff_id).await?;
                seen.insert(entry.name.clone(), s);
                s
            }
        };
        ix.blobs.insert(
            digest,
            Blob {
                size: entry.size,
                at: BlobAt::Member(entry.name.clone()),
            },
        );
        digests.insert(digest);
        layers.push(Layer {
            kind,
            digest,
            size: entry.size,
        });
    }
    let root = ix.add_generated(&config_bytes, &layers, &mut digests);
    let refs = e
        .repo_tags
        .iter()
        .flatten()
        .filter_map(|t| {
            let r = ArchiveRef::parse(t);
            if r.is_none() {
                tracing::warn!(
                    archive = archive.describe(),
                    tag = t,
                    "ignoring an invalid RepoTags entry"
                );
            }
            r
        })
        .collect();
    Ok(FoundImage {
        refs,
        root,
        digests,
        platforms: vec![platform(
            config.platform.os.as_deref(),
            config.platform.architecture.as_deref(),
            config.platform.variant.as_deref(),
        )],
        layers: layers.iter().map(|l| (l.digest, l.size)).collect(),
    })
}
