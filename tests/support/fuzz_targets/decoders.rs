//! Targets for the pure decoders. Each compares the engine's decoder with a
//! reference decoder written from `docs/format.md`, then checks that what
//! decodes re-encodes: to the very same bytes when the input is in the form
//! the encoder writes (canonical), and to bytes that decode to the same
//! value otherwise.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use millpond::Error;
use millpond::fs::Mapped;
use millpond::group::checkpoint;
use millpond::group::journal::{self, Record};
use millpond::group::state::{Entry, EntryState};
use millpond::log::frame::{self, Attrs, Bad, Decoded, FrameRef};
use millpond::log::index::{self, IndexError, IndexMeta, SparseIndex};

use super::{crc32, le32, le64};

/// The payload length limit every frame decoder of a store applies.
pub(crate) const PAYLOAD_LEN_MAX: u32 = millpond::MESSAGE_BYTES_LIMIT;

/// The frame at the start of `data`, as `docs/format.md` describes it.
pub(crate) fn reference_frame(data: &[u8], payload_len_max: u32) -> Decoded<'_> {
    if data.len() < 28 {
        return Decoded::Incomplete;
    }
    let payload_len = le32(data, 4);
    let flags = le32(data, 24);
    if payload_len > payload_len_max {
        return Decoded::Bad(Bad::Length(payload_len));
    }
    let attrs_len = if flags & 1 != 0 { 4 } else { 0 } + if flags & 2 != 0 { 8 } else { 0 };
    let len = 28 + attrs_len + payload_len as usize;
    if data.len() < len {
        return Decoded::Incomplete;
    }
    let (expected, found) = (le32(data, 0), crc32(&data[4..len]));
    if expected != found {
        return Decoded::Bad(Bad::Crc { expected, found });
    }
    if flags & !3 != 0 {
        return Decoded::Bad(Bad::Flags(flags));
    }
    // No writer hands out the id `u64::MAX` (the one after it could not
    // be represented), so a frame with it is bad.
    if le64(data, 8) == u64::MAX {
        return Decoded::Bad(Bad::IdMax);
    }
    let mut attrs = Attrs::default();
    let mut off = 28;
    if flags & 1 != 0 {
        attrs.priority = le32(data, off);
        off += 4;
    }
    if flags & 2 != 0 {
        attrs.not_before_ms = le64(data, off);
        off += 8;
    }
    Decoded::Frame(FrameRef {
        id: le64(data, 8),
        timestamp_ms: le64(data, 16),
        attrs,
        payload: &data[off..len],
        len,
    })
}

/// Frame decoding: agrees with the reference for several length limits;
/// a frame decodes the same without the bytes after it and is incomplete
/// without its last byte; it re-encodes.
pub fn frame_decode(data: &[u8]) {
    let limits = [
        u32::MAX,
        PAYLOAD_LEN_MAX,
        16 << 20,
        data.len() as u32,
        64,
        0,
    ];
    for max in limits {
        let got = frame::decode(data, max);
        assert_eq!(got, reference_frame(data, max), "payload_len_max {max}");
        let Decoded::Frame(f) = got else { continue };
        assert!(f.len <= data.len() && f.payload.len() as u64 <= u64::from(max));
        assert_eq!(
            f.len,
            frame::frame_len(f.payload.len(), &f.attrs) + extra(data, &f)
        );
        assert_eq!(frame::decode(&data[..f.len], max), got);
        assert_eq!(frame::decode(&data[..f.len - 1], max), Decoded::Incomplete);
        assert_eq!(frame::peek_id(data), Some(f.id));
        let mut out = vec![0x5A];
        frame::encode(&mut out, f.id, f.timestamp_ms, &f.attrs, f.payload);
        let Decoded::Frame(again) = frame::decode(&out[1..], max) else {
            panic!("re-encoded frame {f:?} does not decode");
        };
        assert_eq!(
            (again.id, again.timestamp_ms, again.attrs, again.payload),
            (f.id, f.timestamp_ms, f.attrs, f.payload)
        );
        if extra(data, &f) == 0 {
            assert_eq!(
                &out[1..],
                &data[..f.len],
                "canonical frame re-encodes differently"
            );
        }
    }
}

/// Attribute bytes a frame carries beyond what its attributes need: a flag
/// set for a default value (priority 0, not-before 0) is valid but not what
/// the encoder writes.
fn extra(data: &[u8], f: &FrameRef<'_>) -> usize {
    let flags = le32(data, 24);
    let mut n = 0;
    if flags & 1 != 0 && f.attrs.priority == 0 {
        n += 4;
    }
    if flags & 2 != 0 && f.attrs.not_before_ms == 0 {
        n += 8;
    }
    n
}

