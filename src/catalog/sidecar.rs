//! A published index next to a tarball (`image.tar.gz.cartorio-index`),
//! written once by `cartorio index` where the tarball is built, so that no
//! cartorio has to walk (or decompress) the archive to serve it.
//!
//! Layout, all integers little endian:
//!
//! ```text
//! magic "CRTIDX\r\n" | version u32 | json_len u64 | points_len u64
//! | sha256(json) | sha256(points) | json | points
//! ```
//!
//! The JSON holds the archive's binding (size, sha256 of its first and last
//! 64 KiB, its ETag when the store had a strong one), the image settings
//! it was indexed with, the TOC, the stream digests and the images with
//! their documents. The seek points follow in their binary form and are
//! fetched only when a cold read needs them, so the first manifest costs
//! the header and the JSON. Everything in it is outside input: checked
//! against its checksums, against the archive's bytes, by the same checks
//! as a saved index, and the points by their bounded decoder. A sidecar
//! that fails any check is ignored with one log line.
use std::sync::Arc;

use crate::archive::{self, Archive, Indexed, Layout, SeekState, StreamDigests, Toc};
use crate::image::Digest;
use crate::source::{Source, SourceError, Stat};

pub const SUFFIX: &str = ".cartorio-index";
const MAGIC: &[u8; 8] = b"CRTIDX\r\n";
const VERSION: u32 = 1;
const HEADER: u64 = 8 + 4 + 8 + 8 + 32 + 32;
/// The JSON part is read whole: bounded (a TOC is capped at 2M entries,
/// documents at 16 MiB each; real indexes are KiBs).
const MAX_JSON: u64 = 256 * 1024 * 1024;
/// The points part: windows are capped at 32 MiB per archive, plus
/// 22 bytes per point.
const MAX_POINTS_LEN: u64 = 64 * 1024 * 1024;
/// How much of each end of the archive the binding hashes.
const EDGE: u64 = 64 * 1024;

/// What ties a sidecar to one archive's bytes.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Bound {
    size: u64,
    head: Digest,
    tail: Digest,
    /// A strong ETag of the archive where it was indexed (http, S3).
    etag: Option<String>,
}

#[derive(serde::Serialize)]
struct PayloadRef<'a> {
    bound: &'a Bound,
    settings: &'a str,
    layout: Layout,
    toc: &'a Toc,
    digests: Option<StreamDigests>,
    indexed: &'a Indexed,
}

#[derive(serde::Deserialize)]
struct Payload {
    bound: Bound,
    settings: String,
    layout: Layout,
    toc: Toc,
    digests: Option<StreamDigests>,
    indexed: Indexed,
}

/// Why a sidecar is not used.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Source(#[from] SourceError),
}

fn bad(m: impl Into<String>) -> SidecarError {
    SidecarError::Bad(m.into())
}

fn etag(stat: &Stat) -> Option<String> {
    stat.version.starts_with('"').then(|| stat.version.clone())
}

async fn bound(source: &Arc<dyn Source>, stat: &Stat) -> Result<Bound, SourceError> {
    let n = EDGE.min(stat.size);
    let head = source.read_range(0, n, Some(stat)).await?;
    let tail = source.read_range(stat.size - n, n, Some(stat)).await?;
    Ok(Bound {
        size: stat.size,
        head: Digest::of(&head),
        tail: Digest::of(&tail),
        etag: etag(stat),
    })
}

/// The sidecar of an indexed archive. `settings` are the image settings
/// it was indexed with.
pub async fn write(
    archive: &Archive,
    indexed: &Indexed,
    settings: &str,
    source: &Arc<dyn Source>,
) -> Result<Vec<u8>, SidecarError> {
    let layout = archive
        .layout()
        .ok_or_else(|| bad("a directory has no sidecar"))?;
    let b = bound(source, &archive.stat).await?;
    let json = serde_json::to_vec(&PayloadRef {
        bound: &b,
        settings,
        layout,
        toc: &archive.toc,
        digests: archive.digests,
        indexed,
    })
    .map_err(|e| bad(e.to_string()))?;
    let points = archive.seek.encoded().unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER as usize + json.len() + points.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&(points.len() as u64).to_le_bytes());
    out.extend_from_slice(&sha256(&json));
    out.extend_from_slice(&sha256(&points));
    out.extend_from_slice(&json);
    out.extend_from_slice(&points);
    Ok(out)
}

