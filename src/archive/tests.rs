//! Tests of the archive layer: the lazy TOC walk, hostile inputs, and the
//! images each format yields. Every input archive is built here, in a temp
//! dir, the way the real tools lay them out (see `/work/shared/CLIENTS.md`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{Archive, ArchiveError, BlobAt, EntryKind, Format, Indexed, Root, index};
use crate::image::{Digest, ImageConfig, media};
use crate::source::ByteStream;

// ---------------------------------------------------------------------------
// Building inputs

/// A tar being written in memory.
struct Tar(tar::Builder<Vec<u8>>);

fn header(size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h
}

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// A regular file; names over 100 bytes get a GNU long-name entry.
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
        let mut h = header(data.len() as u64, tar::EntryType::Regular);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str) -> &mut Tar {
        let mut h = header(0, tar::EntryType::Directory);
        self.0.append_data(&mut h, name, std::io::empty()).unwrap();
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
        let mut h = header(0, tar::EntryType::Symlink);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Tar {
        let mut h = header(0, tar::EntryType::Link);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }

    /// An entry whose name (and link target) bytes are written into the
    /// header exactly as given: no `./` stripping, no `..` refusal.
    fn raw(&mut self, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> &mut Tar {
        let mut h = header(data.len() as u64, kind);
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_link_name_literal(link).unwrap();
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        self.0
            .append_pax_extensions(records.iter().map(|(k, v)| (*k, *v)))
            .unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A small layer tar holding `files`.
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut t = Tar::new();
    for (n, d) in files {
        t.file(n, d);
    }
    t.finish()
}

async fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = async_compression::tokio::write::GzipEncoder::new(Vec::new());
    e.write_all(data).await.unwrap();
    e.shutdown().await.unwrap();
    e.into_inner()
}

async fn zstd(data: &[u8]) -> Vec<u8> {
    let mut e = async_compression::tokio::write::ZstdEncoder::new(Vec::new());
    e.write_all(data).await.unwrap();
    e.shutdown().await.unwrap();
    e.into_inner()
}

/// Deterministic noise, incompressible enough to look like real content.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

async fn open_path(p: &Path) -> Result<Arc<Archive>, ArchiveError> {
    let src = crate::source::open(p.to_str().unwrap(), None).unwrap();
    Archive::open(src).await.map(Arc::new)
}

async fn open(dir: &Path, name: &str, bytes: &[u8]) -> Result<Arc<Archive>, ArchiveError> {
    open_path(&write(dir, name, bytes)).await
}

/// A file source that counts the bytes it delivers (range reads and
/// streams), so a test can tell how often an archive's bytes are read.
#[derive(Debug)]
struct Counting(crate::source::FileSource, Arc<std::sync::atomic::AtomicU64>);

impl Counting {
    fn open(
        p: &Path,
    ) -> (
        Arc<dyn crate::source::Source>,
        Arc<std::sync::atomic::AtomicU64>,
    ) {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let f = crate::source::FileSource::new(p.display().to_string(), p.to_path_buf());
        (Arc::new(Counting(f, n.clone())), n)
    }
}

#[async_trait::async_trait]
impl crate::source::Source for Counting {
    fn url(&self) -> &str {
        self.0.url()
    }
    async fn stat(&self) -> Result<crate::source::Stat, crate::source::SourceError> {
        self.0.stat().await
    }
    async fn read_range(
        &self,
        o: u64,
        l: u64,
        p: Option<&crate::source::Stat>,
    ) -> Result<bytes::Bytes, crate::source::SourceError> {
        let b = self.0.read_range(o, l, p).await?;
        self.1
            .fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(b)
    }
    async fn stream(
        &self,
        o: u64,
        l: Option<u64>,
        p: Option<&crate::source::Stat>,
    ) -> Result<ByteStream, crate::source::SourceError> {
        use futures_util::TryStreamExt;
        let n = self.1.clone();
        let s = self.0.stream(o, l, p).await?;
        Ok(Box::pin(s.inspect_ok(move |b| {
            n.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
        })))
    }
}

async fn index_default(a: &Arc<Archive>) -> Result<Indexed, ArchiveError> {
    index(a, &ImageConfig::default()).await
}

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

async fn member_bytes(a: &Archive, name: &str) -> Vec<u8> {
    let e = a.member(name).unwrap();
    collect(a.member_stream(e, 0, e.size).await.unwrap()).await
}

/// The bytes a blob of the index is served from.
async fn blob_bytes(a: &Arc<Archive>, ix: &Indexed, d: &Digest) -> Vec<u8> {
    let blob = ix.blobs.get(d).unwrap_or_else(|| panic!("no blob {d}"));
    let bytes = match &blob.at {
        BlobAt::Member(n) => member_bytes(a, n).await,
        BlobAt::Whole => collect(a.whole_stream(0, a.stat.size).await.unwrap()).await,
        BlobAt::Memory(b) => b.to_vec(),
        BlobAt::Repack(r) => collect(a.repack_stream(r)).await,
    };
    assert_eq!(bytes.len() as u64, blob.size, "blob {d} size");
    bytes
}

fn doc(ix: &Indexed, d: &Digest) -> Value {
    serde_json::from_slice(&ix.docs.get(d).unwrap_or_else(|| panic!("no doc {d}")).bytes).unwrap()
}

/// The generated (OCI, Docker) manifest digests of an image.
fn generated(root: &Root) -> (Digest, Option<Digest>) {
    match root {
        Root::Generated { oci, docker } => (*oci, *docker),
        Root::Stored(d) => panic!("expected a generated root, got stored {d}"),
    }
}

fn digest_json(d: &Digest) -> Value {
    json!(d.to_string())
}

fn refs(ix: &Indexed, i: usize) -> Vec<String> {
    ix.images[i].refs.iter().map(|r| r.to_string()).collect()
}

// ---------------------------------------------------------------------------
// 1. The TOC of a plain tar

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toc_normalizes_names_and_records_data_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let big = noise(3000, 1);
    let mut t = Tar::new();
    t.raw(b"./a/b", tar::EntryType::Regular, b"", b"hello")
        .raw(b"./d/", tar::EntryType::Directory, b"", b"")
        .raw(b"./c.json", tar::EntryType::Regular, b"", br#"{"x":1}"#)
        .raw(b"./", tar::EntryType::Directory, b"", b"")
        .file("plain.bin", &big);
    let bytes = t.finish();
    let a = open(tmp.path(), "t.tar", &bytes).await.unwrap();

    let names: Vec<_> = a.toc.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a/b", "d", "c.json", "plain.bin"]);
    assert_eq!(a.toc.get("d").unwrap().kind, EntryKind::Dir);
    for (name, want) in [
        ("a/b", &b"hello"[..]),
        ("c.json", br#"{"x":1}"#),
        ("plain.bin", &big),
    ] {
        let e = a.member(name).unwrap();
        assert_eq!(e.size, want.len() as u64);
        // The offset is where the data really is in the file...
        let at = e.offset as usize;
        assert_eq!(&bytes[at..at + want.len()], want, "{name} offset");
        // ...and member_stream serves exactly those bytes.
        assert_eq!(member_bytes(&a, name).await, want, "{name}");
    }
    // Lookups normalize too, and a range inside a member is served.
    assert_eq!(&a.read_member("./c.json").await.unwrap()[..], br#"{"x":1}"#);
    assert_eq!(a.toc.get("/a/b").unwrap().name, "a/b");
    let e = a.member("plain.bin").unwrap();
    let part = collect(a.member_stream(e, 1000, 24).await.unwrap()).await;
    assert_eq!(part, &big[1000..1024]);
    let err = a.member("nope").unwrap_err().to_string();
    assert!(err.contains("no file \"nope\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toc_follows_symlinks_and_hardlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = layer_tar(&[("etc/hostname", b"box\n")]);
    let diff = Digest::of(&layer).hex();
    let stored = format!("{diff}.tar");
    let mut t = Tar::new();
    t.file(&stored, &layer)
        .dir("abc")
        // skopeo's docker-archive: `<id>/layer.tar -> ../<diffid>.tar`
        .symlink("abc/layer.tar", &format!("../{stored}"))
        .hardlink("hard.tar", &stored)
        .symlink("abs", &format!("/{stored}"))
        .symlink("dir/chain", "../abc/layer.tar")
        .hardlink("hard-to-link", "./abc/layer.tar")
        .raw(b"escape", tar::EntryType::Symlink, b"../../etc/passwd", b"")
        .raw(b"escape2", tar::EntryType::Link, b"../etc/passwd", b"")
        .symlink("dangling", "nowhere");
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();

    assert_eq!(
        a.toc.get("abc/layer.tar").unwrap().kind,
        EntryKind::File,
        "a link resolves to its target"
    );
    for n in [
        "abc/layer.tar",
        "hard.tar",
        "abs",
        "dir/chain",
        "hard-to-link",
    ] {
        assert_eq!(a.toc.get(n).unwrap().name, stored, "{n}");
    }
    assert_eq!(member_bytes(&a, "abc/layer.tar").await, layer);
    for n in ["escape", "escape2", "dangling"] {
        assert!(a.toc.get(n).is_none(), "{n} must not resolve");
        assert!(a.member(n).is_err(), "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toc_link_loops_resolve_to_none() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.file("target", b"x")
        .symlink("self", "self")
        .symlink("a", "b")
        .symlink("b", "a")
        .hardlink("h1", "h2")
        .hardlink("h2", "h1")
        .symlink("s", "h1");
    // A long but finite chain, longer than any lookup follows.
    t.symlink("c0", "target");
    for i in 1..20 {
        t.symlink(&format!("c{i}"), &format!("c{}", i - 1));
    }
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    for n in ["self", "a", "b", "h1", "h2", "s", "c19"] {
        assert!(a.toc.get(n).is_none(), "{n}");
    }
    assert_eq!(a.toc.get("c2").unwrap().name, "target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toc_reads_gnu_and_pax_long_names() {
    let tmp = tempfile::tempdir().unwrap();
    let gnu_name = format!("{}/gnu.json", "g".repeat(150));
    let pax_name = format!("{}/pax.bin", "p".repeat(200));
    let link_target = format!("{}/target", "t".repeat(120));
    let mut t = Tar::new();
    t.file(&gnu_name, b"gnu data");
    // A PAX `path` record overrides a truncated ustar name.
    t.pax(&[("path", pax_name.as_bytes())]).raw(
        b"truncated-name",
        tar::EntryType::Regular,
        b"",
        b"pax data",
    );
    t.file(&link_target, b"long link data")
        .symlink("short-link", &link_target);
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    let names: Vec<_> = a.toc.entries().iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        names,
        [
            gnu_name.clone(),
            pax_name.clone(),
            link_target,
            "short-link".into()
        ]
    );
    assert!(a.toc.get("truncated-name").is_none());
    assert_eq!(member_bytes(&a, &gnu_name).await, b"gnu data");
    assert_eq!(member_bytes(&a, &pax_name).await, b"pax data");
    assert_eq!(member_bytes(&a, "short-link").await, b"long link data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_symlinks_cannot_point_outside() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "outside.json", b"secret");
    let root = tmp.path().join("layout");
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    write(&root, "a.json", b"{}");
    std::os::unix::fs::symlink("../outside.json", root.join("esc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("blobs/up")).unwrap();
    std::os::unix::fs::symlink("../a.json", root.join("blobs/ok")).unwrap();
    let a = Archive::open_dir(&root).await.unwrap();
    for n in ["esc", "abs", "blobs/up/outside.json"] {
        assert!(a.toc.get(n).is_none(), "{n}");
        assert!(a.read_member(n).await.is_err(), "{n}");
    }
    assert_eq!(&a.read_member("blobs/ok").await.unwrap()[..], b"{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_entry_of_the_same_name_wins() {
    // As when the tar is extracted: the last entry of a name is the file,
    // even when it is too large to be captured during the walk.
    let tmp = tempfile::tempdir().unwrap();
    let mut big = b"[".to_vec();
    big.extend(std::iter::repeat_n(b' ', 2 << 20));
    big.extend(b"]");
    let mut t = Tar::new();
    t.file("manifest.json", b"[]")
        .file("manifest.json", &big)
        .file("config.json", b"{}")
        .dir("config.json")
        .file("small.json", b"1")
        .file("small.json", b"2");
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    assert_eq!(a.member("manifest.json").unwrap().size, big.len() as u64);
    assert_eq!(&a.read_member("manifest.json").await.unwrap()[..], &big[..]);
    assert!(a.read_member("config.json").await.is_err());
    assert_eq!(&a.read_member("small.json").await.unwrap()[..], b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_toc_keeps_only_blob_entries_last_of_a_name() {
    // After indexing only the entries blobs live in are kept, so a rootfs
    // of many files costs no memory; the kept entry is still the last one.
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.file("layer.tar", b"old")
        .file("etc/a", b"x")
        .file("index.json", b"{}")
        .file("layer.tar", b"new!");
    let mut a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    let a = Arc::get_mut(&mut a).unwrap();
    a.toc.retain(&["layer.tar".to_string()].into());
    assert_eq!(a.toc.entries().len(), 1);
    assert_eq!(member_bytes(a, "layer.tar").await, b"new!");
    assert!(a.toc.get("etc/a").is_none());
    assert!(a.toc.captured("index.json").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_members_name_every_blob_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, layers, _) = simple_docker_archive();
    let a = open(tmp.path(), "d.tar", &plain).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    let members = ix.members();
    assert_eq!(members.len(), layers.len());
    for m in &members {
        assert!(a.member(m).is_ok(), "{m}");
    }
}

// ---------------------------------------------------------------------------
// 2. Laziness

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tar_toc_reads_headers_not_data() {
    let tmp = tempfile::tempdir().unwrap();
    let big = noise(8 << 20, 2);
    let config = br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let mut t = Tar::new();
    t.file("layer.tar", &big)
        .file("config.json", config)
        .file("manifest.json", b"[]");
    let bytes = t.finish();
    let size = bytes.len() as u64;
    let a = open(tmp.path(), "big.tar", &bytes).await.unwrap();
    assert_eq!(a.stat.size, size);
    assert!(
        a.fetched < size / 4,
        "fetched {} of {size} bytes to build the TOC",
        a.fetched
    );
    // The small documents after the big entry are there all the same.
    assert_eq!(&a.read_member("config.json").await.unwrap()[..], config);
    assert_eq!(a.member("layer.tar").unwrap().size, 8 << 20);
    assert_eq!(member_bytes(&a, "manifest.json").await, b"[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dense_headers_switch_to_one_streaming_pass() {
    // A rootfs of many small files: walking its headers would read nearly
    // the whole file, and its digest needs a full read anyway. Past the
    // walk's budget one streaming pass does both, so the file is read
    // about once, not twice.
    let tmp = tempfile::tempdir().unwrap();
    let body = vec![b'x'; 1500];
    let mut t = Tar::new();
    for i in 0..4000 {
        t.file(&format!("usr/share/f{i}"), &body);
    }
    let bytes = t.finish();
    let a = open(tmp.path(), "rootfs.tar", &bytes).await.unwrap();
    assert!(
        matches!(
            a.container,
            super::Container::Streamed {
                compression: None,
                ranged: true,
                ..
            }
        ),
        "{:?}",
        a.container
    );
    let size = bytes.len() as u64;
    // The walk's budget (a quarter of the file, at least 4 MiB), then one
    // full pass; a lazy walk and a hash would be twice the file.
    let bound = size + (size / 4).max(4 << 20) + 64 * 1024;
    assert!(a.fetched <= bound, "read {} of {size}", a.fetched);
    assert!(a.fetched >= size);
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.format, Some(Format::Rootfs));
    let (ld, lsize) = ix.images[0].layers[0];
    assert_eq!((ld, lsize), (Digest::of(&bytes), size));
    assert_eq!(blob_bytes(&a, &ix, &ld).await, bytes);
    assert_eq!(member_bytes(&a, "usr/share/f3999").await, body);
}

// ---------------------------------------------------------------------------
// 3. Hostile and broken inputs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_entry_names_that_climb_out() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, name) in [&b"../evil"[..], b"a/../../evil", b"ok/.."]
        .iter()
        .enumerate()
    {
        let mut t = Tar::new();
        t.file("fine.json", b"{}")
            .raw(name, tar::EntryType::Regular, b"", b"pwned");
        let err = open(tmp.path(), &format!("t{i}.tar"), &t.finish())
            .await
            .unwrap_err();
        assert!(matches!(err, ArchiveError::Hostile(_)), "{err:?}");
        let text = err.to_string();
        let shown = format!("{:?}", String::from_utf8_lossy(name));
        assert!(
            text.contains("escapes the archive") && text.contains(&shown),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_names_lose_their_leading_slash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.raw(b"/etc/passwd", tar::EntryType::Regular, b"", b"root:x:0:0")
        .raw(b"//manifest.json", tar::EntryType::Regular, b"", b"[]");
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    let names: Vec<_> = a.toc.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["etc/passwd", "manifest.json"]);
    assert_eq!(member_bytes(&a, "etc/passwd").await, b"root:x:0:0");
    assert_eq!(&a.read_member("manifest.json").await.unwrap()[..], b"[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_pax_size_that_disagrees_with_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.pax(&[("size", b"5")]).file("smuggle.bin", &[7u8; 10]);
    t.file("after.json", b"{}");
    let err = open(tmp.path(), "t.tar", &t.finish()).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Hostile(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("smuggle.bin") && text.contains("PAX size 5 disagrees with header size 10"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pax_size_that_agrees_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.pax(&[("size", b"10")]).file("ok.bin", &[7u8; 10]);
    t.file("after.json", b"{}");
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    assert_eq!(member_bytes(&a, "ok.bin").await, [7u8; 10]);
    assert_eq!(member_bytes(&a, "after.json").await, b"{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pax_size_with_a_zero_header_size_is_accepted() {
    // Go's archive/tar writes 0 in the ustar field when the size only fits
    // in the PAX record; that is accepted, and the PAX size is used.
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.pax(&[("size", b"10")]);
    let mut h = header(0, tar::EntryType::Regular);
    h.set_path("go.bin").unwrap();
    h.set_cksum();
    t.0.append(&h, &[9u8; 10][..]).unwrap();
    t.file("after.json", b"{}");
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    assert_eq!(a.member("go.bin").unwrap().size, 10);
    assert_eq!(member_bytes(&a, "go.bin").await, [9u8; 10]);
    assert_eq!(member_bytes(&a, "after.json").await, b"{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_running_past_the_end_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.file("manifest.json", b"[]")
        .file("big.bin", &noise(100_000, 3));
    let mut bytes = t.finish();
    // manifest.json: header + 1 block; big.bin's header, then 50 000 bytes.
    bytes.truncate(1024 + 512 + 50_000);
    let err = open(tmp.path(), "t.tar", &bytes).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("big.bin") && text.contains("runs past the end of the archive"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_header_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.file("a.json", b"{}").file("b.json", b"{}");
    let mut bytes = t.finish();
    bytes.truncate(1024 + 300);
    let err = open(tmp.path(), "t.tar", &bytes).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("bad tar header"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_empty_files_are_not_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let mut garbage = noise(64 * 1024, 4);
    garbage[..4].copy_from_slice(b"junk");
    for (name, bytes) in [
        ("garbage", garbage),
        ("empty", Vec::new()),
        ("short", b"{\"not\":\"a tar\"}".to_vec()),
    ] {
        let err = open(tmp.path(), name, &bytes).await.unwrap_err();
        assert!(matches!(err, ArchiveError::NotAnArchive), "{name}: {err:?}");
        assert!(err.to_string().contains("not a tar archive"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_header_checksums_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.file("a.json", b"{}").file("b.json", b"{}");
    let good = t.finish();

    // The first header: not recognized as a tar at all.
    let mut first = good.clone();
    first[0] ^= 0x01;
    let err = open(tmp.path(), "first.tar", &first).await.unwrap_err();
    assert!(matches!(err, ArchiveError::NotAnArchive), "{err:?}");

    // A later header: corrupt, saying why.
    let mut second = good.clone();
    second[1024 + 1] ^= 0x01;
    let err = open(tmp.path(), "second.tar", &second).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_compressed_archive_is_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.file("manifest.json", b"[]")
        .file("big.bin", &noise(200_000, 5));
    let tar = t.finish();
    for (name, mut c) in [
        ("t.tar.gz", gzip(&tar).await),
        ("t.tar.zst", zstd(&tar).await),
    ] {
        c.truncate(c.len() / 2);
        let err = open(tmp.path(), name, &c).await.unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt(_)), "{name}: {err:?}");
    }
}

// ---------------------------------------------------------------------------
// 4. Legacy `docker save` archives

fn docker_config(diff_ids: &[Digest]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .unwrap()
}

fn manifest_json(images: &[(&str, &[&str], &[&str])]) -> Vec<u8> {
    let v: Vec<Value> = images
        .iter()
        .map(|(config, tags, layers)| json!({ "Config": config, "RepoTags": tags, "Layers": layers }))
        .collect();
    serde_json::to_vec(&v).unwrap()
}

/// A skopeo-style docker archive with two uncompressed layers; returns it
/// with the layer tars and the config.
fn simple_docker_archive() -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let l1 = layer_tar(&[("etc/hello", b"hello\n")]);
    let l2 = layer_tar(&[("usr/bin/app", &noise(5000, 6))]);
    let (d1, d2) = (Digest::of(&l1), Digest::of(&l2));
    let config = docker_config(&[d1, d2]);
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let stored1 = format!("{}.tar", d1.hex());
    let mut t = Tar::new();
    t.file(&stored1, &l1)
        .dir("abc123")
        .symlink("abc123/layer.tar", &format!("../{stored1}"))
        .dir("def456")
        .file("def456/layer.tar", &l2)
        .file(&config_name, &config)
        .file(
            "manifest.json",
            &manifest_json(&[(
                &config_name,
                &["docker.io/app:v1"],
                &["abc123/layer.tar", "def456/layer.tar"],
            )]),
        );
    (t.finish(), vec![l1, l2], config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_manifests_reference_config_and_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, layers, config) = simple_docker_archive();
    let a = open(tmp.path(), "app.tar", &bytes).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.format, Some(Format::DockerArchive));
    assert_eq!(ix.images.len(), 1);
    let img = &ix.images[0];
    let r = &img.refs[0];
    assert_eq!(img.refs.len(), 1);
    assert_eq!(r.name.as_ref().unwrap().as_str(), "app");
    assert_eq!(r.tag.as_ref().unwrap().as_str(), "v1");
    assert_eq!(img.platforms, ["linux/amd64"]);

    let cd = Digest::of(&config);
    let want: Vec<(Digest, u64)> = layers
        .iter()
        .map(|l| (Digest::of(l), l.len() as u64))
        .collect();
    assert_eq!(img.layers, want);

    let (oci, docker) = generated(&img.root);
    let docker = docker.expect("uncompressed layers have a Docker manifest");
    assert_eq!(ix.docs[&oci].media_type, media::OCI_MANIFEST);
    assert_eq!(ix.docs[&docker].media_type, media::DOCKER_MANIFEST);
    for (d, cfg_type, layer_type) in [
        (oci, media::OCI_CONFIG, media::OCI_LAYER_TAR),
        (docker, media::DOCKER_CONFIG, media::DOCKER_LAYER_TAR),
    ] {
        assert_eq!(Digest::of(&ix.docs[&d].bytes), d);
        let m = doc(&ix, &d);
        assert_eq!(m["schemaVersion"], json!(2));
        assert_eq!(m["config"]["mediaType"], json!(cfg_type));
        assert_eq!(m["config"]["digest"], digest_json(&cd));
        assert_eq!(m["config"]["size"], json!(config.len()));
        let ls = m["layers"].as_array().unwrap();
        assert_eq!(ls.len(), 2);
        for (l, (ld, size)) in ls.iter().zip(&want) {
            assert_eq!(l["mediaType"], json!(layer_type));
            assert_eq!(l["digest"], digest_json(ld));
            assert_eq!(l["size"], json!(size));
        }
        assert!(img.digests.contains(&d));
    }
    // Every blob is served with the bytes its digest names.
    assert_eq!(blob_bytes(&a, &ix, &cd).await, config);
    for (l, (ld, _)) in layers.iter().zip(&want) {
        assert_eq!(&blob_bytes(&a, &ix, ld).await, l);
        assert!(img.digests.contains(ld));
    }
    // The symlinked layer is served from the file it points to.
    let BlobAt::Member(m) = &ix.blobs[&want[0].0].at else {
        panic!("layer not a member")
    };
    assert_eq!(m, &format!("{}.tar", want[0].0.hex()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_with_two_images_sharing_a_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let base = layer_tar(&[("etc/os-release", b"ID=test\n")]);
    let la = layer_tar(&[("a", b"a")]);
    let lb = layer_tar(&[("b", b"b")]);
    let (db, da, dbb) = (Digest::of(&base), Digest::of(&la), Digest::of(&lb));
    let ca = docker_config(&[db, da]);
    let cb = docker_config(&[db, dbb]);
    let mut t = Tar::new();
    t.file("base/layer.tar", &base)
        .file("a/layer.tar", &la)
        .file("b/layer.tar", &lb)
        .file("a.json", &ca)
        .file("b.json", &cb)
        .file(
            "manifest.json",
            &manifest_json(&[
                ("a.json", &["app:v1"], &["base/layer.tar", "a/layer.tar"]),
                (
                    "b.json",
                    &["localhost/other:v2", "localhost/other:latest"],
                    &["base/layer.tar", "b/layer.tar"],
                ),
            ]),
        );
    let a = open(tmp.path(), "two.tar", &t.finish()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.images.len(), 2);
    assert_eq!(refs(&ix, 0), ["app:v1"]);
    assert_eq!(refs(&ix, 1), ["other:v2", "other:latest"]);
    let (oa, _) = generated(&ix.images[0].root);
    let (ob, _) = generated(&ix.images[1].root);
    assert_ne!(oa, ob);
    for (o, cfg, top) in [(oa, &ca, da), (ob, &cb, dbb)] {
        let m = doc(&ix, &o);
        assert_eq!(m["config"]["digest"], digest_json(&Digest::of(cfg)));
        assert_eq!(m["layers"][0]["digest"], digest_json(&db));
        assert_eq!(m["layers"][1]["digest"], digest_json(&top));
    }
    assert!(ix.images[0].digests.contains(&db) && ix.images[1].digests.contains(&db));
    assert!(!ix.images[0].digests.contains(&dbb));
    assert_eq!(blob_bytes(&a, &ix, &db).await, base);
    assert_eq!(blob_bytes(&a, &ix, &dbb).await, lb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_gzip_layer_in_blobs_dir() {
    // Docker ≥ 25 and `ctr images export` put layers and the config under
    // blobs/sha256/, the layers gzip-compressed.
    let tmp = tempfile::tempdir().unwrap();
    let inner = layer_tar(&[("bin/tool", &noise(20_000, 7))]);
    let gz = gzip(&inner).await;
    let (diff_id, gd) = (Digest::of(&inner), Digest::of(&gz));
    let config = docker_config(&[diff_id]);
    let cd = Digest::of(&config);
    let (cpath, lpath) = (
        format!("blobs/sha256/{}", cd.hex()),
        format!("blobs/sha256/{}", gd.hex()),
    );
    let mut t = Tar::new();
    t.dir("blobs")
        .dir("blobs/sha256")
        .file(&lpath, &gz)
        .file(&cpath, &config)
        .file(
            "manifest.json",
            &manifest_json(&[(&cpath, &["app:gz"], &[&lpath])]),
        );
    let a = open(tmp.path(), "gz.tar", &t.finish()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.format, Some(Format::DockerArchive));
    let img = &ix.images[0];
    assert_eq!(img.layers, [(gd, gz.len() as u64)]);
    let (oci, docker) = generated(&img.root);
    let m = doc(&ix, &oci);
    assert_eq!(m["layers"][0]["mediaType"], json!(media::OCI_LAYER_GZIP));
    assert_eq!(m["layers"][0]["digest"], digest_json(&gd));
    assert_eq!(m["layers"][0]["size"], json!(gz.len()));
    let dm = doc(&ix, &docker.unwrap());
    assert_eq!(
        dm["layers"][0]["mediaType"],
        json!(media::DOCKER_LAYER_GZIP)
    );
    assert_eq!(dm["layers"][0]["digest"], digest_json(&gd));
    // The config (and so the diff_id) is served as stored.
    let served: Value = serde_json::from_slice(&blob_bytes(&a, &ix, &cd).await).unwrap();
    assert_eq!(served["rootfs"]["diff_ids"][0], digest_json(&diff_id));
    assert_eq!(blob_bytes(&a, &ix, &gd).await, gz);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_gzip_layer_outside_blobs_is_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = layer_tar(&[("x", b"y")]);
    let gz = gzip(&inner).await;
    let config = docker_config(&[Digest::of(&inner)]);
    let mut t = Tar::new();
    t.file("l/layer.tar", &gz).file("c.json", &config).file(
        "manifest.json",
        &manifest_json(&[("c.json", &["app:v1"], &["l/layer.tar"])]),
    );
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    let gd = Digest::of(&gz);
    assert_eq!(ix.images[0].layers, [(gd, gz.len() as u64)]);
    let m = doc(&ix, &generated(&ix.images[0].root).0);
    assert_eq!(m["layers"][0]["mediaType"], json!(media::OCI_LAYER_GZIP));
    assert_eq!(blob_bytes(&a, &ix, &gd).await, gz);
}

/// Defect 5: a compressed layer outside `blobs/` that several images (and
/// one image twice) list is read and hashed once per archive, not once per
/// mention; every image gets its right digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_shared_compressed_layer_is_read_once() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = layer_tar(&[("big", &noise(400_000, 5))]);
    let gz = gzip(&inner).await;
    let own = layer_tar(&[("own", b"x")]);
    let diff = Digest::of(&inner);
    let c1 = docker_config(&[diff]);
    let c2 = docker_config(&[diff, Digest::of(&own)]);
    let c3 = docker_config(&[diff, diff]);
    let mut t = Tar::new();
    t.file("shared/layer.tar", &gz)
        .symlink("alias/layer.tar", "../shared/layer.tar")
        .file("own/layer.tar", &own)
        .file("c1.json", &c1)
        .file("c2.json", &c2)
        .file("c3.json", &c3)
        .file(
            "manifest.json",
            &manifest_json(&[
                ("c1.json", &["a:1"], &["shared/layer.tar"]),
                ("c2.json", &["b:1"], &["alias/layer.tar", "own/layer.tar"]),
                (
                    "c3.json",
                    &["c:1"],
                    &["shared/layer.tar", "alias/layer.tar"],
                ),
            ]),
        );
    let p = write(tmp.path(), "t.tar", &t.finish());
    let (src, read) = Counting::open(&p);
    let a = Arc::new(Archive::open(src).await.unwrap());
    let before = read.load(std::sync::atomic::Ordering::Relaxed);
    let ix = index_default(&a).await.unwrap();
    let during = read.load(std::sync::atomic::Ordering::Relaxed) - before;
    let len = gz.len() as u64;
    // Four mentions of the layer; one read of it (plus a sniffed head).
    assert!(
        (len..len + 4096).contains(&during),
        "indexing read {during} bytes for a {len}-byte layer listed four times"
    );
    let gd = Digest::of(&gz);
    assert_eq!(ix.images.len(), 3);
    assert_eq!(ix.images[0].layers, [(gd, len)]);
    assert_eq!(
        ix.images[1].layers,
        [(gd, len), (Digest::of(&own), own.len() as u64)]
    );
    assert_eq!(ix.images[2].layers, [(gd, len), (gd, len)]);
    assert_eq!(blob_bytes(&a, &ix, &gd).await, gz);
}

/// An uncompressed layer's digest is its diff_id, a claim: two images
/// claiming different digests for one file is an error, not a coin toss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_layer_with_two_diff_ids_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer_tar(&[("x", b"y")]);
    let c1 = docker_config(&[Digest::of(&l)]);
    let c2 = docker_config(&[Digest::of(b"something else")]);
    let mut t = Tar::new();
    t.file("l.tar", &l)
        .file("c1.json", &c1)
        .file("c2.json", &c2)
        .file(
            "manifest.json",
            &manifest_json(&[
                ("c1.json", &["a:1"], &["l.tar"]),
                ("c2.json", &["b:1"], &["l.tar"]),
            ]),
        );
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    let err = index_default(&a).await.unwrap_err().to_string();
    assert!(err.contains("l.tar is listed with diff_id"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_without_or_with_invalid_repo_tags() {
    // `podman save` of an untagged image writes "RepoTags": null; an
    // invalid tag is skipped, not fatal.
    let tmp = tempfile::tempdir().unwrap();
    let l = layer_tar(&[("x", b"y")]);
    let config = docker_config(&[Digest::of(&l)]);
    let manifest = json!([
        { "Config": "c.json", "RepoTags": null, "Layers": ["l.tar"] },
        { "Config": "c.json", "RepoTags": ["Bad Name:1", "ok:2"], "Layers": ["l.tar"] },
    ]);
    let mut t = Tar::new();
    t.file("l.tar", &l)
        .file("c.json", &config)
        .file("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.images.len(), 2);
    assert!(ix.images[0].refs.is_empty());
    assert_eq!(refs(&ix, 1), ["ok:2"]);
    assert_eq!(ix.images[0].root, ix.images[1].root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_archive_errors_say_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let l = layer_tar(&[("x", b"y")]);
    let config = docker_config(&[Digest::of(&l)]);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "missing-config",
            manifest_json(&[("missing.json", &["a:1"], &["l.tar"])]),
            &["missing.json", "no file"],
        ),
        (
            "missing-layer",
            manifest_json(&[("c.json", &["a:1"], &["gone/layer.tar"])]),
            &["gone/layer.tar", "no file"],
        ),
        (
            "bad-json",
            b"[{\"Config\":".to_vec(),
            &["manifest.json is not valid"],
        ),
        (
            "no-images",
            b"[]".to_vec(),
            &["manifest.json lists no image"],
        ),
        (
            "count",
            manifest_json(&[("c.json", &["a:1"], &["l.tar", "l.tar"])]),
            &["1 diff_ids", "2 layers"],
        ),
    ];
    for (name, manifest, wants) in cases {
        let mut t = Tar::new();
        t.file("l.tar", &l)
            .file("c.json", &config)
            .file("manifest.json", &manifest);
        let a = open(tmp.path(), &format!("{name}.tar"), &t.finish())
            .await
            .unwrap();
        let err = index_default(&a).await.unwrap_err();
        assert!(matches!(err, ArchiveError::Format(_)), "{name}: {err:?}");
        let text = err.to_string();
        for w in wants {
            assert!(text.contains(w), "{name}: {text:?} should say {w:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_with_bad_json_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Tar::new();
    t.file("l.tar", &layer_tar(&[("x", b"y")]))
        .file("c.json", b"{not json")
        .file(
            "manifest.json",
            &manifest_json(&[("c.json", &["a:1"], &["l.tar"])]),
        );
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    let text = index_default(&a).await.unwrap_err().to_string();
    assert!(text.contains("config c.json is not valid"), "{text}");
}

// ---------------------------------------------------------------------------
// 5. OCI image layouts

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI layout being built: file name -> bytes.
#[derive(Default, Clone)]
struct Layout {
    files: BTreeMap<String, Vec<u8>>,
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

impl Layout {
    /// Stores a blob; returns its descriptor.
    fn desc(&mut self, media_type: &str, bytes: Vec<u8>) -> Value {
        let d = Digest::of(&bytes);
        let size = bytes.len();
        self.files.insert(blob_path(&d), bytes);
        json!({ "mediaType": media_type, "digest": d, "size": size })
    }

    /// An image manifest (pretty-printed, so re-serializing would show)
    /// with one layer; `tweak` edits the manifest before it is stored.
    fn image_with(&mut self, arch: &str, layer: &[u8], tweak: impl FnOnce(&mut Value)) -> Value {
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(layer)] },
        }))
        .unwrap();
        let c = self.desc(media::OCI_CONFIG, config);
        let l = self.desc(media::OCI_LAYER_TAR, layer.to_vec());
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": c,
            "layers": [l],
        });
        tweak(&mut m);
        let mut d = self.desc(media::OCI_MANIFEST, serde_json::to_vec_pretty(&m).unwrap());
        d["platform"] = json!({ "os": "linux", "architecture": arch });
        d
    }

    fn image(&mut self, arch: &str, layer: &[u8]) -> Value {
        self.image_with(arch, layer, |_| {})
    }

    fn nested_index(&mut self, manifests: Vec<Value>) -> Value {
        let ix =
            json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
        self.desc(media::OCI_INDEX, serde_json::to_vec_pretty(&ix).unwrap())
    }

    fn index_json(&mut self, manifests: Vec<Value>) {
        self.files.insert(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        let ix =
            json!({ "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests });
        self.files
            .insert("index.json".into(), serde_json::to_vec_pretty(&ix).unwrap());
    }

    fn remove(&mut self, desc: &Value) {
        let d: Digest = desc["digest"].as_str().unwrap().parse().unwrap();
        self.files.remove(&blob_path(&d)).unwrap();
    }

    fn tar(&self) -> Vec<u8> {
        let mut t = Tar::new();
        t.dir("blobs").dir("blobs/sha256");
        for (n, b) in &self.files {
            t.file(n, b);
        }
        t.finish()
    }

    fn write_dir(&self, root: &Path) {
        for (n, b) in &self.files {
            let p = root.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b).unwrap();
        }
    }
}

fn named(mut desc: Value, name: &str) -> Value {
    desc["annotations"] = json!({ REF_NAME: name });
    desc
}

fn digest_of(desc: &Value) -> Digest {
    desc["digest"].as_str().unwrap().parse().unwrap()
}

/// Opens a layout both as a tar and as a directory.
async fn open_layout(tmp: &Path, name: &str, layout: &Layout) -> Vec<Arc<Archive>> {
    let tarred = open(tmp, &format!("{name}.tar"), &layout.tar())
        .await
        .unwrap();
    let dir = tmp.join(name);
    layout.write_dir(&dir);
    let dir = Arc::new(Archive::open_dir(&dir).await.unwrap());
    vec![tarred, dir]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_serves_its_manifests_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = layer_tar(&[("hello", b"world")]);
    let mut l = Layout::default();
    let m = l.image("amd64", &layer);
    l.index_json(vec![named(m.clone(), "v1")]);
    let md = digest_of(&m);
    let manifest_bytes = l.files[&blob_path(&md)].clone();
    let mv: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let cd: Digest = mv["config"]["digest"].as_str().unwrap().parse().unwrap();
    let ld = Digest::of(&layer);

    for a in open_layout(tmp.path(), "layout", &l).await {
        let what = a.describe();
        let ix = index_default(&a).await.unwrap();
        assert_eq!(ix.format, Some(Format::Oci), "{what}");
        assert_eq!(ix.images.len(), 1, "{what}");
        let img = &ix.images[0];
        assert_eq!(img.root, Root::Stored(md), "{what}");
        assert!(img.refs[0].name.is_none(), "{what}");
        assert_eq!(img.refs[0].tag.as_ref().unwrap().as_str(), "v1", "{what}");
        assert_eq!(ix.docs[&md].media_type, media::OCI_MANIFEST, "{what}");
        assert_eq!(&ix.docs[&md].bytes[..], &manifest_bytes[..], "{what}");
        assert_eq!(img.platforms, ["linux/amd64"], "{what}");
        assert_eq!(img.layers, [(ld, layer.len() as u64)], "{what}");
        for d in [md, cd, ld] {
            assert!(img.digests.contains(&d), "{what}: {d}");
        }
        assert_eq!(blob_bytes(&a, &ix, &ld).await, layer, "{what}");
        assert_eq!(Digest::of(&blob_bytes(&a, &ix, &cd).await), cd, "{what}");
        assert!(ix.referrers.is_empty(), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_ref_names_from_podman_and_ctr() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let podman = l.image("amd64", &layer_tar(&[("p", b"1")]));
    let ctr = l.image("amd64", &layer_tar(&[("c", b"2")]));
    let mut ctr_named = ctr.clone();
    ctr_named["annotations"] = json!({
        "io.containerd.image.name": "docker.io/library/app:v3",
        REF_NAME: "v3",
    });
    l.index_json(vec![named(podman, "localhost/app:v2"), ctr_named]);
    let a = open(tmp.path(), "t.tar", &l.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(refs(&ix, 0), ["app:v2"]);
    assert_eq!(refs(&ix, 1), ["app:v3", ":v3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_nested_multi_platform_index() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let amd = l.image("amd64", &layer_tar(&[("arch", b"amd64")]));
    let arm = l.image("arm64", &layer_tar(&[("arch", b"arm64")]));
    let nested = l.nested_index(vec![amd.clone(), arm.clone()]);
    l.index_json(vec![named(nested.clone(), "v1")]);
    let nd = digest_of(&nested);
    for a in open_layout(tmp.path(), "multi", &l).await {
        let what = a.describe();
        let ix = index_default(&a).await.unwrap();
        assert_eq!(ix.images.len(), 1, "{what}");
        let img = &ix.images[0];
        assert_eq!(img.root, Root::Stored(nd), "{what}");
        assert_eq!(img.platforms, ["linux/amd64", "linux/arm64"], "{what}");
        assert_eq!(ix.docs[&nd].media_type, media::OCI_INDEX, "{what}");
        for d in [nd, digest_of(&amd), digest_of(&arm)] {
            assert_eq!(
                &ix.docs[&d].bytes[..],
                &l.files[&blob_path(&d)][..],
                "{what}"
            );
            assert!(img.digests.contains(&d), "{what}");
        }
        assert_eq!(img.layers.len(), 2, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index_child_missing_is_skipped_and_index_still_served() {
    // A single-platform export keeps the full index.
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let amd = l.image("amd64", &layer_tar(&[("arch", b"amd64")]));
    let arm = l.image("arm64", &layer_tar(&[("arch", b"arm64")]));
    let nested = l.nested_index(vec![amd.clone(), arm.clone()]);
    l.index_json(vec![named(nested.clone(), "v1")]);
    l.remove(&arm);
    let nd = digest_of(&nested);
    for a in open_layout(tmp.path(), "partial", &l).await {
        let what = a.describe();
        let ix = index_default(&a).await.unwrap();
        let img = &ix.images[0];
        assert_eq!(img.root, Root::Stored(nd), "{what}");
        assert_eq!(
            &ix.docs[&nd].bytes[..],
            &l.files[&blob_path(&nd)][..],
            "{what}"
        );
        assert_eq!(img.platforms, ["linux/amd64"], "{what}");
        assert!(ix.docs.contains_key(&digest_of(&amd)), "{what}");
        assert!(!ix.docs.contains_key(&digest_of(&arm)), "{what}");
        assert!(!img.digests.contains(&digest_of(&arm)), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index_child_with_missing_layer_is_not_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let amd_layer = layer_tar(&[("arch", b"amd64")]);
    let arm_layer = layer_tar(&[("arch", b"arm64")]);
    let amd = l.image("amd64", &amd_layer);
    let arm = l.image("arm64", &arm_layer);
    let nested = l.nested_index(vec![amd, arm.clone()]);
    l.index_json(vec![named(nested, "v1")]);
    l.files.remove(&blob_path(&Digest::of(&arm_layer))).unwrap();
    let armv: Value = serde_json::from_slice(&l.files[&blob_path(&digest_of(&arm))]).unwrap();
    let arm_config: Digest = armv["config"]["digest"].as_str().unwrap().parse().unwrap();
    let a = open(tmp.path(), "t.tar", &l.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    let img = &ix.images[0];
    // Only what is served is listed: not the platform whose layer is gone.
    assert_eq!(img.platforms, ["linux/amd64"]);
    assert_eq!(
        img.layers,
        [(Digest::of(&amd_layer), amd_layer.len() as u64)]
    );
    assert!(!img.digests.contains(&arm_config));
    assert!(!img.digests.contains(&digest_of(&arm)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_blob_size_mismatch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let good = l.image("amd64", &layer_tar(&[("good", b"1")]));
    let bad_layer = layer_tar(&[("bad", b"2")]);
    let n = bad_layer.len() as u64;
    let bad = l.image_with("amd64", &bad_layer, |m| {
        m["layers"][0]["size"] = json!(n + 1)
    });
    let mut both = l.clone();
    both.index_json(vec![named(good.clone(), "v1"), named(bad.clone(), "v2")]);
    let a = open(tmp.path(), "both.tar", &both.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.images.len(), 1, "the bad image is skipped");
    assert_eq!(refs(&ix, 0), [":v1"]);
    assert!(!ix.docs.contains_key(&digest_of(&bad)));

    let mut only = l.clone();
    only.index_json(vec![named(bad, "v2")]);
    let a = open(tmp.path(), "only.tar", &only.tar()).await.unwrap();
    let text = index_default(&a).await.unwrap_err().to_string();
    assert!(
        text.contains(&format!("is {n} bytes but its descriptor says {}", n + 1)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_manifest_not_matching_its_digest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let good = l.image("amd64", &layer_tar(&[("good", b"1")]));
    let bad = l.image("arm64", &layer_tar(&[("bad", b"2")]));
    // Same size, different bytes.
    let bd = digest_of(&bad);
    let stored = l.files.get_mut(&blob_path(&bd)).unwrap();
    let i = stored.iter().position(|&b| b == b' ').unwrap();
    stored[i] = b'\t';
    let mut both = l.clone();
    both.index_json(vec![named(good, "v1"), named(bad.clone(), "v2")]);
    let a = open(tmp.path(), "both.tar", &both.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.images.len(), 1);
    assert_eq!(refs(&ix, 0), [":v1"]);
    assert!(!ix.docs.contains_key(&bd));

    let mut only = l.clone();
    only.index_json(vec![named(bad, "v2")]);
    let a = open(tmp.path(), "only.tar", &only.tar()).await.unwrap();
    let text = index_default(&a).await.unwrap_err().to_string();
    assert!(text.contains(&format!("blob {bd} has digest")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_manifest_with_subject_is_a_referrer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let img = l.image("amd64", &layer_tar(&[("x", b"y")]));
    let empty = l.desc("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let sig_layer = l.desc("application/vnd.example.signature", b"signed".to_vec());
    let mut subject = img.clone();
    subject.as_object_mut().unwrap().remove("platform");
    let sig = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": empty,
        "layers": [sig_layer],
        "subject": subject,
        "annotations": { "org.example.signer": "ci" },
    });
    let sig = l.desc(
        media::OCI_MANIFEST,
        serde_json::to_vec_pretty(&sig).unwrap(),
    );
    l.index_json(vec![named(img.clone(), "v1"), sig.clone()]);
    let a = open(tmp.path(), "t.tar", &l.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    let refs = &ix.referrers[&digest_of(&img)];
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0]["digest"], sig["digest"]);
    assert_eq!(refs[0]["size"], sig["size"]);
    assert_eq!(refs[0]["mediaType"], json!(media::OCI_MANIFEST));
    assert_eq!(
        refs[0]["artifactType"],
        json!("application/vnd.example.signature")
    );
    assert_eq!(refs[0]["annotations"]["org.example.signer"], json!("ci"));
    assert_eq!(ix.referrers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_referrer_under_two_tags_is_listed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let img = l.image("amd64", &layer_tar(&[("x", b"y")]));
    let empty = l.desc("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    let mut subject = img.clone();
    subject.as_object_mut().unwrap().remove("platform");
    let sig = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": empty,
        "layers": [],
        "subject": subject,
    });
    let sig = l.desc(
        media::OCI_MANIFEST,
        serde_json::to_vec_pretty(&sig).unwrap(),
    );
    l.index_json(vec![
        named(img.clone(), "v1"),
        named(sig.clone(), "sig"),
        named(sig.clone(), "sig2"),
    ]);
    let a = open(tmp.path(), "t.tar", &l.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    let refs = &ix.referrers[&digest_of(&img)];
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(refs[0]["digest"], sig["digest"]);
    assert_eq!(
        ix.images.len(),
        3,
        "the signature is served under both tags"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index_without_usable_images_falls_back_to_manifest_json() {
    // Some Docker ≥ 25 `docker save` versions write an index.json that
    // misses its manifests; manifest.json still describes the image.
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let layer = layer_tar(&[("x", b"y")]);
    let m = l.image("amd64", &layer);
    let mv: Value = serde_json::from_slice(&l.files[&blob_path(&digest_of(&m))]).unwrap();
    let cd: Digest = mv["config"]["digest"].as_str().unwrap().parse().unwrap();
    l.index_json(vec![named(m.clone(), "v1")]);
    l.remove(&m);
    let (cp, lp) = (blob_path(&cd), blob_path(&Digest::of(&layer)));
    l.files.insert(
        "manifest.json".into(),
        manifest_json(&[(&cp, &["app:v1"], &[&lp])]),
    );
    let a = open(tmp.path(), "t.tar", &l.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.format, Some(Format::DockerArchive));
    assert_eq!(refs(&ix, 0), ["app:v1"]);
    assert_eq!(
        ix.images[0].layers,
        [(Digest::of(&layer), layer.len() as u64)]
    );
}

/// The typed model is strict: a manifest whose layer descriptor has no
/// media type is not an image manifest, and an index.json descriptor whose
/// digest is a path is refused, naming index.json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_documents_are_parsed_strictly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let m = l.image_with("amd64", &layer_tar(&[("a", b"1")]), |m| {
        m["layers"][0].as_object_mut().unwrap().remove("mediaType");
    });
    l.index_json(vec![named(m, "v1")]);
    for a in open_layout(tmp.path(), "nomedia", &l).await {
        let err = index_default(&a).await.unwrap_err().to_string();
        assert!(
            err.contains("is not valid") && err.contains("mediaType"),
            "{err}"
        );
    }
    let mut l = Layout::default();
    l.index_json(vec![json!({
        "mediaType": media::OCI_MANIFEST,
        "digest": "sha256:../../etc/passwd",
        "size": 1,
    })]);
    let a = open(tmp.path(), "path.tar", &l.tar()).await.unwrap();
    let err = index_default(&a).await.unwrap_err().to_string();
    assert!(err.contains("index.json is not valid"), "{err}");
}

/// One budget per archive: the TOC walk (entries) and the format walk
/// (documents, descriptors, visits) charge the same one, and a format that
/// passes a limit is refused with an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_covers_the_toc_and_the_format_walk() {
    use super::budget::{Budget, Limit};
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let m = l.image("amd64", &layer_tar(&[("a", b"1")]));
    l.index_json(vec![named(m.clone(), "v1"), named(m, "v2")]);
    let bytes = l.tar();
    let a = open(tmp.path(), "b.tar", &bytes).await.unwrap();
    let entries = tar::Archive::new(&bytes[..]).entries().unwrap().count() as u64;
    assert_eq!(a.budget.spent(Limit::Entries), entries);
    index_default(&a).await.unwrap();
    let docs: u64 = l
        .files
        .iter()
        .filter(|(n, _)| n.as_str() != "oci-layout")
        .filter(|(_, b)| b.first() == Some(&b'{'))
        .map(|(_, b)| b.len() as u64)
        .sum();
    // index.json, the manifest and its config, each read once although
    // two names point at the manifest.
    assert_eq!(a.budget.spent(Limit::DocumentBytes), docs);
    assert_eq!(a.budget.spent(Limit::Visits), 2);

    // The same archive under a smaller document budget is refused.
    let src = crate::source::open(tmp.path().join("b.tar").to_str().unwrap(), None).unwrap();
    let mut small = Archive::open(src).await.unwrap();
    small.budget = Arc::new(Budget::default().with_max(Limit::DocumentBytes, docs - 1));
    let err = index_default(&Arc::new(small)).await.unwrap_err();
    assert!(
        matches!(err, ArchiveError::Budget(Limit::DocumentBytes)),
        "{err:?}"
    );
    assert!(err.to_string().contains("document bytes"), "{err}");

    // A docker archive listing one layer many times passes the
    // descriptor limit, and says so.
    let layer = layer_tar(&[("x", b"y")]);
    let n = 50;
    let config = docker_config(&vec![Digest::of(&layer); n]);
    let mut t = Tar::new();
    t.file("l.tar", &layer).file("c.json", &config).file(
        "manifest.json",
        &manifest_json(&[("c.json", &["a:1"], &vec!["l.tar"; n])]),
    );
    let p = write(tmp.path(), "d.tar", &t.finish());
    let src = crate::source::open(p.to_str().unwrap(), None).unwrap();
    let mut d = Archive::open(src).await.unwrap();
    d.budget = Arc::new(Budget::default().with_max(Limit::Descriptors, 10));
    let err = index_default(&Arc::new(d)).await.unwrap_err();
    assert!(
        matches!(err, ArchiveError::Budget(Limit::Descriptors)),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. Rootfs tarballs

fn config_of(ix: &Indexed, img: usize) -> Value {
    let m = doc(ix, &generated(&ix.images[img].root).0);
    let cd: Digest = m["config"]["digest"].as_str().unwrap().parse().unwrap();
    let BlobAt::Memory(b) = &ix.blobs[&cd].at else {
        panic!("config not in memory")
    };
    assert_eq!(Digest::of(b), cd);
    serde_json::from_slice(b).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_tarballs_are_one_layer_images() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = layer_tar(&[("bin/sh", &noise(30_000, 8)), ("etc/motd", b"hi\n")]);
    let diff_id = Digest::of(&inner);
    for (name, stored, oci_type, docker_type) in [
        (
            "r.tar",
            inner.clone(),
            media::OCI_LAYER_TAR,
            Some(media::DOCKER_LAYER_TAR),
        ),
        (
            "r.tar.gz",
            gzip(&inner).await,
            media::OCI_LAYER_GZIP,
            Some(media::DOCKER_LAYER_GZIP),
        ),
        ("r.tar.zst", zstd(&inner).await, media::OCI_LAYER_ZSTD, None),
    ] {
        let a = open(tmp.path(), name, &stored).await.unwrap();
        let ix = index_default(&a).await.unwrap();
        assert_eq!(ix.format, Some(Format::Rootfs), "{name}");
        let img = &ix.images[0];
        let ld = Digest::of(&stored);
        assert_eq!(img.layers, [(ld, stored.len() as u64)], "{name}");
        assert!(img.refs.is_empty(), "{name}");
        assert_eq!(img.platforms, ["linux/amd64"], "{name}");
        let (oci, docker) = generated(&img.root);
        let m = doc(&ix, &oci);
        assert_eq!(m["layers"][0]["mediaType"], json!(oci_type), "{name}");
        assert_eq!(m["layers"][0]["digest"], digest_json(&ld), "{name}");
        assert_eq!(m["layers"][0]["size"], json!(stored.len()), "{name}");
        match docker_type {
            Some(t) => {
                let dm = doc(&ix, &docker.unwrap());
                assert_eq!(dm["layers"][0]["mediaType"], json!(t), "{name}");
            }
            None => assert!(docker.is_none(), "{name}: Docker has no zstd layers"),
        }
        let cfg = config_of(&ix, 0);
        assert_eq!(
            cfg["rootfs"]["diff_ids"],
            json!([diff_id.to_string()]),
            "{name}"
        );
        assert!(matches!(ix.blobs[&ld].at, BlobAt::Whole), "{name}");
        assert_eq!(blob_bytes(&a, &ix, &ld).await, stored, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_config_overrides_appear_in_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = layer_tar(&[("bin/app", b"#!/bin/sh\n")]);
    let a = open(tmp.path(), "r.tar", &inner).await.unwrap();
    let user = ImageConfig {
        architecture: Some("arm64".into()),
        variant: Some("v8".into()),
        env: Some(vec!["FOO=1".into(), "PATH=/bin".into()]),
        cmd: Some(vec!["/bin/app".into(), "--serve".into()]),
        user: Some("1000:1000".into()),
        labels: [("org.example.team".to_string(), "infra".to_string())].into(),
        ..Default::default()
    };
    let ix = index(&a, &user).await.unwrap();
    let cfg = config_of(&ix, 0);
    assert_eq!(cfg["architecture"], json!("arm64"));
    assert_eq!(cfg["variant"], json!("v8"));
    assert_eq!(cfg["os"], json!("linux"));
    assert_eq!(cfg["config"]["Env"], json!(["FOO=1", "PATH=/bin"]));
    assert_eq!(cfg["config"]["Cmd"], json!(["/bin/app", "--serve"]));
    assert_eq!(cfg["config"]["User"], json!("1000:1000"));
    assert_eq!(
        cfg["config"]["Labels"],
        json!({ "org.example.team": "infra" })
    );
    assert_eq!(ix.images[0].platforms, ["linux/arm64/v8"]);

    let plain = index_default(&a).await.unwrap();
    let pc = config_of(&plain, 0);
    assert_eq!(pc["architecture"], json!("amd64"));
    assert!(
        pc["config"]["Env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH=")
    );
    assert!(pc["config"].get("Cmd").is_none());
    assert_ne!(plain.images[0].root, ix.images[0].root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexing_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let inner = layer_tar(&[("bin/sh", &noise(10_000, 9))]);
    let (docker, _, _) = simple_docker_archive();
    for (name, bytes) in [
        ("r.tar", inner.clone()),
        ("r.tar.gz", gzip(&inner).await),
        ("app.tar", docker),
    ] {
        let p1 = write(tmp.path(), name, &bytes);
        let p2 = write(other.path(), &format!("copy-{name}"), &bytes);
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        std::fs::File::options()
            .write(true)
            .open(&p2)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut seen = Vec::new();
        for p in [&p1, &p1, &p2] {
            let a = open_path(p).await.unwrap();
            let ix = index_default(&a).await.unwrap();
            let mut docs: Vec<(Digest, Vec<u8>)> = ix
                .docs
                .iter()
                .map(|(d, doc)| (*d, doc.bytes.to_vec()))
                .collect();
            docs.sort();
            seen.push((ix.images[0].root.clone(), docs, a.stat.version.clone()));
        }
        assert_eq!(seen[0].0, seen[1].0, "{name}");
        assert_eq!(seen[0].0, seen[2].0, "{name}: a copy elsewhere");
        assert_eq!(seen[0].1, seen[2].1, "{name}: a copy elsewhere");
        assert_ne!(seen[0].2, seen[2].2, "{name}: the copy is another version");
    }
}

// ---------------------------------------------------------------------------
// 7. Concourse image resources

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concourse_metadata_and_rootfs_tgz() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = layer_tar(&[("bin/sh", &noise(10_000, 10)), ("etc/passwd", b"u:x:1:1\n")]);
    let tgz = gzip(&inner).await;
    let metadata = br#"{"env":["A=b"],"user":"u"}"#;
    let mut t = Tar::new();
    t.file("metadata.json", metadata).file("rootfs.tgz", &tgz);
    let tarred = open(tmp.path(), "concourse.tar", &t.finish())
        .await
        .unwrap();
    let dir = tmp.path().join("concourse");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "metadata.json", metadata);
    write(&dir, "rootfs.tgz", &tgz);
    let dir = Arc::new(Archive::open_dir(&dir).await.unwrap());

    let ld = Digest::of(&tgz);
    for a in [tarred, dir] {
        let what = a.describe();
        let ix = index_default(&a).await.unwrap();
        assert_eq!(ix.format, Some(Format::Concourse), "{what}");
        let cfg = config_of(&ix, 0);
        assert_eq!(cfg["config"]["Env"], json!(["A=b"]), "{what}");
        assert_eq!(cfg["config"]["User"], json!("u"), "{what}");
        assert_eq!(
            cfg["rootfs"]["diff_ids"],
            json!([Digest::of(&inner).to_string()]),
            "{what}"
        );
        assert_eq!(ix.images[0].layers, [(ld, tgz.len() as u64)], "{what}");
        let m = doc(&ix, &generated(&ix.images[0].root).0);
        assert_eq!(
            m["layers"][0]["mediaType"],
            json!(media::OCI_LAYER_GZIP),
            "{what}"
        );
        assert!(
            matches!(&ix.blobs[&ld].at, BlobAt::Member(n) if n == "rootfs.tgz"),
            "{what}"
        );
        assert_eq!(blob_bytes(&a, &ix, &ld).await, tgz, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concourse_unpacked_rootfs_is_repacked_without_its_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let long = format!("rootfs/{}/f", "d".repeat(120));
    let mut t = Tar::new();
    t.file("metadata.json", br#"{"env":["A=b"],"user":"u"}"#)
        .dir("rootfs")
        .file("rootfs/bin/sh", b"#!x")
        .file(&long, b"deep");
    let a = open(tmp.path(), "c.tar", &t.finish()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.format, Some(Format::Concourse));
    let cfg = config_of(&ix, 0);
    assert_eq!(cfg["config"]["User"], json!("u"));
    let (ld, size) = ix.images[0].layers[0];
    let layer = blob_bytes(&a, &ix, &ld).await;
    assert_eq!(layer.len() as u64, size);
    assert_eq!(Digest::of(&layer), ld);
    assert_eq!(cfg["rootfs"]["diff_ids"][0], json!(ld.to_string()));
    // The layer is a tar of the tree below rootfs/, nothing else.
    let mut ar = tar::Archive::new(&layer[..]);
    let mut seen = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        seen.insert(name, data);
    }
    let deep = long.strip_prefix("rootfs/").unwrap().to_string();
    assert_eq!(seen.get("bin/sh").map(Vec::as_slice), Some(&b"#!x"[..]));
    assert_eq!(seen.get(&deep).map(Vec::as_slice), Some(&b"deep"[..]));
    assert!(
        seen.keys()
            .all(|k| !k.starts_with("rootfs") && k != "metadata.json"),
        "{seen:?}"
    );
    // Re-indexing gives the same layer bytes.
    let again = index_default(&a).await.unwrap();
    assert_eq!(again.images[0].layers[0].0, ld);
}

/// Defect 4: a Concourse `rootfs/` tree of many files in a gzip archive is
/// re-packed in one pass: indexing reads the archive once to build the TOC
/// and once to hash the layer, a cold serve once — not once per file — and
/// the layer is byte for byte the tar a builder writes of the same tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concourse_rootfs_of_many_files_is_repacked_in_one_pass() {
    use std::sync::atomic::Ordering::Relaxed;
    const FILES: usize = 2000;
    let tmp = tempfile::tempdir().unwrap();
    let mut outer = Tar::new();
    let mut expected = tar::Builder::new(Vec::new());
    let head = |kind, size| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_entry_type(kind);
        h
    };
    outer
        .file("metadata.json", br#"{"env":["A=b"]}"#)
        .dir("rootfs");
    for i in 0..FILES {
        if i % 100 == 0 {
            let d = format!("d{}", i / 100);
            outer.dir(&format!("rootfs/{d}"));
            expected
                .append_data(
                    &mut head(tar::EntryType::Directory, 0),
                    format!("{d}/"),
                    std::io::empty(),
                )
                .unwrap();
        }
        let data = noise(200 + i % 300, i as u64);
        let name = format!("d{}/f{i}", i / 100);
        outer.file(&format!("rootfs/{name}"), &data);
        expected
            .append_data(
                &mut head(tar::EntryType::Regular, data.len() as u64),
                &name,
                &data[..],
            )
            .unwrap();
    }
    outer
        .symlink("rootfs/link", "d0/f0")
        .hardlink("rootfs/hard", "rootfs/d0/f0");
    expected
        .append_link(&mut head(tar::EntryType::Symlink, 0), "link", "d0/f0")
        .unwrap();
    expected
        .append_link(&mut head(tar::EntryType::Link, 0), "hard", "d0/f0")
        .unwrap();
    let expected = expected.into_inner().unwrap();
    let plain = outer.finish();
    let gz = gzip(&plain).await;

    for (name, bytes) in [("c.tgz", &gz), ("c.tar", &plain)] {
        let size = bytes.len() as u64;
        let (src, read) = Counting::open(&write(tmp.path(), name, bytes));
        let a = Arc::new(Archive::open(src).await.unwrap());
        let opened = read.load(Relaxed);
        let ix = index_default(&a).await.unwrap();
        assert_eq!(ix.format, Some(Format::Concourse));
        let indexing = read.load(Relaxed) - opened;
        let (ld, lsize) = ix.images[0].layers[0];
        let served = read.load(Relaxed);
        let layer = blob_bytes(&a, &ix, &ld).await;
        let serving = read.load(Relaxed) - served;
        assert!(
            opened <= size + 4096,
            "{name}: opening read {opened} of {size}"
        );
        assert!(
            indexing <= size,
            "{name}: hashing the layer read {indexing} bytes of a {size}-byte archive"
        );
        assert!(
            serving <= size,
            "{name}: serving the layer read {serving} bytes of a {size}-byte archive"
        );
        assert_eq!(lsize, expected.len() as u64, "{name}");
        assert!(layer == expected, "{name}: the re-packed layer differs");
        assert_eq!(ld, Digest::of(&expected), "{name}");
    }
}

/// Headers and padding between members are cut into one segment each, so
/// the segment list stays proportional to the files (and is built in one
/// pass) however many directories and links sit between them.
#[test]
fn repack_segments_alternate_generated_bytes_and_members() {
    let mut t = Tar::new();
    t.dir("rootfs");
    for i in 0..50 {
        t.dir(&format!("rootfs/d{i}"))
            .symlink(&format!("rootfs/d{i}/l"), "x");
        t.file(&format!("rootfs/d{i}/f"), b"data");
    }
    let bytes = t.finish();
    let mut ar = tar::Archive::new(&bytes[..]);
    let budget = super::budget::Budget::default();
    let toc = super::toc::walk(ar.entries().unwrap(), None, false, None, &budget).unwrap();
    let r = super::repack::repack(&toc, "rootfs/").unwrap();
    assert_eq!(r.segments.len(), 2 * 50 + 1);
    for (i, s) in r.segments.iter().enumerate() {
        let member = matches!(s, super::repack::Segment::Member(_));
        assert_eq!(member, i % 2 == 1, "segment {i}");
    }
    // 50 × (dir + symlink + file header, 512 bytes of data block) + end.
    assert_eq!(r.size, 50 * (3 * 512 + 512) + 1024);
}

// ---------------------------------------------------------------------------
// 8. Whole-archive compression

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_docker_archive_matches_uncompressed() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, layers, _) = simple_docker_archive();
    let a = open(tmp.path(), "app.tar", &plain).await.unwrap();
    let want = index_default(&a).await.unwrap();
    let want_docs: std::collections::BTreeSet<Digest> = want.docs.keys().copied().collect();
    for (name, stored) in [
        ("app.tar.gz", gzip(&plain).await),
        ("app.tar.zst", zstd(&plain).await),
    ] {
        let a = open(tmp.path(), name, &stored).await.unwrap();
        let sd = a.digests.expect("a streaming pass hashes the archive");
        assert_eq!(
            sd.stored,
            (Digest::of(&stored), stored.len() as u64),
            "{name}"
        );
        assert_eq!(sd.diff_id, Digest::of(&plain), "{name}");
        let ix = index_default(&a).await.unwrap();
        assert_eq!(ix.format, Some(Format::DockerArchive), "{name}");
        assert_eq!(ix.images[0].root, want.images[0].root, "{name}");
        let docs: std::collections::BTreeSet<Digest> = ix.docs.keys().copied().collect();
        assert_eq!(docs, want_docs, "{name}");
        for l in &layers {
            let d = Digest::of(l);
            assert_eq!(&blob_bytes(&a, &ix, &d).await, l, "{name}");
            // A range inside a member of a compressed archive.
            let BlobAt::Member(m) = &ix.blobs[&d].at else {
                panic!("{name}: layer not a member")
            };
            let e = a.member(m).unwrap();
            let part = collect(a.member_stream(e, 100, 50).await.unwrap()).await;
            assert_eq!(part, &l[100..150], "{name}");
        }
    }
}

/// A saved TOC's name index is rebuilt, not trusted: a damaged file naming
/// an entry past the end cannot make a lookup panic.
#[test]
fn a_saved_toc_rebuilds_its_name_index() {
    let json = serde_json::json!({
        "entries": [{
            "name": "manifest.json", "kind": "File", "size": 2, "offset": 512,
            "head": null, "meta": { "mode": 420, "uid": 0, "gid": 0, "mtime": 0 }
        }],
        "by_name": { "manifest.json": 99, "other": 7 }
    });
    let toc: super::Toc = serde_json::from_value(json).unwrap();
    assert_eq!(toc.get("manifest.json").unwrap().offset, 512);
    assert!(toc.get("other").is_none());
}

/// What a real index saves passes the saved-index check, also once the TOC
/// is pruned to the blob members, and a changed size or offset does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_index_of_a_real_archive_checks_out() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, _, _) = simple_docker_archive();
    let a = open(tmp.path(), "app.tar", &bytes).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    let layout = a.layout().unwrap();
    super::saved::check(layout, &a.stat, &a.toc, &ix).unwrap();
    let mut toc: super::Toc = serde_json::from_slice(&serde_json::to_vec(&a.toc).unwrap()).unwrap();
    toc.retain(&ix.members());
    super::saved::check(layout, &a.stat, &toc, &ix).unwrap();
    let short = crate::source::Stat {
        size: a.stat.size / 2,
        version: a.stat.version.clone(),
    };
    let e = super::saved::check(layout, &short, &toc, &ix).unwrap_err();
    assert!(e.to_string().contains("outside the archive"), "{e}");
    let mut wrong = serde_json::to_value(&ix).unwrap();
    for b in wrong["blobs"].as_object_mut().unwrap().values_mut() {
        b["size"] = json!(b["size"].as_u64().unwrap() + 1);
    }
    let wrong: Indexed = serde_json::from_value(wrong).unwrap();
    let e = super::saved::check(layout, &a.stat, &toc, &wrong).unwrap_err();
    assert!(e.to_string().contains("bytes where it lives"), "{e}");
}

// ---------------------------------------------------------------------------
// Header records the `tar` crate would buffer or misread

/// The archive as a plain tar (range walk) and gzipped (streamed walk).
async fn both_walks(tmp: &Path, bytes: &[u8]) -> Vec<Result<Arc<Archive>, ArchiveError>> {
    vec![
        open(tmp, "t.tar", bytes).await,
        open(tmp, "t.tar.gz", &gzip(bytes).await).await,
    ]
}

/// A raw PAX `x` entry holding exactly `data`, before a regular file.
fn raw_pax_then_file(data: &[u8]) -> Vec<u8> {
    let mut t = Tar::new();
    let mut h = header(data.len() as u64, tar::EntryType::XHeader);
    h.set_path("PaxHeaders/f").unwrap();
    h.set_cksum();
    t.0.append(&h, data).unwrap();
    t.file("f.bin", &[1u8; 10]).file("after.json", b"{}");
    t.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_pax_and_long_name_records_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![b'a'; 2 << 20];
    let mut t = Tar::new();
    t.pax(&[("comment", &big[..])]).file("f.bin", b"x");
    let mut l = Tar::new();
    l.file(std::str::from_utf8(&big).unwrap(), b"x");
    for bytes in [t.finish(), l.finish()] {
        for r in both_walks(tmp.path(), &bytes).await {
            let err = r.unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("PAX/long-name header record") && text.contains("per-archive limit"),
                "{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_overflowing_pax_records_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[u8], &str); 4] = [
        (b"99 path=a\n", "runs past the header"),
        (
            b"39 size=999999999999999999999999999999\n",
            "not a number that fits",
        ),
        (b"10 uid=-1\n", "not a number that fits"),
        (b"10 path=ab\n", "does not end in a newline"),
    ];
    for (data, want) in cases {
        for r in both_walks(tmp.path(), &raw_pax_then_file(data)).await {
            let err = r.unwrap_err();
            assert!(matches!(err, ArchiveError::Hostile(_)), "{err:?}");
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }
    // Well-formed records still work, on both walks.
    for r in both_walks(tmp.path(), &raw_pax_then_file(b"11 size=10\n10 uid=42\n")).await {
        let a = r.unwrap();
        assert_eq!(a.member("f.bin").unwrap().meta.uid, 42);
        assert_eq!(member_bytes(&a, "after.json").await, b"{}");
    }
}

/// An index repeating one child 1,000 times at two levels (10⁶ paths from
/// a few hundred KB) is walked once per document: indexed at once, each
/// image listing its one platform once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_index_fan_out_is_walked_once_per_document() {
    let tmp = tempfile::tempdir().unwrap();
    let mut l = Layout::default();
    let m = l.image("amd64", &layer_tar(&[("a", b"a")]));
    let inner = l.nested_index(vec![m.clone(); 1000]);
    let outer = l.nested_index(vec![inner; 1000]);
    l.index_json(
        (0..20)
            .map(|i| named(outer.clone(), &format!("v{i}")))
            .collect(),
    );
    let a = open(tmp.path(), "fan.tar", &l.tar()).await.unwrap();
    let ix = index_default(&a).await.unwrap();
    assert_eq!(ix.images.len(), 20);
    for img in &ix.images {
        assert_eq!(img.platforms, ["linux/amd64"]);
        assert_eq!(img.layers.len(), 1);
    }
}

// ---------------------------------------------------------------------------
// Archives that look like a format must be it

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_markers_that_are_not_the_format_are_refused_not_served_as_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let (docker, _, _) = simple_docker_archive();
    let id = "a".repeat(64);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut t = Tar::new();
    t.file("real.json", b"[]")
        .symlink("manifest.json", "real.json");
    cases.push((
        "symlinked manifest.json",
        t.finish(),
        "manifest.json is not a regular file",
    ));
    let mut t = Tar::new();
    t.file("real.json", b"[]")
        .hardlink("manifest.json", "real.json");
    cases.push((
        "hard-linked manifest.json",
        t.finish(),
        "manifest.json is not a regular file",
    ));
    let mut t = Tar::new();
    t.dir("manifest.json").file("manifest.json/x", b"1");
    cases.push((
        "manifest.json folder",
        t.finish(),
        "manifest.json is not a regular file",
    ));
    let mut t = Tar::new();
    t.file("repositories", b"{}")
        .file(&format!("{id}/json"), b"{}");
    cases.push(("legacy docker", t.finish(), "legacy format"));
    let mut t = Tar::new();
    t.file(&format!("{id}/json"), b"{}")
        .file(&format!("{id}/layer.tar"), b"");
    cases.push((
        "legacy docker without repositories",
        t.finish(),
        "legacy format",
    ));
    let mut t = Tar::new();
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    cases.push(("oci-layout alone", t.finish(), "OCI layout: no index.json"));
    let mut t = Tar::new();
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("x.json", b"{}")
        .symlink("index.json", "x.json");
    cases.push((
        "symlinked index.json",
        t.finish(),
        "index.json is not a regular file",
    ));
    for (what, bytes, want) in cases {
        let a = open(tmp.path(), "t.tar", &bytes).await.unwrap();
        let err = index_default(&a).await.unwrap_err();
        assert!(matches!(err, ArchiveError::Format(_)), "{what}: {err:?}");
        assert!(err.to_string().contains(want), "{what}: {err}");
    }
    // A valid docker archive still is one.
    let a = open(tmp.path(), "d.tar", &docker).await.unwrap();
    assert_eq!(
        index_default(&a).await.unwrap().format,
        Some(Format::DockerArchive)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_compared_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    // `manifest.json/.` is not `manifest.json`; but some readers take it
    // for one, so it is refused rather than served as a rootfs.
    let mut t = Tar::new();
    t.raw(b"manifest.json/.", tar::EntryType::Regular, b"", b"[]");
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    assert!(a.toc.get("manifest.json").is_none());
    let err = index_default(&a).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Hostile(_)), "{err:?}");
    assert!(
        err.to_string().contains("manifest.json is stored as"),
        "{err}"
    );
    // A dot inside a name that is not a marker is left alone.
    let mut t = Tar::new();
    t.raw(b"etc/./hosts", tar::EntryType::Regular, b"", b"x");
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    assert_eq!(
        index_default(&a).await.unwrap().format,
        Some(Format::Rootfs)
    );
    // Two members normalizing to one name: refused.
    let mut t = Tar::new();
    t.raw(b"./a.json", tar::EntryType::Regular, b"", b"1").raw(
        b"a.json",
        tar::EntryType::Regular,
        b"",
        b"2",
    );
    let err = open(tmp.path(), "t.tar", &t.finish()).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Hostile(_)), "{err:?}");
    assert!(err.to_string().contains("a.json"), "{err}");
    // The same stored name twice is a later version (tar -r): accepted.
    let mut t = Tar::new();
    t.raw(b"./a.json", tar::EntryType::Regular, b"", b"1").raw(
        b"./a.json",
        tar::EntryType::Regular,
        b"",
        b"2",
    );
    let a = open(tmp.path(), "t.tar", &t.finish()).await.unwrap();
    assert_eq!(&a.read_member("a.json").await.unwrap()[..], b"2");
    // ... but not for a document a format reads: two manifest.json (some
    // readers take the first) are refused, and so are two configs.
    let (bytes, _, config) = simple_docker_archive();
    let mut twice = Tar::new();
    twice.file("manifest.json", b"[]");
    let mut twice = twice.finish();
    twice.truncate(twice.len() - 1024);
    twice.extend_from_slice(&bytes);
    let a = open(tmp.path(), "t.tar", &twice).await.unwrap();
    let err = index_default(&a).await.unwrap_err();
    assert!(matches!(err, ArchiveError::Hostile(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("two members are named manifest.json"),
        "{err}"
    );
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let mut twice = Tar::new();
    twice.file(&config_name, b"{}");
    let mut twice = twice.finish();
    twice.truncate(twice.len() - 1024);
    twice.extend_from_slice(&bytes);
    let a = open(tmp.path(), "t.tar", &twice).await.unwrap();
    let err = index_default(&a).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("two members are named {config_name:?}")),
        "{err}"
    );
}
