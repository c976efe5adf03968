//! A segment file: a header, then frames in id order.
//!
//! ```text
//! segment file (NNNNNNNNNNNNNNNNNNNN.seg, named by its first id, 20 digits)
//! offset  size  field
//! 0       8     magic "MLPDSEG\0"
//! 8       4     format version, u32 (1)
//! 12      4     reserved, 0
//! 16      8     first id, u64 (equals the number in the file name)
//! 24      4     reserved, 0
//! 28      4     crc32 of bytes [0, 28)
//! 32      ...   frames (see `frame`)
//! ```
//!
//! This module also owns the scan that recovery and index rebuilds share:
//! walk the frames, and on a bad one decide whether it is a torn tail (no
//! valid frame follows) or interior damage (valid frames follow, which stay
//! readable).

use std::path::{Path, PathBuf};

use super::frame::{self, Decoded};

/// Segment file magic.
pub const MAGIC: [u8; 8] = *b"MLPDSEG\0";
/// Segment format version written by this build.
pub const VERSION: u32 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: u64 = 32;
const OFF_CRC: usize = 28;
const _: () = assert!(OFF_CRC + 4 == HEADER_LEN as usize);

/// Encodes a segment header.
pub fn encode_header(first_id: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_id.to_le_bytes());
    let crc = crc32fast::hash(&h[..OFF_CRC]);
    h[OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Short,
    /// Damaged or not a segment.
    Invalid(String),
    /// Written by a newer version.
    Version(u32),
}

/// Checks a segment header against the first id its name promises.
pub fn decode_header(bytes: &[u8], first_id: u64) -> Result<(), HeaderError> {
    if bytes.len() < HEADER_LEN as usize {
        return Err(HeaderError::Short);
    }
    let h = &bytes[..HEADER_LEN as usize];
    let stored = u32::from_le_bytes(h[OFF_CRC..].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&h[..OFF_CRC]);
    if h[..8] != MAGIC {
        return Err(HeaderError::Invalid(
            "bad magic: not a millpond segment".into(),
        ));
    }
    if stored != computed {
        return Err(HeaderError::Invalid(format!(
            "header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version > VERSION {
        return Err(HeaderError::Version(version));
    }
    let id = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if id != first_id {
        return Err(HeaderError::Invalid(format!(
            "header says first id {id}, file name says {first_id}"
        )));
    }
    Ok(())
}

/// The file name of the segment starting at `first_id`.
pub fn file_name(first_id: u64) -> String {
    format!("{first_id:020}.seg")
}

/// The file name of that segment's index.
pub fn index_file_name(first_id: u64) -> String {
    format!("{first_id:020}.idx")
}

/// Parses a segment file name back into its first id.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Paths of a segment and its index in `dir`.
pub fn paths(dir: &Path, first_id: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(file_name(first_id)),
        dir.join(index_file_name(first_id)),
    )
}

/// A range of bytes that failed their check, with valid frames after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first bad byte in the segment file.
    pub offset: u64,
    /// Length of the damaged range.
    pub len: u64,
    /// What failed.
    pub detail: String,
}

/// What a scan of segment bytes found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// End of the last valid frame (where the next frame would go).
    pub end: u64,
    /// One past the last valid id seen (or the `next_id` passed in).
    pub next_id: u64,
    /// Number of valid frames.
    pub frames: u64,
    /// The lowest [`floor_priority`](super::frame::Attrs::floor_priority)
    /// among the valid frames (`None` without frames).
    pub min_priority: Option<u32>,
    /// New sparse index entries.
    pub entries: Vec<(u64, u64)>,
    /// Interior damage: bad bytes followed by valid frames.
    pub damage: Vec<Damage>,
    /// The bad or incomplete bytes at the end, if any: (offset, len, what).
    pub torn: Option<(u64, u64, String)>,
    /// A frame with a valid checksum but flags unknown to this version
    /// (written by a newer millpond): (offset, flags). The scan stops there.
    pub newer: Option<(u64, u32)>,
}