/// The parsed fixed header.
struct Header {
    json_len: u64,
    points_len: u64,
    json_sum: [u8; 32],
    points_sum: [u8; 32],
}

fn header(h: &[u8], file_size: u64) -> Result<Header, SidecarError> {
    // The fields in the order `write` puts them.
    let mut rest = h;
    let (
        Some(magic),
        Some(version),
        Some(json_len),
        Some(points_len),
        Some(json_sum),
        Some(points_sum),
    ) = (
        take::<8>(&mut rest),
        take::<4>(&mut rest),
        take::<8>(&mut rest),
        take::<8>(&mut rest),
        take::<32>(&mut rest),
        take::<32>(&mut rest),
    )
    else {
        return Err(bad("truncated (no header)"));
    };
    if &magic != MAGIC {
        return Err(bad("not a cartorio index"));
    }
    let version = u32::from_le_bytes(version);
    if version != VERSION {
        return Err(bad(format!(
            "version {version}, this cartorio reads {VERSION}"
        )));
    }
    let (json_len, points_len) = (u64::from_le_bytes(json_len), u64::from_le_bytes(points_len));
    if json_len > MAX_JSON || points_len > MAX_POINTS_LEN {
        return Err(bad("sizes out of bounds"));
    }
    if HEADER + json_len + points_len != file_size {
        return Err(bad(format!(
            "{file_size} bytes where the header says {}",
            HEADER + json_len + points_len
        )));
    }
    Ok(Header {
        json_len,
        points_len,
        json_sum,
        points_sum,
    })
}

/// The next `N` bytes of `rest`, moving past them; None when fewer are left.
fn take<const N: usize>(rest: &mut &[u8]) -> Option<[u8; N]> {
    let (head, tail) = rest.split_first_chunk::<N>()?;
    *rest = tail;
    Some(*head)
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // A digest's hex is always 64 hex digits.
    let _ = hex::decode_to_slice(Digest::of(b).hex(), &mut out);
    out
}

/// An archive restored from its sidecar, checked against `source` at
/// `stat`. The returned [`Indexed`] is None when the sidecar was made with
/// other image settings (the caller re-derives the images from the TOC).
pub async fn load(
    sidecar: &Arc<dyn Source>,
    source: &Arc<dyn Source>,
    stat: &Stat,
    settings: &str,
) -> Result<(Archive, Option<Indexed>), SidecarError> {
    let sstat = sidecar.stat().await?;
    // The header and, usually, the whole JSON in one read.
    let first = sidecar
        .read_range(0, sstat.size.min(256 * 1024), Some(&sstat))
        .await?;
    let h = header(&first, sstat.size)?;
    let json = if HEADER + h.json_len <= first.len() as u64 {
        first.slice(HEADER as usize..(HEADER + h.json_len) as usize)
    } else {
        let b = sidecar.read_range(HEADER, h.json_len, Some(&sstat)).await?;
        if b.len() as u64 != h.json_len {
            return Err(bad("truncated"));
        }
        b
    };
    if sha256(&json) != h.json_sum {
        return Err(bad("checksum mismatch"));
    }
    let p: Payload = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
    if p.bound.size != stat.size {
        return Err(bad(format!(
            "made for an archive of {} bytes, this one has {}",
            p.bound.size, stat.size
        )));
    }
    if let (Some(want), Some(have)) = (&p.bound.etag, etag(stat))
        && *want != have
    {
        return Err(bad(format!("made for ETag {want}, the archive has {have}")));
    }
    let live = bound(source, stat).await?;
    if live.head != p.bound.head || live.tail != p.bound.tail {
        return Err(bad("made for other bytes (first or last 64 KiB differ)"));
    }
    archive::saved::check(p.layout, stat, &p.toc, &p.indexed).map_err(|e| bad(e.to_string()))?;
    let mut a = Archive::restore(source.clone(), p.layout, p.toc, stat.clone(), p.digests);
    if h.points_len > 0 {
        a.seek = SeekState::lazy(
            sidecar.clone(),
            sstat,
            HEADER + h.json_len,
            h.points_len,
            h.points_sum,
        );
    }
    Ok((a, (p.settings == settings).then_some(p.indexed)))
}

