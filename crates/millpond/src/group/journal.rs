//! The group journal: fixed-size, checksummed records of every change to a
//! group's ack state, appended with group commit.
//!
//! ```text
//! journal file (journal-NNNNNNNNNNNNNNNNNNNN.log, by sequence number)
//! offset  size  field
//! 0       8     magic "MLPDJRN\0"
//! 8       4     format version, u32 (2; 1 has no run records)
//! 12      4     reserved, 0
//! 16      8     sequence number, u64
//! 24      4     reserved, 0
//! 28      4     crc32 of bytes [0, 28)
//! 32      24*n  records
//!
//! record
//! 0       4     crc32 of bytes [4, 24)
//! 4       1     kind: 1 reserve, 2 ack, 3 nack, 4 bury, 5 kick,
//!               6 dead-letter (buried for running out of attempts),
//!               7 delete (finished in any state), 8 priority (the
//!               message's new priority), 9 track (every fresh message
//!               from the cursor up to and including the id becomes
//!               tracked; the cursor moves past the id), 10 reserve
//!               run, 11 ack run (version 2)
//! 5       3     reserved, 0
//! 8       8     message id, u64 (of a run: its first id)
//! 16      8     argument, u64: reserve = attempt number (low 32 bits)
//!               and priority (high 32 bits); nack = retry time (unix
//!               ms); priority = the priority (low 32 bits); reserve run
//!               = count (low 32 bits) and priority (high 32 bits); ack
//!               run = count (low 32 bits); others 0
//! ```
//!
//! A run record stands for `count` records of consecutive ids from its id:
//! a reserve run for reserves with attempt number 1 at its priority, an ack
//! run for acks. [`encode_all`] writes them for the runs in a batch;
//! [`read`] keeps each as a [`Slot`], and [`Replay::records`] gives the
//! records they stand for one by one, never all at once.

use std::path::Path;

use crate::error::{Error, Result};

/// Journal file magic.
pub const MAGIC: [u8; 8] = *b"MLPDJRN\0";
/// Journal format version written by this build.
pub const VERSION: u32 = 2;
/// The most records one run record stands for.
pub const RUN_MAX: u64 = 65_536;
/// Bytes of the journal header.
pub const HEADER_LEN: u64 = 32;
/// Bytes of one record.
pub const RECORD_LEN: usize = 24;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A delivery, with its attempt number.
    Reserve {
        /// Message id.
        id: u64,
        /// Attempt number of this delivery.
        attempts: u32,
        /// The message's priority.
        priority: u32,
    },
    /// An ack.
    Ack {
        /// Message id.
        id: u64,
    },
    /// A release for a retry at `until` (unix ms).
    Nack {
        /// Message id.
        id: u64,
        /// When it becomes ready again.
        until: u64,
    },
    /// A bury.
    Bury {
        /// Message id.
        id: u64,
    },
    /// A kick (buried or delayed to ready, attempts reset).
    Kick {
        /// Message id.
        id: u64,
    },
    /// Buried for running out of attempts: the outcome is recorded, so
    /// replay never depends on the limit in force.
    DeadLetter {
        /// Message id.
        id: u64,
    },
    /// Finished whatever its state (ready, delayed, buried or reserved).
    Delete {
        /// Message id.
        id: u64,
    },
    /// A new priority for a tracked message.
    Priority {
        /// Message id.
        id: u64,
        /// The new priority.
        priority: u32,
    },
    /// Fresh messages from the cursor through `id` become tracked, so a
    /// later record can address `id` out of order.
    Track {
        /// Message id.
        id: u64,
    },
}

