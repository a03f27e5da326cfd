//! Reads tar headers as they pass, before the `tar` crate does: the crate
//! reads PAX (`x`) and GNU long-name (`L`, `K`) records whole into memory
//! and ignores PAX records it cannot parse. The guard follows the stream
//! from header to header (its own arithmetic, mirroring the crate's), and
//! refuses
//! - a record bigger than [`Limit::HeaderRecord`], and records adding up to
//!   more than [`Limit::HeaderMetadata`], before the crate buffers them;
//! - a malformed PAX record (a length prefix past the data, no `=`, no
//!   newline at its end) and a `size`, `uid` or `gid` that is not a
//!   decimal `u64`: parsers disagree on such headers, which is how
//!   TARmageddon-style bugs smuggle content.
//!
//! Should the guard lose track (a header it cannot size), it stops
//! checking: the crate then fails on the same header.
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use super::ArchiveError;
use super::budget::{Budget, Limit};

const BLOCK: u64 = 512;

/// What the guard expects at `next`.
#[derive(Debug)]
enum State {
    /// A header block.
    Header,
    /// GNU sparse extension blocks, then `data` bytes of entry data.
    SparseExt { data: u64 },
    /// The data of a PAX `x` record, collected up to `end`.
    Pax { end: u64, buf: Vec<u8> },
    /// Lost track: no more checks.
    Lost,
}

pub(crate) struct HeaderGuard<R> {
    inner: R,
    /// Position of the next byte read.
    pos: u64,
    /// Where the block or data the state expects starts.
    next: u64,
    block: Vec<u8>,
    state: State,
    /// The size a PAX record set for the next entry.
    pax_size: Option<u64>,
    /// The archive's budget: header records are charged to it.
    budget: Arc<Budget>,
}

fn refuse(e: ArchiveError) -> io::Error {
    io::Error::other(e)
}

/// The archive error a guarded read failed with, when it was the guard's
/// (or the decompressed-bytes budget's); the I/O error otherwise.
pub(crate) fn refusal(e: io::Error) -> Result<ArchiveError, io::Error> {
    if !e.get_ref().is_some_and(|x| x.is::<ArchiveError>()) {
        return Err(e);
    }
    match e.into_inner().map(|x| x.downcast::<ArchiveError>()) {
        Some(Ok(a)) => Ok(*a),
        Some(Err(x)) => Err(io::Error::other(x)),
        None => Err(io::Error::other("unknown error")),
    }
}

/// Parses a tar numeric field: octal ASCII (spaces and NULs around it) or
/// GNU base-256 (high bit of the first byte set).
fn numeric(field: &[u8]) -> Option<u64> {
    let (&first, rest) = field.split_first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None; // negative
        }
        let mut v = u64::from(first & 0x3f);
        for &b in rest {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// A PAX record: key and value bytes.
pub(crate) type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of PAX extended-header data, parsed strictly by their
/// length prefixes.
pub(crate) fn pax_records(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break; // padding some writers leave
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("a PAX record has no length")?;
        let len: usize = std::str::from_utf8(data.get(..space).unwrap_or_default())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record's length is not a number")?;
        let record = data
            .get(..len)
            .filter(|r| r.len() > space + 1)
            .ok_or_else(|| format!("a PAX record's length {len} runs past the header"))?;
        let body = record
            .get(space + 1..len - 1)
            .filter(|_| record.last() == Some(&b'\n'))
            .ok_or("a PAX record does not end in a newline")?;
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a PAX record has no '='")?;
        let (key, value) = (
            body.get(..eq).unwrap_or_default(),
            body.get(eq + 1..).unwrap_or_default(),
        );
        if matches!(key, b"size" | b"uid" | b"gid")
            && std::str::from_utf8(value)
                .ok()
                .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .is_none()
        {
            return Err(format!(
                "PAX {} value {:?} is not a number that fits",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value.get(..value.len().min(40)).unwrap_or_default())
            ));
        }
        out.push((key, value));
        data = data.get(len..).unwrap_or_default();
    }
    Ok(out)
}

fn round_up(n: u64) -> Option<u64> {
    n.checked_add(BLOCK - 1).map(|n| n & !(BLOCK - 1))
}

impl<R> HeaderGuard<R> {
    pub(crate) fn new(inner: R, budget: Arc<Budget>) -> HeaderGuard<R> {
        HeaderGuard {
            inner,
            pos: 0,
            next: 0,
            block: Vec::with_capacity(BLOCK as usize),
            state: State::Header,
            pax_size: None,
            budget,
        }
    }

