//! What the kernel's NBD driver speaks on the socket it is given
//! (`NBD_SET_SOCK`) once `NBD_DO_IT` runs: the transmission phase of the
//! NBD protocol, with no handshake. A request is 28 bytes (big-endian):
//! magic, command type (flags in its upper 16 bits), an 8-byte handle,
//! byte offset, byte length; a write's data follows it. A simple reply is
//! 16 bytes: magic, error (an errno, 0 for success), the request's
//! handle; a successful read's data follows it. Replies may come in any
//! order: the handle matches them.

use static_assertions::const_assert_eq;
use zerocopy::byteorder::{BigEndian, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first word of every request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The first word of every simple reply.
pub const REPLY_MAGIC: u32 = 0x6744_6698;
/// Bytes of a request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a reply header.
pub const REPLY_LEN: usize = 16;

/// Command types (the low 16 bits of the type word).
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
}

/// Command flags (the upper 16 bits of the type word, shifted down).
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// Transmission flags (`NBD_SET_FLAGS`): what the kernel may send.
pub mod flags {
    pub const HAS_FLAGS: u64 = 1 << 0;
    pub const READ_ONLY: u64 = 1 << 1;
    pub const SEND_FLUSH: u64 = 1 << 2;
    pub const SEND_FUA: u64 = 1 << 3;
    pub const SEND_TRIM: u64 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u64 = 1 << 6;
}

/// One request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub cmd: u16,
    pub flags: u16,
    pub handle: [u8; 8],
    pub from: u64,
    pub len: u32,
}

/// A header that does not start with [`REQUEST_MAGIC`]: the stream is
/// out of step, and the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadMagic(pub u32);

/// A request header as it is on the wire.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct RequestWire {
    magic: U32<BigEndian>,
    /// Flags in the upper 16 bits, the command in the lower.
    ty: U32<BigEndian>,
    handle: [u8; 8],
    from: U64<BigEndian>,
    len: U32<BigEndian>,
}

/// A simple reply header as it is on the wire.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct ReplyWire {
    magic: U32<BigEndian>,
    error: U32<BigEndian>,
    handle: [u8; 8],
}

const_assert_eq!(std::mem::size_of::<RequestWire>(), REQUEST_LEN);
const_assert_eq!(std::mem::size_of::<ReplyWire>(), REPLY_LEN);

impl Request {
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Request, BadMagic> {
        let w = RequestWire::read_from_bytes(b).expect("the header's size");
        if w.magic.get() != REQUEST_MAGIC {
            return Err(BadMagic(w.magic.get()));
        }
        let ty = w.ty.get();
        Ok(Request { cmd: ty as u16, flags: (ty >> 16) as u16, handle: w.handle, from: w.from.get(), len: w.len.get() })
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let w = RequestWire {
            magic: REQUEST_MAGIC.into(),
            ty: ((self.flags as u32) << 16 | self.cmd as u32).into(),
            handle: self.handle,
            from: self.from.into(),
            len: self.len.into(),
        };
        w.as_bytes().try_into().expect("the header's size")
    }

    /// Bytes of data that follow this header on the socket.
    pub fn payload_len(&self) -> u32 {
        if self.cmd == cmd::WRITE { self.len } else { 0 }
    }
}

/// A simple reply header.
pub fn reply(handle: [u8; 8], error: u32) -> [u8; REPLY_LEN] {
    let w = ReplyWire { magic: REPLY_MAGIC.into(), error: error.into(), handle };
    w.as_bytes().try_into().expect("the header's size")
}

/// A reply header read back: `(error, handle)`, or `None` if its magic is
/// wrong (for tests and the fuzz target, which play the kernel's part).
pub fn decode_reply(b: &[u8; REPLY_LEN]) -> Option<(u32, [u8; 8])> {
    let w = ReplyWire::read_from_bytes(b).expect("the header's size");
    (w.magic.get() == REPLY_MAGIC).then_some((w.error.get(), w.handle))
}

/// What the exported bdev can do, for [`check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub num_blocks: u64,
    /// The most bytes one read or write may move.
    pub max_io: u32,
    pub flush: bool,
    pub unmap: bool,
    pub write_zeroes: bool,
}

impl Geometry {
    /// The transmission flags to give the kernel (`NBD_SET_FLAGS`).
    pub fn transmission_flags(&self) -> u64 {
        let mut f = flags::HAS_FLAGS;
        if self.flush {
            f |= flags::SEND_FLUSH | flags::SEND_FUA;
        }
        if self.unmap {
            f |= flags::SEND_TRIM;
        }
        if self.write_zeroes {
            f |= flags::SEND_WRITE_ZEROES;
        }
        f
    }
}