/// The sidecar URL of a source: its own URL plus [`SUFFIX`].
pub fn default_url(source_url: &str) -> String {
    format!("{source_url}{SUFFIX}")
}

/// The sidecar source of an archive at `url`: `explicit` (the image's
/// `index = "…"`), else the same URL plus [`SUFFIX`], with the archive's
/// options. None for a directory.
pub fn open(
    sources: &crate::source::Sources,
    location: &super::binding::Location,
    url: &str,
    explicit: Option<&str>,
    opts: &crate::source::SourceOptions,
    base: Option<&std::path::Path>,
) -> Option<Arc<dyn Source>> {
    match location {
        super::binding::Location::Tar(_) => {
            let at = explicit.map_or_else(|| default_url(url), str::to_string);
            match sources.open(&at, opts, base) {
                Ok(s) => Some(s),
                Err(e) => {
                    if explicit.is_some() {
                        tracing::warn!(index = %crate::source::Redacted(&at), "the configured index cannot be opened, indexing the archive: {e}");
                    }
                    None
                }
            }
        }
        super::binding::Location::Dir(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;
    use crate::source::FileSource;

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect()
    }

    /// A rootfs .tar.gz of a few MiB (seek points every 256 KiB in tests).
    fn rootfs(seed: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (i, len) in [(0, 1 << 20), (1, 2 << 20)] {
            let d = noise(len, seed + i);
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("f{i}"), &d[..])
                .expect("append");
        }
        gzip(&b.into_inner().expect("tar"))
    }

    fn src(path: &std::path::Path) -> Arc<dyn Source> {
        Arc::new(FileSource::new(
            path.display().to_string(),
            path.to_path_buf(),
        ))
    }

    async fn make(path: &std::path::Path) -> Vec<u8> {
        let s = src(path);
        let a = Arc::new(Archive::open(s.clone()).await.expect("open"));
        let ix = archive::index(&a, &ImageConfig::default())
            .await
            .expect("index");
        write(&a, &ix, "settings", &s).await.expect("write")
    }

    async fn try_load(
        dir: &std::path::Path,
        archive: &std::path::Path,
        side: &[u8],
    ) -> Result<(Archive, Option<Indexed>), SidecarError> {
        let sp = dir.join("x.cartorio-index");
        std::fs::write(&sp, side).expect("write");
        let s = src(archive);
        let stat = s.stat().await.expect("stat");
        load(&src(&sp), &s, &stat, "settings").await
    }

    #[tokio::test]
    async fn a_sidecar_restores_the_index_and_its_points() {
        let dir = tempfile::tempdir().expect("tmp");
        let ap = dir.path().join("a.tar.gz");
        std::fs::write(&ap, rootfs(1)).expect("write");
        let side = make(&ap).await;
        let (a, ix) = try_load(dir.path(), &ap, &side).await.expect("load");
        let ix = ix.expect("same settings");
        assert_eq!(ix.images.len(), 1);
        assert!(a.seek.is_lazy());
        // The layer digest computed in the pass came along.
        assert!(a.digests.is_some());
        // Other settings: the TOC is used, the images are not.
        let sp = dir.path().join("x.cartorio-index");
        let s = src(&ap);
        let stat = s.stat().await.expect("stat");
        let (_, none) = load(&src(&sp), &s, &stat, "other").await.expect("load");
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn a_sidecar_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let ap = dir.path().join("a.tar.gz");
        std::fs::write(&ap, rootfs(1)).expect("write");
        let side = make(&ap).await;
        let msg = |r: Result<(Archive, Option<Indexed>), SidecarError>| match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        // Truncated anywhere.
        for cut in [0, 10, HEADER as usize, side.len() / 2, side.len() - 1] {
            let m = msg(try_load(dir.path(), &ap, &side[..cut]).await);
            assert!(
                m.contains("truncated") || m.contains("bytes where"),
                "{cut}: {m}"
            );
        }
        // A flipped byte in the JSON.
        let mut b = side.clone();
        b[HEADER as usize + 5] ^= 1;
        assert!(msg(try_load(dir.path(), &ap, &b).await).contains("checksum"));
        // Another version, another magic.
        let mut b = side.clone();
        b[8] = 9;
        assert!(msg(try_load(dir.path(), &ap, &b).await).contains("version"));
        let mut b = side.clone();
        b[0] = b'X';
        assert!(msg(try_load(dir.path(), &ap, &b).await).contains("not a cartorio index"));
        // Huge lengths are refused before anything is read or allocated.
        let mut b = side.clone();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(msg(try_load(dir.path(), &ap, &b).await).contains("out of bounds"));
        // The same size, other bytes: the tarball was replaced.
        let other = dir.path().join("b.tar.gz");
        let mut data = rootfs(1);
        let n = data.len();
        data[n - 100] ^= 0xff;
        std::fs::write(&other, &data).expect("write");
        assert!(msg(try_load(dir.path(), &other, &side).await).contains("other bytes"));
        // Another size.
        std::fs::write(&other, rootfs(2)).expect("write");
        let m = msg(try_load(dir.path(), &other, &side).await);
        assert!(
            m.contains("bytes, this one has") || m.contains("other bytes"),
            "{m}"
        );
    }

    /// A sidecar with valid checksums whose content lies: offsets past the
    /// end, a document that is not its digest, garbage points.
    #[tokio::test]
    async fn a_hostile_sidecar_is_refused_or_its_points_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let ap = dir.path().join("a.tar.gz");
        std::fs::write(&ap, rootfs(1)).expect("write");
        let side = make(&ap).await;
        let h = header(&side, side.len() as u64).expect("header");
        let json_end = HEADER as usize + h.json_len as usize;
        let json: serde_json::Value =
            serde_json::from_slice(&side[HEADER as usize..json_end]).expect("json");
        let points = side[json_end..].to_vec();
        let rebuild = |json: &serde_json::Value, points: &[u8]| {
            let j = serde_json::to_vec(json).expect("json");
            let mut out = side[..8 + 4].to_vec();
            out.extend((j.len() as u64).to_le_bytes());
            out.extend((points.len() as u64).to_le_bytes());
            out.extend(sha256(&j));
            out.extend(sha256(points));
            out.extend(j);
            out.extend(points);
            out
        };
        assert!(
            try_load(dir.path(), &ap, &rebuild(&json, &points))
                .await
                .is_ok()
        );
        let mut j = json.clone();
        for d in j["indexed"]["docs"]
            .as_object_mut()
            .expect("docs")
            .values_mut()
        {
            d["bytes"] = serde_json::json!("00");
        }
        assert!(
            try_load(dir.path(), &ap, &rebuild(&j, &points))
                .await
                .is_err()
        );
        let mut j = json.clone();
        j["layout"] = serde_json::json!("Tar");
        j["toc"]["entries"] = serde_json::json!([{
            "name": "f1", "kind": "File", "size": 5, "offset": 1u64 << 40,
            "head": null, "meta": { "mode": 420, "uid": 0, "gid": 0, "mtime": 0 }
        }]);
        assert!(
            try_load(dir.path(), &ap, &rebuild(&j, &points))
                .await
                .is_err()
        );
        // Garbage points with good checksums: the index loads, the points
        // are refused when first needed and reads start at byte 0.
        let (a, _) = try_load(dir.path(), &ap, &rebuild(&json, &[7u8; 1000]))
            .await
            .expect("load");
        let e = a.toc.get("f1").cloned();
        if let Some(e) = e {
            use futures_util::StreamExt;
            let mut st = a.member_stream(&e, 0, e.size).await.expect("stream");
            let mut n = 0;
            while let Some(c) = st.next().await {
                n += c.expect("bytes").len();
            }
            assert_eq!(n as u64, e.size);
        }
        assert!(!a.seek.failed());
    }
}
