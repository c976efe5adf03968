//! Payloads that name themselves, and a reader of segment files for aiming
//! bit flips.
//!
//! Every message of a seed is the key `(queue, seq)` in its first 8 bytes
//! followed by filler derived from the seed and the key, so any bytes a
//! consumer gets can be traced back to one push and compared byte for byte
//! with what was pushed, whatever id they arrive under.

use crate::rng::Rng;

/// Bytes of the self-describing header of a payload.
pub const HEADER_BYTES: usize = 8;
const MAGIC: [u8; 3] = *b"mps";

/// The payload of the `seq`-th push into queue `queue` of seed `seed`.
/// Mostly up to a few hundred bytes; one in 40 is larger than a 4 KiB
/// segment, so it gets a segment of its own.
pub fn payload(seed: u64, queue: u8, seq: u32) -> Vec<u8> {
    let mut rng = Rng::new(
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
            ^ (u64::from(queue) << 56)
            ^ (u64::from(seq) << 8)
            ^ 0x7061_796C,
    );
    let filler = if rng.one_in(40) {
        rng.range(3000, 7000)
    } else {
        rng.below(240)
    } as usize;
    let len = HEADER_BYTES + filler;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&MAGIC);
    b.push(queue);
    b.extend_from_slice(&seq.to_le_bytes());
    while b.len() < len {
        let x = rng.next_u64().to_le_bytes();
        let n = (len - b.len()).min(8);
        b.extend_from_slice(&x[..n]);
    }
    b
}

/// The `(queue, seq)` a payload claims to be, if it has the header.
pub fn decode(bytes: &[u8]) -> Option<(u8, u32)> {
    if bytes.len() < HEADER_BYTES || bytes[..3] != MAGIC {
        return None;
    }
    let seq = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    Some((bytes[3], seq))
}

/// CRC-32/ISO-HDLC, the checksum of millpond frames.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Bytes of a segment file's header (`docs/format.md`).
pub const SEGMENT_HEADER_BYTES: usize = 32;
const FRAME_HEADER_BYTES: usize = 28;

/// One valid frame found in a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAt {
    /// Offset of the frame in the file.
    pub offset: u64,
    /// Length of the whole frame.
    pub len: u64,
    /// The message id in the frame.
    pub id: u64,
    /// The key its payload claims, if any.
    pub key: Option<(u8, u32)>,
}

/// The valid frames of a segment file, in order, up to the first one that
/// fails its check (the frame layout of `docs/format.md`: crc, length, id,
/// timestamp, flags, optional priority and not-before, payload).
pub fn frames(bytes: &[u8]) -> Vec<FrameAt> {
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES;
    while pos + FRAME_HEADER_BYTES <= bytes.len() {
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let crc = u32_at(pos);
        let payload_len = u32_at(pos + 4) as usize;
        let id = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().expect("8 bytes"));
        let flags = u32_at(pos + 24);
        if flags & !3 != 0 {
            break;
        }
        let attrs = if flags & 1 != 0 { 4 } else { 0 } + if flags & 2 != 0 { 8 } else { 0 };
        let len = FRAME_HEADER_BYTES + attrs + payload_len;
        if pos + len > bytes.len() || crc32(&bytes[pos + 4..pos + len]) != crc {
            break;
        }
        let payload_start = pos + FRAME_HEADER_BYTES + attrs;
        out.push(FrameAt {
            offset: pos as u64,
            len: len as u64,
            id,
            key: decode(&bytes[payload_start..pos + len]),
        });
        pos += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_deterministic_and_name_themselves() {
        for seq in 0..500 {
            let p = payload(9, 2, seq);
            assert_eq!(p, payload(9, 2, seq));
            assert_eq!(decode(&p), Some((2, seq)));
            assert_ne!(p, payload(10, 2, seq));
        }
        assert_eq!(decode(b"short"), None);
    }

    #[test]
    fn crc_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