/// A record's 24 bytes: kind, id and argument, with the CRC.
fn encode_raw(kind: u8, id: u64, arg: u64) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    b[4] = kind;
    b[8..16].copy_from_slice(&id.to_le_bytes());
    b[16..24].copy_from_slice(&arg.to_le_bytes());
    let crc = crc32fast::hash(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// How many of `recs` from the first continue its run: reserves of
/// consecutive ids with attempt number 1 at one priority, or acks of
/// consecutive ids (1 when the first starts none).
fn run_len(recs: &[Record]) -> usize {
    let same = |a: &Record, b: &Record| match (*a, *b) {
        (
            Record::Reserve {
                id: x,
                attempts: 1,
                priority: p,
            },
            Record::Reserve {
                id: y,
                attempts: 1,
                priority: q,
            },
        ) => y == x.wrapping_add(1) && p == q,
        (Record::Ack { id: x }, Record::Ack { id: y }) => y == x.wrapping_add(1),
        _ => false,
    };
    let max = RUN_MAX as usize;
    1 + recs
        .windows(2)
        .take(max - 1)
        .take_while(|w| same(&w[0], &w[1]))
        .count()
}

/// Encodes `recs` in order, a run of two or more consecutive reserves
/// (attempt 1, one priority) or acks as one run record.
pub fn encode_all(recs: &[Record], out: &mut Vec<u8>) {
    let mut rest = recs;
    while let Some(first) = rest.first() {
        let n = run_len(rest);
        let count = n as u64;
        match *first {
            Record::Reserve { id, priority, .. } if n > 1 => {
                out.extend_from_slice(&encode_raw(10, id, count | u64::from(priority) << 32));
            }
            Record::Ack { id } if n > 1 => out.extend_from_slice(&encode_raw(11, id, count)),
            rec => out.extend_from_slice(&rec.encode()),
        }
        rest = &rest[n..];
    }
}

/// One record slot as read: a record, or a run record standing for the
/// records of consecutive ids. Kept as read, so replaying a journal of run
/// records never holds a record per message in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A record that stands for itself.
    One(Record),
    /// Reserves of `first..first + count` with attempt number 1.
    Reserves {
        /// First id.
        first: u64,
        /// How many ids.
        count: u64,
        /// Their priority.
        priority: u32,
    },
    /// Acks of `first..first + count`.
    Acks {
        /// First id.
        first: u64,
        /// How many ids.
        count: u64,
    },
}

impl Slot {
    /// The records the slot stands for, in order.
    pub fn records(self) -> impl Iterator<Item = Record> {
        let (ids, run) = match self {
            Slot::One(rec) => return SlotRecords::One(Some(rec)),
            Slot::Reserves {
                first,
                count,
                priority,
            } => (first..first + count, Some(priority)),
            Slot::Acks { first, count } => (first..first + count, None),
        };
        SlotRecords::Run(ids, run)
    }

    /// How many records the slot stands for (at least one).
    pub fn record_count(self) -> u64 {
        match self {
            Slot::One(_) => 1,
            Slot::Reserves { count, .. } | Slot::Acks { count, .. } => count,
        }
    }
}

/// The iterator of [`Slot::records`].
enum SlotRecords {
    One(Option<Record>),
    /// Ids left; the priority of reserves, or `None` for acks.
    Run(std::ops::Range<u64>, Option<u32>),
}

impl Iterator for SlotRecords {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        match self {
            SlotRecords::One(rec) => rec.take(),
            SlotRecords::Run(ids, priority) => {
                let id = ids.next()?;
                Some(match *priority {
                    Some(priority) => Record::Reserve {
                        id,
                        attempts: 1,
                        priority,
                    },
                    None => Record::Ack { id },
                })
            }
        }
    }
}

/// Decodes one record slot; `None` if it fails its check or is unknown.
pub fn decode_slot(b: &[u8]) -> Option<Slot> {
    let (kind, first, arg) = checked(b)?;
    if !matches!(kind, 10 | 11) {
        return Record::from_parts(kind, first, arg).map(Slot::One);
    }
    let count = arg & 0xffff_ffff;
    if count == 0 || count > RUN_MAX || first.checked_add(count).is_none() {
        return None;
    }
    match kind {
        10 => Some(Slot::Reserves {
            first,
            count,
            priority: (arg >> 32) as u32,
        }),
        _ if arg >> 32 == 0 => Some(Slot::Acks { first, count }),
        _ => None,
    }
}

/// Kind, id and argument of a record slot that passes its CRC and has its
/// reserved bytes zero.
fn checked(b: &[u8]) -> Option<(u8, u64, u64)> {
    if b.len() < RECORD_LEN {
        return None;
    }
    let crc = u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&b[4..RECORD_LEN]) || b[5..8] != [0, 0, 0] {
        return None;
    }
    let id = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    let arg = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
    Some((b[4], id, arg))
}