/// Scans `bytes` (a whole segment file) from `start`, where the next id is
/// expected to be at least `next_id`. `last_entry_pos` is the position of
/// the last existing index entry, so new entries keep their spacing.
pub fn scan(
    bytes: &[u8],
    start: u64,
    next_id: u64,
    last_entry_pos: Option<u64>,
    index_interval: u64,
    payload_len_max: u32,
) -> Scan {
    let mut s = Scan {
        end: start,
        next_id,
        ..Scan::default()
    };
    let mut last_entry = last_entry_pos;
    let mut pos = start as usize;
    while pos < bytes.len() {
        match frame::decode(&bytes[pos..], payload_len_max) {
            Decoded::Frame(f) if f.id >= s.next_id => {
                if last_entry.is_none_or(|p| pos as u64 >= p + index_interval) {
                    s.entries.push((f.id, pos as u64));
                    last_entry = Some(pos as u64);
                }
                s.next_id = f.id + 1;
                s.frames += 1;
                let p = f.attrs.floor_priority();
                s.min_priority = Some(s.min_priority.map_or(p, |m| m.min(p)));
                pos += f.len;
                s.end = pos as u64;
            }
            Decoded::Bad(frame::Bad::Flags(flags)) => {
                s.newer = Some((pos as u64, flags));
                break;
            }
            other => {
                let detail = match other {
                    Decoded::Frame(f) => {
                        format!("frame id {} does not follow id {}", f.id, s.next_id - 1)
                    }
                    Decoded::Incomplete => "incomplete frame".to_string(),
                    Decoded::Bad(b) => b.to_string(),
                };
                // Zeros to the end (the writer's preallocation, up to a
                // MiB): no frame can follow, so skip the byte-by-byte search.
                if bytes[pos..].iter().all(|&b| b == 0) {
                    s.torn = Some((pos as u64, (bytes.len() - pos) as u64, detail));
                    break;
                }
                match resync(bytes, pos + 1, s.next_id, payload_len_max) {
                    Some(next) => {
                        s.damage.push(Damage {
                            offset: pos as u64,
                            len: (next - pos) as u64,
                            detail,
                        });
                        pos = next;
                    }
                    None => {
                        s.torn = Some((pos as u64, (bytes.len() - pos) as u64, detail));
                        break;
                    }
                }
            }
        }
    }
    s
}

/// The disk's unit of atomic writes; a sector of an unsynced write may
/// land or not, independently of its neighbours.
pub const SECTOR_BYTES: usize = 512;

/// Whether the damaged range `[offset, offset + len)` of a segment's bytes
/// `map` (the first one recovery meets in the newest segment) is a sector
/// of unsynced writes that did not land while later ones did. The sector's
/// old contents were the frames before `offset` and the zeros written
/// ahead of them, so the range is one of:
///
/// - zeros to its end;
/// - zeros from `offset` to the next sector boundary at least 4 bytes on,
///   then anything (the sector after it landed, holding the rest of the
///   frame that began at `offset`; it may itself begin with zero bytes).
///   A durable frame damaged by a bit flip starts with its CRC, 4 zero
///   bytes once in 2^32, and a flip leaves the rest of the frame in place;
/// - the boundary 1 to 3 bytes on, inside the frame's CRC: those bytes
///   zero and the rest of the frame intact, so that the stored CRC is the
///   computed one with its first bytes zeroed.
///
/// Returns the bytes from `offset` to the end of the lost part (the
/// range's length when it is all zeros). `None` for anything else, and for
/// an empty range or one outside `map`.
pub fn unsynced_gap(map: &[u8], offset: u64, len: u64) -> Option<u64> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let range = map.get(start..end).filter(|r| !r.is_empty())?;
    let zeros = range.iter().position(|&b| b != 0).unwrap_or(range.len());
    if zeros == range.len() {
        return Some(zeros as u64);
    }
    let lost = SECTOR_BYTES - start % SECTOR_BYTES;
    if lost >= 4 {
        return (zeros >= lost).then_some(lost as u64);
    }
    match crate::log::frame::decode(&map[start..], u32::MAX) {
        crate::log::frame::Decoded::Bad(crate::log::frame::Bad::Crc { expected, found }) => {
            let (stored, computed) = (expected.to_le_bytes(), found.to_le_bytes());
            (stored[..lost].iter().all(|&b| b == 0) && stored[lost..] == computed[lost..])
                .then_some(lost as u64)
        }
        _ => None,
    }
}

/// What a hole that [`unsynced_gap`] recognised is, for a report: `lost`
/// bytes from its start (what it returned) of a damaged range of
/// `damaged`, with `frames_after` valid frames after it that are dropped
/// with it.
pub fn unsynced_gap_detail(lost: u64, damaged: u64, frames_after: u64) -> String {
    let rest = if lost < damaged {
        format!(
            " to a sector boundary, then {} bytes of a frame begun in it,",
            damaged - lost
        )
    } else {
        String::new()
    };
    format!(
        "zero-filled gap of {lost} bytes{rest} followed by {frames_after} frames never made durable (unsynced writes reached the disk out of order)"
    )
}

