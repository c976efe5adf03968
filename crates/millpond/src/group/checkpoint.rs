//! The group checkpoint: a snapshot of the ack state, replaced atomically
//! (temporary file, fsync, rename, directory fsync).
//!
//! ```text
//! checkpoint file (checkpoint)
//! offset  size  field
//! 0       8     magic "MLPDCKP\0"
//! 8       4     format version, u32 (1)
//! 12      4     entry count, u32
//! 16      8     journal sequence: replay journals from this one on
//! 24      8     cursor: first id the fresh scan has not seen
//! 32      8     acked total, u64
//! 40      8     dead-lettered total, u64
//! 48      8     retention-lost total, u64
//! 56      4     max attempts the group last ran with, u32 (0: unknown)
//! 60      4     flags, u32: bit 0 = written by a clean close (its leases
//!               are still held); other bits 0
//! 64      4     reserved, 0
//! 68      4     crc32 of bytes [0, 68) and of all entries
//! 72      32*n  entries:
//!               0  8  id
//!               8  1  state: 0 ready, 1 delayed, 2 reserved, 3 buried
//!               9  3  reserved, 0
//!               12 4  attempts, u32
//!               16 4  priority, u32
//!               20 4  reserved, 0
//!               24 8  time: delay due or lease end (unix ms), else 0
//! ```

use std::path::Path;

use super::state::{Entry, EntryState, GroupState};
use crate::error::{Error, Result};

/// Checkpoint magic.
pub const MAGIC: [u8; 8] = *b"MLPDCKP\0";
/// Checkpoint format version written by this build.
pub const VERSION: u32 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 72;
/// Bytes of one entry.
pub const ENTRY_LEN: usize = 32;
const OFF_CRC: usize = 68;

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// First journal to replay.
    pub journal_seq: u64,
    /// The state.
    pub state: GroupState,
}

/// Encodes a checkpoint of `state`.
pub fn encode(journal_seq: u64, state: &GroupState) -> Vec<u8> {
    let entries: Vec<(u64, Entry)> = state.entries().collect();
    let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    let n = u32::try_from(entries.len()).expect("entries fit in u32");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&journal_seq.to_le_bytes());
    out.extend_from_slice(&state.cursor.to_le_bytes());
    out.extend_from_slice(&state.acked_total.to_le_bytes());
    out.extend_from_slice(&state.dead_lettered_total.to_le_bytes());
    out.extend_from_slice(&state.retention_lost_total.to_le_bytes());
    out.extend_from_slice(&state.max_attempts.to_le_bytes());
    out.extend_from_slice(&u32::from(state.closed_cleanly).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    for (id, e) in entries {
        let (kind, time) = match e.state {
            EntryState::Ready => (0u8, 0),
            EntryState::Delayed(t) => (1, t),
            EntryState::Reserved(t) => (2, t),
            EntryState::Buried => (3, 0),
        };
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&[kind, 0, 0, 0]);
        out.extend_from_slice(&e.attempts.to_le_bytes());
        out.extend_from_slice(&e.priority.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&time.to_le_bytes());
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&out[..OFF_CRC]);
    h.update(&out[HEADER_LEN..]);
    let crc = h.finalize();
    out[OFF_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Decodes and checks a checkpoint file.
pub fn decode(path: &Path, b: &[u8]) -> Result<Checkpoint> {
    let bad = |offset: u64, what: &str| Error::corruption(path, offset, what.to_string());
    if b.len() < HEADER_LEN || b[..8] != MAGIC {
        return Err(bad(0, "not a millpond checkpoint"));
    }
    let version = u32_at(b, 8);
    if version > VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: VERSION,
        });
    }
    let n = u32_at(b, 12) as usize;
    if b.len() != HEADER_LEN + n * ENTRY_LEN {
        return Err(bad(12, "checkpoint length does not match its entry count"));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..OFF_CRC]);
    h.update(&b[HEADER_LEN..]);
    let (stored, computed) = (u32_at(b, OFF_CRC), h.finalize());
    if stored != computed {
        return Err(Error::corruption(
            path,
            OFF_CRC as u64,
            format!(
                "checkpoint checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
        ));
    }
    let mut state = GroupState::new(u64_at(b, 24));
    state.acked_total = u64_at(b, 32);
    state.dead_lettered_total = u64_at(b, 40);
    state.retention_lost_total = u64_at(b, 48);
    state.max_attempts = u32_at(b, 56);
    let flags = u32_at(b, 60);
    if flags & !1 != 0 {
        return Err(bad(60, "unknown checkpoint flags"));
    }
    state.closed_cleanly = flags & 1 != 0;
    for i in 0..n {
        let o = HEADER_LEN + i * ENTRY_LEN;
        let time = u64_at(b, o + 24);
        let st = match b[o + 8] {
            0 => EntryState::Ready,
            1 => EntryState::Delayed(time),
            2 => EntryState::Reserved(time),
            3 => EntryState::Buried,
            _ => return Err(bad(o as u64 + 8, "unknown entry state")),
        };
        state.set(
            u64_at(b, o),
            Entry {
                state: st,
                attempts: u32_at(b, o + 12),
                priority: u32_at(b, o + 16),
            },
        );
    }
    Ok(Checkpoint {
        journal_seq: u64_at(b, 16),
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut s = GroupState::new(50);
        s.acked_total = 7;
        s.retention_lost_total = 3;
        s.max_attempts = 4;
        s.closed_cleanly = true;
        s.set(
            3,
            Entry {
                state: EntryState::Buried,
                attempts: 5,
                priority: 0,
            },
        );
        s.set(
            9,
            Entry {
                state: EntryState::Delayed(1234),
                attempts: 1,
                priority: 8,
            },
        );
        s.set(
            12,
            Entry {
                state: EntryState::Reserved(99),
                attempts: 2,
                priority: 0,
            },
        );
        let b = encode(4, &s);
        let c = decode(Path::new("c"), &b).unwrap();
        assert_eq!(c.journal_seq, 4);
        assert_eq!(c.state, s);
        let mut damaged = b.clone();
        damaged[HEADER_LEN + 13] ^= 1;
        assert!(
            decode(Path::new("c"), &damaged)
                .unwrap_err()
                .is_corruption()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(Path::new("c"), &bytes);
        }
    }
}
