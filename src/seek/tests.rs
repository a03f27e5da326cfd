//! Random access at many offsets equals the bytes of a full decompression,
//! for streams written by the real `gzip` and `zstd` CLIs.
use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use futures_util::StreamExt;

use super::*;

/// Small spans so a few MiB of data give many points.
const T_SPAN: u64 = 128 * 1024;
const T_MIN: u64 = 64 * 1024;

/// Text-like runs (compressible, with long back references) mixed with
/// pseudo-random bytes (incompressible: stored blocks in gzip).
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            for _ in 0..(x % 4096) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                out.push(x as u8);
            }
        } else {
            let line = format!(
                "line {} of some tar entry, path/to/file-{}\n",
                x % 977,
                x % 13
            );
            for _ in 0..(x % 64) {
                out.extend_from_slice(line.as_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

fn cli(prog: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{prog} is needed for these tests: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("join").expect("write");
    assert!(out.status.success(), "{prog} {args:?} failed");
    out.stdout
}

/// A pass over `z` fed in `step`-byte pieces: the output and the points.
fn pass(z: &[u8], codec: Codec, step: usize) -> Result<(Vec<u8>, Points), SeekError> {
    let mut d = PassDecoder::with_spans(codec, T_SPAN, T_MIN)?;
    let mut out = Vec::new();
    let mut emit = |b: Bytes| {
        assert!(!b.is_empty() && b.len() <= PASS_CHUNK);
        out.extend_from_slice(&b);
        Ok(())
    };
    for c in z.chunks(step) {
        d.feed(c, &mut emit)?;
    }
    let points = d.finish(&mut emit)?;
    Ok((out, points))
}

fn index(z: &[u8], codec: Codec) -> (Vec<u8>, Points) {
    let (out, points) = pass(z, codec, 65_536).expect("full decompression");
    // The points do not depend on how the input was cut.
    let (out2, points2) = pass(z, codec, 7919).expect("full decompression");
    assert!(out2 == out);
    assert_eq!(points2, points);
    (out, points)
}

async fn read_at(z: &[u8], points: &Points, off: u64, len: u64) -> Result<Vec<u8>, io::Error> {
    let p = points.nearest(off);
    let input = futures_util::stream::iter(
        z[p.read_from() as usize..]
            .chunks(7919)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let mut s = decode_stream(points.codec(), &p, input, off - p.out, len)?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// Offsets on and around every point and spread over the stream.
fn offsets(points: &Points, len: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..40).map(|i| i * len / 40).collect();
    for p in points.points() {
        v.extend([p.out.saturating_sub(1), p.out, p.out + 1]);
    }
    v.push(len - 1);
    v.retain(|&o| o < len);
    v
}

async fn check_random_access(z: &[u8], plain: &[u8], points: &Points) {
    // Every point is usable through the binary form too.
    let points = &Points::decode(&points.encode(), z.len() as u64).expect("roundtrip");
    for off in offsets(points, plain.len() as u64) {
        let len = 100_000.min(plain.len() as u64 - off);
        let got = read_at(z, points, off, len).await.expect("read");
        assert!(
            got == plain[off as usize..(off + len) as usize],
            "bytes at {off} differ"
        );
    }
}

#[tokio::test]
async fn gzip_levels_random_access() {
    let plain = data(3 << 20, 7);
    for level in ["-1", "-9"] {
        let z = cli("gzip", &[level, "-c", "-n"], &plain);
        let (full, points) = index(&z, Codec::Gzip);
        assert!(full == plain, "gzip {level}: full decompression differs");
        let deflate = points
            .points()
            .iter()
            .filter(|p| matches!(p.kind, Kind::Deflate { .. }))
            .count();
        assert!(deflate >= 8, "gzip {level}: only {deflate} points");
        check_random_access(&z, &plain, &points).await;
    }
}

#[tokio::test]
async fn gzip_multi_member_random_access() {
    let plain = data(2 << 20, 11);
    let (a, b) = plain.split_at(700_000);
    let (b, c) = b.split_at(900_000);
    let mut z = cli("gzip", &["-6", "-c"], a);
    z.extend(cli("gzip", &["-1", "-c"], b));
    z.extend(cli("gzip", &["-9", "-c"], c));
    let (full, points) = index(&z, Codec::Gzip);
    assert!(full == plain);
    let members: Vec<u64> = points
        .points()
        .iter()
        .filter(|p| p.kind == Kind::Member)
        .map(|p| p.out)
        .collect();
    assert_eq!(members, vec![700_000, 1_600_000]);
    check_random_access(&z, &plain, &points).await;
}

#[test]
fn gzip_trailing_zeros_ok_garbage_and_truncation_refused() {
    let plain = data(300_000, 3);
    let z = cli("gzip", &["-c"], &plain);
    let mut zeros = z.clone();
    zeros.extend([0u8; 1024]);
    assert!(index(&zeros, Codec::Gzip).0 == plain);

    let mut garbage = z.clone();
    garbage.extend(b"not gzip");
    let err = pass(&garbage, Codec::Gzip, 4096).expect_err("garbage");
    assert!(err.to_string().contains("not a gzip member"), "{err}");

    let err = pass(&z[..z.len() - 20], Codec::Gzip, 4096).expect_err("truncated");
    assert!(err.to_string().contains("ended in the middle"), "{err}");
}

/// A zstd frame without a checksum ends with its last block: all its
/// input can be taken in while output is still held, and the end of the
/// input is still a clean end (not "truncated").
#[test]
fn zstd_ends_cleanly_when_the_last_block_is_still_flushing() {
    let plain = data(3 << 20, 29);
    let z = cli("zstd", &["-1", "--no-check", "-c", "-q"], &plain);
    for step in [z.len(), 1 << 20, 4096] {
        let (out, _) = pass(&z, Codec::Zstd, step).expect("full decompression");
        assert!(out == plain, "fed in {step}-byte pieces");
    }
    let err = pass(&z[..z.len() - 3], Codec::Zstd, 4096).expect_err("truncated");
    assert!(err.to_string().contains("ended in the middle"), "{err}");
}

#[tokio::test]
async fn zstd_single_frame_has_only_its_start() {
    let plain = data(2 << 20, 5);
    // -T2 and -B: still one frame, as real .tar.zst files are.
    let z = cli("zstd", &["-3", "-T2", "-B262144", "-c", "-q"], &plain);
    let (full, points) = index(&z, Codec::Zstd);
    assert!(full == plain);
    assert!(points.points().is_empty(), "{:?}", points.points());
    check_random_access(&z, &plain, &points).await;
}

#[tokio::test]
async fn zstd_multi_frame_random_access() {
    let plain = data(2 << 20, 9);
    let mut z = Vec::new();
    let mut cuts = Vec::new();
    for (i, c) in plain.chunks(300_000).enumerate() {
        if i > 0 {
            cuts.push(i as u64 * 300_000);
        }
        z.extend(cli("zstd", &["-c", "-q"], c));
    }
    let (full, points) = index(&z, Codec::Zstd);
    assert!(full == plain);
    let got: Vec<u64> = points.points().iter().map(|p| p.out).collect();
    assert_eq!(got, cuts);
    check_random_access(&z, &plain, &points).await;
}

/// The seekable format: independent frames plus a seek table in a
/// skippable frame (contrib/seekable_format), as `t2sz` or the seekable
/// API write it; the frames here come from the zstd CLI.
fn seekable(plain: &[u8], frame: usize, checksums: bool) -> Vec<u8> {
    let mut z = Vec::new();
    let mut table = Vec::new();
    for c in plain.chunks(frame) {
        let f = cli("zstd", &["-c", "-q", "--no-check"], c);
        table.extend((f.len() as u32).to_le_bytes());
        table.extend((c.len() as u32).to_le_bytes());
        if checksums {
            table.extend(0u32.to_le_bytes());
        }
        z.extend(f);
    }
    let frames = plain.len().div_ceil(frame) as u32;
    table.extend(frames.to_le_bytes());
    table.push(if checksums { 0x80 } else { 0 });
    table.extend(0x8F92_EAB1u32.to_le_bytes());
    z.extend(0x184D_2A5Eu32.to_le_bytes());
    z.extend((table.len() as u32).to_le_bytes());
    z.extend(table);
    z
}

#[tokio::test]
async fn zstd_seek_table_gives_points_without_a_pass() {
    let plain = data(1 << 20, 13);
    for checksums in [false, true] {
        let z = seekable(&plain, 100_000, checksums);
        let len = seek_table_len(&z[z.len() - SEEK_TABLE_FOOTER..])
            .expect("footer")
            .expect("seekable");
        let points = parse_seek_table(&z[z.len() - len as usize..], z.len() as u64).expect("table");
        assert_eq!(points.points().len(), 10);
        check_random_access(&z, &plain, &points).await;
        // A pass over it skips the table.
        assert!(index(&z, Codec::Zstd).0 == plain);
    }
    // Not seekable: no table, no error.
    let z = cli("zstd", &["-c", "-q"], &plain);
    assert!(
        seek_table_len(&z[z.len() - SEEK_TABLE_FOOTER..])
            .expect("footer")
            .is_none()
    );
}

#[test]
fn hostile_seek_tables_are_refused() {
    let plain = data(300_000, 17);
    let z = seekable(&plain, 100_000, false);
    let size = z.len() as u64;
    let table = |z: &[u8]| z[z.len() - 8 - 3 * 8 - 9..].to_vec();
    // A huge frame count.
    let mut t = table(&z);
    let n = t.len();
    t[n - 9..n - 5].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(seek_table_len(&t).is_err());
    // Frames that do not tile the file.
    let mut t = table(&z);
    t[8..12].copy_from_slice(&7u32.to_le_bytes());
    assert!(parse_seek_table(&t, size).is_err());
    // Truncated.
    let t = table(&z);
    assert!(parse_seek_table(&t[4..], size).is_err());
}

#[test]
fn hostile_point_lists_are_refused() {
    let plain = data(1 << 20, 19);
    let z = cli("gzip", &["-c"], &plain);
    let (_, points) = index(&z, Codec::Gzip);
    let good = points.encode();
    let size = z.len() as u64;
    assert!(Points::decode(&good, size).is_ok());
    // Every truncation fails cleanly.
    for cut in [0, 3, 5, 9, 20, good.len() / 2, good.len() - 1] {
        assert!(Points::decode(&good[..cut], size).is_err(), "cut at {cut}");
    }
    // A huge count allocates nothing: refused before reading points.
    let mut huge = good.clone();
    huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Points::decode(&huge, size).is_err());
    let mut many = good[..9].to_vec();
    many[5..9].copy_from_slice(&(MAX_POINTS as u32).to_le_bytes());
    assert!(Points::decode(&many, size).is_err());
    // Offsets past the end of the archive.
    assert!(Points::decode(&good, 1000).is_err());
    // Out of order.
    let mut v = points.points().to_vec();
    v.swap(0, 1);
    assert!(Points::from_points(Codec::Gzip, v, size).is_err());
    // A zstd point in a gzip stream.
    let mut v = points.points().to_vec();
    v[0].kind = Kind::Frame;
    assert!(Points::from_points(Codec::Gzip, v, size).is_err());
}

#[tokio::test]
async fn bad_windows_and_bits_never_panic() {
    let plain = data(1 << 20, 23);
    let z = cli("gzip", &["-c"], &plain);
    let (_, points) = index(&z, Codec::Gzip);
    let p = points
        .points()
        .iter()
        .find(|p| matches!(p.kind, Kind::Deflate { .. }))
        .expect("a deflate point")
        .clone();
    let Kind::Deflate { bits, window } = &p.kind else {
        unreachable!()
    };
    let size = z.len() as u64;
    let with =
        |kind: Kind| Points::from_points(Codec::Gzip, vec![Point { kind, ..p.clone() }], size);
    // A window of the wrong size: refused when the point is used.
    let short = points::deflate_window(&[1u8; 100]);
    let pts = with(Kind::Deflate {
        bits: *bits,
        window: short,
    })
    .expect("valid shape");
    let err = read_at(&z, &pts, p.out, 10)
        .await
        .expect_err("wrong window size");
    assert!(err.to_string().contains("window"), "{err}");
    // A window that does not inflate.
    let pts = with(Kind::Deflate {
        bits: *bits,
        window: vec![0xff; 64],
    })
    .expect("valid shape");
    assert!(read_at(&z, &pts, p.out, 10).await.is_err());
    // Garbage that decodes: wrong bits or a wrong dictionary give an error
    // or other bytes (which the blob digest catches), never a panic.
    for b in 0..8u8 {
        let pts = with(Kind::Deflate {
            bits: b,
            window: window.clone(),
        })
        .expect("valid shape");
        let _ = read_at(&z, &pts, p.out, 200_000).await;
        let zeros = points::deflate_window(&vec![0u8; WINDOW.min(p.out as usize)]);
        let pts = with(Kind::Deflate {
            bits: b,
            window: zeros,
        })
        .expect("valid shape");
        let _ = read_at(&z, &pts, p.out, 200_000).await;
    }
    // A point past the data it claims: the read ends early with an error.
    let pts = Points::from_points(
        Codec::Gzip,
        vec![Point {
            out: p.out,
            inp: size,
            kind: Kind::Member,
        }],
        size,
    )
    .expect("valid shape");
    assert!(read_at(&z, &pts, p.out, 10).await.is_err());
}
