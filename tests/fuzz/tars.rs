//! The TOC walk and format detection (`Archive::open` + `archive::index`)
//! on generated archives, through an in-memory source with or without
//! range support, plain or gzip.
//!
//! Archives are built, not sprayed: a docker archive, an OCI layout, a
//! rootfs or a Concourse resource with consistent digests, then damaged at
//! the member level (dropped, duplicated, renamed to `../x`, `./x`, `x/.`,
//! turned into links, sizes and digests in documents changed, indexes made
//! to refer to themselves), at the header level (PAX records with bad
//! lengths or overflowing values, GNU long names, ustar prefixes, base-256
//! sizes, bad checksums, unknown type flags) and at the byte level (flips,
//! truncation). That reaches the format code far more often than random
//! bytes, which the walk refuses at the first header.
//!
//! Invariants of an archive that is accepted: every document served from
//! memory hashes to its digest, every in-memory blob too (with its size),
//! every blob read from a member names a member of the TOC, every digest an
//! image reaches is servable, no entry of a plain tar lies past its end,
//! and indexing the same bytes twice gives the same roots.
use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use cartorio::archive::{Archive, BlobAt, Container, Root, index};
use cartorio::image::{Digest, ImageConfig};
use cartorio::source::{ByteStream, Source, SourceError, Stat};
use futures_util::stream;

use crate::{Rng, pick, run, string_from};

// ------------------------------------------------------------------------------------------
// An in-memory source
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Mem {
    data: Bytes,
    ranges: bool,
    chunk: usize,
}

#[async_trait::async_trait]
impl Source for Mem {
    fn url(&self) -> &str {
        "mem://fuzz"
    }
    async fn stat(&self) -> Result<Stat, SourceError> {
        Ok(Stat {
            size: self.data.len() as u64,
            version: "v1".into(),
        })
    }
    async fn read_range(
        &self,
        offset: u64,
        len: u64,
        _: Option<&Stat>,
    ) -> Result<Bytes, SourceError> {
        if !self.ranges {
            return Err(SourceError::RangeUnsupported {
                url: self.url().into(),
            });
        }
        let size = self.data.len() as u64;
        let start = offset.min(size);
        let end = offset.saturating_add(len).min(size);
        Ok(self.data.slice(start as usize..end as usize))
    }
    async fn stream(
        &self,
        offset: u64,
        len: Option<u64>,
        _: Option<&Stat>,
    ) -> Result<ByteStream, SourceError> {
        let size = self.data.len() as u64;
        let start = offset.min(size) as usize;
        let end = len.map_or(size, |l| offset.saturating_add(l).min(size)) as usize;
        let data = self.data.slice(start..end);
        let chunk = self.chunk.max(1);
        let chunks: Vec<_> = (0..data.len())
            .step_by(chunk)
            .map(|i| Ok(data.slice(i..(i + chunk).min(data.len()))))
            .collect();
        Ok(Box::pin(stream::iter(chunks)))
    }
}

// ------------------------------------------------------------------------------------------
// Writing tar headers by hand (so every field can be wrong)
// ------------------------------------------------------------------------------------------

const BLOCK: usize = 512;

#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub typeflag: u8,
    pub data: Vec<u8>,
    pub link: String,
    /// PAX records to put in an `x` header before this entry.
    pub pax: Vec<Vec<u8>>,
    /// The size written in the header, when not the data's length.
    pub size_field: Option<u64>,
    /// How to store a name longer than 100 bytes.
    pub long: LongName,
    pub gnu_magic: bool,
    pub base256_size: bool,
    pub bad_checksum: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum LongName {
    Gnu,
    Pax,
    Prefix,
    Cut,
}

impl Member {
    pub fn file(name: &str, data: Vec<u8>) -> Member {
        Member {
            name: name.into(),
            typeflag: b'0',
            data,
            link: String::new(),
            pax: Vec::new(),
            size_field: None,
            long: LongName::Gnu,
            gnu_magic: false,
            base256_size: false,
            bad_checksum: false,
        }
    }
    fn dir(name: &str) -> Member {
        Member {
            typeflag: b'5',
            ..Member::file(name, Vec::new())
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}", v, width = field.len() - 1);
    let b = s.as_bytes();
    // Too large for the field: keep the low digits (a wrong value, as
    // some writers produce).
    let b = &b[b.len().saturating_sub(field.len() - 1)..];
    field[..b.len()].copy_from_slice(b);
    field[b.len()] = 0;
}

fn put(field: &mut [u8], s: &[u8]) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
}

