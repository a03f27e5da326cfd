//! gzip through zlib's C API (zlib-rs's `libz-rs-sys`): resuming inside a
//! member needs `inflatePrime` and `inflateSetDictionary`, and recording
//! points needs `inflate(Z_BLOCK)` with `data_type`, none of which the
//! safe wrappers (flate2, zlib-rs's `Inflate`) expose.
use libz_rs_sys::{
    Z_BLOCK, Z_BUF_ERROR, Z_NEED_DICT, Z_NO_FLUSH, Z_OK, Z_STREAM_END, inflate, inflateEnd,
    inflateInit2_, inflatePrime, inflateReset2, inflateSetDictionary, z_stream, zlibVersion,
};

use super::{Kind, Recorder, SeekError, Step};

/// gzip framing (`windowBits` 16 + 15) and raw deflate (-15).
const GZIP: i32 = 31;
const RAW: i32 = -15;

enum State {
    /// Before a member (or at the end of the stream).
    Between,
    /// Zeros after the last member, which gzip(1) ignores.
    Zeros,
    /// Inside a member's deflate data; `raw` when resumed at a block
    /// boundary (the member's header is behind us, its trailer ahead).
    Inflate { raw: bool },
    /// Bytes of a member's CRC and length trailer still to skip (after a
    /// raw resume; the CRC covers bytes before the point, so it cannot be
    /// checked: the blob digest is).
    Trailer(u8),
}

pub(super) struct Gzip {
    strm: Box<z_stream>,
    state: State,
    /// Offsets of the next compressed byte and the next output byte.
    inp: u64,
    out: u64,
    /// A resumed block starting mid-byte: that many bits of the first
    /// input byte, then the dictionary.
    prime: Option<u8>,
    dict: Vec<u8>,
}

// SAFETY: the z_stream and the state zlib-rs allocates for it are owned by
// this value alone and only used through `&mut self`; nothing refers to a
// thread.
unsafe impl Send for Gzip {}

impl Gzip {
    fn init(window_bits: i32, inp: u64, out: u64, state: State) -> Result<Box<Gzip>, SeekError> {
        let mut strm = Box::new(z_stream::default());
        // SAFETY: strm is a default-initialized z_stream (allocators set),
        // boxed so its address stays fixed for zlib's back pointer.
        let ret = unsafe {
            inflateInit2_(
                &mut *strm,
                window_bits,
                zlibVersion(),
                size_of::<z_stream>() as i32,
            )
        };
        if ret != Z_OK {
            return Err(SeekError::Corrupt {
                at: inp,
                msg: format!("inflateInit2 failed ({ret})"),
            });
        }
        Ok(Box::new(Gzip {
            strm,
            state,
            inp,
            out,
            prime: None,
            dict: Vec::new(),
        }))
    }

    /// A decoder at the start of a member at compressed offset `inp`.
    pub(super) fn new(inp: u64, out: u64) -> Result<Box<Gzip>, SeekError> {
        Self::init(GZIP, inp, out, State::Between)
    }

    /// A decoder at a deflate block boundary; input starts one byte before
    /// `inp` when `bits` > 0.
    pub(super) fn resume(
        inp: u64,
        out: u64,
        bits: u8,
        window: &[u8],
    ) -> Result<Box<Gzip>, SeekError> {
        if bits > 7 || (bits > 0 && inp == 0) {
            return Err(SeekError::BadPoint(format!("{bits} bits at {inp}")));
        }
        let start = if bits > 0 { inp - 1 } else { inp };
        let mut g = Self::init(RAW, start, out, State::Inflate { raw: true })?;
        g.dict = window.to_vec();
        if bits > 0 {
            g.prime = Some(bits);
        } else {
            g.set_dictionary()?;
        }
        Ok(g)
    }

