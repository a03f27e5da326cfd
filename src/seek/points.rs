//! The recorded access points and their compact binary form (kept in
//! saved indexes and sidecars, so decoded with bounds: it may come from a
//! file someone else wrote).
use std::io::Read;

use super::{Codec, SeekError, WINDOW};

/// Most points one archive may have: 1 GiB apart at 8 MiB spans would be
/// 128; a million covers a 1 PiB stream and bounds a hostile count.
pub const MAX_POINTS: usize = 1 << 20;

/// Largest compressed window accepted: deflate of 32 KiB of random bytes
/// is a little over 32 KiB (zlib-rs's fastest level, which does not fall
/// back to stored blocks, made 34.5 KiB); twice the window is a safe bound.
const MAX_PACKED_WINDOW: usize = 2 * WINDOW;

const MAGIC: &[u8; 4] = b"CSP1";

/// Where decompression can start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// Offset in the decompressed stream.
    pub out: u64,
    /// Offset in the compressed stream of the first whole byte to read.
    pub inp: u64,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The start of a gzip member (header included).
    Member,
    /// A zstd frame start.
    Frame,
    /// A deflate block boundary inside a gzip member: `bits` of the byte
    /// before `inp` belong to the block, and the window (the last 32 KiB
    /// of output, raw-deflate compressed) is its dictionary.
    Deflate { bits: u8, window: Vec<u8> },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Member => "gzip member",
            Kind::Frame => "zstd frame",
            Kind::Deflate { .. } => "deflate block",
        }
    }
}

impl Point {
    /// The start of the stream.
    pub fn start(codec: Codec) -> Point {
        Point {
            out: 0,
            inp: 0,
            kind: match codec {
                Codec::Gzip => Kind::Member,
                Codec::Zstd => Kind::Frame,
            },
        }
    }

    /// The compressed offset a reader must start at: one byte early when
    /// the block starts mid-byte.
    pub fn read_from(&self) -> u64 {
        match self.kind {
            Kind::Deflate { bits, .. } if bits > 0 => self.inp - 1,
            _ => self.inp,
        }
    }
}

/// Access points of one compressed stream, ordered by output offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Points {
    codec: Codec,
    points: Vec<Point>,
}

