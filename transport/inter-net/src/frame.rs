//! The wire format: a fixed 56-byte little-endian header, then `chunk_len` payload bytes.
//!
//! ```text
//!  0  magic  u16 = 0x4E54 ("TN")   2  version u8 = 1   3  kind u8
//!  4  source u32    8  dest u32    12  tag i32    16  context u32    20  seq u32
//! 24  len u64      32  offset u64  40  cookie u64
//! 48  chunk_len u32                52  check u32 (FNV-1a of bytes 0..52)
//! ```
//!
//! Every frame is checked on its own here (`decode`): magic, version, kind, checksum,
//! chunk bounds and the per-kind rules below. What depends on the connection (which
//! ranks may appear, sequence numbers, credits) is checked by `conn`.
//!
//! Why hand-written and not rkyv: the header is one fixed-size record of integers,
//! read from a byte stream at arbitrary offsets (no alignment), and its validation is
//! a dozen comparisons. rkyv's validated access would need an aligned copy first and
//! would check only structure, not our rules; the plain decoder is shorter, has no
//! dependency and is easy to fuzz (`fuzz/fuzz_targets/frame.rs`).

use mpi::transport::{Header, MessageKind};

pub const MAGIC: u16 = 0x4E54;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 56;
/// Largest payload carried by one frame.
pub const MAX_CHUNK: usize = 1 << 20;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One chunk of an MPI message (the three MPI message kinds).
    Message(MessageKind),
    /// First frame on a connection: `source`/`dest` are the VM indices, `len` the world
    /// size, `cookie` the job id.
    Hello,
    /// Flow control: rank `source` (receiver) lets rank `dest` (sender) send `len`
    /// more bytes (frame headers included) to it.
    Credit,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Message(kind) => kind as u8,
            Kind::Hello => 0x10,
            Kind::Credit => 0x11,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            0 => Kind::Message(MessageKind::Data),
            1 => Kind::Message(MessageKind::SyncData),
            2 => Kind::Message(MessageKind::SyncAck),
            0x10 => Kind::Hello,
            0x11 => Kind::Credit,
            _ => return None,
        })
    }
}

/// A decoded, self-consistent frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub source: u32,
    pub dest: u32,
    pub tag: i32,
    pub context: u32,
    pub seq: u32,
    pub len: u64,
    pub offset: u64,
    pub cookie: u64,
    pub chunk_len: u32,
}

/// Why a header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    BadMagic(u16),
    BadVersion(u8),
    BadKind(u8),
    BadChecksum { expected: u32, found: u32 },
    /// `chunk_len` above `MAX_CHUNK`, or `offset + chunk_len > len`.
    BadChunk { offset: u64, chunk_len: u32, len: u64 },
    /// A control frame (hello, credit) or an ack with fields that must be zero.
    BadControl(Kind),
    /// A message longer than this machine's address space.
    TooLong(u64),
}

impl Frame {
    /// First (or only) chunk of an MPI message.
    pub fn message(header: &Header, seq: u32, offset: u64, chunk_len: u32) -> Frame {
        Frame {
            kind: Kind::Message(header.kind),
            source: header.source,
            dest: header.dest,
            tag: header.tag,
            context: header.context,
            seq,
            len: header.len as u64,
            offset,
            cookie: header.cookie,
            chunk_len,
        }
    }

    pub fn hello(from_vm: u32, to_vm: u32, world: u32, job: u64) -> Frame {
        Frame { kind: Kind::Hello, source: from_vm, dest: to_vm, tag: 0, context: 0, seq: 0, len: world as u64, offset: 0, cookie: job, chunk_len: 0 }
    }

    pub fn credit(receiver: u32, sender: u32, bytes: u64) -> Frame {
        Frame { kind: Kind::Credit, source: receiver, dest: sender, tag: 0, context: 0, seq: 0, len: bytes, offset: 0, cookie: 0, chunk_len: 0 }
    }

    /// The MPI envelope of a message frame.
    pub fn header(&self) -> Option<Header> {
        let Kind::Message(kind) = self.kind else { return None };
        Some(Header {
            source: self.source,
            dest: self.dest,
            tag: self.tag,
            context: self.context,
            len: usize::try_from(self.len).ok()?,
            kind,
            cookie: self.cookie,
        })
    }

