//! Random access into gzip and zstd streams: access points recorded during
//! one streaming decompression, and decoders that resume at one.
//!
//! A compressed archive cannot be range-read like a plain tar: the bytes of
//! an entry deep inside depend on everything before. But a decoder's state
//! at a few places is small — for deflate (gzip), the bit position in the
//! compressed stream plus the last 32 KiB of output (the zran technique of
//! zlib's `examples/zran.c`); for zstd, nothing at all at a frame boundary
//! (frames are independent). Points every few MiB of output let a reader
//! start near what it wants instead of at byte 0.
//!
//! This module knows bytes only: no tar, no sources. The archive layer
//! feeds it the compressed stream (a [`PassDecoder`] during the indexing
//! pass, a [`DecodeStream`] when serving) and keeps the [`Points`].
mod gzip;
mod points;
mod zstd;

#[cfg(test)]
mod tests;

use std::io;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

pub use points::{Kind, MAX_POINTS, Point, Points};
pub use zstd::{SEEK_TABLE_FOOTER, parse_seek_table, seek_table_len};

/// Output between two recorded gzip points: each costs a 32 KiB window
/// (stored compressed), so 8 MiB spans keep them at ≤ 4 MiB per GiB of
/// archive while a cold read decompresses at most 8 MiB it does not need.
pub const SPAN: u64 = 8 * 1024 * 1024;

/// Zstd frame boundaries and gzip member boundaries cost nothing to keep
/// but their number; closer than this they are not recorded.
pub const MIN_SPAN: u64 = 1024 * 1024;

/// Most bytes of windows kept for one archive. Past it the span doubles
/// and every other point is dropped, so a 100 GiB archive still indexes in
/// bounded memory.
pub const MAX_WINDOW_BYTES: usize = 32 * 1024 * 1024;

/// Largest deflate window, and so the largest dictionary a point holds.
pub const WINDOW: usize = 32 * 1024;

/// The codec of a whole-archive compressed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Codec {
    Gzip,
    Zstd,
}

