//! Which format an archive is, decided by its content (the markers it
//! stores), and the format reader that builds its [`super::model`].
use std::path::Path;

use super::model::Indexed;
use super::toc::{Entry, EntryKind, Meta, Toc};
use super::{Archive, ArchiveError, docker, oci, rootfs};
use crate::image::ImageConfig;

/// Whether a name is a legacy docker image folder's `<64 hex>/json`.
fn is_legacy_id_json(name: &str) -> bool {
    name.strip_suffix("/json")
        .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a 512-byte block is a tar header: its checksum adds up.
pub(crate) fn looks_like_tar(block: &[u8]) -> bool {
    let (Some(field), Some(before), Some(after)) =
        (block.get(148..156), block.get(..148), block.get(156..512))
    else {
        return false;
    };
    let digits: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .skip_while(|&&b| b == b' ')
        .map(|&b| b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let sum: u32 = before.iter().chain(after).map(|&b| b as u32).sum::<u32>() + 8 * 32;
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

/// The names whose presence decides a format, and the format's name.
const MARKERS: [(&str, &str); 5] = [
    ("oci-layout", "OCI layout"),
    ("index.json", "OCI layout"),
    ("manifest.json", "docker archive"),
    ("repositories", "docker archive"),
    ("metadata.json", "Concourse resource"),
];

/// Refuses an archive that stores a format marker twice, or under a name
/// that only some readers take for it (`manifest.json/.`, `./x/../…` is
/// already refused): which format it is, and which bytes describe it,
/// would depend on the reader.
fn refuse_disguised_markers(toc: &Toc) -> Result<(), ArchiveError> {
    for (marker, format) in MARKERS {
        if toc.repeated(marker) {
            return Err(ArchiveError::Hostile(format!(
                "{format}: two members are named {marker}: readers disagree on which one counts"
            )));
        }
    }
    for e in toc.entries() {
        if !e.name.split('/').any(|c| c.is_empty() || c == ".") {
            continue;
        }
        let resolved: Vec<&str> = e
            .name
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let resolved = resolved.join("/");
        if let Some((marker, format)) = MARKERS.iter().find(|(m, _)| *m == resolved) {
            return Err(ArchiveError::Hostile(format!(
                "{format}: {marker} is stored as {:?}; names are compared as stored",
                e.name
            )));
        }
    }
    Ok(())
}

/// Decides the format from the TOC and builds what it serves.
/// `config` is the image config override for formats that synthesize one.
pub async fn index(
    archive: &std::sync::Arc<Archive>,
    config: &ImageConfig,
) -> Result<Indexed, ArchiveError> {
    let toc = &archive.toc;
    refuse_disguised_markers(toc)?;
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
