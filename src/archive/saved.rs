//! Checks a saved index against the archive it claims to describe before
//! anything in it is served: a cache folder is outside input (a disk error,
//! a half-written file, another version of cartorio, a hand edit), so every
//! offset is bounded by the archive, every named member exists, and every
//! document held in memory hashes to its digest.
use super::model::{BlobAt, Indexed, Root};
use super::repack::Segment;
use super::toc::{EntryKind, Toc, normalize};
use super::{ArchiveError, Layout};
use crate::image::Digest;
use crate::source::Stat;

fn bad(why: String) -> ArchiveError {
    ArchiveError::Corrupt(format!("saved index: {why}"))
}

/// Whether a restored TOC and index can be served for an archive of
/// `stat.size` bytes laid out as `layout`.
pub fn check(
    layout: Layout,
    stat: &Stat,
    toc: &Toc,
    indexed: &Indexed,
) -> Result<(), ArchiveError> {
    // Offsets of a compressed archive are in its decompressed stream, of
    // unknown length; a read past its end fails cleanly there.
    let bound = match layout {
        Layout::Tar
        | Layout::Streamed {
            compression: None, ..
        } => Some(stat.size),
        Layout::Streamed { .. } => None,
    };
    for e in toc.entries() {
        if normalize(&e.name).ok().as_deref() != Some(e.name.as_str()) || e.name.is_empty() {
            return Err(bad(format!("entry name {:?} is not normalized", e.name)));
        }
        let end = e.offset.checked_add(e.size);
        if end.is_none() || bound.zip(end).is_some_and(|(b, end)| end > b) {
            return Err(bad(format!(
                "entry {:?} ({} bytes at {}) lies outside the archive",
                e.name, e.size, e.offset
            )));
        }
    }
    let member_size = |name: &str| {
        toc.get(name)
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .ok_or_else(|| bad(format!("blob member {name:?} is not in the archive")))
    };
    for (d, doc) in &indexed.docs {
        if Digest::of(&doc.bytes) != *d {
            return Err(bad(format!("document {d} does not match its digest")));
        }
    }
    for (d, b) in &indexed.blobs {
        let size = match &b.at {
            BlobAt::Memory(bytes) => {
                if Digest::of(bytes) != *d {
                    return Err(bad(format!("blob {d} does not match its digest")));
                }
                bytes.len() as u64
            }
            BlobAt::Member(name) => member_size(name)?,
            BlobAt::Whole => stat.size,
            BlobAt::Repack(r) => {
                let mut total = 0u64;
                for s in &r.segments {
                    let n = match s {
                        Segment::Bytes(b) => b.len() as u64,
                        Segment::Member(name) => member_size(name)?,
                    };
                    total = total
                        .checked_add(n)
                        .ok_or_else(|| bad(format!("blob {d} overflows")))?;
                }
                if total != r.size {
                    return Err(bad(format!("re-packed blob {d} is not {} bytes", r.size)));
                }
                total
            }
        };
        if size != b.size {
            return Err(bad(format!(
                "blob {d} is {size} bytes where it lives, {} in the index",
                b.size
            )));
        }
    }
    for img in &indexed.images {
        let known = |d: &Digest| indexed.docs.contains_key(d);
        let ok = match &img.root {
            Root::Stored(d) => known(d),
            Root::Generated { oci, docker } => known(oci) && docker.as_ref().is_none_or(known),
        };
        if !ok {
            return Err(bad("an image's root manifest is missing".into()));
        }
    }
    Ok(())
}
