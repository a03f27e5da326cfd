//! Archives that are a root file system rather than an image: a plain
//! rootfs tarball (served as a one-layer image whose layer is the file
//! itself), and Concourse image resources (`rootfs.tgz` or a `rootfs/`
//! tree, plus `metadata.json` with env and user). The config is
//! synthesized, deterministically, from the layer's digests and the
//! user's settings.
use std::collections::BTreeSet;

use serde::Deserialize;

use super::docker::platform;
use super::model::{Blob, BlobAt, Format, FoundImage, Indexed};
use super::toc::Toc;
use super::{Archive, ArchiveError, Compression, Container, StreamDigests, repack};
use crate::image::ImageConfig;
use crate::image::build::{self, Layer, LayerKind};
use std::sync::Arc;

/// Member names a Concourse resource uses for a packed rootfs.
const CONCOURSE_LAYERS: [&str; 4] = [
    "rootfs.tgz",
    "rootfs.tar.gz",
    "rootfs.tar",
    "rootfs.tar.zst",
];

pub fn concourse_layer(toc: &Toc) -> Option<&'static str> {
    CONCOURSE_LAYERS.into_iter().find(|n| toc.get(n).is_some())
}

fn kind_of(c: Option<Compression>) -> LayerKind {
    match c {
        None => LayerKind::Tar,
        Some(Compression::Gzip) => LayerKind::Gzip,
        Some(Compression::Zstd) => LayerKind::Zstd,
    }
}

pub async fn index_rootfs(
    archive: &Archive,
    config: &ImageConfig,
) -> Result<Indexed, ArchiveError> {
    let compression = match &archive.container {
        Container::Tar(_) => None,
        Container::Streamed { compression, .. } => *compression,
        Container::Dir(_) => {
            return Err(ArchiveError::Format(
                "a directory is served only as an OCI layout (oci-layout + index.json) or a Concourse resource (metadata.json + rootfs)".into(),
            ));
        }
    };
    if archive.toc.entries().is_empty() {
        return Err(ArchiveError::Format("the archive is empty".into()));
    }
    let digests = match archive.digests {
        Some(d) => d,
        None => {
            // The layer is the file: its digest needs one full read.
            tracing::info!(
                archive = archive.describe(),
                "rootfs tarball: hashing it to learn the layer digest"
            );
            let s = archive.whole_stream(0, archive.stat.size).await?;
            Archive::hash_stream(s, None).await?
        }
    };
    let mut ix = Indexed {
        format: Some(Format::Rootfs),
        ..Default::default()
    };
    let img = build_image(
        &mut ix,
        kind_of(compression),
        digests,
        BlobAt::Whole,
        config,
        &ImageConfig::default(),
        "cartorio: rootfs tarball",
    );
    ix.images.push(img);
    Ok(ix)
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
}

pub async fn index_concourse(
    archive: &Arc<Archive>,
    config: &ImageConfig,
) -> Result<Indexed, ArchiveError> {
    let raw = archive.read_doc("metadata.json").await?;
    let meta: Metadata = serde_json::from_slice(&raw)
        .map_err(|e| ArchiveError::Format(format!("metadata.json is not valid: {e}")))?;
    let base = ImageConfig {
        env: meta.env,
        user: meta.user,
        ..Default::default()
    };
    let (compression, digests, at) = match concourse_layer(&archive.toc) {
        Some(name) => {
            let entry = archive.member(name)?;
            let head = archive.member_head(entry).await?;
            let compression = Compression::sniff(&head);
            let s = archive.member_stream(entry, 0, entry.size).await?;
            let digests = Archive::hash_stream(s, compression).await?;
            (compression, digests, BlobAt::Member(entry.name.clone()))
        }
        None => {
            // An unpacked rootfs/ tree: re-pack it as a layer, read once to
            // learn its digest.
            let r = Arc::new(repack::repack(&archive.toc, "rootfs/")?);
            let digests = Archive::hash_stream(archive.repack_stream(&r), None).await?;
            if digests.stored.1 != r.size {
                return Err(ArchiveError::Corrupt(
                    "re-packed rootfs/ changed size while reading".into(),
                ));
            }
            (None, digests, BlobAt::Repack(r))
        }
    };
    let mut ix = Indexed {
        format: Some(Format::Concourse),
        ..Default::default()
    };
    let img = build_image(
        &mut ix,
        kind_of(compression),
        digests,
        at,
        config,
        &base,
        "cartorio: concourse image resource",
    );
    ix.images.push(img);
    Ok(ix)
}

/// A one-layer image: config, manifests and blob map entries.
fn build_image(
    ix: &mut Indexed,
    kind: LayerKind,
    digests: StreamDigests,
    at: BlobAt,
    user: &ImageConfig,
    base: &ImageConfig,
    created_by: &str,
) -> FoundImage {
    let (layer_digest, layer_size) = digests.stored;
    let config = build::config(user, base, &[digests.diff_id], created_by);
    let layers = [Layer {
        kind,
        digest: layer_digest,
        size: layer_size,
    }];
    let mut set = BTreeSet::from([layer_digest]);
    ix.blobs.insert(
        layer_digest,
        Blob {
            size: layer_size,
            at,
        },
    );
    let root = ix.add_generated(&config, &layers, &mut set);
    let cv = super::model::oci::PlatformFields::of_config(&config);
    FoundImage {
        refs: Vec::new(),
        root,
        digests: set,
        platforms: vec![platform(
            cv.os.as_deref(),
            cv.architecture.as_deref(),
            cv.variant.as_deref(),
        )],
        layers: vec![(layer_digest, layer_size)],
    }
}
