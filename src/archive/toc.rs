//! The table of contents of a tar: where every entry's header and data
//! are, found by reading headers only.
use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;

use super::ArchiveError;
use crate::source::Source;

/// Files whose bytes are kept while the TOC is built: the JSON documents
/// and small blobs that formats read to build images. Bounded so a hostile
/// archive of many small files cannot make the index large.
const CAPTURE_MAX_FILE: u64 = 1024 * 1024;
const CAPTURE_MAX_TOTAL: u64 = 64 * 1024 * 1024;

/// Size of each range read while walking headers: large enough that the
/// small JSON files following a header usually come in the same read.
const WINDOW: u64 = 64 * 1024;

/// What kind of thing an entry is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    /// Target as written in the archive.
    Symlink(String),
    /// Target: another entry's name.
    Hardlink(String),
    Other,
}

/// One entry of a tar (or one file of a directory layout).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Normalized: no leading `./` or `/`, no trailing `/`.
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    /// Offset of the data in the (decompressed) tar stream.
    pub offset: u64,
    /// The first bytes of the data, when the walk read them anyway (a
    /// streaming pass), so layers can be sniffed without another pass.
    pub head: Option<[u8; 8]>,
    /// Ownership, permissions and time, for re-packing a subtree as a layer.
    pub meta: Meta,
}

/// The metadata of an entry that a re-packed layer keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
}

/// Names and places of every entry, plus the bytes of the small files that
/// formats need. A saved TOC holds only its entries: the name index is
/// rebuilt on load, so a damaged file cannot make it point anywhere.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "SavedToc")]
pub struct Toc {
    entries: Vec<Entry>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
    /// Only needed while formats are read; not kept in a saved index.
    #[serde(skip)]
    captured: HashMap<String, Bytes>,
    /// Names stored more than once (not as folders): a later one replaces
    /// the earlier as extraction does, but a document a format reads must
    /// not be one of them.
    #[serde(skip)]
    repeated: std::collections::HashSet<String>,
}

/// A TOC as read back from a saved index.
#[derive(serde::Deserialize)]
struct SavedToc {
    entries: Vec<Entry>,
}

impl From<SavedToc> for Toc {
    fn from(saved: SavedToc) -> Toc {
        let mut toc = Toc::default();
        for e in saved.entries {
            toc.push(e);
        }
        toc
    }
}

impl Toc {
    pub(crate) fn push(&mut self, entry: Entry) {
        // A later entry of the same name replaces an earlier one, as when
        // the tar is extracted.
        let before = self.by_name.insert(entry.name.clone(), self.entries.len());
        if entry.kind != EntryKind::Dir
            && before
                .and_then(|i| self.entries.get(i))
                .is_some_and(|e| e.kind != EntryKind::Dir)
        {
            self.repeated.insert(entry.name.clone());
        }
        self.entries.push(entry);
    }

    pub(crate) fn capture(&mut self, name: String, data: Bytes) {
        self.captured.insert(name, data);
    }

