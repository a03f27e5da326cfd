//! zstd: every frame is independent, so a frame start is an access point
//! that costs nothing to keep. The zstd CLI writes one frame per input
//! (also with `-T`, `--long`, `-B`): a plain `.tar.zst` has a single point,
//! its start. Concatenated files (`cat a.zst b.zst`), `pzstd`, and the
//! seekable format (contrib/seekable_format: frames of a fixed size plus a
//! seek table in a skippable frame at the end) have many.
use zstd_safe::{DCtx, InBuffer, OutBuffer};

use super::{Codec, Kind, MAX_POINTS, Point, Points, Recorder, SeekError, Step};

pub(super) struct Zstd {
    dctx: DCtx<'static>,
    /// At a frame boundary: the input may end here.
    boundary: bool,
    inp: u64,
    out: u64,
}

impl Zstd {
    pub(super) fn new(inp: u64, out: u64) -> Result<Zstd, SeekError> {
        Ok(Zstd {
            dctx: DCtx::try_create().ok_or_else(|| SeekError::Corrupt {
                at: inp,
                msg: "cannot allocate a zstd context".into(),
            })?,
            boundary: true,
            inp,
            out,
        })
    }

    pub(super) fn at_end(&self) -> bool {
        self.boundary
    }

    pub(super) fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
        mut rec: Option<&mut Recorder>,
    ) -> Result<Step, SeekError> {
        // Mid-frame, an empty input still flushes output zstd holds.
        if input.is_empty() && self.boundary {
            return Ok(Step {
                consumed: 0,
                produced: 0,
            });
        }
        if self.boundary
            && let Some(r) = rec.as_deref_mut()
        {
            // A frame (or skippable frame) starts here.
            r.boundary(self.inp, Kind::Frame);
        }
        let start = out.len();
        let mut inb = InBuffer::around(input);
        let mut room = Room {
            vec: out,
            end: start + room,
        };
        let mut outb = OutBuffer::around_pos(&mut room, start);
        let r = self.dctx.decompress_stream(&mut outb, &mut inb);
        let (consumed, produced) = (inb.pos(), outb.pos() - start);
        self.inp += consumed as u64;
        self.out += produced as u64;
        let hint = r.map_err(|code| SeekError::Corrupt {
            at: self.inp,
            msg: zstd_safe::get_error_name(code).to_string(),
        })?;
        if let Some(r) = rec {
            r.output(out.get(start..).unwrap_or_default());
        }
        self.boundary = hint == 0;
        Ok(Step { consumed, produced })
    }
}

/// The first `end` bytes of a vector's allocation as zstd's output
/// buffer: zstd writes past `len` into the spare capacity (no zeroing
/// first) and the length follows what it wrote; `end` keeps it from
/// writing more than the caller asked for.
struct Room<'a> {
    vec: &'a mut Vec<u8>,
    end: usize,
}

// SAFETY: `capacity()` is at most the vector's capacity (the caller's
// `room` is capped by the spare capacity), so the pointer is valid for
// writes of `capacity()` bytes; `filled_until(n)` is only called by
// zstd-safe with `n` bytes written from the start (the first `len` were
// already initialized), within that capacity.
unsafe impl zstd_safe::WriteBuf for Room<'_> {
    fn as_slice(&self) -> &[u8] {
        self.vec.as_slice()
    }
    fn capacity(&self) -> usize {
        self.end.min(self.vec.capacity())
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.vec.as_mut_ptr()
    }
    unsafe fn filled_until(&mut self, n: usize) {
        // SAFETY: the trait's contract: the first `n` bytes, `n` at most
        // `capacity()`, are initialized.
        unsafe { self.vec.set_len(n) }
    }
}

/// The little-endian u32 at `at` in `b`, if `b` holds it.
fn le32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// Size of the seek table's footer, the last bytes of a seekable file.
pub const SEEK_TABLE_FOOTER: usize = 9;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;

/// From the last [`SEEK_TABLE_FOOTER`] bytes of a zstd file: None when it
/// is not in the seekable format, else how many bytes at the end hold the
/// seek table (its skippable frame).
pub fn seek_table_len(footer: &[u8]) -> Result<Option<u64>, SeekError> {
    let Some(f) = footer.get(footer.len().saturating_sub(SEEK_TABLE_FOOTER)..) else {
        return Ok(None);
    };
    let (Some(frames), Some(&descriptor), Some(magic)) = (le32(f, 0), f.get(4), le32(f, 5)) else {
        return Ok(None);
    };
    if f.len() != SEEK_TABLE_FOOTER || magic != SEEKABLE_MAGIC {
        return Ok(None);
    }
    let frames = u64::from(frames);
    if descriptor & 0x7c != 0 {
        return Err(SeekError::BadPoint("seek table: reserved bits set".into()));
    }
    if frames > MAX_POINTS as u64 {
        return Err(SeekError::BadPoint(format!("seek table: {frames} frames")));
    }
    let entry = if descriptor & 0x80 != 0 { 12 } else { 8 };
    Ok(Some(8 + frames * entry + SEEK_TABLE_FOOTER as u64))
}

/// Parses a seek table (`table`: the whole skippable frame, as long as
/// [`seek_table_len`] said) of a file of `stored_size` bytes into points
/// at every frame start. The frames must tile the file up to the table.
pub fn parse_seek_table(table: &[u8], stored_size: u64) -> Result<Points, SeekError> {
    let bad = |m: String| SeekError::BadPoint(format!("seek table: {m}"));
    let len = seek_table_len(table)?.ok_or_else(|| bad("no seekable footer".into()))?;
    if table.len() as u64 != len || len > stored_size {
        return Err(bad(format!("{} bytes where {len} belong", table.len())));
    }
    let truncated = || bad("truncated".into());
    let (magic, size) = le32(table, 0).zip(le32(table, 4)).ok_or_else(truncated)?;
    if magic != SKIPPABLE_MAGIC || u64::from(size) != len - 8 {
        return Err(bad("not a skippable frame of the right size".into()));
    }
    let footer = table
        .len()
        .checked_sub(SEEK_TABLE_FOOTER)
        .ok_or_else(truncated)?;
    let descriptor = *table.get(footer + 4).ok_or_else(truncated)?;
    let entry = if descriptor & 0x80 != 0 { 12 } else { 8 };
    let entries = table.get(8..footer).ok_or_else(truncated)?;
    let (mut inp, mut out) = (0u64, 0u64);
    let mut points = Vec::with_capacity(entries.len() / entry);
    for e in entries.chunks_exact(entry) {
        let (c, d) = le32(e, 0).zip(le32(e, 4)).ok_or_else(truncated)?;
        let (c, d) = (u64::from(c), u64::from(d));
        if c == 0 {
            return Err(bad("an empty frame".into()));
        }
        if out > 0 && d > 0 {
            points.push(Point {
                out,
                inp,
                kind: Kind::Frame,
            });
        }
        inp += c;
        out += d;
    }
    if inp != stored_size - len {
        return Err(bad(format!(
            "frames cover {inp} bytes, the file has {} before the table",
            stored_size - len
        )));
    }
    Points::from_points(Codec::Zstd, points, stored_size)
}