fn raw_header(
    name: &[u8],
    prefix: &[u8],
    typeflag: u8,
    size: u64,
    link: &[u8],
    m: &Member,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put(&mut h[0..100], name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if m.base256_size {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    } else {
        octal(&mut h[124..136], size);
    }
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    put(&mut h[157..257], link);
    if m.gnu_magic {
        put(&mut h[257..265], b"ustar  \0");
    } else {
        put(&mut h[257..263], b"ustar\0");
        put(&mut h[263..265], b"00");
    }
    put(&mut h[345..500], prefix);
    h[148..156].copy_from_slice(b"        ");
    let mut sum: u64 = h.iter().map(|&b| b as u64).sum();
    if m.bad_checksum {
        sum += 1;
    }
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    h
}

fn padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    out.resize(out.len() + (BLOCK - data.len() % BLOCK) % BLOCK, 0);
}

/// A PAX record `"<len> key=value\n"` with the right length.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    [format!("{len}").into_bytes(), body].concat()
}

pub fn write_tar(members: &[Member], end_blocks: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let plain = Member::file("", Vec::new());
    for m in members {
        let mut pax = m.pax.clone();
        let name = m.name.as_bytes();
        let (mut hname, mut prefix) = (name.to_vec(), Vec::new());
        if name.len() > 100 {
            match m.long {
                LongName::Gnu => {
                    let mut data = name.to_vec();
                    data.push(0);
                    out.extend_from_slice(&raw_header(
                        b"././@LongLink",
                        b"",
                        b'L',
                        data.len() as u64,
                        b"",
                        &plain,
                    ));
                    padded(&mut out, &data);
                    hname.truncate(100);
                }
                LongName::Pax => {
                    pax.push(pax_record("path", name));
                    hname.truncate(100);
                }
                LongName::Prefix => {
                    let split = name[..name.len().min(156)]
                        .iter()
                        .rposition(|&c| c == b'/')
                        .unwrap_or(0);
                    prefix = name[..split].to_vec();
                    hname = name[(split + 1).min(name.len())..].to_vec();
                }
                LongName::Cut => hname.truncate(100),
            }
        }
        if !pax.is_empty() {
            let data = pax.concat();
            out.extend_from_slice(&raw_header(
                b"PaxHeaders/x",
                b"",
                b'x',
                data.len() as u64,
                b"",
                &plain,
            ));
            padded(&mut out, &data);
        }
        let size = m.size_field.unwrap_or(m.data.len() as u64);
        out.extend_from_slice(&raw_header(
            &hname,
            &prefix,
            m.typeflag,
            size,
            m.link.as_bytes(),
            m,
        ));
        padded(&mut out, &m.data);
    }
    out.resize(out.len() + end_blocks * BLOCK, 0);
    out
}

// ------------------------------------------------------------------------------------------
// Images, then damage
// ------------------------------------------------------------------------------------------

fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap_or_default()
}