/// What a request asks of the bdev, in blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read {
        offset_blocks: u64,
        num_blocks: u64,
    },
    /// `fua`: the data must be durable before the reply (a flush of the
    /// range follows the write).
    Write {
        offset_blocks: u64,
        num_blocks: u64,
        fua: bool,
    },
    Flush,
    Unmap {
        offset_blocks: u64,
        num_blocks: u64,
    },
    WriteZeroes {
        offset_blocks: u64,
        num_blocks: u64,
    },
    /// The kernel is done: answer what is outstanding, then close.
    Disconnect,
}

/// Why a request is refused: the errno its reply carries.
pub mod errno {
    pub const EIO: u32 = libc::EIO as u32;
    pub const EINVAL: u32 = libc::EINVAL as u32;
    pub const ENOSPC: u32 = libc::ENOSPC as u32;
    pub const ENOTSUP: u32 = libc::EOPNOTSUPP as u32;
}

/// Check a request against the bdev: the operation, or the errno to
/// answer with (the request's data, if any, is still read and dropped).
pub fn check(r: &Request, g: &Geometry) -> Result<Op, u32> {
    let bs = g.block_size as u64;
    let range = |limit: Option<u32>| -> Result<(u64, u64), u32> {
        if bs == 0 || r.from % bs != 0 || r.len as u64 % bs != 0 || r.len == 0 {
            return Err(errno::EINVAL);
        }
        if limit.is_some_and(|m| r.len > m) {
            return Err(errno::EINVAL);
        }
        let (off, n) = (r.from / bs, r.len as u64 / bs);
        match off.checked_add(n) {
            Some(end) if end <= g.num_blocks => Ok((off, n)),
            _ => Err(errno::ENOSPC),
        }
    };
    match r.cmd {
        cmd::READ => range(Some(g.max_io)).map(|(offset_blocks, num_blocks)| Op::Read { offset_blocks, num_blocks }),
        cmd::WRITE => {
            let fua = r.flags & CMD_FLAG_FUA != 0 && g.flush;
            range(Some(g.max_io)).map(|(offset_blocks, num_blocks)| Op::Write { offset_blocks, num_blocks, fua })
        }
        cmd::DISC => Ok(Op::Disconnect),
        cmd::FLUSH if g.flush => Ok(Op::Flush),
        cmd::TRIM if g.unmap => range(None).map(|(offset_blocks, num_blocks)| Op::Unmap { offset_blocks, num_blocks }),
        cmd::WRITE_ZEROES if g.write_zeroes => range(None).map(|(offset_blocks, num_blocks)| Op::WriteZeroes { offset_blocks, num_blocks }),
        _ => Err(errno::ENOTSUP),
    }
}

/// Splits the byte stream from the kernel into request headers and write
/// data, however the reads cut it.
#[derive(Debug, Default)]
pub struct Framer {
    hdr: [u8; REQUEST_LEN],
    have: usize,
    /// Data bytes of the current write still to come.
    left: u64,
}

/// What [`Framer::step`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole header (its data, if any, comes next).
    Request(Request),
    /// The stream is out of step.
    BadMagic(BadMagic),
    /// This many of the bytes consumed are the current write's data.
    Data(usize),
}

impl Framer {
    /// Consume a prefix of `input`: returns how many bytes were taken and
    /// what they completed (`None`: part of a header, kept here).
    pub fn step(&mut self, input: &[u8]) -> (usize, Option<Frame>) {
        if self.left > 0 {
            let n = (self.left.min(input.len() as u64)) as usize;
            self.left -= n as u64;
            return (n, (n > 0).then_some(Frame::Data(n)));
        }
        let n = (REQUEST_LEN - self.have).min(input.len());
        self.hdr[self.have..self.have + n].copy_from_slice(&input[..n]);
        self.have += n;
        if self.have < REQUEST_LEN {
            return (n, None);
        }
        self.have = 0;
        match Request::decode(&self.hdr) {
            Ok(r) => {
                self.left = r.payload_len() as u64;
                (n, Some(Frame::Request(r)))
            }
            Err(e) => (n, Some(Frame::BadMagic(e))),
        }
    }

    /// Data bytes of the current write still to come (read straight into
    /// its buffers, then [`Framer::took_data`]).
    pub fn data_left(&self) -> u64 {
        self.left
    }

    /// `n` bytes of the current write's data were read past the framer.
    pub fn took_data(&mut self, n: usize) {
        debug_assert!(n as u64 <= self.left);
        self.left = self.left.saturating_sub(n as u64);
    }