/// Finds the first offset at or after `from` where a valid frame with an id
/// of at least `next_id` starts.
pub fn resync(bytes: &[u8], from: usize, next_id: u64, payload_len_max: u32) -> Option<usize> {
    // An id more than this far ahead is taken as noise, not a frame.
    const ID_SKEW_MAX: u64 = 1 << 40;
    (from..bytes.len().saturating_sub(frame::HEADER_LEN - 1)).find(|&p| {
        let Some(id) = frame::peek_id(&bytes[p..]) else {
            return false;
        };
        id >= next_id
            && id - next_id < ID_SKEW_MAX
            && matches!(
                frame::decode(&bytes[p..], payload_len_max),
                Decoded::Frame(_)
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::frame::{Attrs, encode};

    #[test]
    fn unsynced_gap_is_zeros_to_the_end_or_to_a_sector_boundary() {
        let mut b = vec![7u8; 2048];
        b[500..512].fill(0);
        // Zeros to a sector boundary, then the rest of a frame.
        assert_eq!(unsynced_gap(&b, 500, 100), Some(12));
        // All zeros.
        assert_eq!(unsynced_gap(&b, 500, 12), Some(12));
        // Zeros that stop short of the boundary: damage.
        b[510] = 1;
        assert_eq!(unsynced_gap(&b, 500, 100), None);
        // Fewer than 4 zeros to the boundary: a frame's CRC could start so.
        let mut b = vec![7u8; 2048];
        b[1021..1024].fill(0);
        assert_eq!(unsynced_gap(&b, 1021, 50), None);
        b[1020] = 0;
        assert_eq!(unsynced_gap(&b, 1020, 50), Some(4));
        // Damage that does not start with zeros.
        assert_eq!(unsynced_gap(&b, 1000, 50), None);
        // The sector after the lost one may begin with zero bytes itself.
        let mut b = vec![7u8; 2048];
        b[1000..1030].fill(0);
        assert_eq!(unsynced_gap(&b, 1000, 100), Some(24));
        // The boundary inside a frame's CRC: its first bytes lost, the rest
        // of the frame intact.
        let mut b = vec![7u8; 1022];
        encode(&mut b, 9, 1, &Attrs::default(), &[5u8; 100]);
        let frame_len = (b.len() - 1022) as u64;
        b[1022..1024].fill(0);
        assert_eq!(unsynced_gap(&b, 1022, frame_len), Some(2));
        // ... but not when the frame is damaged elsewhere too.
        b[1100] ^= 1;
        assert_eq!(unsynced_gap(&b, 1022, frame_len), None);
        // Ranges it cannot look at.
        let b = vec![7u8; 2048];
        assert_eq!(unsynced_gap(&b, 2040, 50), None);
        assert_eq!(unsynced_gap(&b, 1020, 0), None);
        assert_eq!(unsynced_gap(&b, u64::MAX, 2), None);
    }

    fn segment(first: u64, n: u64) -> Vec<u8> {
        let mut b = encode_header(first).to_vec();
        for id in first..first + n {
            encode(&mut b, id, 0, &Attrs::default(), &[id as u8; 40]);
        }
        b
    }

    #[test]
    fn header_round_trip_and_errors() {
        let h = encode_header(42);
        assert_eq!(decode_header(&h, 42), Ok(()));
        assert!(matches!(
            decode_header(&h, 43),
            Err(HeaderError::Invalid(_))
        ));
        assert_eq!(decode_header(&h[..10], 42), Err(HeaderError::Short));
        let mut newer = h;
        newer[8] = 9;
        let crc = crc32fast::hash(&newer[..28]);
        newer[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&newer, 42), Err(HeaderError::Version(9)));
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(1234), "00000000000000001234.seg");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("1234.seg"), None);
        assert_eq!(parse_file_name("00000000000000001234.idx"), None);
    }

    #[test]
    fn scan_finds_torn_tail() {
        let mut b = segment(5, 10);
        let full = b.len();
        b.truncate(full - 7);
        let s = scan(&b, HEADER_LEN, 5, None, 100, 1000);
        assert_eq!(s.frames, 9);
        assert_eq!(s.next_id, 14);
        let (off, len, _) = s.torn.expect("torn tail");
        assert_eq!(off, s.end);
        assert_eq!(off + len, b.len() as u64);
        assert!(s.damage.is_empty());
    }

    #[test]
    fn scan_skips_interior_damage_and_keeps_later_frames() {
        let mut b = segment(1, 10);
        let frame_len = 28 + 40;
        // Damage the payload of the third frame.
        b[HEADER_LEN as usize + 2 * frame_len + 30] ^= 0xff;
        let s = scan(&b, HEADER_LEN, 1, None, 1, 1000);
        assert_eq!(s.frames, 9);
        assert_eq!(s.next_id, 11);
        assert_eq!(s.torn, None);
        assert_eq!(
            s.damage,
            vec![Damage {
                offset: HEADER_LEN + 2 * frame_len as u64,
                len: frame_len as u64,
                detail: s.damage[0].detail.clone(),
            }]
        );
        assert!(s.damage[0].detail.contains("checksum"));
        assert_eq!(s.entries.len(), 9);
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let mut b = segment(1, 3);
        let end = b.len() as u64;
        b.extend_from_slice(&[0; 1024]);
        let s = scan(&b, HEADER_LEN, 1, None, 4096, 1000);
        assert_eq!(s.end, end);
        assert_eq!(s.torn.map(|t| (t.0, t.1)), Some((end, 1024)));
    }
}
