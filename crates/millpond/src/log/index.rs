//! The sparse index of a segment: (id, position) pairs, one about every
//! `index_interval_bytes`, and its file codec.
//!
//! ```text
//! index file (NNNNNNNNNNNNNNNNNNNN.idx), version 2
//! offset  size  field
//! 0       8     magic "MLPDIDX\0"
//! 8       4     format version, u32 (2)
//! 12      4     entry count n, u32
//! 16      8     first id of the segment, u64
//! 24      8     covered bytes: the segment's length this index describes
//! 32      8     next id: one past the last id in the covered bytes
//! 40      4     priority floor, u32: no frame in the covered bytes has a
//!               lower priority
//! 44      4     crc32 of the entries, [56, 56 + 16n)
//! 48      4     reserved, zero
//! 52      4     crc32 of the header, [0, 52)
//! 56      16*n  entries: id u64, position u64 (frame start in the segment)
//! ```
//!
//! The header has its own checksum so that the priority floor of a sealed
//! segment can be read, checked, from the first 56 bytes: a group's first
//! reserve after a restart needs the floor of every segment ahead of it,
//! not their entries. Version 1 files (48-byte header, one checksum at 44
//! over the header's first 44 bytes and the entries; floor 0 in files
//! written before the field was kept: no claim) are still read, whole.
//!
//! An index file is derived data: when it is missing, fails its CRC or does
//! not match its segment, it is rebuilt by scanning the segment.

use std::sync::Arc;

use crate::fs::Mapped;

/// Index file magic.
pub const MAGIC: [u8; 8] = *b"MLPDIDX\0";
/// Index file format version written by this build.
pub const VERSION: u32 = 2;
/// Bytes of the index file header (version 2).
pub const HEADER_LEN: usize = 56;
/// Bytes of the header of a version 1 file.
pub const V1_HEADER_LEN: usize = 48;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 16;
/// Version 2: checksum of the entries.
const OFF_ENTRIES_CRC: usize = 44;
/// Version 2: checksum of the header bytes before it.
const OFF_HEADER_CRC: usize = 52;
const _: () = assert!(OFF_HEADER_CRC + 4 == HEADER_LEN);
/// Version 1: checksum of the header bytes before it and of the entries.
const V1_OFF_CRC: usize = 44;
const _: () = assert!(V1_OFF_CRC + 4 == V1_HEADER_LEN);

/// What an index file header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexMeta {
    /// First id of the segment.
    pub first_id: u64,
    /// Segment bytes the entries cover (including the segment header).
    pub covered_bytes: u64,
    /// One past the last id in the covered bytes.
    pub next_id: u64,
    /// No frame in the covered bytes has a lower priority (`u32::MAX` when
    /// there are none; 0 makes no claim).
    pub priority_floor: u32,
}

/// Why an index file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// Not an index file, or damaged.
    Invalid(&'static str),
    /// Written by a newer version.
    Version(u32),
}