    /// Takes in `data`, which starts at `self.pos`.
    fn observe(&mut self, mut data: &[u8]) -> Result<(), ArchiveError> {
        while !data.is_empty() {
            if matches!(self.state, State::Lost) {
                break;
            }
            if self.pos < self.next {
                let skip = (self.next - self.pos).min(data.len() as u64);
                self.pos += skip;
                data = data.get(skip as usize..).unwrap_or_default();
                continue;
            }
            if let State::Pax { end, buf } = &mut self.state {
                let take = (*end - self.pos).min(data.len() as u64) as usize;
                buf.extend_from_slice(data.get(..take).unwrap_or_default());
                self.pos += take as u64;
                data = data.get(take..).unwrap_or_default();
                if self.pos == *end {
                    let end = *end;
                    let buf = std::mem::take(buf);
                    self.pax_done(end, &buf)?;
                }
                continue;
            }
            let want = BLOCK as usize - self.block.len();
            let take = want.min(data.len());
            self.block
                .extend_from_slice(data.get(..take).unwrap_or_default());
            self.pos += take as u64;
            data = data.get(take..).unwrap_or_default();
            if self.block.len() == BLOCK as usize {
                let block = std::mem::take(&mut self.block);
                self.block_done(&block)?;
                self.block = block;
                self.block.clear();
            }
        }
        Ok(())
    }

    fn lost(&mut self) {
        self.state = State::Lost;
    }

    fn pax_done(&mut self, end: u64, buf: &[u8]) -> Result<(), ArchiveError> {
        let records = pax_records(buf).map_err(ArchiveError::Hostile)?;
        self.pax_size = None;
        for (k, v) in records {
            if k == b"size" {
                self.pax_size = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
            }
        }
        match round_up(end) {
            Some(n) => {
                self.next = n;
                self.state = State::Header;
            }
            None => self.lost(),
        }
        Ok(())
    }

    fn block_done(&mut self, block: &[u8]) -> Result<(), ArchiveError> {
        let at = self.next;
        let Some(after) = at.checked_add(BLOCK) else {
            self.lost();
            return Ok(());
        };
        if let State::SparseExt { data } = self.state {
            if block.get(504).is_some_and(|&b| b != 0) {
                self.next = after;
            } else {
                match after.checked_add(data) {
                    Some(n) => self.next = n,
                    None => self.lost(),
                }
                self.state = State::Header;
            }
            return Ok(());
        }
        if block.iter().all(|&b| b == 0) {
            self.next = after;
            return Ok(());
        }
        let kind = block.get(156).copied().unwrap_or(0);
        let Some(size) = block.get(124..136).and_then(numeric) else {
            self.lost();
            return Ok(());
        };
        if matches!(kind, b'x' | b'g' | b'L' | b'K') {
            self.budget.check(Limit::HeaderRecord, size)?;
            self.budget.charge(Limit::HeaderMetadata, size)?;
        }
        // The crate takes a PAX size for the next entry that is not itself
        // an extension header, and a global header consumes it.
        let size = match kind {
            b'x' | b'L' | b'K' => size,
            b'g' => {
                self.pax_size = None;
                size
            }
            _ => self.pax_size.take().unwrap_or(size),
        };
        if kind == b'x' {
            match after.checked_add(size) {
                Some(end) => {
                    self.next = after;
                    self.state = State::Pax {
                        end,
                        buf: Vec::with_capacity(size as usize),
                    };
                    if size == 0 {
                        self.pax_done(end, &[])?;
                    }
                }
                None => self.lost(),
            }
            return Ok(());
        }
        let Some(data) = round_up(size) else {
            self.lost();
            return Ok(());
        };
        if kind == b'S' && block.get(482).is_some_and(|&b| b != 0) {
            self.next = after;
            self.state = State::SparseExt { data };
            return Ok(());
        }
        match after.checked_add(data) {
            Some(n) => self.next = n,
            None => self.lost(),
        }
        Ok(())
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(buf.get(..n).unwrap_or_default())
            .map_err(refuse)?;
        Ok(n)
    }
}

impl<R: Seek> Seek for HeaderGuard<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = self.inner.seek(to)?;
        // Skipping entry data keeps track; jumping over a header does not.
        let watching = match &self.state {
            State::Header | State::SparseExt { .. } => self.next + self.block.len() as u64,
            State::Pax { .. } => self.pos,
            State::Lost => p,
        };
        if p > watching || p < self.pos {
            self.lost();
        }
        self.pos = p;
        Ok(p)
    }
}
