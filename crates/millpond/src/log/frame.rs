//! The frame codec: one message record in a segment file.
//!
//! ```text
//! offset  size  field
//! 0       4     crc32 of bytes [4, frame end)  (CRC-32/ISO-HDLC, crc32fast)
//! 4       4     payload length in bytes, u32
//! 8       8     id, u64
//! 16      8     timestamp, unix milliseconds, u64
//! 24      4     flags, u32 (bit 0: priority present, bit 1: not-before present)
//! 28      4     priority, u32                 (only with flag bit 0)
//! ..      8     not-before, unix ms, u64      (only with flag bit 1)
//! ..      n     payload
//! ```
//!
//! All integers are little-endian. Flags outside [`FLAGS_KNOWN`] make the
//! frame unreadable by this version (a newer writer): decoding reports it.

/// Bytes of the fixed frame header.
pub const HEADER_LEN: usize = 28;
const CRC_START: usize = 4;
const OFF_LEN: usize = 4;
const OFF_ID: usize = 8;
const OFF_TIMESTAMP: usize = 16;
const OFF_FLAGS: usize = 24;
const _: () = assert!(OFF_FLAGS + 4 == HEADER_LEN);

/// Flag: a u32 priority follows the header.
pub const FLAG_PRIORITY: u32 = 1;
/// Flag: a u64 not-before time follows the header (and the priority).
pub const FLAG_NOT_BEFORE: u32 = 1 << 1;
/// Every flag this version understands.
pub const FLAGS_KNOWN: u32 = FLAG_PRIORITY | FLAG_NOT_BEFORE;

/// The default priority of a message with no priority attribute.
pub const PRIORITY_DEFAULT: u32 = 0;

/// The attributes of a message besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attrs {
    /// Lower is delivered first. [`PRIORITY_DEFAULT`] is not stored.
    pub priority: u32,
    /// Unix milliseconds before which the message is not ready; 0 for none.
    pub not_before_ms: u64,
}

impl Attrs {
    /// What the frame counts as in its segment's priority floor: its
    /// priority, or 0 when it has a not-before time. A consumer group reads
    /// ahead only at the floor, so up to a delayed message it scans (and
    /// sets aside) every message, and so finds the delayed one for
    /// `peek_delayed` and `kick`.
    pub fn floor_priority(&self) -> u32 {
        if self.not_before_ms != 0 {
            0
        } else {
            self.priority
        }
    }

    fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.priority != PRIORITY_DEFAULT {
            flags |= FLAG_PRIORITY;
        }
        if self.not_before_ms != 0 {
            flags |= FLAG_NOT_BEFORE;
        }
        flags
    }
}

fn attrs_len(flags: u32) -> usize {
    let mut n = 0;
    if flags & FLAG_PRIORITY != 0 {
        n += 4;
    }
    if flags & FLAG_NOT_BEFORE != 0 {
        n += 8;
    }
    n
}

/// The encoded size of a frame.
pub fn frame_len(payload_len: usize, attrs: &Attrs) -> usize {
    HEADER_LEN + attrs_len(attrs.flags()) + payload_len
}

/// Appends one encoded frame to `out`.
pub fn encode(out: &mut Vec<u8>, id: u64, timestamp_ms: u64, attrs: &Attrs, payload: &[u8]) {
    let payload_len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    let flags = attrs.flags();
    let start = out.len();
    out.reserve(HEADER_LEN + attrs_len(flags) + payload.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    if flags & FLAG_PRIORITY != 0 {
        out.extend_from_slice(&attrs.priority.to_le_bytes());
    }
    if flags & FLAG_NOT_BEFORE != 0 {
        out.extend_from_slice(&attrs.not_before_ms.to_le_bytes());
    }
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + CRC_START..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(
        id == u64::MAX
            || matches!(decode(&out[start..], u32::MAX), Decoded::Frame(f) if f.id == id)
    );
}

/// A frame decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The message id.
    pub id: u64,
    /// When it was pushed, unix milliseconds.
    pub timestamp_ms: u64,
    /// Priority and delay.
    pub attrs: Attrs,
    /// The payload bytes.
    pub payload: &'a [u8],
    /// Encoded length of the whole frame.
    pub len: usize,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// The stored checksum does not match the bytes.
    Crc {
        /// Checksum in the frame.
        expected: u32,
        /// Checksum of the bytes.
        found: u32,
    },
    /// The length field is above the limit.
    Length(u32),
    /// Flags this version does not know (written by a newer version).
    Flags(u32),
    /// The id `u64::MAX`, which no writer hands out (the id after it could
    /// not be represented).
    IdMax,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bad::Crc { expected, found } => {
                write!(
                    f,
                    "frame checksum mismatch: stored {expected:#010x}, computed {found:#010x}"
                )
            }
            Bad::Length(n) => write!(f, "frame length {n} exceeds the message size limit"),
            Bad::Flags(flags) => write!(f, "frame flags {flags:#x} unknown to this version"),
            Bad::IdMax => write!(f, "frame id is u64::MAX, which is never written"),
        }
    }
}

/// The result of decoding at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid frame.
    Frame(FrameRef<'a>),
    /// The bytes end before the frame does (a torn or unfinished tail), or
    /// there are no bytes.
    Incomplete,
    /// The bytes are not a valid frame.
    Bad(Bad),
}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