    /// Between requests: no header begun, no data owed.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Geometry = Geometry { block_size: 512, num_blocks: 1000, max_io: 1 << 20, flush: true, unmap: true, write_zeroes: false };

    fn req(cmd: u16, from: u64, len: u32) -> Request {
        Request { cmd, flags: 0, handle: *b"handle01", from, len }
    }

    #[test]
    fn headers_round_trip_and_bad_magic_is_caught() {
        let r = Request { cmd: cmd::WRITE, flags: CMD_FLAG_FUA, handle: [1, 2, 3, 4, 5, 6, 7, 8], from: 4096, len: 512 };
        let b = r.encode();
        assert_eq!(&b[0..4], &[0x25, 0x60, 0x95, 0x13]);
        assert_eq!(&b[4..8], &[0, 1, 0, 1]);
        assert_eq!(Request::decode(&b), Ok(r));
        let mut bad = b;
        bad[0] = 0;
        assert_eq!(Request::decode(&bad), Err(BadMagic(0x0060_9513)));
        let rep = reply(r.handle, 5);
        assert_eq!(decode_reply(&rep), Some((5, r.handle)));
    }

    #[test]
    fn requests_are_checked_against_the_bdev() {
        assert_eq!(check(&req(cmd::READ, 512, 1024), &G), Ok(Op::Read { offset_blocks: 1, num_blocks: 2 }));
        assert_eq!(check(&req(cmd::READ, 100, 512), &G), Err(errno::EINVAL));
        assert_eq!(check(&req(cmd::READ, 0, 0), &G), Err(errno::EINVAL));
        assert_eq!(check(&req(cmd::READ, 999 * 512, 1024), &G), Err(errno::ENOSPC));
        assert_eq!(check(&req(cmd::READ, u64::MAX - 511, 512), &G), Err(errno::ENOSPC));
        assert_eq!(check(&req(cmd::WRITE, 0, 2 << 20), &G), Err(errno::EINVAL));
        let mut fua = req(cmd::WRITE, 0, 512);
        fua.flags = CMD_FLAG_FUA;
        assert_eq!(check(&fua, &G), Ok(Op::Write { offset_blocks: 0, num_blocks: 1, fua: true }));
        assert_eq!(check(&fua, &Geometry { flush: false, ..G }), Ok(Op::Write { offset_blocks: 0, num_blocks: 1, fua: false }));
        assert_eq!(check(&req(cmd::FLUSH, 0, 0), &G), Ok(Op::Flush));
        assert_eq!(check(&req(cmd::FLUSH, 0, 0), &Geometry { flush: false, ..G }), Err(errno::ENOTSUP));
        assert_eq!(check(&req(cmd::TRIM, 0, 1000 * 512), &G), Ok(Op::Unmap { offset_blocks: 0, num_blocks: 1000 }));
        assert_eq!(check(&req(cmd::WRITE_ZEROES, 0, 512), &G), Err(errno::ENOTSUP));
        assert_eq!(check(&req(cmd::CACHE, 0, 512), &G), Err(errno::ENOTSUP));
        assert_eq!(check(&req(99, 0, 512), &G), Err(errno::ENOTSUP));
        assert_eq!(check(&req(cmd::DISC, 0, 0), &G), Ok(Op::Disconnect));
    }

    #[test]
    fn the_framer_splits_a_stream_however_it_is_cut() {
        let w = req(cmd::WRITE, 0, 5);
        let r = req(cmd::READ, 0, 512);
        let mut stream = w.encode().to_vec();
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&r.encode());
        for cut in 1..stream.len() {
            let mut f = Framer::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(cut) {
                let mut pos = 0;
                while pos < chunk.len() {
                    let (n, fr) = f.step(&chunk[pos..]);
                    assert!(n > 0);
                    pos += n;
                    match fr {
                        Some(Frame::Data(k)) => got.push(format!("data{k}")),
                        Some(Frame::Request(q)) => got.push(format!("req{}", q.cmd)),
                        Some(Frame::BadMagic(_)) => panic!("bad magic"),
                        None => {}
                    }
                }
            }
            assert!(f.at_boundary());
            let data: usize = got.iter().filter_map(|g| g.strip_prefix("data")).map(|k| k.parse::<usize>().unwrap()).sum();
            assert_eq!(data, 5, "cut {cut}: {got:?}");
            assert_eq!(got.first().map(String::as_str), Some("req1"));
            assert_eq!(got.last().map(String::as_str), Some("req0"));
        }
    }
}