    /// Bytes this frame occupies on the wire (counted against credits).
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.chunk_len as usize
    }

    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        out[2] = VERSION;
        out[3] = self.kind.code();
        out[4..8].copy_from_slice(&self.source.to_le_bytes());
        out[8..12].copy_from_slice(&self.dest.to_le_bytes());
        out[12..16].copy_from_slice(&self.tag.to_le_bytes());
        out[16..20].copy_from_slice(&self.context.to_le_bytes());
        out[20..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.len.to_le_bytes());
        out[32..40].copy_from_slice(&self.offset.to_le_bytes());
        out[40..48].copy_from_slice(&self.cookie.to_le_bytes());
        out[48..52].copy_from_slice(&self.chunk_len.to_le_bytes());
        let check = checksum(&out[..52]);
        out[52..56].copy_from_slice(&check.to_le_bytes());
    }

    /// Decodes and checks one header (the first `HEADER_LEN` bytes of `bytes`).
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Frame, FrameError> {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        let magic = u16_at(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if bytes[2] != VERSION {
            return Err(FrameError::BadVersion(bytes[2]));
        }
        let expected = checksum(&bytes[..52]);
        let found = u32_at(52);
        if expected != found {
            return Err(FrameError::BadChecksum { expected, found });
        }
        let kind = Kind::from_code(bytes[3]).ok_or(FrameError::BadKind(bytes[3]))?;
        let frame = Frame {
            kind,
            source: u32_at(4),
            dest: u32_at(8),
            tag: u32_at(12) as i32,
            context: u32_at(16),
            seq: u32_at(20),
            len: u64_at(24),
            offset: u64_at(32),
            cookie: u64_at(40),
            chunk_len: u32_at(48),
        };
        frame.check()?;
        Ok(frame)
    }

    fn check(&self) -> Result<(), FrameError> {
        match self.kind {
            Kind::Hello | Kind::Credit => {
                if self.chunk_len != 0 || self.offset != 0 || self.tag != 0 || self.context != 0 || self.seq != 0 {
                    return Err(FrameError::BadControl(self.kind));
                }
                if self.kind == Kind::Credit && (self.cookie != 0 || self.len == 0) {
                    return Err(FrameError::BadControl(self.kind));
                }
                Ok(())
            }
            Kind::Message(kind) => {
                if kind == MessageKind::SyncAck && (self.len != 0 || self.tag != 0) {
                    return Err(FrameError::BadControl(self.kind));
                }
                if usize::try_from(self.len).is_err() {
                    return Err(FrameError::TooLong(self.len));
                }
                let end = self.offset.checked_add(u64::from(self.chunk_len));
                let chunk_ok = self.chunk_len as usize <= MAX_CHUNK
                    && end.is_some_and(|end| end <= self.len)
                    // Only a zero-length message has an empty chunk, and only one.
                    && (self.chunk_len > 0 || (self.len == 0 && self.offset == 0));
                if !chunk_ok {
                    return Err(FrameError::BadChunk { offset: self.offset, chunk_len: self.chunk_len, len: self.len });
                }
                Ok(())
            }
        }
    }
}

/// Writes the checksum of an encoded header's first 52 bytes into its last 4, so that
/// `decode` looks past it (for fuzzing and tests that forge headers).
pub fn seal(bytes: &mut [u8; HEADER_LEN]) {
    let check = checksum(&bytes[..52]);
    bytes[52..56].copy_from_slice(&check.to_le_bytes());
}

/// FNV-1a, 32 bits: catches a stream that lost its framing (TCP checks the bytes).
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        let header = Header { source: 3, dest: 7, tag: -5, context: 9, len: 100_000, kind: MessageKind::SyncData, cookie: 0xdead_beef_1234 };
        Frame::message(&header, 42, 65_536, 34_464)
    }

    #[test]
    fn round_trip_every_kind() {
        let ack = Header { source: 1, dest: 2, tag: 0, context: 4, len: 0, kind: MessageKind::SyncAck, cookie: 77 };
        for frame in [sample(), Frame::message(&ack, 1, 0, 0), Frame::hello(0, 1, 8, 0xabc), Frame::credit(2, 5, 4096)] {
            let mut bytes = [0u8; HEADER_LEN];
            frame.encode(&mut bytes);
            assert_eq!(Frame::decode(&bytes), Ok(frame));
        }
        assert_eq!(sample().header().map(|h| (h.len, h.tag, h.cookie)), Some((100_000, -5, 0xdead_beef_1234)));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let mut good = [0u8; HEADER_LEN];
        sample().encode(&mut good);
        for bit in 0..HEADER_LEN * 8 {
            let mut bytes = good;
            bytes[bit / 8] ^= 1 << (bit % 8);
            assert!(Frame::decode(&bytes).is_err(), "bit {} flipped was accepted", bit);
        }
    }

    fn reencode(mut edit: impl FnMut(&mut Frame)) -> Result<Frame, FrameError> {
        let mut frame = sample();
        edit(&mut frame);
        let mut bytes = [0u8; HEADER_LEN];
        frame.encode(&mut bytes);
        Frame::decode(&bytes)
    }

    #[test]
    fn inconsistent_fields_are_refused() {
        assert!(matches!(reencode(|f| f.offset = 70_000), Err(FrameError::BadChunk { .. })));
        assert!(matches!(reencode(|f| f.chunk_len = MAX_CHUNK as u32 + 1), Err(FrameError::BadChunk { .. })));
        assert!(matches!(reencode(|f| f.offset = u64::MAX), Err(FrameError::BadChunk { .. })));
        assert!(matches!(reencode(|f| f.chunk_len = 0), Err(FrameError::BadChunk { .. })));
        assert!(reencode(|f| { f.len = 0; f.offset = 0; f.chunk_len = 0 }).is_ok());
        assert!(matches!(reencode(|f| { f.kind = Kind::Credit }), Err(FrameError::BadControl(Kind::Credit))));
        assert!(matches!(reencode(|f| { f.kind = Kind::Message(MessageKind::SyncAck) }), Err(FrameError::BadControl(_))));
        let mut bytes = [0u8; HEADER_LEN];
        sample().encode(&mut bytes);
        bytes[3] = 9;
        seal(&mut bytes);
        assert_eq!(Frame::decode(&bytes), Err(FrameError::BadKind(9)));
        assert!(matches!(Frame::decode(&[0u8; HEADER_LEN]), Err(FrameError::BadMagic(0))));
    }
}
