//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`), as a
//! tar or a directory: skopeo/podman `oci-archive:`, BuildKit's OCI
//! exporter, Docker ≥ 25 `docker save`, `ctr images export`. Manifests and
//! indexes are served byte for byte, so digests and signatures stay valid.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::budget::{Budget, Limit};
use super::detect::{ArchiveRef, Blob, BlobAt, Doc, Format, FoundImage, Indexed, Root};
use super::docker::platform;
use super::{Archive, ArchiveError};
use crate::image::{Digest, media};

/// How deep indexes may nest; real tools use one or two levels.
const MAX_DEPTH: usize = 4;

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A descriptor's fields cartorio needs.
struct Desc {
    media_type: Option<String>,
    digest: Digest,
    size: u64,
}

fn desc(v: &Value) -> Result<Desc, ArchiveError> {
    let digest = v["digest"]
        .as_str()
        .ok_or_else(|| ArchiveError::Format("descriptor has no digest".into()))?
        .parse()
        .map_err(|e| ArchiveError::Format(format!("descriptor: {e}")))?;
    let size = v["size"]
        .as_u64()
        .ok_or_else(|| ArchiveError::Format(format!("descriptor {digest} has no size")))?;
    Ok(Desc {
        media_type: v["mediaType"].as_str().map(str::to_string),
        digest,
        size,
    })
}

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
async fn read_verified(archive: &Archive, d: &Desc, ctx: &mut Ctx) -> Result<Bytes, ArchiveError> {
    let path = check_blob(archive, d)?;
    ctx.budget.charge(Limit::DocumentBytes, d.size)?;
    let bytes = archive.read_member(&path).await?;
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
    fn extend(&mut self, child: &Walk, budget: &mut Budget) -> Result<(), ArchiveError> {
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

/// One archive's walk: the budget, and every manifest or index already
/// walked (by digest), so a document reached again — shared by two
/// indexes, or repeated by a hostile one — costs nothing more.
#[derive(Default)]
struct Ctx {
    budget: Budget,
    done: HashMap<Digest, Result<Arc<Walk>, String>>,
}

pub async fn index(archive: &Archive) -> Result<Indexed, ArchiveError> {
    let raw = archive.read_member("index.json").await?;
    let top: Value = serde_json::from_slice(&raw)
        .map_err(|e| ArchiveError::Format(format!("index.json is not valid JSON: {e}")))?;
    let list = top["manifests"]
        .as_array()
        .ok_or_else(|| ArchiveError::Format("index.json has no manifests list".into()))?;
    let mut ix = Indexed {
        format: Some(Format::Oci),
        ..Default::default()
    };
    // Why the first entry was skipped: the error when none is usable.
    let mut skipped = None;
    let mut ctx = Ctx::default();
    for (i, v) in list.iter().enumerate() {
        let d = match desc(v) {
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
        ctx.budget.charge(Limit::Descriptors, 1)?;
        let mut w = Walk::default();
        if let Err(e) = Box::pin(walk(archive, &d, v, 0, &mut ix, &mut w, &mut ctx)).await {
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
        let ann = &v["annotations"];
        let refs = [CONTAINERD_NAME, REF_NAME]
            .iter()
            .filter_map(|k| ann[*k].as_str())
            .filter_map(ArchiveRef::parse)
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
    raw_desc: &Value,
    depth: usize,
    ix: &mut Indexed,
    w: &mut Walk,
    ctx: &mut Ctx,
) -> Result<(), ArchiveError> {
    ctx.budget.charge(Limit::Visits, 1)?;
    if let Some(done) = ctx.done.get(&d.digest) {
        return match done {
            Ok(found) => {
                let found = found.clone();
                w.extend(&found, &mut ctx.budget)
            }
            Err(why) => Err(ArchiveError::Format(why.clone())),
        };
    }
    let mut mine = Walk::default();
    let r = Box::pin(walk_new(archive, d, raw_desc, depth, ix, &mut mine, ctx)).await;
    match r {
        Ok(()) => {
            w.extend(&mine, &mut ctx.budget)?;
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
    raw_desc: &Value,
    depth: usize,
    ix: &mut Indexed,
    w: &mut Walk,
    ctx: &mut Ctx,
) -> Result<(), ArchiveError> {
    if depth > MAX_DEPTH {
        return Err(ArchiveError::Format("indexes nest too deeply".into()));
    }
    let bytes = read_verified(archive, d, ctx).await?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ArchiveError::Format(format!("manifest {} is not valid JSON: {e}", d.digest))
    })?;
    let media_type = doc["mediaType"]
        .as_str()
        .map(str::to_string)
        .or_else(|| d.media_type.clone())
        .or_else(|| doc.get("manifests").map(|_| media::OCI_INDEX.to_string()))
        .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
    if media::is_index(&media_type) {
        let children = doc["manifests"]
            .as_array()
            .ok_or_else(|| ArchiveError::Format(format!("index {} has no manifests", d.digest)))?;
        let mut present = 0;
        let mut seen = HashSet::new();
        for c in children {
            ctx.budget.charge(Limit::Descriptors, 1)?;
            let Ok(cd) = desc(c) else {
                tracing::debug!(
                    archive = archive.describe(),
                    "malformed descriptor in index {}",
                    d.digest
                );
                continue;
            };
            // Exports of one platform keep the full index; serve it and
            // the children that are there. A child that fails part way
            // adds nothing to what the image lists.
            // A child listed twice is one child.
            if !seen.insert(cd.digest) {
                continue;
            }
            let mut cw = Walk::default();
            match Box::pin(walk(archive, &cd, c, depth + 1, ix, &mut cw, ctx)).await {
                Ok(()) => {
                    present += 1;
                    w.extend(&cw, &mut ctx.budget)?;
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
    } else if media::is_manifest(&media_type) {
        let cd = desc(&doc["config"])?;
        let config = read_verified(archive, &cd, ctx).await?;
        let cv: Value = serde_json::from_slice(&config).unwrap_or(Value::Null);
        let pf = &raw_desc["platform"];
        w.platforms.push(platform(
            cv["os"].as_str().or(pf["os"].as_str()),
            cv["architecture"].as_str().or(pf["architecture"].as_str()),
            cv["variant"].as_str().or(pf["variant"].as_str()),
        ));
        w.digests.insert(cd.digest);
        ix.blobs.insert(
            cd.digest,
            Blob {
                size: cd.size,
                at: BlobAt::Memory(config),
            },
        );
        for l in doc["layers"].as_array().into_iter().flatten() {
            ctx.budget.charge(Limit::Descriptors, 1)?;
            let ld = desc(l)?;
            // Non-distributable layers may be absent; clients fetch them
            // from their URLs.
            if l.get("urls").is_some() && archive.member(&blob_path(&ld.digest)).is_err() {
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
    } else {
        return Err(ArchiveError::Format(format!(
            "{} has unsupported media type {media_type}",
            d.digest
        )));
    }
    if let Some(subject) = doc["subject"]["digest"]
        .as_str()
        .and_then(|s| s.parse::<Digest>().ok())
    {
        let artifact_type = doc["artifactType"]
            .as_str()
            .or(doc["config"]["mediaType"].as_str())
            .unwrap_or_default();
        let mut rd = json!({ "mediaType": media_type, "digest": d.digest, "size": d.size });
        if !artifact_type.is_empty() {
            rd["artifactType"] = json!(artifact_type);
        }
        if let Some(a) = doc.get("annotations") {
            rd["annotations"] = a.clone();
        }
        // A manifest reached twice (under two tags) is one referrer.
        let list = ix.referrers.entry(subject).or_default();
        if !list.contains(&rd) {
            list.push(rd);
        }
    }
    w.digests.insert(d.digest);
    ix.docs.insert(d.digest, Doc { media_type, bytes });
    Ok(())
}