/// Why a stream cannot be decompressed or a point cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SeekError {
    #[error("decompression failed at compressed byte {at}: {msg}")]
    Corrupt { at: u64, msg: String },
    #[error("the compressed stream ended in the middle")]
    Truncated,
    #[error("bad seek point: {0}")]
    BadPoint(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<SeekError> for io::Error {
    fn from(e: SeekError) -> io::Error {
        match e {
            SeekError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        }
    }
}

/// What one step of a decoder did.
struct Step {
    consumed: usize,
    produced: usize,
}

/// A decoder of one codec, positioned somewhere in the stream.
enum Decoder {
    Gzip(Box<gzip::Gzip>),
    Zstd(zstd::Zstd),
}

impl Decoder {
    /// Decodes from `input`, appending at most `room` bytes to `out`
    /// (which must have that much spare capacity: it is written without
    /// being zeroed first).
    fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
        rec: Option<&mut Recorder>,
    ) -> Result<Step, SeekError> {
        let room = room.min(out.capacity() - out.len());
        let s = match self {
            Decoder::Gzip(g) => g.step(input, out, room, rec),
            Decoder::Zstd(z) => z.step(input, out, room, rec),
        }?;
        crate::metrics::METRICS
            .decompressed_bytes
            .fetch_add(s.produced as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(s)
    }

    /// Whether the input may end here (between members or frames).
    fn at_end(&self) -> bool {
        match self {
            Decoder::Gzip(g) => g.at_end(),
            Decoder::Zstd(z) => z.at_end(),
        }
    }

    /// A decoder at `point`, which must belong to `codec`. The compressed
    /// input must start at [`Point::read_from`].
    fn at(codec: Codec, point: &Point) -> Result<Decoder, SeekError> {
        match (codec, &point.kind) {
            (Codec::Gzip, Kind::Member) => {
                Ok(Decoder::Gzip(gzip::Gzip::new(point.inp, point.out)?))
            }
            (Codec::Gzip, Kind::Deflate { bits, window }) => Ok(Decoder::Gzip(gzip::Gzip::resume(
                point.inp,
                point.out,
                *bits,
                &points::inflate_window(window, point.out)?,
            )?)),
            (Codec::Zstd, Kind::Frame) => Ok(Decoder::Zstd(zstd::Zstd::new(point.inp, point.out)?)),
            _ => Err(SeekError::BadPoint(format!(
                "a {:?} point in a {codec:?} stream",
                point.kind.name()
            ))),
        }
    }
}

/// Collects points while a stream is decompressed from its start.
struct Recorder {
    points: Points,
    span: u64,
    min_span: u64,
    /// The last [`WINDOW`] bytes of output, as a ring; empty for zstd,
    /// whose points need no window.
    ring: Vec<u8>,
    ring_pos: usize,
    out: u64,
    window_bytes: usize,
}

impl Recorder {
    fn new(codec: Codec, span: u64, min_span: u64) -> Recorder {
        Recorder {
            points: Points::new(codec),
            span,
            min_span,
            ring: match codec {
                Codec::Gzip => vec![0; WINDOW],
                Codec::Zstd => Vec::new(),
            },
            ring_pos: 0,
            out: 0,
            window_bytes: 0,
        }
    }

    fn output(&mut self, data: &[u8]) {
        self.out += data.len() as u64;
        if self.ring.is_empty() {
            return;
        }
        let data = data
            .get(data.len().saturating_sub(WINDOW)..)
            .unwrap_or(data);
        let first = data.len().min(WINDOW - self.ring_pos);
        let (head, rest) = data.split_at(first);
        if let Some(to) = self.ring.get_mut(self.ring_pos..self.ring_pos + first) {
            to.copy_from_slice(head);
        }
        if let Some(to) = self.ring.get_mut(..rest.len()) {
            to.copy_from_slice(rest);
        }
        self.ring_pos = (self.ring_pos + data.len()) % WINDOW;
    }

    /// The last `min(WINDOW, out)` bytes of output, oldest first.
    fn window(&self) -> Vec<u8> {
        let n = (self.out.min(WINDOW as u64)) as usize;
        let mut w = Vec::with_capacity(n);
        if n == WINDOW {
            let (older, newer) = self.ring.split_at(self.ring_pos.min(self.ring.len()));
            w.extend_from_slice(newer);
            w.extend_from_slice(older);
        } else {
            w.extend_from_slice(self.ring.get(..n).unwrap_or_default());
        }
        w
    }

    fn last_out(&self) -> Option<u64> {
        self.points.points().last().map(|p| p.out)
    }

    /// Output to come before a deflate block point is wanted (0: at the
    /// next block boundary).
    fn until_block(&self) -> u64 {
        (self.last_out().unwrap_or(0) + self.span).saturating_sub(self.out)
    }

    /// Whether a point of the given cost is worth recording here.
    fn wants(&self, free: bool) -> bool {
        // The start of the stream is always a point; it is not kept.
        if self.out == 0 {
            return false;
        }
        let since = self.out - self.last_out().unwrap_or(0);
        since >= if free { self.min_span } else { self.span }
    }

    /// Records a member or frame start at compressed offset `inp`.
    fn boundary(&mut self, inp: u64, kind: Kind) {
        if self.wants(true) {
            self.points.push(Point {
                out: self.out,
                inp,
                kind,
            });
        }
    }

    /// Records a deflate block boundary with its window.
    fn block(&mut self, inp: u64, bits: u8) {
        if !self.wants(false) {
            return;
        }
        let window = points::deflate_window(&self.window());
        self.window_bytes += window.len();
        self.points.push(Point {
            out: self.out,
            inp,
            kind: Kind::Deflate { bits, window },
        });
        while self.window_bytes > MAX_WINDOW_BYTES {
            self.span *= 2;
            self.window_bytes = self.points.thin(self.span);
        }
    }
}

/// Output chunk of the indexing pass: big enough that per-call costs of
/// the decoder (and of everything that handles a chunk downstream) do not
/// show, small enough that a few in flight cost little memory.
pub const PASS_CHUNK: usize = 256 * 1024;

/// Decompresses a whole stream from its first byte, fed in chunks as they
/// arrive, and records points on the way: the indexing pass's decoder.
/// Output comes in chunks of [`PASS_CHUNK`] bytes (the last one shorter),
/// so a consumer pays per chunk, not per small read.
pub struct PassDecoder {
    dec: Decoder,
    rec: Recorder,
    /// The output chunk being filled (capacity [`PASS_CHUNK`]).
    out: Vec<u8>,
}

impl PassDecoder {
    pub fn new(codec: Codec) -> Result<PassDecoder, SeekError> {
        Self::with_spans(codec, SPAN, MIN_SPAN)
    }

    /// With other spans than [`SPAN`] and [`MIN_SPAN`] (tests use small
    /// streams).
    pub fn with_spans(codec: Codec, span: u64, min_span: u64) -> Result<PassDecoder, SeekError> {
        Ok(PassDecoder {
            dec: Decoder::at(codec, &Point::start(codec))?,
            rec: Recorder::new(codec, span, min_span),
            out: Vec::with_capacity(PASS_CHUNK),
        })
    }

    /// Decompresses all of `input` (the next bytes of the compressed
    /// stream), handing every full output chunk to `emit`. An error from
    /// `emit` stops the pass and is returned as is.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        emit: &mut dyn FnMut(Bytes) -> io::Result<()>,
    ) -> Result<(), SeekError> {
        // Steps that neither consume nor produce: a state change of the
        // gzip decoder takes one, so do empty deflate blocks already in
        // its bit buffer; a stuck decoder would take them all.
        let mut idle = 0;
        while !input.is_empty() {
            let s = self.step(input, emit)?;
            input = input.get(s.consumed..).unwrap_or_default();
            if s.consumed == 0 && s.produced == 0 {
                idle += 1;
                if idle > 1024 {
                    return Err(SeekError::Corrupt {
                        at: self.rec.out,
                        msg: "the decoder made no progress".into(),
                    });
                }
            } else {
                idle = 0;
            }
        }
        Ok(())
    }

    /// At the end of the compressed stream: hands over the output still
    /// held (by the decoder and here) and returns the points; the stream
    /// must end between members or frames.
    pub fn finish(
        mut self,
        emit: &mut dyn FnMut(Bytes) -> io::Result<()>,
    ) -> Result<Points, SeekError> {
        // A decoder may hold output when its input is all consumed (zstd
        // flushing the last block into a full buffer).
        while self.step(&[], emit)?.produced > 0 {}
        if !self.dec.at_end() {
            return Err(SeekError::Truncated);
        }
        if !self.out.is_empty() {
            emit(Bytes::from(self.out))?;
        }
        Ok(self.rec.points)
    }

    fn step(
        &mut self,
        input: &[u8],
        emit: &mut dyn FnMut(Bytes) -> io::Result<()>,
    ) -> Result<Step, SeekError> {
        if self.out.len() >= PASS_CHUNK {
            let full = std::mem::replace(&mut self.out, Vec::with_capacity(PASS_CHUNK));
            emit(Bytes::from(full))?;
        }
        let room = PASS_CHUNK - self.out.len();
        self.dec
            .step(input, &mut self.out, room, Some(&mut self.rec))
    }
}