fn sha(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

fn small_layer(rng: &mut Rng) -> Vec<u8> {
    let mut files = Vec::new();
    for i in 0..rng.usize(0..4) {
        let len = rng.usize(0..600);
        files.push(Member::file(
            &format!("etc/f{i}"),
            string_from(rng, b"abc\n", len).into_bytes(),
        ));
    }
    if rng.bool() {
        files.push(Member::dir("etc/"));
    }
    write_tar(&files, 2)
}

fn ref_name(rng: &mut Rng) -> String {
    pick(
        rng,
        &[
            "docker.io/fixture/app:v1",
            "app:1",
            "app",
            "UP:per",
            "a/b/c:latest",
            "x:",
            ":y",
            "docker.io/library/busybox:1.36",
            "v1",
            "../x:1",
            "registry:5000/app:2",
        ],
    )
    .into()
}

fn docker_image(rng: &mut Rng) -> Vec<Member> {
    let layers: Vec<Vec<u8>> = (0..rng.usize(0..4)).map(|_| small_layer(rng)).collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let config = json(serde_json::json!({
        "architecture": pick(rng, &["amd64", "arm64", ""]),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }));
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let mut members = Vec::new();
    let mut layer_names = Vec::new();
    for (i, l) in layers.into_iter().enumerate() {
        let name = if rng.bool() {
            format!("{}.tar", Digest::of(&l).hex())
        } else {
            format!("layer{i}/layer.tar")
        };
        layer_names.push(name.clone());
        members.push(Member::file(&name, l));
    }
    members.push(Member::file(&config_name, config));
    let tags: Vec<String> = (0..rng.usize(0..3)).map(|_| ref_name(rng)).collect();
    let mut entry =
        serde_json::json!({"Config": config_name, "RepoTags": tags, "Layers": layer_names});
    if rng.u8(..6) == 0 {
        entry["Layers"] = serde_json::json!([pick(
            rng,
            &["missing.tar", "../evil", "", "manifest.json", "layer0"]
        )]);
    }
    if rng.u8(..8) == 0 {
        entry["Config"] =
            serde_json::json!(pick(rng, &["missing.json", "manifest.json", "/etc/passwd"]));
    }
    let n = rng.usize(1..3);
    members.push(Member::file(
        "manifest.json",
        json(serde_json::Value::Array(vec![entry; n])),
    ));
    if rng.bool() {
        members.push(Member::file("repositories", b"{}".to_vec()));
    }
    members
}

fn oci_image(rng: &mut Rng) -> Vec<Member> {
    let mut members = vec![Member::file(
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let blob = |members: &mut Vec<Member>, data: Vec<u8>| {
        let d = Digest::of(&data);
        members.push(Member::file(
            &format!("blobs/sha256/{}", d.hex()),
            data.clone(),
        ));
        (d.to_string(), data.len() as u64)
    };
    let mut manifests = Vec::new();
    for _ in 0..rng.usize(1..3) {
        let layers: Vec<serde_json::Value> = (0..rng.usize(0..3))
            .map(|_| {
                let l = small_layer(rng);
                let (d, s) = blob(&mut members, l);
                serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})
            })
            .collect();
        let config = json(
            serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}),
        );
        let (cd, cs) = blob(&mut members, config);
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layers,
        });
        if rng.u8(..5) == 0 {
            m["subject"] = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(b"x"), "size": 1});
        }
        if rng.u8(..8) == 0 {
            m["layers"] = serde_json::json!([{"mediaType": "x", "digest": pick(rng, &["sha256:00", "md5:1", ""]), "size": -1}]);
        }
        let (md, ms) = blob(&mut members, json(m));
        let mut desc = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
            "platform": {"os": "linux", "architecture": pick(rng, &["amd64", "arm64"])}});
        if rng.bool() {
            desc["annotations"] =
                serde_json::json!({"org.opencontainers.image.ref.name": ref_name(rng)});
        }
        match rng.u8(..10) {
            0 => desc["size"] = serde_json::json!(ms + 1),
            1 => desc["digest"] = serde_json::json!(sha(b"nothing")),
            2 => desc["size"] = serde_json::json!(u64::MAX),
            _ => {}
        }
        manifests.push(desc);
    }
    // A nested index, sometimes listed many times or naming itself.
    if rng.u8(..3) == 0 {
        let fan = if rng.u8(..4) == 0 {
            rng.usize(1..200)
        } else {
            1
        };
        let child = json(
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests.clone()}),
        );
        let (d, s) = blob(&mut members, child);
        let desc = serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s});
        manifests = vec![desc; fan];
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    members.push(Member::file("index.json", json(index)));
    if rng.u8(..6) == 0 {
        // docker ≥ 25 writes both
        members.push(Member::file("manifest.json", b"[]".to_vec()));
    }
    members
}