#[derive(Debug, PartialEq, Eq)]
enum IndexVerdict {
    Ok(IndexMeta),
    Invalid,
    Version(u32),
}

fn reference_index(b: &[u8]) -> IndexVerdict {
    if b.len() < 12 || b[..8] != *b"MLPDIDX\0" {
        return IndexVerdict::Invalid;
    }
    // Version 1: one checksum at 44 over [0, 44) and the entries from 48.
    // Anything else is laid out as version 2: a header checksum at 52 over
    // [0, 52), checked before the version; an entries checksum at 44.
    let (meta, count, at) = if le32(b, 8) == 1 {
        if b.len() < 48 {
            return IndexVerdict::Invalid;
        }
        let mut covered = b[..44].to_vec();
        covered.extend_from_slice(&b[48..]);
        if crc32(&covered) != le32(b, 44) {
            return IndexVerdict::Invalid;
        }
        (index_meta(b), le32(b, 12) as u64, 48)
    } else {
        if b.len() < 56 || crc32(&b[..52]) != le32(b, 52) {
            return IndexVerdict::Invalid;
        }
        if le32(b, 8) > 2 {
            return IndexVerdict::Version(le32(b, 8));
        }
        if le32(b, 8) != 2 {
            return IndexVerdict::Invalid;
        }
        (index_meta(b), le32(b, 12) as u64, 56)
    };
    if b.len() as u64 != at as u64 + 16 * count {
        return IndexVerdict::Invalid;
    }
    if at == 56 && crc32(&b[56..]) != le32(b, 44) {
        return IndexVerdict::Invalid;
    }
    let entries: Vec<(u64, u64)> = (0..count as usize)
        .map(|i| (le64(b, at + 16 * i), le64(b, at + 8 + 16 * i)))
        .collect();
    let inside = entries
        .iter()
        .all(|&(id, pos)| id >= meta.first_id && id < meta.next_id && pos < meta.covered_bytes);
    let ascending = entries
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
    if inside && ascending {
        IndexVerdict::Ok(meta)
    } else {
        IndexVerdict::Invalid
    }
}

fn index_meta(b: &[u8]) -> IndexMeta {
    IndexMeta {
        first_id: le64(b, 16),
        covered_bytes: le64(b, 24),
        next_id: le64(b, 32),
        priority_floor: le32(b, 40),
    }
}

/// Index files: agree with the reference; a valid index re-encodes, and
/// the sparse index over it (mapped or owned) finds the same floor entries
/// as a linear search.
pub fn index_decode(data: &[u8]) {
    let got = match index::decode(data) {
        Ok(meta) => IndexVerdict::Ok(meta),
        Err(IndexError::Invalid(_)) => IndexVerdict::Invalid,
        Err(IndexError::Version(v)) => IndexVerdict::Version(v),
    };
    assert_eq!(got, reference_index(data));
    // The header alone, as a sealed segment's floor is read: it agrees
    // with the whole file's check wherever that passes (version 2).
    let header = index::decode_header(data);
    let IndexVerdict::Ok(meta) = got else { return };
    if le32(data, 8) != 1 {
        assert_eq!(header, Ok(meta), "a valid file's header reads alone");
    }
    let count = index::entry_count(data);
    let entries: Vec<(u64, u64)> = (0..count).map(|i| index::entry(data, i)).collect();
    let encoded = index::encode(&meta, &entries);
    assert_eq!(index::decode(&encoded), Ok(meta));
    if le32(data, 8) == index::VERSION && data[48..52] == [0; 4] {
        assert_eq!(encoded, data, "canonical index re-encodes differently");
    }
    let mapped = SparseIndex::Mapped(Arc::new(Mapped::owned(Arc::from(data))));
    let owned = SparseIndex::Owned(entries.clone());
    let mut probes = vec![0, 1, u64::MAX, meta.first_id, meta.next_id];
    for &(id, _) in &entries {
        probes.extend([id.saturating_sub(1), id, id.saturating_add(1)]);
    }
    for idx in [&mapped, &owned] {
        assert_eq!(idx.to_vec(), entries);
        assert_eq!(idx.last(), entries.last().copied());
        for &p in &probes {
            let want = entries.iter().rev().find(|e| e.0 <= p).copied();
            assert_eq!(idx.floor(p), want, "floor({p})");
        }
    }
}