impl Record {
    /// Encodes the record.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let (kind, id, arg) = match *self {
            Record::Reserve {
                id,
                attempts,
                priority,
            } => (1u8, id, u64::from(attempts) | (u64::from(priority) << 32)),
            Record::Ack { id } => (2, id, 0),
            Record::Nack { id, until } => (3, id, until),
            Record::Bury { id } => (4, id, 0),
            Record::Kick { id } => (5, id, 0),
            Record::DeadLetter { id } => (6, id, 0),
            Record::Delete { id } => (7, id, 0),
            Record::Priority { id, priority } => (8, id, u64::from(priority)),
            Record::Track { id } => (9, id, 0),
        };
        encode_raw(kind, id, arg)
    }

    /// Decodes a record that stands for itself (not a run: see
    /// [`decode_slot`]); `None` if it fails its check or is unknown.
    pub fn decode(b: &[u8]) -> Option<Record> {
        let (kind, id, arg) = checked(b)?;
        Record::from_parts(kind, id, arg)
    }

    /// The record of kind 1 to 9 with `id` and `arg` (`None` for another
    /// kind, or an argument the kind refuses).
    fn from_parts(kind: u8, id: u64, arg: u64) -> Option<Record> {
        Some(match kind {
            1 => Record::Reserve {
                id,
                attempts: (arg & 0xffff_ffff) as u32,
                priority: (arg >> 32) as u32,
            },
            2 => Record::Ack { id },
            3 => Record::Nack { id, until: arg },
            4 => Record::Bury { id },
            5 => Record::Kick { id },
            6 => Record::DeadLetter { id },
            7 => Record::Delete { id },
            8 if arg >> 32 == 0 => Record::Priority {
                id,
                priority: arg as u32,
            },
            9 => Record::Track { id },
            _ => return None,
        })
    }
}

/// Encodes a journal header.
pub fn encode_header(seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The file name of journal `seq`.
pub fn file_name(seq: u64) -> String {
    format!("journal-{seq:020}.log")
}

/// Parses a journal file name.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal-")?.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// What reading a journal file found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Valid record slots, in order ([`Replay::records`] for the records
    /// they stand for).
    pub slots: Vec<Slot>,
    /// Offset where valid records end.
    pub end: u64,
    /// Bytes after `end` that were not a valid record (a torn tail); 0
    /// when they are all zeros (preallocated space).
    pub torn_bytes: u64,
    /// The header's format version (0: no complete header).
    pub version: u32,
}

impl Replay {
    /// Every record, in order (a run slot's one by one).
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.slots.iter().flat_map(|s| s.records())
    }

    /// How many records the slots stand for.
    pub fn record_count(&self) -> u64 {
        self.slots.iter().map(|s| s.record_count()).sum()
    }
}

/// Reads a journal file: header check, then records up to the first bad one.
pub fn read(path: &Path, bytes: &[u8], seq: u64) -> Result<Replay> {
    if bytes.len() < HEADER_LEN as usize {
        // Created, header not yet durable: an empty journal.
        return Ok(Replay {
            end: 0,
            torn_bytes: bytes.len() as u64,
            ..Replay::default()
        });
    }
    let h = &bytes[..HEADER_LEN as usize];
    let crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
    if h[..8] != MAGIC || crc != crc32fast::hash(&h[..28]) {
        if bytes.iter().all(|&b| b == 0) {
            return Ok(Replay {
                end: 0,
                torn_bytes: bytes.len() as u64,
                ..Replay::default()
            });
        }
        return Err(Error::corruption(path, 0, "journal header fails its check"));
    }
    let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    if version > VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: VERSION,
        });
    }
    let found_seq = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if found_seq != seq {
        return Err(Error::corruption(
            path,
            16,
            format!("journal header says sequence {found_seq}, file name says {seq}"),
        ));
    }
    let mut r = Replay {
        end: HEADER_LEN,
        version,
        ..Replay::default()
    };
    let mut pos = HEADER_LEN as usize;
    while pos + RECORD_LEN <= bytes.len() {
        let Some(slot) = decode_slot(&bytes[pos..]) else {
            break;
        };
        r.slots.push(slot);
        pos += RECORD_LEN;
    }
    r.end = pos as u64;
    // Zeros to the end of the file are space the writer preallocated (or
    // unsynced writes that reached the disk as zeros), not a torn record.
    if bytes[pos..].iter().any(|&b| b != 0) {
        r.torn_bytes = bytes.len() as u64 - r.end;
    }
    Ok(r)
}