fn rootfs_image(rng: &mut Rng, concourse: bool) -> Vec<Member> {
    let mut members = Vec::new();
    let root = if concourse { "rootfs/" } else { "" };
    if concourse {
        members.push(Member::file(
            "metadata.json",
            json(serde_json::json!({"env": ["A=b"], "user": pick(rng, &["root", "", "1000"])})),
        ));
    }
    for i in 0..rng.usize(0..6) {
        match rng.u8(..5) {
            0 => members.push(Member::dir(&format!("{root}d{i}/"))),
            1 => members.push(Member {
                typeflag: b'2',
                link: pick(rng, &["../../etc/passwd", "/bin/sh", "f0", ""]).into(),
                ..Member::file(&format!("{root}l{i}"), Vec::new())
            }),
            2 => members.push(Member {
                typeflag: b'1',
                link: format!("{root}f0"),
                ..Member::file(&format!("{root}h{i}"), Vec::new())
            }),
            _ => {
                let len = rng.usize(0..2000);
                members.push(Member::file(
                    &format!("{root}f{i}"),
                    string_from(rng, b"xyz", len).into_bytes(),
                ));
            }
        }
    }
    if concourse && rng.u8(..4) == 0 {
        members.push(Member::file("rootfs.tgz", gzip(&small_layer(rng))));
    }
    members
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// Damage at the member level: names, kinds, sizes, PAX records.
fn damage(rng: &mut Rng, members: &mut Vec<Member>) {
    for _ in 0..rng.usize(0..4) {
        if members.is_empty() {
            return;
        }
        let i = rng.usize(..members.len());
        match rng.u8(..16) {
            0 => {
                members.remove(i);
            }
            1 => {
                let m = members[i].clone();
                members.push(m);
            }
            2 => {
                let prefix = pick(rng, &["./", "/", "../", "a/../", "./././", "x/../../"]);
                members[i].name = format!("{prefix}{}", members[i].name);
            }
            3 => {
                let suffix = pick(rng, &["/.", "/", "//", "/..", "\0x", " "]);
                members[i].name = format!("{}{suffix}", members[i].name);
            }
            4 => {
                let j = rng.usize(..members.len());
                members[i].typeflag = pick(rng, &[&b'1', &b'2']).to_owned();
                members[i].link = members[j].name.clone();
                members[i].data.clear();
            }
            5 => {
                members[i].typeflag = pick(
                    rng,
                    &[
                        &b'3', &b'4', &b'6', &b'7', &b'S', &b'g', &b'Z', &0u8, &b'5', &b'K', &b'L',
                    ],
                )
                .to_owned();
            }
            6 => {
                let len = members[i].data.len() as u64;
                members[i].size_field = Some(match rng.u8(..5) {
                    0 => len + rng.u64(1..2000),
                    1 => len.saturating_sub(rng.u64(1..100)),
                    2 => u64::MAX >> rng.u32(0..30),
                    3 => 0o77777777777,
                    _ => rng.u64(..1 << 40),
                });
            }
            7 => {
                let len = members[i].data.len();
                let (key, value): (&str, Vec<u8>) = match rng.u8(..8) {
                    0 => (
                        "size",
                        (len as u64 + rng.u64(1..5000)).to_string().into_bytes(),
                    ),
                    1 => ("size", b"999999999999999999999999999999".to_vec()),
                    2 => ("size", b"-1".to_vec()),
                    3 => (
                        "path",
                        pick(rng, &["../evil", "manifest.json", "index.json", "", "a\0b"])
                            .as_bytes()
                            .to_vec(),
                    ),
                    4 => ("linkpath", b"/etc/shadow".to_vec()),
                    5 => ("GNU.sparse.size", b"100".to_vec()),
                    6 => ("path", vec![0xff, 0xfe]),
                    _ => ("comment", vec![b'x'; rng.usize(0..3000)]),
                };
                members[i].pax.push(pax_record(key, &value));
            }
            8 => {
                // malformed PAX records: wrong lengths, no newline, no '='
                let rec: Vec<u8> = pick(
                    rng,
                    &[
                        b"99999 path=x\n".as_slice(),
                        b"5 path=x\n",
                        b"12 path=x",
                        b"0 \n",
                        b"abc path=x\n",
                        b"8 noequal\n",
                        b"18446744073709551617 size=1\n",
                        b"\n\n\n",
                    ],
                )
                .to_vec();
                members[i].pax.push(rec);
            }
            9 => {
                let len = rng.usize(90..300);
                let extra = string_from(rng, b"abcdefgh/", len);
                members[i].name = format!("{extra}/{}", members[i].name);
                members[i].long = *pick(
                    rng,
                    &[
                        &LongName::Gnu,
                        &LongName::Pax,
                        &LongName::Prefix,
                        &LongName::Cut,
                    ],
                );
            }
            10 => members[i].gnu_magic = true,
            11 => members[i].base256_size = true,
            12 => members[i].bad_checksum = rng.u8(..4) == 0,
            13 => {
                // a document with its bytes changed
                let at = rng.usize(..members[i].data.len().max(1));
                if let Some(b) = members[i].data.get_mut(at) {
                    *b = pick(rng, &[&b'"', &b'}', &b'0', &b'x', &b'\\']).to_owned();
                }
            }
            14 => {
                let n = members[i].data.len();
                members[i].data.truncate(rng.usize(..n.max(1)));
            }
            _ => {
                let j = rng.usize(..members.len());
                members.swap(i, j);
            }
        }
    }
}

/// A generated archive and how to serve it.
pub struct Generated {
    pub bytes: Vec<u8>,
    pub ranges: bool,
    pub chunk: usize,
}

pub fn generate(rng: &mut Rng) -> Generated {
    let mut members = match rng.u8(..10) {
        0..=2 => docker_image(rng),
        3..=5 => oci_image(rng),
        6..=7 => rootfs_image(rng, false),
        8 => rootfs_image(rng, true),
        _ => {
            // a mix: markers of several formats in one archive
            let mut m = docker_image(rng);
            m.extend(oci_image(rng));
            m
        }
    };
    if rng.u8(..4) != 0 {
        damage(rng, &mut members);
    }
    let end = pick(rng, &[&2usize, &2, &2, &0, &1, &5]).to_owned();
    let mut bytes = write_tar(&members, end);
    match rng.u8(..10) {
        0 if !bytes.is_empty() => {
            let n = bytes.len();
            bytes.truncate(rng.usize(..n));
        }
        1 if !bytes.is_empty() => {
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(..bytes.len());
                bytes[i] = rng.u8(..);
            }
        }
        2 => bytes.extend((0..rng.usize(1..2000)).map(|_| rng.u8(..))),
        _ => {}
    }
    if rng.u8(..8) == 0 {
        bytes = gzip(&bytes);
        if rng.u8(..4) == 0 && !bytes.is_empty() {
            let n = bytes.len();
            bytes.truncate(rng.usize(..n));
        }
    }
    Generated {
        bytes,
        ranges: rng.u8(..6) != 0,
        chunk: pick(rng, &[&512usize, &4096, &65536, &7, &1000]).to_owned(),
    }
}