fn reference_record(b: &[u8]) -> Option<Record> {
    if b.len() < 24 || crc32(&b[4..24]) != le32(b, 0) || b[5..8] != [0, 0, 0] {
        return None;
    }
    let (id, arg) = (le64(b, 8), le64(b, 16));
    Some(match b[4] {
        1 => Record::Reserve {
            id,
            attempts: arg as u32,
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

/// The records a journal slot stands for: one, or a run's (kinds 10 and
/// 11, `docs/format.md`).
fn reference_slot(b: &[u8]) -> Option<Vec<Record>> {
    if let Some(r) = reference_record(b) {
        return Some(vec![r]);
    }
    if b.len() < 24 || crc32(&b[4..24]) != le32(b, 0) || b[5..8] != [0, 0, 0] {
        return None;
    }
    let (first, arg) = (le64(b, 8), le64(b, 16));
    let count = arg & 0xffff_ffff;
    if count == 0 || count > 65_536 || first.checked_add(count).is_none() {
        return None;
    }
    match b[4] {
        10 => Some(
            (first..first + count)
                .map(|id| Record::Reserve {
                    id,
                    attempts: 1,
                    priority: (arg >> 32) as u32,
                })
                .collect(),
        ),
        11 if arg >> 32 == 0 => Some(
            (first..first + count)
                .map(|id| Record::Ack { id })
                .collect(),
        ),
        _ => None,
    }
}

/// What reading a journal file gives, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
enum JournalVerdict {
    Ok {
        records: Vec<Record>,
        end: u64,
        torn_bytes: u64,
    },
    Corruption(u64),
    Version(u32),
}

fn reference_journal(b: &[u8], seq: u64) -> JournalVerdict {
    let empty = JournalVerdict::Ok {
        records: Vec::new(),
        end: 0,
        torn_bytes: b.len() as u64,
    };
    if b.len() < 32 {
        return empty;
    }
    if b[..8] != *b"MLPDJRN\0" || crc32(&b[..28]) != le32(b, 28) {
        if b.iter().all(|&x| x == 0) {
            return empty;
        }
        return JournalVerdict::Corruption(0);
    }
    if le32(b, 8) > 2 {
        return JournalVerdict::Version(le32(b, 8));
    }
    if le64(b, 16) != seq {
        return JournalVerdict::Corruption(16);
    }
    let mut records = Vec::new();
    let mut pos = 32;
    while pos + 24 <= b.len() {
        let Some(r) = reference_slot(&b[pos..pos + 24]) else {
            break;
        };
        records.extend(r);
        pos += 24;
    }
    // Zeros up to the end are preallocated space (format.md), not torn.
    let torn_bytes = if b[pos..].iter().all(|&x| x == 0) {
        0
    } else {
        (b.len() - pos) as u64
    };
    JournalVerdict::Ok {
        records,
        end: pos as u64,
        torn_bytes,
    }
}

/// Journal records and files: agree with the reference; records
/// re-encode; a file read with its own and with another sequence number.
pub fn journal_decode(data: &[u8]) {
    for start in [0, 32.min(data.len())] {
        let b = &data[start..];
        let got = Record::decode(b);
        assert_eq!(got, reference_record(b));
        if let Some(r) = got {
            let encoded = r.encode();
            assert_eq!(Record::decode(&encoded), Some(r));
            let arg_unused = !matches!(r, Record::Reserve { .. } | Record::Nack { .. });
            if !arg_unused || le64(b, 16) == 0 {
                assert_eq!(
                    &encoded[..],
                    &b[..24],
                    "canonical record re-encodes differently"
                );
            }
        }
    }
    let named = if data.len() >= 24 { le64(data, 16) } else { 7 };
    let path = Path::new("/fuzz/journal-00000000000000000007.log");
    for seq in [named, named.wrapping_add(1)] {
        let got = match journal::read(path, data, seq) {
            Ok(r) => {
                assert!(r.end <= data.len() as u64);
                assert!(
                    r.torn_bytes == 0 || r.end + r.torn_bytes == data.len() as u64,
                    "torn bytes run to the end of the file"
                );
                JournalVerdict::Ok {
                    records: r.records().collect(),
                    end: r.end,
                    torn_bytes: r.torn_bytes,
                }
            }
            Err(Error::Corruption {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                JournalVerdict::Corruption(offset)
            }
            Err(Error::UnsupportedVersion { found, .. }) => JournalVerdict::Version(found),
            Err(e) => panic!("journal read failed with an unexpected error: {e}"),
        };
        assert_eq!(got, reference_journal(data, seq), "sequence {seq}");
    }
}

/// A decoded checkpoint in a comparable form.
#[derive(Debug, PartialEq, Eq)]
enum CheckpointVerdict {
    Ok {
        journal_seq: u64,
        cursor: u64,
        totals: [u64; 3],
        max_attempts: u32,
        closed_cleanly: bool,
        entries: BTreeMap<u64, Entry>,
    },
    Corruption(u64),
    Version(u32),
}

const CHECKPOINT_HEADER_LEN: usize = 72;
const CHECKPOINT_ENTRY_LEN: usize = 32;

fn reference_checkpoint(b: &[u8]) -> CheckpointVerdict {
    const H: usize = CHECKPOINT_HEADER_LEN;
    if b.len() < H || b[..8] != *b"MLPDCKP\0" {
        return CheckpointVerdict::Corruption(0);
    }
    if le32(b, 8) > 2 {
        return CheckpointVerdict::Version(le32(b, 8));
    }
    let n = le32(b, 12) as usize;
    if b.len() != H + CHECKPOINT_ENTRY_LEN * n {
        return CheckpointVerdict::Corruption(12);
    }
    let mut covered = b[..68].to_vec();
    covered.extend_from_slice(&b[H..]);
    if crc32(&covered) != le32(b, 68) {
        return CheckpointVerdict::Corruption(68);
    }
    let flags = le32(b, 60);
    if flags & !1 != 0 {
        return CheckpointVerdict::Corruption(60);
    }
    let mut entries = BTreeMap::new();
    for i in 0..n {
        let o = H + CHECKPOINT_ENTRY_LEN * i;
        let time = le64(b, o + 24);
        let state = match b[o + 8] {
            0 => EntryState::Ready,
            1 => EntryState::Delayed(time),
            2 => EntryState::Reserved(time),
            3 => EntryState::Buried,
            _ => return CheckpointVerdict::Corruption(o as u64 + 8),
        };
        let entry = Entry {
            state,
            attempts: le32(b, o + 12),
            priority: le32(b, o + 16),
        };
        entries.insert(le64(b, o), entry);
    }
    CheckpointVerdict::Ok {
        journal_seq: le64(b, 16),
        cursor: le64(b, 24),
        totals: [le64(b, 32), le64(b, 40), le64(b, 48)],
        max_attempts: le32(b, 56),
        closed_cleanly: flags & 1 != 0,
        entries,
    }
}

/// Whether a valid checkpoint is byte for byte what the encoder writes:
/// version 1, reserved bytes zero, ids ascending, no time on entries whose
/// state has none.
fn canonical_checkpoint(b: &[u8]) -> bool {
    let n = (b.len() - CHECKPOINT_HEADER_LEN) / CHECKPOINT_ENTRY_LEN;
    let entries_ok = (0..n).all(|i| {
        let o = CHECKPOINT_HEADER_LEN + CHECKPOINT_ENTRY_LEN * i;
        let timeless = matches!(b[o + 8], 0 | 3);
        b[o + 9..o + 12] == [0, 0, 0]
            && le32(b, o + 20) == 0
            && (!timeless || le64(b, o + 24) == 0)
            && (i == 0 || le64(b, o - CHECKPOINT_ENTRY_LEN) < le64(b, o))
    });
    le32(b, 8) == 1 && le32(b, 64) == 0 && entries_ok
}

/// Checkpoints: agree with the reference; a valid one re-encodes.
pub fn checkpoint_decode(data: &[u8]) {
    assert_eq!(
        (checkpoint::HEADER_LEN, checkpoint::ENTRY_LEN),
        (CHECKPOINT_HEADER_LEN, CHECKPOINT_ENTRY_LEN),
        "the checkpoint layout changed: update the reference"
    );
    let path = Path::new("/fuzz/checkpoint");
    let decoded = checkpoint::decode(path, data);
    let got = match &decoded {
        Ok(c) => CheckpointVerdict::Ok {
            journal_seq: c.journal_seq,
            cursor: c.state.cursor,
            totals: [
                c.state.acked_total,
                c.state.dead_lettered_total,
                c.state.retention_lost_total,
            ],
            max_attempts: c.state.max_attempts,
            closed_cleanly: c.state.closed_cleanly,
            entries: c.state.entries().collect(),
        },
        Err(Error::Corruption {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            CheckpointVerdict::Corruption(*offset)
        }
        Err(Error::UnsupportedVersion { found, .. }) => CheckpointVerdict::Version(*found),
        Err(e) => panic!("checkpoint decode failed with an unexpected error: {e}"),
    };
    assert_eq!(got, reference_checkpoint(data));
    let Ok(c) = decoded else { return };
    assert!(c.state.exhausted.is_empty());
    let encoded = checkpoint::encode(c.journal_seq, &c.state);
    let again = checkpoint::decode(path, &encoded).expect("re-encoded checkpoint decodes");
    assert_eq!(again, c);
    if canonical_checkpoint(data) {
        assert_eq!(encoded, data, "canonical checkpoint re-encodes differently");
    }
}