/// Decompressed bytes `[skip, skip + len)` counted from `point`, read from
/// `input` (the compressed stream from [`Point::read_from`] on).
pub fn decode_stream<S>(
    codec: Codec,
    point: &Point,
    input: S,
    skip: u64,
    len: u64,
) -> Result<DecodeStream<S>, SeekError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    Ok(DecodeStream {
        input,
        dec: Decoder::at(codec, point)?,
        chunk: Bytes::new(),
        skip,
        left: len,
        eof: false,
    })
}

/// See [`decode_stream`].
pub struct DecodeStream<S> {
    input: S,
    dec: Decoder,
    chunk: Bytes,
    skip: u64,
    left: u64,
    eof: bool,
}

impl<S> Stream for DecodeStream<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<io::Result<Bytes>>> {
        use std::task::Poll;
        let this = self.get_mut();
        const OUT: usize = 256 * 1024;
        let mut out = Vec::with_capacity(OUT);
        loop {
            if this.left == 0 {
                return Poll::Ready(None);
            }
            if this.chunk.is_empty() && !this.eof {
                match this.input.poll_next_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(c))) => this.chunk = c,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => this.eof = true,
                }
            }
            let want = if this.skip > 0 {
                this.skip.min(OUT as u64) as usize
            } else {
                this.left.min(OUT as u64) as usize
            };
            // Skipped output is dropped: `out` only ever holds one step's.
            out.clear();
            let s = match this.dec.step(&this.chunk, &mut out, want, None) {
                Ok(s) => s,
                Err(e) => {
                    this.left = 0;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            let _ = this.chunk.split_to(s.consumed);
            if s.produced == 0 {
                if this.chunk.is_empty() && this.eof {
                    // Nothing left in the input nor held by the decoder:
                    // the requested bytes are past the end of the stream.
                    this.left = 0;
                    return Poll::Ready(Some(Err(SeekError::Truncated.into())));
                }
                continue;
            }
            if this.skip > 0 {
                this.skip -= s.produced as u64;
                continue;
            }
            this.left -= s.produced as u64;
            return Poll::Ready(Some(Ok(Bytes::from(out))));
        }
    }
}
