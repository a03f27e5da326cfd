//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`), as a
//! tar or a directory: skopeo/podman `oci-archive:`, BuildKit's OCI
//! exporter, Docker ≥ 25 `docker save`, `ctr images export`. Documents are
//! parsed into the typed model ([`super::model::oci`]) and served byte for
//! byte, so digests and signatures stay valid. The walk goes by digest with
//! a visited set, under the archive's budget.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::budget::{Budget, Limit};
use super::docker::platform;
use super::model::oci::{CONTAINERD_NAME, Desc, Document, PlatformFields, REF_NAME};
use super::model::{ArchiveRef, Blob, BlobAt, Doc, Format, FoundImage, Indexed, Root};
use super::{Archive, ArchiveError};
use crate::image::Digest;

/// How deep indexes may nest; real tools use one or two levels.
const MAX_DEPTH: usize = 4;

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Checks that a blob is in the layout with the size its descriptor says.
fn check_blob(archive: &Archive, d: &Desc) -> Result<String, ArchiveError> {
    let path = blob_path(&d.digest);
    let e = archive.member(&path).map_err(|_| {
        ArchiveError::Format(format!("blob {} is missing from the layout", d.digest))
    })?;
    if e.size != d.size {
        return Err(ArchiveError::Format(format!(
            "blob {} is {} bytes but its descriptor says {}",
            d.digest, e.size, d.size
        )));
    }
    Ok(e.name.clone())
}

/// Reads a small blob (manifest, index, config) and checks its digest.
async fn read_verified(archive: &Archive, d: &Desc) -> Result<Bytes, ArchiveError> {
    let path = check_blob(archive, d)?;
    let bytes = archive.read_doc(&path).await?;
    let actual = Digest::of(&bytes);
    if actual != d.digest {
        return Err(ArchiveError::Corrupt(format!(
            "blob {} has digest {actual}",
            d.digest
        )));
    }
    Ok(bytes)
}

/// What walking one manifest or index found.
#[derive(Default)]
struct Walk {
    digests: BTreeSet<Digest>,
    platforms: Vec<String>,
    layers: Vec<(Digest, u64)>,
}

impl Walk {
    /// Takes in what a child walk found; the descriptors count against
    /// the budget, so sharing cannot multiply them unchecked.
    fn extend(&mut self, child: &Walk, budget: &Budget) -> Result<(), ArchiveError> {
        budget.charge(
            Limit::Descriptors,
            (child.platforms.len() + child.layers.len()) as u64,
        )?;
        self.digests.extend(child.digests.iter().copied());
        self.platforms.extend(child.platforms.iter().cloned());
        self.layers.extend(child.layers.iter().copied());
        Ok(())
    }
}

/// One archive's walk: the archive's budget, and every manifest or index
/// already walked (by digest), so a document reached again — shared by two
/// indexes, or repeated by a hostile one — costs nothing more.
struct Ctx<'a> {
    budget: &'a Budget,
    done: HashMap<Digest, Result<Arc<Walk>, String>>,
}

pub async fn index(archive: &Archive) -> Result<Indexed, ArchiveError> {
    let raw = archive.read_doc("index.json").await?;
    let top = super::model::oci::parse_index_json(&raw)?;
    let mut ix = Indexed {
        format: Some(Format::Oci),
        ..Default::default()
    };
    // Why the first entry was skipped: the error when none is usable.
    let mut skipped = None;
    let mut ctx = Ctx {
        budget: &archive.budget,
        done: HashMap::new(),
    };
    for (i, v) in top.manifests().iter().enumerate() {
        ctx.budget.charge(Limit::Descriptors, 1)?;
        let d = match Desc::from_spec(v) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(
                    archive = archive.describe(),
                    "index.json entry {i} skipped: {e}"
                );
                skipped.get_or_insert_with(|| {
                    ArchiveError::Format(format!("index.json entry {i}: {e}"))
                });
                continue;
            }
        };
        let mut w = Walk::default();
        if let Err(e) = Box::pin(walk(archive, &d, 0, &mut ix, &mut w, &mut ctx)).await {
            if let ArchiveError::Budget(_) = e {
                return Err(e);
            }
            tracing::warn!(
                archive = archive.describe(),
                "index.json entry {i} ({}) skipped: {e}",
                d.digest
            );
            skipped.get_or_insert_with(|| {
                ArchiveError::Format(format!("index.json entry {i} ({}): {e}", d.digest))
            });
            continue;
        }
        let refs = [CONTAINERD_NAME, REF_NAME]
            .iter()
            .filter_map(|k| d.annotations.get(*k))
            .filter_map(|n| ArchiveRef::parse(n))
            .collect();
        ix.images.push(FoundImage {
            refs,
            root: Root::Stored(d.digest),
            digests: w.digests,
            platforms: w.platforms,
            layers: w.layers,
        });
    }
    if ix.images.is_empty()
        && let Some(e) = skipped
    {
        return Err(e);
    }
    Ok(ix)
}