/// Indexes `g`; Ok(None) when it is refused, Ok(Some(roots)) when served.
pub async fn index_once(g: &Generated) -> Result<Option<Vec<Root>>, String> {
    let src: Arc<dyn Source> = Arc::new(Mem {
        data: Bytes::from(g.bytes.clone()),
        ranges: g.ranges,
        chunk: g.chunk,
    });
    let archive = match Archive::open(src).await {
        Ok(a) => Arc::new(a),
        Err(e) if e.to_string().is_empty() => return Err("empty error message".into()),
        Err(_) => return Ok(None),
    };
    if let Container::Tar(_) = archive.container {
        for e in archive.toc.entries() {
            if e.offset
                .checked_add(e.size)
                .is_none_or(|end| end > archive.stat.size)
            {
                return Err(format!(
                    "entry {:?} ends past the archive ({} bytes)",
                    e, archive.stat.size
                ));
            }
        }
    }
    let ix = match index(&archive, &ImageConfig::default()).await {
        Ok(ix) => ix,
        Err(e) if e.to_string().is_empty() => return Err("empty error message".into()),
        Err(_) => return Ok(None),
    };
    for (d, doc) in &ix.docs {
        if Digest::of(&doc.bytes) != *d {
            return Err(format!("document {d} does not hash to its digest"));
        }
    }
    for (d, b) in &ix.blobs {
        match &b.at {
            BlobAt::Memory(bytes) => {
                if Digest::of(bytes) != *d || bytes.len() as u64 != b.size {
                    return Err(format!("in-memory blob {d} does not match its digest/size"));
                }
            }
            BlobAt::Member(n) => {
                if archive.toc.get(n).is_none() {
                    return Err(format!("blob {d} is member {n:?}, which the TOC lacks"));
                }
            }
            BlobAt::Whole | BlobAt::Repack(_) => {}
        }
    }
    for img in &ix.images {
        for d in img.root.digests() {
            if !ix.docs.contains_key(&d) {
                return Err(format!("root {d} is not a served document"));
            }
        }
        for d in &img.digests {
            if !ix.docs.contains_key(d) && !ix.blobs.contains_key(d) {
                return Err(format!(
                    "image reaches {d}, which is neither a document nor a blob"
                ));
            }
        }
    }
    Ok(Some(ix.images.iter().map(|i| i.root.clone()).collect()))
}

#[test]
fn tars() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut accepted = 0u64;
    run("tars", 300, |rng| {
        let g = generate(rng);
        let first = rt.block_on(index_once(&g))?;
        if let Some(roots) = &first {
            accepted += 1;
            // determinism, on a sample (it doubles the cost)
            if rng.u8(..8) == 0 {
                let again = rt.block_on(index_once(&g))?;
                if again.as_ref() != Some(roots) {
                    return Err(format!("indexed twice: {roots:?} then {again:?}"));
                }
            }
        }
        Ok(())
    });
    eprintln!(
        "FIGURE fuzz tars: {accepted} generated archives were accepted and served, the rest refused"
    );
}