/// Encodes an index file (the current version).
pub fn encode(meta: &IndexMeta, entries: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let count = u32::try_from(entries.len()).expect("index entries fit in u32");
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&meta.first_id.to_le_bytes());
    out.extend_from_slice(&meta.covered_bytes.to_le_bytes());
    out.extend_from_slice(&meta.next_id.to_le_bytes());
    out.extend_from_slice(&meta.priority_floor.to_le_bytes());
    out.extend_from_slice(&[0; 12]);
    for (id, pos) in entries {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&pos.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[OFF_ENTRIES_CRC..OFF_ENTRIES_CRC + 4].copy_from_slice(&entries_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&out[..OFF_HEADER_CRC]);
    out[OFF_HEADER_CRC..HEADER_LEN].copy_from_slice(&header_crc.to_le_bytes());
    out
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn meta_at(b: &[u8]) -> IndexMeta {
    IndexMeta {
        first_id: u64_at(b, 16),
        covered_bytes: u64_at(b, 24),
        next_id: u64_at(b, 32),
        priority_floor: u32_at(b, 40),
    }
}

/// Checks the header of a version 2 (or later) file, the first
/// [`HEADER_LEN`] bytes of `bytes`: magic, header checksum, version.
/// Returns the header and the entry count.
fn check_header(bytes: &[u8]) -> Result<(IndexMeta, usize), IndexError> {
    if bytes.len() < HEADER_LEN {
        return Err(IndexError::Invalid("shorter than its header"));
    }
    if bytes[..8] != MAGIC {
        return Err(IndexError::Invalid("bad magic"));
    }
    // The checksum comes before the version: a damaged version field must
    // make the index rebuildable, not the queue unopenable.
    if crc32fast::hash(&bytes[..OFF_HEADER_CRC]) != u32_at(bytes, OFF_HEADER_CRC) {
        return Err(IndexError::Invalid("header checksum mismatch"));
    }
    let version = u32_at(bytes, 8);
    if version > VERSION {
        return Err(IndexError::Version(version));
    }
    if version < 2 {
        return Err(IndexError::Invalid(
            "version field below 2 in a version 2 header",
        ));
    }
    Ok((meta_at(bytes), u32_at(bytes, 12) as usize))
}

/// Reads the header of an index file from its first [`HEADER_LEN`] bytes,
/// checked by its own checksum, without the entries: what a sealed
/// segment's priority floor needs. A version 1 file has no header
/// checksum: `Invalid`, and the caller reads the whole file with
/// [`decode`].
pub fn decode_header(bytes: &[u8]) -> Result<IndexMeta, IndexError> {
    if bytes.len() >= 12 && bytes[..8] == MAGIC && u32_at(bytes, 8) == 1 {
        return Err(IndexError::Invalid("version 1 has no header checksum"));
    }
    check_header(bytes).map(|(meta, _)| meta)
}

/// Checks an index file and returns its header. The entries are then
/// read with [`entry`].
pub fn decode(bytes: &[u8]) -> Result<IndexMeta, IndexError> {
    if bytes.len() >= 12 && bytes[..8] == MAGIC && u32_at(bytes, 8) == 1 {
        return decode_v1(bytes);
    }
    let (meta, count) = check_header(bytes)?;
    if bytes.len() as u64 != HEADER_LEN as u64 + count as u64 * ENTRY_LEN as u64 {
        return Err(IndexError::Invalid("length does not match entry count"));
    }
    if crc32fast::hash(&bytes[HEADER_LEN..]) != u32_at(bytes, OFF_ENTRIES_CRC) {
        return Err(IndexError::Invalid("entries checksum mismatch"));
    }
    check_entries(bytes, &meta, count)?;
    Ok(meta)
}

/// A version 1 file: one checksum over the header and the entries.
fn decode_v1(bytes: &[u8]) -> Result<IndexMeta, IndexError> {
    if bytes.len() < V1_HEADER_LEN {
        return Err(IndexError::Invalid("shorter than its header"));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..V1_OFF_CRC]);
    h.update(&bytes[V1_HEADER_LEN..]);
    if h.finalize() != u32_at(bytes, V1_OFF_CRC) {
        return Err(IndexError::Invalid("checksum mismatch"));
    }
    let count = u32_at(bytes, 12) as usize;
    if bytes.len() as u64 != V1_HEADER_LEN as u64 + count as u64 * ENTRY_LEN as u64 {
        return Err(IndexError::Invalid("length does not match entry count"));
    }
    let meta = meta_at(bytes);
    check_entries(bytes, &meta, count)?;
    Ok(meta)
}

/// Entries must lie in the covered range and ascend in id and position.
fn check_entries(bytes: &[u8], meta: &IndexMeta, count: usize) -> Result<(), IndexError> {
    let mut prev: Option<(u64, u64)> = None;
    for i in 0..count {
        let e = entry(bytes, i);
        if e.0 < meta.first_id || e.0 >= meta.next_id || e.1 >= meta.covered_bytes {
            return Err(IndexError::Invalid("entry outside the covered range"));
        }
        if let Some(p) = prev
            && (e.0 <= p.0 || e.1 <= p.1)
        {
            return Err(IndexError::Invalid("entries out of order"));
        }
        prev = Some(e);
    }
    Ok(())
}

/// Where the entries of a checked index file start: after the header of
/// its version.
pub fn entries_offset(bytes: &[u8]) -> usize {
    if u32_at(bytes, 8) == 1 {
        V1_HEADER_LEN
    } else {
        HEADER_LEN
    }
}

/// How many entries a checked index file holds.
pub fn entry_count(bytes: &[u8]) -> usize {
    (bytes.len() - entries_offset(bytes)) / ENTRY_LEN
}

/// Entry `i` of a checked index file.
pub fn entry(bytes: &[u8], i: usize) -> (u64, u64) {
    let off = entries_offset(bytes) + i * ENTRY_LEN;
    (u64_at(bytes, off), u64_at(bytes, off + 8))
}

/// The entries of one segment, from its file or built in memory.
#[derive(Debug, Clone)]
pub enum SparseIndex {
    /// Entries held in a vector (the active segment, or a rebuilt index).
    Owned(Vec<(u64, u64)>),
    /// A checked index file, mapped.
    Mapped(Arc<Mapped>),
}