/// Decodes the frame at the start of `buf`, checking its CRC.
/// `payload_len_max` bounds the length field so a damaged length is
/// reported as such rather than read as a huge frame.
pub fn decode(buf: &[u8], payload_len_max: u32) -> Decoded<'_> {
    if buf.len() < HEADER_LEN {
        return Decoded::Incomplete;
    }
    let payload_len = u32_at(buf, OFF_LEN);
    let flags = u32_at(buf, OFF_FLAGS);
    if payload_len > payload_len_max {
        return Decoded::Bad(Bad::Length(payload_len));
    }
    let attrs_len = attrs_len(flags & FLAGS_KNOWN);
    let len = HEADER_LEN + attrs_len + payload_len as usize;
    if buf.len() < len {
        return Decoded::Incomplete;
    }
    let expected = u32_at(buf, 0);
    let found = crc32fast::hash(&buf[CRC_START..len]);
    if expected != found {
        return Decoded::Bad(Bad::Crc { expected, found });
    }
    if flags & !FLAGS_KNOWN != 0 {
        return Decoded::Bad(Bad::Flags(flags));
    }
    let id = u64_at(buf, OFF_ID);
    if id == u64::MAX {
        return Decoded::Bad(Bad::IdMax);
    }
    let mut off = HEADER_LEN;
    let mut attrs = Attrs::default();
    if flags & FLAG_PRIORITY != 0 {
        attrs.priority = u32_at(buf, off);
        off += 4;
    }
    if flags & FLAG_NOT_BEFORE != 0 {
        attrs.not_before_ms = u64_at(buf, off);
        off += 8;
    }
    Decoded::Frame(FrameRef {
        id,
        timestamp_ms: u64_at(buf, OFF_TIMESTAMP),
        attrs,
        payload: &buf[off..len],
        len,
    })
}

/// Reads the id field of a frame header without checking anything (for
/// resynchronisation, which checks the CRC afterwards).
pub fn peek_id(buf: &[u8]) -> Option<u64> {
    (buf.len() >= HEADER_LEN).then(|| u64_at(buf, OFF_ID))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_documented_layout() {
        let mut out = Vec::new();
        encode(&mut out, 7, 1000, &Attrs::default(), b"hi");
        assert_eq!(out.len(), HEADER_LEN + 2);
        assert_eq!(u32_at(&out, 4), 2);
        assert_eq!(u64_at(&out, 8), 7);
        assert_eq!(u64_at(&out, 16), 1000);
        assert_eq!(u32_at(&out, 24), 0);
        assert_eq!(&out[28..], b"hi");
        assert_eq!(u32_at(&out, 0), crc32fast::hash(&out[4..]));
    }

    #[test]
    fn attributes_round_trip() {
        let attrs = Attrs {
            priority: 9,
            not_before_ms: 123_456,
        };
        let mut out = Vec::new();
        encode(&mut out, 1, 2, &attrs, b"payload");
        assert_eq!(out.len(), frame_len(7, &attrs));
        let Decoded::Frame(f) = decode(&out, 100) else {
            panic!("valid frame did not decode")
        };
        assert_eq!(f.attrs, attrs);
        assert_eq!(f.payload, b"payload");
    }

    #[test]
    fn flipped_bit_is_a_crc_error() {
        let mut out = Vec::new();
        encode(&mut out, 3, 4, &Attrs::default(), b"abcdef");
        out[30] ^= 0x10;
        assert!(matches!(decode(&out, 100), Decoded::Bad(Bad::Crc { .. })));
    }

    #[test]
    fn unknown_flags_are_reported() {
        let mut out = Vec::new();
        encode(&mut out, 3, 4, &Attrs::default(), b"abc");
        out[24..28].copy_from_slice(&0x100u32.to_le_bytes());
        let crc = crc32fast::hash(&out[4..]);
        out[0..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&out, 100), Decoded::Bad(Bad::Flags(0x100)));
    }

    #[test]
    fn short_and_oversize_inputs() {
        let mut out = Vec::new();
        encode(&mut out, 3, 4, &Attrs::default(), &[5; 50]);
        assert_eq!(decode(&out[..out.len() - 1], 100), Decoded::Incomplete);
        assert_eq!(decode(&out[..10], 100), Decoded::Incomplete);
        assert_eq!(decode(&out, 49), Decoded::Bad(Bad::Length(50)));
    }

    proptest! {
        #[test]
        fn round_trip(id: u64, ts: u64, priority: u32, nb: u64, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let attrs = Attrs { priority, not_before_ms: nb };
            let mut out = vec![0xAA; 3];
            encode(&mut out, id, ts, &attrs, &payload);
            match decode(&out[3..], 1000) {
                Decoded::Bad(Bad::IdMax) => prop_assert_eq!(id, u64::MAX),
                Decoded::Frame(f) => {
                    prop_assert_eq!(f.id, id);
                    prop_assert_eq!(f.timestamp_ms, ts);
                    prop_assert_eq!(f.attrs, attrs);
                    prop_assert_eq!(f.payload, &payload[..]);
                    prop_assert_eq!(f.len, out.len() - 3);
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), max in 0u32..1000) {
            if let Decoded::Frame(f) = decode(&bytes, max) {
                prop_assert!(f.len <= bytes.len());
                prop_assert!(f.payload.len() as u32 <= max);
            }
        }
    }
}