    fn set_dictionary(&mut self) -> Result<(), SeekError> {
        let dict = std::mem::take(&mut self.dict);
        if dict.is_empty() {
            return Ok(());
        }
        // SAFETY: the pointer and length describe `dict`, alive for the call.
        let ret =
            unsafe { inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) };
        if ret != Z_OK {
            return Err(SeekError::BadPoint(format!(
                "inflateSetDictionary failed ({ret})"
            )));
        }
        Ok(())
    }

    pub(super) fn at_end(&self) -> bool {
        matches!(self.state, State::Between | State::Zeros)
    }

    fn corrupt(&self, msg: impl Into<String>) -> SeekError {
        SeekError::Corrupt {
            at: self.inp,
            msg: msg.into(),
        }
    }

    pub(super) fn step(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        room: usize,
        rec: Option<&mut Recorder>,
    ) -> Result<Step, SeekError> {
        let none = Step {
            consumed: 0,
            produced: 0,
        };
        match self.state {
            State::Zeros => {
                if input.iter().any(|&b| b != 0) {
                    return Err(self.corrupt("garbage after the last gzip member"));
                }
                self.inp += input.len() as u64;
                Ok(Step {
                    consumed: input.len(),
                    produced: 0,
                })
            }
            State::Between => match input.first() {
                None => Ok(none),
                Some(0x1f) => {
                    // SAFETY: strm was initialized by inflateInit2_.
                    let ret = unsafe { inflateReset2(&mut *self.strm, GZIP) };
                    if ret != Z_OK {
                        return Err(self.corrupt(format!("inflateReset2 failed ({ret})")));
                    }
                    if let Some(r) = rec {
                        r.boundary(self.inp, Kind::Member);
                    }
                    self.state = State::Inflate { raw: false };
                    Ok(none)
                }
                Some(0) if self.out > 0 => {
                    self.state = State::Zeros;
                    Ok(none)
                }
                Some(_) => Err(self.corrupt("not a gzip member")),
            },
            State::Trailer(n) => {
                let k = (n as usize).min(input.len());
                self.inp += k as u64;
                self.state = match n as usize - k {
                    0 => State::Between,
                    left => State::Trailer(left as u8),
                };
                Ok(Step {
                    consumed: k,
                    produced: 0,
                })
            }
            State::Inflate { raw } => {
                if let Some(bits) = self.prime {
                    let Some(&byte) = input.first() else {
                        return Ok(none);
                    };
                    let value = i32::from(byte) >> (8 - i32::from(bits));
                    // SAFETY: strm was initialized by inflateInit2_.
                    let ret = unsafe { inflatePrime(&mut *self.strm, i32::from(bits), value) };
                    if ret != Z_OK {
                        return Err(SeekError::BadPoint(format!("inflatePrime failed ({ret})")));
                    }
                    self.prime = None;
                    self.set_dictionary()?;
                    self.inp += 1;
                    return Ok(Step {
                        consumed: 1,
                        produced: 0,
                    });
                }
                // Stopping at every block boundary (Z_BLOCK) costs a return
                // from inflate and a window copy per block; far from the
                // next point, inflate runs on, stopping one byte short of
                // where a point is wanted: the first boundary after it is
                // the same one either way.
                let (flush, room) = match rec.as_deref().map(Recorder::until_block) {
                    None => (Z_NO_FLUSH, room),
                    Some(until) if until > 1 => (
                        Z_NO_FLUSH,
                        room.min(usize::try_from(until - 1).unwrap_or(usize::MAX)),
                    ),
                    Some(_) => (Z_BLOCK, room),
                };
                let start = out.len();
                let spare = out.spare_capacity_mut();
                let avail_in = input.len().min(u32::MAX as usize);
                let avail_out = room.min(spare.len()).min(u32::MAX as usize);
                self.strm.next_in = input.as_ptr();
                self.strm.avail_in = avail_in as u32;
                self.strm.next_out = spare.as_mut_ptr().cast::<u8>();
                self.strm.avail_out = avail_out as u32;
                // SAFETY: next_in/avail_in describe `input`, next_out/
                // avail_out the start of `out`'s spare capacity, both alive
                // and unaliased for the call; inflate only writes there.
                let ret = unsafe { inflate(&mut *self.strm, flush) };
                let consumed = avail_in - self.strm.avail_in as usize;
                let produced = avail_out - self.strm.avail_out as usize;
                // SAFETY: inflate wrote `produced` bytes from next_out on,
                // within the spare capacity.
                unsafe { out.set_len(start + produced) };
                let data_type = self.strm.data_type;
                self.strm.next_in = std::ptr::null();
                self.strm.avail_in = 0;
                self.strm.next_out = std::ptr::null_mut();
                self.strm.avail_out = 0;
                self.inp += consumed as u64;
                self.out += produced as u64;
                match ret {
                    Z_STREAM_END => {
                        self.state = if raw {
                            State::Trailer(8)
                        } else {
                            State::Between
                        };
                    }
                    Z_OK => {}
                    Z_BUF_ERROR if consumed > 0 || produced > 0 || input.is_empty() => {}
                    Z_BUF_ERROR => return Err(self.corrupt("inflate made no progress")),
                    Z_NEED_DICT => return Err(self.corrupt("needs a preset dictionary")),
                    _ => return Err(self.corrupt(self.message(ret))),
                }
                if let Some(r) = rec {
                    r.output(out.get(start..).unwrap_or_default());
                    // At the end of a deflate block that is not the last:
                    // a place where raw inflate can start (zran.c's test).
                    if ret == Z_OK && data_type & 128 != 0 && data_type & 64 == 0 {
                        r.block(self.inp, (data_type & 7) as u8);
                    }
                }
                Ok(Step { consumed, produced })
            }
        }
    }

    fn message(&self, ret: i32) -> String {
        if self.strm.msg.is_null() {
            return format!("inflate error {ret}");
        }
        // SAFETY: zlib sets msg to a static NUL-terminated string.
        unsafe { std::ffi::CStr::from_ptr(self.strm.msg) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for Gzip {
    fn drop(&mut self) {
        // SAFETY: strm was initialized by inflateInit2_ and is ended once.
        unsafe {
            inflateEnd(&mut *self.strm);
        }
    }
}