impl Points {
    pub fn new(codec: Codec) -> Points {
        Points {
            codec,
            points: Vec::new(),
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn points(&self) -> &[Point] {
        &self.points
    }

    pub(super) fn push(&mut self, p: Point) {
        if self.points.len() < MAX_POINTS {
            self.points.push(p);
        }
    }

    /// Builds from a list, checking what [`Points::decode`] checks.
    pub fn from_points(
        codec: Codec,
        points: Vec<Point>,
        stored_size: u64,
    ) -> Result<Points, SeekError> {
        let p = Points { codec, points };
        p.validate(stored_size)?;
        Ok(p)
    }

    /// The last point at or before decompressed offset `out` (the start of
    /// the stream when none is).
    pub fn nearest(&self, out: u64) -> Point {
        let i = self.points.partition_point(|p| p.out <= out);
        i.checked_sub(1)
            .and_then(|i| self.points.get(i))
            .cloned()
            .unwrap_or_else(|| Point::start(self.codec))
    }

    /// Keeps points at least `span` apart (member and frame points are
    /// kept regardless); returns the window bytes left.
    pub(super) fn thin(&mut self, span: u64) -> usize {
        let mut last: Option<u64> = None;
        self.points.retain(|p| {
            let keep =
                !matches!(p.kind, Kind::Deflate { .. }) || last.is_none_or(|l| p.out - l >= span);
            if keep {
                last = Some(p.out);
            }
            keep
        });
        self.window_bytes()
    }

    pub fn window_bytes(&self) -> usize {
        self.points
            .iter()
            .map(|p| match &p.kind {
                Kind::Deflate { window, .. } => window.len(),
                _ => 0,
            })
            .sum()
    }

    /// Checks a point list against the stored stream's size: ordered, in
    /// range, of this codec's kinds, windows of a sane size.
    fn validate(&self, stored_size: u64) -> Result<(), SeekError> {
        if self.points.len() > MAX_POINTS {
            return Err(SeekError::BadPoint(format!(
                "{} points (at most {MAX_POINTS})",
                self.points.len()
            )));
        }
        let mut prev: Option<&Point> = None;
        for p in &self.points {
            let ok_kind = matches!(
                (self.codec, &p.kind),
                (Codec::Gzip, Kind::Member | Kind::Deflate { .. }) | (Codec::Zstd, Kind::Frame)
            );
            if !ok_kind {
                return Err(SeekError::BadPoint(format!(
                    "a {} point in a {:?} stream",
                    p.kind.name(),
                    self.codec
                )));
            }
            if p.inp > stored_size {
                return Err(SeekError::BadPoint(format!(
                    "compressed offset {} past the end ({stored_size})",
                    p.inp
                )));
            }
            if let Kind::Deflate { bits, window } = &p.kind {
                if *bits > 7 || (*bits > 0 && p.inp == 0) {
                    return Err(SeekError::BadPoint(format!("{bits} bits at {}", p.inp)));
                }
                if window.is_empty() || window.len() > MAX_PACKED_WINDOW {
                    return Err(SeekError::BadPoint(format!(
                        "a window of {} bytes",
                        window.len()
                    )));
                }
            }
            if let Some(q) = prev
                && (p.out <= q.out || p.inp < q.inp)
            {
                return Err(SeekError::BadPoint("points out of order".into()));
            }
            prev = Some(p);
        }
        Ok(())
    }

    /// The compact binary form: `CSP1`, codec, count, then per point
    /// out, in, kind, bits, window length and window (little endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.points.len() * 24 + self.window_bytes());
        b.extend_from_slice(MAGIC);
        b.push(match self.codec {
            Codec::Gzip => 1,
            Codec::Zstd => 2,
        });
        b.extend_from_slice(&(self.points.len() as u32).to_le_bytes());
        for p in &self.points {
            b.extend_from_slice(&p.out.to_le_bytes());
            b.extend_from_slice(&p.inp.to_le_bytes());
            let (kind, bits, window): (u8, u8, &[u8]) = match &p.kind {
                Kind::Member => (1, 0, &[]),
                Kind::Frame => (2, 0, &[]),
                Kind::Deflate { bits, window } => (3, *bits, window),
            };
            b.push(kind);
            b.push(bits);
            b.extend_from_slice(&(window.len() as u32).to_le_bytes());
            b.extend_from_slice(window);
        }
        b
    }

    /// Parses [`Points::encode`]'s output, refusing anything out of bounds
    /// for a stored stream of `stored_size` bytes. Allocates no more than
    /// the input's size.
    pub fn decode(mut b: &[u8], stored_size: u64) -> Result<Points, SeekError> {
        let bad = |m: &str| SeekError::BadPoint(m.to_string());
        let magic = take(&mut b, 4).ok_or_else(|| bad("truncated"))?;
        if magic != MAGIC {
            return Err(bad("not a seek point list"));
        }
        let codec = match take(&mut b, 1)
            .and_then(|c| c.first().copied())
            .ok_or_else(|| bad("truncated"))?
        {
            1 => Codec::Gzip,
            2 => Codec::Zstd,
            c => return Err(SeekError::BadPoint(format!("unknown codec {c}"))),
        };
        let count = u32_le(&mut b).ok_or_else(|| bad("truncated"))? as usize;
        if count > MAX_POINTS {
            return Err(SeekError::BadPoint(format!("{count} points")));
        }
        // Each point takes at least 22 bytes: a count beyond what the
        // input holds is refused before anything is allocated for it.
        if count > b.len() / 22 {
            return Err(bad("truncated"));
        }
        let mut points = Vec::with_capacity(count);
        for _ in 0..count {
            let out = u64_le(&mut b).ok_or_else(|| bad("truncated"))?;
            let inp = u64_le(&mut b).ok_or_else(|| bad("truncated"))?;
            let kb = take(&mut b, 2).ok_or_else(|| bad("truncated"))?;
            let &[kind, bits] = kb else {
                return Err(bad("truncated"));
            };
            let wlen = u32_le(&mut b).ok_or_else(|| bad("truncated"))? as usize;
            if wlen > MAX_PACKED_WINDOW {
                return Err(SeekError::BadPoint(format!("a window of {wlen} bytes")));
            }
            let window = take(&mut b, wlen).ok_or_else(|| bad("truncated"))?;
            let kind = match (kind, wlen) {
                (1, 0) => Kind::Member,
                (2, 0) => Kind::Frame,
                (3, _) => Kind::Deflate {
                    bits,
                    window: window.to_vec(),
                },
                _ => return Err(SeekError::BadPoint(format!("unknown point kind {kind}"))),
            };
            points.push(Point { out, inp, kind });
        }
        if !b.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Points::from_points(codec, points, stored_size)
    }
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn u32_le(b: &mut &[u8]) -> Option<u32> {
    take(b, 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

fn u64_le(b: &mut &[u8]) -> Option<u64> {
    take(b, 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

/// Compresses a window for keeping (raw deflate, the default level: it
/// stores incompressible windows instead of growing them; one window per
/// 8 MiB of archive, so its cost does not show).
pub(super) fn deflate_window(w: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(w.len() / 2),
        flate2::Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let _ = e.write_all(w);
    e.finish().unwrap_or_default()
}

/// Decompresses a kept window; it must be exactly the size a point at
/// `out` has (`min(32 KiB, out)`), or the point is refused.
pub(super) fn inflate_window(packed: &[u8], out: u64) -> Result<Vec<u8>, SeekError> {
    let want = out.min(WINDOW as u64) as usize;
    let mut w = Vec::with_capacity(want);
    flate2::read::DeflateDecoder::new(packed)
        .take(WINDOW as u64 + 1)
        .read_to_end(&mut w)
        .map_err(|e| SeekError::BadPoint(format!("window does not decompress: {e}")))?;
    if w.len() != want {
        return Err(SeekError::BadPoint(format!(
            "a window of {} bytes where {want} belong",
            w.len()
        )));
    }
    Ok(w)
}