/// Loads the manifest or index `d` and everything it references, once
/// per archive: a document walked before adds what it found then.
async fn walk(
    archive: &Archive,
    d: &Desc,
    depth: usize,
    ix: &mut Indexed,
    w: &mut Walk,
    ctx: &mut Ctx<'_>,
) -> Result<(), ArchiveError> {
    ctx.budget.charge(Limit::Visits, 1)?;
    if let Some(done) = ctx.done.get(&d.digest) {
        return match done {
            Ok(found) => {
                let found = found.clone();
                w.extend(&found, ctx.budget)
            }
            Err(why) => Err(ArchiveError::Format(why.clone())),
        };
    }
    let mut mine = Walk::default();
    let r = Box::pin(walk_new(archive, d, depth, ix, &mut mine, ctx)).await;
    match r {
        Ok(()) => {
            w.extend(&mine, ctx.budget)?;
            ctx.done.insert(d.digest, Ok(Arc::new(mine)));
            Ok(())
        }
        Err(e @ ArchiveError::Budget(_)) => Err(e),
        Err(e) => {
            ctx.done.insert(d.digest, Err(e.to_string()));
            Err(e)
        }
    }
}

async fn walk_new(
    archive: &Archive,
    d: &Desc,
    depth: usize,
    ix: &mut Indexed,
    w: &mut Walk,
    ctx: &mut Ctx<'_>,
) -> Result<(), ArchiveError> {
    if depth > MAX_DEPTH {
        return Err(ArchiveError::Format("indexes nest too deeply".into()));
    }
    let bytes = read_verified(archive, d).await?;
    let (media_type, doc) = Document::parse(&bytes, Some(&d.media_type), &d.digest)?;
    match &doc {
        Document::Index(index) => {
            let mut present = 0;
            let mut seen = HashSet::new();
            for c in index.manifests() {
                ctx.budget.charge(Limit::Descriptors, 1)?;
                let cd = match Desc::from_spec(c) {
                    Ok(cd) => cd,
                    Err(e) => {
                        tracing::debug!(
                            archive = archive.describe(),
                            "descriptor in index {} not served: {e}",
                            d.digest
                        );
                        continue;
                    }
                };
                // Exports of one platform keep the full index; serve it and
                // the children that are there. A child that fails part way
                // adds nothing to what the image lists.
                // A child listed twice is one child.
                if !seen.insert(cd.digest) {
                    continue;
                }
                let mut cw = Walk::default();
                match Box::pin(walk(archive, &cd, depth + 1, ix, &mut cw, ctx)).await {
                    Ok(()) => {
                        present += 1;
                        w.extend(&cw, ctx.budget)?;
                    }
                    Err(e @ ArchiveError::Budget(_)) => return Err(e),
                    Err(e) => tracing::debug!(
                        archive = archive.describe(),
                        "index child {} not served: {e}",
                        cd.digest
                    ),
                }
            }
            if present == 0 {
                return Err(ArchiveError::Format(format!(
                    "index {} has none of its manifests in the archive",
                    d.digest
                )));
            }
        }
        Document::Manifest(m) => {
            let cd = Desc::from_spec(m.config())?;
            let config = read_verified(archive, &cd).await?;
            let pf = PlatformFields::of_config(&config).or(d.platform.as_ref());
            w.platforms.push(platform(
                pf.os.as_deref(),
                pf.architecture.as_deref(),
                pf.variant.as_deref(),
            ));
            w.digests.insert(cd.digest);
            ix.blobs.insert(
                cd.digest,
                Blob {
                    size: cd.size,
                    at: BlobAt::Memory(config),
                },
            );
            for l in m.layers() {
                ctx.budget.charge(Limit::Descriptors, 1)?;
                let ld = Desc::from_spec(l)?;
                // Non-distributable layers may be absent; clients fetch them
                // from their URLs.
                if ld.has_urls && archive.member(&blob_path(&ld.digest)).is_err() {
                    continue;
                }
                let path = check_blob(archive, &ld)?;
                w.digests.insert(ld.digest);
                w.layers.push((ld.digest, ld.size));
                ix.blobs.insert(
                    ld.digest,
                    Blob {
                        size: ld.size,
                        at: BlobAt::Member(path),
                    },
                );
            }
        }
    }
    if let Some(subject) = doc.subject().and_then(|s| Desc::from_spec(s).ok()) {
        let artifact_type = doc.artifact_type().unwrap_or_default();
        let mut rd = serde_json::Map::new();
        rd.insert("mediaType".into(), json!(media_type));
        rd.insert("digest".into(), json!(d.digest));
        rd.insert("size".into(), json!(d.size));
        if !artifact_type.is_empty() {
            rd.insert("artifactType".into(), json!(artifact_type));
        }
        if let Some(a) = doc.annotations() {
            rd.insert("annotations".into(), json!(a));
        }
        let rd = serde_json::Value::Object(rd);
        // A manifest reached twice (under two tags) is one referrer.
        let list = ix.referrers.entry(subject.digest).or_default();
        if !list.contains(&rd) {
            list.push(rd);
        }
    }
    w.digests.insert(d.digest);
    ix.docs.insert(d.digest, Doc { media_type, bytes });
    Ok(())
}