pub(crate) use super::journal_writer::{Goal, Journal};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_round_trip_and_detect_damage() {
        for rec in [
            Record::Reserve {
                id: 5,
                attempts: 3,
                priority: 9,
            },
            Record::DeadLetter { id: 4 },
            Record::Ack { id: 9 },
            Record::Nack { id: 1, until: 77 },
            Record::Bury { id: 2 },
            Record::Kick { id: 3 },
            Record::Delete { id: 6 },
            Record::Priority {
                id: 7,
                priority: u32::MAX,
            },
            Record::Track { id: 8 },
        ] {
            let mut b = rec.encode();
            assert_eq!(Record::decode(&b), Some(rec));
            b[10] ^= 1;
            assert_eq!(Record::decode(&b), None);
        }
    }

    #[test]
    fn read_stops_at_torn_tail() {
        let mut bytes = encode_header(4).to_vec();
        bytes.extend_from_slice(&Record::Ack { id: 1 }.encode());
        bytes.extend_from_slice(&Record::Ack { id: 2 }.encode());
        bytes.extend_from_slice(&Record::Ack { id: 3 }.encode()[..10]);
        let r = read(Path::new("j"), &bytes, 4).unwrap();
        assert_eq!(
            r.records().collect::<Vec<_>>(),
            vec![Record::Ack { id: 1 }, Record::Ack { id: 2 }]
        );
        assert_eq!(r.end, HEADER_LEN + 48);
        assert_eq!(r.torn_bytes, 10);
        assert!(read(Path::new("j"), &bytes, 5).unwrap_err().is_corruption());
    }

    #[test]
    fn zeros_after_the_records_are_no_torn_tail() {
        let mut bytes = encode_header(4).to_vec();
        bytes.extend_from_slice(&Record::Ack { id: 1 }.encode());
        bytes.extend_from_slice(&[0; 4000]);
        let r = read(Path::new("j"), &bytes, 4).unwrap();
        assert_eq!(r.records().collect::<Vec<_>>(), vec![Record::Ack { id: 1 }]);
        assert_eq!(r.end, HEADER_LEN + 24);
        assert_eq!(r.torn_bytes, 0, "preallocated space");
        // Anything but zeros after the records is a torn tail.
        bytes.push(1);
        let r = read(Path::new("j"), &bytes, 4).unwrap();
        assert_eq!(r.records().collect::<Vec<_>>(), vec![Record::Ack { id: 1 }]);
        assert_eq!(r.torn_bytes, 4001);
    }

    #[test]
    fn a_batch_is_written_as_run_records_and_read_back_as_its_records() {
        let reserve = |id, attempts, priority| Record::Reserve {
            id,
            attempts,
            priority,
        };
        let mut recs: Vec<Record> = (5..1005).map(|id| reserve(id, 1, 3)).collect();
        // Not a run: a second attempt, a gap, another priority, a lone ack.
        recs.push(reserve(1005, 2, 3));
        recs.push(reserve(1007, 1, 3));
        recs.push(reserve(1008, 1, 4));
        recs.extend((5..1005).map(|id| Record::Ack { id }));
        recs.push(Record::Ack { id: 1007 });
        let mut bytes = encode_header(1).to_vec();
        encode_all(&recs, &mut bytes);
        // Reserve run, 3 single reserves, ack run, single ack.
        assert_eq!(bytes.len(), HEADER_LEN as usize + 6 * RECORD_LEN);
        let r = read(Path::new("j"), &bytes, 1).unwrap();
        assert_eq!(r.slots.len(), 6);
        assert_eq!(r.record_count(), recs.len() as u64);
        assert_eq!(r.records().collect::<Vec<_>>(), recs);
        assert_eq!((r.end, r.torn_bytes), (bytes.len() as u64, 0));

        // A run longer than RUN_MAX is split.
        let long: Vec<Record> = (0..RUN_MAX + 1).map(|id| Record::Ack { id }).collect();
        let mut bytes = encode_header(1).to_vec();
        encode_all(&long, &mut bytes);
        assert_eq!(bytes.len(), HEADER_LEN as usize + 2 * RECORD_LEN);
        let r = read(Path::new("j"), &bytes, 1).unwrap();
        assert_eq!(r.records().collect::<Vec<_>>(), long);
    }

    #[test]
    fn run_records_out_of_bounds_are_not_records() {
        for (kind, id, arg) in [
            (10, 1, 0),            // no members
            (11, 1, RUN_MAX + 1),  // too many
            (11, u64::MAX - 1, 5), // ids past u64::MAX
            (11, 1, 2 | 1 << 32),  // ack run with a priority
            (12, 1, 2),            // unknown kind
        ] {
            assert_eq!(
                decode_slot(&encode_raw(kind, id, arg)),
                None,
                "{kind} {id} {arg}"
            );
            assert_eq!(Record::decode(&encode_raw(kind, id, arg)), None);
        }
        let slot = decode_slot(&encode_raw(11, 7, RUN_MAX)).unwrap();
        assert_eq!(
            slot,
            Slot::Acks {
                first: 7,
                count: RUN_MAX
            }
        );
        assert_eq!(slot.records().count() as u64, RUN_MAX);
        assert_eq!(
            slot.records().last(),
            Some(Record::Ack {
                id: 7 + RUN_MAX - 1
            })
        );
        let mut b = encode_raw(10, 1, 2);
        b[9] ^= 1;
        assert_eq!(decode_slot(&b), None, "a damaged run record");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), seq: u64) {
            let _ = read(Path::new("j"), &bytes, seq);
            let _ = Record::decode(&bytes);
        }
    }
}