    /// Keeps only the named entries and drops captured bytes: once the
    /// images are known, serving needs just the entries blobs live in, and
    /// a rootfs of a million files should not stay in memory (or in the
    /// saved index) for that.
    pub fn retain(&mut self, keep: &std::collections::HashSet<String>) {
        self.captured = HashMap::new();
        let entries = std::mem::take(&mut self.entries);
        self.by_name.clear();
        for e in entries {
            if !keep.contains(&e.name) {
                continue;
            }
            // The entry extraction would leave is the last one of a name.
            match self
                .by_name
                .get(&e.name)
                .and_then(|&i| self.entries.get_mut(i))
            {
                Some(slot) => *slot = e,
                None => self.push(e),
            }
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry named `name`, following symlinks and hardlinks (at most
    /// a few hops, so a link loop is an error, not a hang).
    pub fn get(&self, name: &str) -> Option<&Entry> {
        let mut name = normalize(name).ok()?;
        for _ in 0..8 {
            let e = self.entries.get(*self.by_name.get(&name)?)?;
            match &e.kind {
                EntryKind::Hardlink(t) => name = normalize(t).ok()?,
                EntryKind::Symlink(t) => {
                    let joined = if t.starts_with('/') {
                        t.clone()
                    } else {
                        match name.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{t}"),
                            None => t.clone(),
                        }
                    };
                    name = resolve_dots(&joined)?;
                }
                _ => return Some(e),
            }
        }
        None
    }

    /// The entry stored under exactly `name` (normalized), links not
    /// followed: what decides an archive's format.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        let name = normalize(name).ok()?;
        self.entries.get(*self.by_name.get(&name)?)
    }

    /// Whether more than one file, link or device is stored under `name`.
    pub fn repeated(&self, name: &str) -> bool {
        normalize(name).is_ok_and(|n| self.repeated.contains(&n))
    }

    /// The bytes of a small file captured while walking, if it was.
    pub fn captured(&self, name: &str) -> Option<&Bytes> {
        let e = self.get(name)?;
        self.captured.get(&e.name)
    }

    pub fn contains_prefix(&self, prefix: &str) -> bool {
        self.entries.iter().any(|e| e.name.starts_with(prefix))
    }
}

/// Normalizes an entry name: leading `./` and `/` and trailing `/` are
/// dropped, nothing else — names are otherwise compared exactly as stored,
/// so `manifest.json/.` is not `manifest.json`. A name that climbs out of
/// the archive (`..`) is refused: no format needs one and it is the classic
/// traversal attack.
pub fn normalize(name: &str) -> Result<String, ArchiveError> {
    if name.split('/').any(|c| c == "..") {
        return Err(ArchiveError::Hostile(format!(
            "entry name {name:?} escapes the archive"
        )));
    }
    let mut rest = name;
    loop {
        let next = rest.trim_start_matches('/');
        let next = next.strip_prefix("./").unwrap_or(next);
        if next == rest {
            break;
        }
        rest = next;
    }
    let rest = rest.trim_end_matches('/');
    Ok(if rest == "." {
        String::new()
    } else {
        rest.to_string()
    })
}

/// Resolves `..` in a symlink target joined to its directory; None when it
/// climbs above the root.
fn resolve_dots(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Where a streaming pass puts the blobs it passes, so a compressed (or
/// range-less) archive is read once, not once per blob. The cache names
/// each file by the digest the walk computed: content-addressed, it needs
/// no idea which format the archive turns out to be.
pub trait Spill: Send + Sync {
    /// A writer for an entry of `size` bytes; None to skip it.
    fn create(&self, size: u64) -> Option<Box<dyn SpillFile>>;
}

/// One entry being spilled.
pub trait SpillFile: io::Write + Send {
    /// Keeps what was written as the blob `digest`.
    fn commit(self: Box<Self>, digest: crate::image::Digest);
    /// Drops what was written.
    fn abort(self: Box<Self>);
}

/// Entries worth spilling: what formats serve as blobs (layers, OCI blobs).
fn spills(name: &str, size: u64) -> bool {
    size >= 1024
        && (name.starts_with("blobs/")
            || [".tar", ".tar.gz", ".tgz", ".tar.zst"]
                .iter()
                .any(|s| name.ends_with(s)))
}

/// Copies an entry to a spill file while hashing it; returns its first
/// bytes. A failing spill file is dropped, the walk goes on.
fn spill_entry(
    entry: &mut impl Read,
    out: Box<dyn SpillFile>,
    size: u64,
    raw_name: &str,
) -> Result<[u8; 8], ArchiveError> {
    let mut out = Some(out);
    let mut hasher = crate::image::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = [0u8; 8];
    let mut seen = 0u64;
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| ArchiveError::Corrupt(format!("entry {raw_name:?}: {e}")))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(rest) = usize::try_from(seen).ok().and_then(|s| head.get_mut(s..)) {
            rest.iter_mut().zip(chunk).for_each(|(h, b)| *h = *b);
        }
        seen += n as u64;
        hasher.update(chunk);
        if let Some(o) = out.as_mut()
            && o.write_all(chunk).is_err()
            && let Some(o) = out.take()
        {
            o.abort();
        }
    }
    if seen != size {
        if let Some(o) = out {
            o.abort();
        }
        return Err(ArchiveError::Corrupt(format!(
            "entry {raw_name:?} is truncated"
        )));
    }
    if let Some(o) = out {
        o.commit(hasher.finish());
    }
    Ok(head)
}

/// Whether a file's bytes are worth keeping during the walk.
fn wants_capture(name: &str, size: u64) -> bool {
    if size > CAPTURE_MAX_FILE {
        return false;
    }
    let top = !name.contains('/');
    (top && (name.ends_with(".json") || name == "oci-layout" || name == "repositories"))
        || name.starts_with("blobs/")
        || (name.matches('/').count() == 1 && name.ends_with(".json"))
}

/// Walks tar headers from `reader`, validating each, capturing small files.
/// `total` is the size of the tar stream when known, to catch entries that
/// claim to run past its end.
pub(crate) fn walk<R: Read>(
    entries: tar::Entries<'_, R>,
    total: Option<u64>,
    streaming: bool,
    spill: Option<&dyn Spill>,
    budget: &super::budget::Budget,
) -> Result<Toc, ArchiveError> {
    let mut toc = Toc::default();
    let mut captured_total = 0u64;
    // A hash of each entry's raw name (by entry index): two entries whose
    // raw names differ but normalize to one name (`./a` and `a`) are
    // refused, since tools disagree on which one a reader sees.
    let mut raw_names: Vec<u64> = Vec::new();
    let raw_hash = |raw: &str| {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(raw.trim_end_matches('/'))
    };
    for entry in entries {
        let mut entry = entry.map_err(|e| match super::guard::refusal(e) {
            Ok(refused) => refused,
            Err(e) => ArchiveError::Corrupt(format!("bad tar header: {e}")),
        })?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = normalize(&raw_name)?;
        let size = entry.size();
        let offset = entry.raw_file_position();
        let header_size = entry.header().entry_size().map_err(|e| {
            ArchiveError::Corrupt(format!("entry {raw_name:?}: bad size field: {e}"))
        })?;
        // The tar reader lets a PAX size override the header's; a header
        // that says otherwise is how parser-confusion attacks smuggle
        // entries, so it is refused rather than guessed at.
        if header_size != size && header_size != 0 && header_size != 0o77777777777 {
            return Err(ArchiveError::Hostile(format!(
                "entry {raw_name:?}: PAX size {size} disagrees with header size {header_size}"
            )));
        }
        if let Some(total) = total
            && offset.checked_add(size).is_none_or(|end| end > total)
        {
            return Err(ArchiveError::Corrupt(format!(
                "entry {raw_name:?} ({size} bytes at {offset}) runs past the end of the archive ({total} bytes): truncated?"
            )));
        }
        let et = entry.header().entry_type();
        let link = || {
            entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let kind = if et.is_file() || et == tar::EntryType::Continuous {
            EntryKind::File
        } else if et.is_dir() {
            EntryKind::Dir
        } else if et.is_symlink() {
            EntryKind::Symlink(link())
        } else if et.is_hard_link() {
            EntryKind::Hardlink(link())
        } else {
            EntryKind::Other
        };
        if kind != EntryKind::Dir
            && let Some(&i) = toc.by_name.get(&name)
            && toc.entries.get(i).is_some_and(|e| e.kind != EntryKind::Dir)
            && raw_names.get(i) != Some(&raw_hash(&raw_name))
        {
            return Err(ArchiveError::Hostile(format!(
                "two entries are named {name:?} once normalized ({raw_name:?} is one)"
            )));
        }
        let h = entry.header();
        let meta = Meta {
            mode: h.mode().unwrap_or(0o644),
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
            mtime: h.mtime().unwrap_or(0),
        };
        // A later entry of the same name replaces an earlier one: so do
        // its bytes, captured or not.
        toc.captured.remove(&name);
        let mut head = None;
        if kind == EntryKind::File
            && wants_capture(&name, size)
            && captured_total + size <= CAPTURE_MAX_TOTAL
        {
            let mut buf = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut buf)
                .map_err(|e| ArchiveError::Corrupt(format!("entry {raw_name:?}: {e}")))?;
            if buf.len() as u64 != size {
                return Err(ArchiveError::Corrupt(format!(
                    "entry {raw_name:?} is truncated"
                )));
            }
            captured_total += size;
            toc.capture(name.clone(), Bytes::from(buf));
        } else if streaming && kind == EntryKind::File && size >= 8 {
            match spill
                .filter(|_| spills(&name, size))
                .and_then(|s| s.create(size))
            {
                Some(out) => head = Some(spill_entry(&mut entry, out, size, &raw_name)?),
                None => {
                    let mut h = [0u8; 8];
                    entry
                        .read_exact(&mut h)
                        .map_err(|e| ArchiveError::Corrupt(format!("entry {raw_name:?}: {e}")))?;
                    head = Some(h);
                }
            }
        }
        // Real images stay far below the limit (a big rootfs has ~100k
        // files); it keeps tiny entries from exhausting memory.
        budget.charge(super::budget::Limit::Entries, 1)?;
        if !name.is_empty() {
            raw_names.push(raw_hash(&raw_name));
            toc.push(Entry {
                name,
                kind,
                size,
                offset,
                head,
                meta,
            });
        }
    }
    Ok(toc)
}

/// A blocking `Read + Seek` over a [`Source`], reading windows with range
/// reads, so the tar reader can skip over entry data without fetching it.
/// Must run on a blocking thread (it waits on the async source).
pub(crate) struct RangeReader {
    source: Arc<dyn Source>,
    rt: tokio::runtime::Handle,
    /// Every read is pinned to this version of the object.
    pin: crate::source::Stat,
    size: u64,
    pos: u64,
    window: Bytes,
    window_start: u64,
    /// Bytes fetched from the source, for `inspect` and tests.
    pub fetched: u64,
    /// Most bytes to fetch; past it reads fail and `exhausted` is set.
    budget: u64,
    pub exhausted: bool,
}

impl RangeReader {
    pub fn new(
        source: Arc<dyn Source>,
        rt: tokio::runtime::Handle,
        pin: crate::source::Stat,
        budget: u64,
    ) -> RangeReader {
        RangeReader {
            source,
            rt,
            size: pin.size,
            pin,
            pos: 0,
            window: Bytes::new(),
            window_start: 0,
            fetched: 0,
            budget,
            exhausted: false,
        }
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let in_window = self.pos >= self.window_start
            && self.pos < self.window_start + self.window.len() as u64;
        if !in_window {
            let len = WINDOW.max(buf.len() as u64).min(self.size - self.pos);
            if self.fetched + len > self.budget {
                self.exhausted = true;
                return Err(io::Error::other("header walk read budget exhausted"));
            }
            let source = self.source.clone();
            let pos = self.pos;
            let pin = &self.pin;
            let bytes = self
                .rt
                .block_on(async move { source.read_range(pos, len, Some(pin)).await })
                .map_err(io::Error::other)?;
            if bytes.is_empty() {
                return Ok(0);
            }
            self.fetched += bytes.len() as u64;
            self.window = bytes;
            self.window_start = self.pos;
        }
        let start = (self.pos - self.window_start) as usize;
        let avail = self.window.get(start..).unwrap_or_default();
        let n = buf.len().min(avail.len());
        match (buf.get_mut(..n), avail.get(..n)) {
            (Some(to), Some(from)) if n > 0 => to.copy_from_slice(from),
            _ => return Err(io::Error::other("range reader out of step")),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
        };
        self.pos =
            new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}