impl SparseIndex {
    /// The last entry, if any.
    pub fn last(&self) -> Option<(u64, u64)> {
        let n = self.len();
        (n > 0).then(|| self.get(n - 1))
    }

    /// All entries, copied.
    pub fn to_vec(&self) -> Vec<(u64, u64)> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    fn len(&self) -> usize {
        match self {
            SparseIndex::Owned(v) => v.len(),
            SparseIndex::Mapped(m) => entry_count(m),
        }
    }

    fn get(&self, i: usize) -> (u64, u64) {
        match self {
            SparseIndex::Owned(v) => v[i],
            SparseIndex::Mapped(m) => entry(m, i),
        }
    }

    /// The last entry whose id is at most `id`.
    pub fn floor(&self, id: u64) -> Option<(u64, u64)> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid).0 <= id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        (lo > 0).then(|| self.get(lo - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_floor() {
        let meta = IndexMeta {
            first_id: 10,
            covered_bytes: 5000,
            next_id: 40,
            priority_floor: 1024,
        };
        let entries = vec![(10, 32), (20, 1000), (30, 4000)];
        let bytes = encode(&meta, &entries);
        assert_eq!(decode(&bytes), Ok(meta));
        let idx = SparseIndex::Mapped(Arc::new(Mapped::owned(bytes.into())));
        assert_eq!(idx.floor(9), None);
        assert_eq!(idx.floor(10), Some((10, 32)));
        assert_eq!(idx.floor(25), Some((20, 1000)));
        assert_eq!(idx.floor(99), Some((30, 4000)));
    }

    /// A version 1 file, as builds before version 2 wrote them.
    fn encode_v1(meta: &IndexMeta, entries: &[(u64, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta.first_id.to_le_bytes());
        out.extend_from_slice(&meta.covered_bytes.to_le_bytes());
        out.extend_from_slice(&meta.next_id.to_le_bytes());
        out.extend_from_slice(&meta.priority_floor.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for (id, pos) in entries {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&pos.to_le_bytes());
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&out[..V1_OFF_CRC]);
        h.update(&out[V1_HEADER_LEN..]);
        let crc = h.finalize();
        out[V1_OFF_CRC..V1_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn reseal_header(bytes: &mut [u8]) {
        let crc = crc32fast::hash(&bytes[..OFF_HEADER_CRC]);
        bytes[OFF_HEADER_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn damage_and_versions_are_refused() {
        let meta = IndexMeta {
            first_id: 1,
            covered_bytes: 100,
            next_id: 3,
            priority_floor: 0,
        };
        let mut bytes = encode(&meta, &[(1, 32), (2, 60)]);
        bytes[HEADER_LEN + 18] ^= 1;
        assert_eq!(
            decode(&bytes),
            Err(IndexError::Invalid("entries checksum mismatch"))
        );
        assert_eq!(
            decode_header(&bytes[..HEADER_LEN]),
            Ok(meta),
            "damaged entries leave the checked header readable"
        );
        let mut bytes = encode(&meta, &[(1, 32)]);
        bytes[41] ^= 1;
        assert_eq!(
            decode(&bytes),
            Err(IndexError::Invalid("header checksum mismatch"))
        );
        assert_eq!(
            decode_header(&bytes),
            Err(IndexError::Invalid("header checksum mismatch")),
            "a flipped floor is damage"
        );
        let mut bytes = encode(&meta, &[(1, 32)]);
        bytes[8] = 3;
        assert_eq!(
            decode(&bytes),
            Err(IndexError::Invalid("header checksum mismatch")),
            "a flipped version is damage, so the index is rebuilt"
        );
        reseal_header(&mut bytes);
        assert_eq!(decode(&bytes), Err(IndexError::Version(3)));
        assert_eq!(decode_header(&bytes), Err(IndexError::Version(3)));
        let mut bytes = encode(&meta, &[(1, 32)]);
        bytes[8] = 1;
        assert_eq!(
            decode(&bytes),
            Err(IndexError::Invalid("checksum mismatch")),
            "a version 2 file whose version reads 1 fails the version 1 check"
        );
        let bad_order = encode(&meta, &[(2, 60), (1, 32)]);
        assert_eq!(
            decode(&bad_order),
            Err(IndexError::Invalid("entries out of order"))
        );
        let mut short = encode(&meta, &[(1, 32)]);
        short.truncate(HEADER_LEN + 8);
        assert_eq!(
            decode(&short),
            Err(IndexError::Invalid("length does not match entry count"))
        );
    }

    /// The worked example of `docs/format.md`: the index a store holds
    /// after one push of `"hello"` and a clean close, as this version
    /// writes it and as version 1 wrote it.
    #[test]
    fn worked_example_of_format_md() {
        let meta = IndexMeta {
            first_id: 1,
            covered_bytes: 65,
            next_id: 2,
            priority_floor: 0,
        };
        let hex = |s: &str| -> Vec<u8> {
            s.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect()
        };
        let v2 = hex("4d 4c 50 44 49 44 58 00 02 00 00 00 01 00 00 00 \
                      01 00 00 00 00 00 00 00 41 00 00 00 00 00 00 00 \
                      02 00 00 00 00 00 00 00 00 00 00 00 92 b8 a5 bb \
                      00 00 00 00 44 6c 00 9b 01 00 00 00 00 00 00 00 \
                      20 00 00 00 00 00 00 00");
        assert_eq!(encode(&meta, &[(1, 32)]), v2);
        assert_eq!(decode(&v2), Ok(meta));
        assert_eq!(decode_header(&v2[..HEADER_LEN]), Ok(meta));
        let v1 = hex("4d 4c 50 44 49 44 58 00 01 00 00 00 01 00 00 00 \
                      01 00 00 00 00 00 00 00 41 00 00 00 00 00 00 00 \
                      02 00 00 00 00 00 00 00 00 00 00 00 16 31 c3 35 \
                      01 00 00 00 00 00 00 00 20 00 00 00 00 00 00 00");
        assert_eq!(encode_v1(&meta, &[(1, 32)]), v1);
        assert_eq!(decode(&v1), Ok(meta));
        assert_eq!(entry(&v1, 0), (1, 32));
    }

    #[test]
    fn version_1_files_are_still_read_whole() {
        let meta = IndexMeta {
            first_id: 10,
            covered_bytes: 5000,
            next_id: 40,
            priority_floor: 1024,
        };
        let entries = [(10, 32), (20, 1000), (30, 4000)];
        let v1 = encode_v1(&meta, &entries);
        assert_eq!(decode(&v1), Ok(meta));
        assert_eq!(entry_count(&v1), 3);
        assert_eq!(entry(&v1, 2), (30, 4000));
        assert_eq!(
            decode_header(&v1),
            Err(IndexError::Invalid("version 1 has no header checksum")),
            "its header alone is not checked: the caller reads the file whole"
        );
        let idx = SparseIndex::Mapped(Arc::new(Mapped::owned(v1.clone().into())));
        assert_eq!(idx.floor(25), Some((20, 1000)));
        let mut damaged = v1;
        damaged[V1_HEADER_LEN + 3] ^= 1;
        assert_eq!(
            decode(&damaged),
            Err(IndexError::Invalid("checksum mismatch"))
        );
    }

    #[test]
    fn index_written_before_the_floor_was_kept_makes_no_claim() {
        let meta = IndexMeta {
            first_id: 1,
            covered_bytes: 100,
            next_id: 3,
            priority_floor: 0,
        };
        // Version 1 files written before the field was kept hold zero
        // there (it was reserved): they decode with floor 0.
        let bytes = encode_v1(&meta, &[(1, 32)]);
        assert_eq!(u32_at(&bytes, 40), 0);
        assert_eq!(decode(&bytes).map(|m| m.priority_floor), Ok(0));
        let v2 = encode(
            &IndexMeta {
                priority_floor: 7,
                ..meta
            },
            &[(1, 32)],
        );
        assert_eq!(u32_at(&v2, 40), 7, "the floor sits at offset 40");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode_header(&bytes);
            if let Ok(meta) = decode(&bytes) {
                let idx = SparseIndex::Mapped(Arc::new(Mapped::owned(bytes.clone().into())));
                let _ = idx.floor(meta.next_id);
            }
        }

        #[test]
        fn encoded_indexes_decode(n in 0usize..50, first in 0u64..1000) {
            let entries: Vec<(u64, u64)> = (0..n as u64).map(|i| (first + i * 3, 32 + i * 100)).collect();
            let meta = IndexMeta { first_id: first, covered_bytes: 32 + n as u64 * 100 + 1, next_id: first + n as u64 * 3 + 1, priority_floor: first as u32 };
            let bytes = encode(&meta, &entries);
            prop_assert_eq!(decode(&bytes), Ok(meta));
            prop_assert_eq!(decode_header(&bytes[..HEADER_LEN]), Ok(meta));
            prop_assert_eq!(entry_count(&bytes), n);
            for (i, e) in entries.iter().enumerate() {
                prop_assert_eq!(entry(&bytes, i), *e);
            }
        }
    }
}
