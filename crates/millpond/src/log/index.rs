//! The sparse index of a segment: (id, position) pairs, one about every
//! `index_interval_bytes`, and its file codec.
//!
//! ```text
//! index file (NNNNNNNNNNNNNNNNNNNN.idx)
//! offset  size  field
//! 0       8     magic "MLPDIDX\0"
//! 8       4     format version, u32 (1)
//! 12      4     entry count, u32
//! 16      8     first id of the segment, u64
//! 24      8     covered bytes: the segment's length this index describes
//! 32      8     next id: one past the last id in the covered bytes
//! 40      4     priority floor, u32: no frame in the covered bytes has a
//!               lower priority (0 in files written before it was kept:
//!               no claim)
//! 44      4     crc32 of bytes [0, 44) and of all entries
//! 48      16*n  entries: id u64, position u64 (frame start in the segment)
//! ```
//!
//! An index file is derived data: when it is missing, fails its CRC or does
//! not match its segment, it is rebuilt by scanning the segment.

use std::sync::Arc;

use crate::fs::Mapped;

/// Index file magic.
pub const MAGIC: [u8; 8] = *b"MLPDIDX\0";
/// Index file format version written by this build.
pub const VERSION: u32 = 1;
/// Bytes of the index file header.
pub const HEADER_LEN: usize = 48;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 16;
const OFF_CRC: usize = 44;
const _: () = assert!(OFF_CRC + 4 == HEADER_LEN);

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

/// Encodes an index file.
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
    out.extend_from_slice(&[0; 4]);
    for (id, pos) in entries {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&pos.to_le_bytes());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&out[..OFF_CRC]);
    h.update(&out[HEADER_LEN..]);
    let crc = h.finalize();
    out[OFF_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// Checks an index file and returns its header. The entries are then
/// read with [`entry`].
pub fn decode(bytes: &[u8]) -> Result<IndexMeta, IndexError> {
    if bytes.len() < HEADER_LEN {
        return Err(IndexError::Invalid("shorter than its header"));
    }
    if bytes[..8] != MAGIC {
        return Err(IndexError::Invalid("bad magic"));
    }
    // The checksum comes first: a damaged version field must make the
    // index rebuildable, not the queue unopenable.
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..OFF_CRC]);
    h.update(&bytes[HEADER_LEN..]);
    if h.finalize() != u32_at(bytes, OFF_CRC) {
        return Err(IndexError::Invalid("checksum mismatch"));
    }
    let version = u32_at(bytes, 8);
    if version > VERSION {
        return Err(IndexError::Version(version));
    }
    let count = u32_at(bytes, 12) as usize;
    if bytes.len() != HEADER_LEN + count * ENTRY_LEN {
        return Err(IndexError::Invalid("length does not match entry count"));
    }
    let meta = IndexMeta {
        first_id: u64_at(bytes, 16),
        covered_bytes: u64_at(bytes, 24),
        next_id: u64_at(bytes, 32),
        priority_floor: u32_at(bytes, 40),
    };
    // Entries must ascend in both id and position.
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
    Ok(meta)
}

/// Entry `i` of a checked index file.
pub fn entry(bytes: &[u8], i: usize) -> (u64, u64) {
    let off = HEADER_LEN + i * ENTRY_LEN;
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
            SparseIndex::Mapped(m) => (m.len() - HEADER_LEN) / ENTRY_LEN,
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

    #[test]
    fn damage_and_versions_are_refused() {
        let meta = IndexMeta {
            first_id: 1,
            covered_bytes: 100,
            next_id: 3,
            priority_floor: 0,
        };
        let mut bytes = encode(&meta, &[(1, 32), (2, 60)]);
        bytes[50] ^= 1;
        assert_eq!(
            decode(&bytes),
            Err(IndexError::Invalid("checksum mismatch"))
        );
        let mut bytes = encode(&meta, &[(1, 32)]);
        bytes[8] = 2;
        assert_eq!(
            decode(&bytes),
            Err(IndexError::Invalid("checksum mismatch")),
            "a flipped version is damage, so the index is rebuilt"
        );
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[..OFF_CRC]);
        h.update(&bytes[HEADER_LEN..]);
        let crc = h.finalize();
        bytes[OFF_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(IndexError::Version(2)));
        let bad_order = encode(&meta, &[(2, 60), (1, 32)]);
        assert_eq!(
            decode(&bad_order),
            Err(IndexError::Invalid("entries out of order"))
        );
    }

    #[test]
    fn index_written_before_the_floor_was_kept_makes_no_claim() {
        let meta = IndexMeta {
            first_id: 1,
            covered_bytes: 100,
            next_id: 3,
            priority_floor: 7,
        };
        let mut bytes = encode(&meta, &[(1, 32)]);
        assert_eq!(u32_at(&bytes, 40), 7, "the floor sits at offset 40");
        // The field was reserved and zero: such a file decodes with floor 0.
        bytes[40..44].copy_from_slice(&[0; 4]);
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[..OFF_CRC]);
        h.update(&bytes[HEADER_LEN..]);
        let crc = h.finalize();
        bytes[OFF_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes).map(|m| m.priority_floor), Ok(0));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
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
            for (i, e) in entries.iter().enumerate() {
                prop_assert_eq!(entry(&bytes, i), *e);
            }
        }
    }
}
