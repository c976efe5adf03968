//! Seed inputs for the fuzz targets: valid encodings made by the engine's
//! own encoders, and a few near misses (torn, damaged, newer). The files in
//! `fuzz/corpus/<target>/seed-*` are these, written by the ignored test
//! `write_seed_corpora` in `tests/fuzz_corpus_replay.rs`.

use millpond::group::checkpoint;
use millpond::group::journal::{self, Record};
use millpond::group::state::{Entry, EntryState, GroupState};
use millpond::log::frame::{self, Attrs};
use millpond::log::index::{self, IndexMeta};
use millpond::log::segment;

use super::crc32;

fn frame(out: &mut Vec<u8>, id: u64, attrs: Attrs, payload: &[u8]) {
    frame::encode(out, id, 1_600_000_000_000 + id, &attrs, payload);
}

fn plain(id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    frame(
        &mut out,
        id,
        Attrs::default(),
        format!("message {id}").as_bytes(),
    );
    out
}

fn attrs(priority: u32, not_before_ms: u64) -> Attrs {
    Attrs {
        priority,
        not_before_ms,
    }
}

/// A frame whose flags have a bit this version does not know, with a
/// valid CRC (as a newer writer would leave it).
fn newer_frame(id: u64) -> Vec<u8> {
    let mut out = plain(id);
    out[24..28].copy_from_slice(&0x8u32.to_le_bytes());
    let crc = crc32(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

fn segment_with(first_id: u64, ids: &[u64]) -> Vec<u8> {
    let mut out = segment::encode_header(first_id).to_vec();
    for &id in ids {
        out.extend_from_slice(&plain(id));
    }
    out
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with = |name, a: Attrs, payload: &[u8]| {
        let mut out = Vec::new();
        frame(&mut out, 42, a, payload);
        (name, out)
    };
    let mut seeds = vec![
        with("plain", Attrs::default(), b"hello"),
        with("empty_payload", Attrs::default(), b""),
        with("priority", attrs(7, 0), b"urgent"),
        with("delayed", attrs(0, 1_700_000_000_500), b"later"),
        with("priority_and_delay", attrs(3, 1_700_000_000_500), b"both"),
    ];
    let mut two = plain(1);
    two.extend_from_slice(&plain(2));
    seeds.push(("two_frames", two));
    seeds.push(("newer_flags", newer_frame(5)));
    let mut torn = plain(9);
    torn.truncate(torn.len() - 3);
    seeds.push(("torn", torn));
    seeds
}

fn segment_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = vec![
        ("header_only", segment::encode_header(1).to_vec()),
        ("three_frames", segment_with(1, &[1, 2, 3])),
        ("first_id_1000", segment_with(1000, &[1000, 1001, 1002])),
        ("id_gaps", segment_with(1, &[1, 5, 9])),
    ];
    let mut torn = segment_with(1, &[1, 2, 3]);
    torn.truncate(torn.len() - 5);
    seeds.push(("torn_tail", torn));
    let mut damaged = segment_with(1, &[1, 2, 3, 4, 5]);
    let second = segment::HEADER_LEN as usize + plain(1).len() + 30;
    damaged[second] ^= 0x20;
    seeds.push(("interior_damage", damaged));
    let mut gap = segment_with(1, &[1, 2]);
    gap.extend_from_slice(&[0; 40]);
    gap.extend_from_slice(&plain(3));
    gap.extend_from_slice(&plain(4));
    seeds.push(("zero_gap", gap));
    // Out-of-order writeback: the sector holding the start of a frame did
    // not land (zeros from the frame's start to a 512-byte boundary), the
    // next sector, with the rest of it and later frames, did.
    let mut sector = segment_with(1, &(1..=60).collect::<Vec<u64>>());
    let (mut start, mut id) = (segment::HEADER_LEN as usize, 1);
    // The first frame that crosses a sector boundary 4 bytes or more
    // after its start.
    while !(start % 512 <= 508 && (start + plain(id).len()) / 512 > start / 512) {
        start += plain(id).len();
        id += 1;
    }
    let boundary = (start / 512 + 1) * 512;
    sector[start..boundary].fill(0);
    seeds.push(("sector_gap", sector));
    let mut attrs_seg = segment::encode_header(1).to_vec();
    frame(&mut attrs_seg, 1, attrs(5, 0), b"priority five");
    frame(&mut attrs_seg, 2, attrs(0, u64::MAX / 2), b"far future");
    frame(&mut attrs_seg, 3, attrs(0, 1_000), b"past delay");
    frame(&mut attrs_seg, 4, attrs(1, 1_000), b"both, due");
    seeds.push(("attributes", attrs_seg));
    let mut newer = segment_with(1, &[1, 2]);
    newer.extend_from_slice(&newer_frame(3));
    newer.extend_from_slice(&plain(4));
    seeds.push(("newer_flags", newer));
    let mut version = segment::encode_header(1);
    version[8] = 2;
    let crc = crc32(&version[..28]);
    version[28..].copy_from_slice(&crc.to_le_bytes());
    seeds.push(("newer_version", version.to_vec()));
    seeds
}

fn index_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let meta = |first_id, covered_bytes, next_id| IndexMeta {
        first_id,
        covered_bytes,
        next_id,
        priority_floor: 0,
    };
    let mut version = index::encode(&meta(1, 32, 1), &[]);
    version[8] = 3;
    let crc = crc32(&version[..52]);
    version[52..56].copy_from_slice(&crc.to_le_bytes());
    // A version 1 file (48-byte header, one checksum over header and
    // entries), as builds before version 2 wrote them.
    let v2 = index::encode(&meta(1, 4000, 40), &[(1, 32), (12, 1100)]);
    let mut v1 = v2[..48].to_vec();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1[44..48].copy_from_slice(&[0; 4]);
    v1.extend_from_slice(&v2[56..]);
    let mut covered = v1[..44].to_vec();
    covered.extend_from_slice(&v1[48..]);
    let crc = crc32(&covered);
    v1[44..48].copy_from_slice(&crc.to_le_bytes());
    vec![
        ("empty", index::encode(&meta(1, 32, 1), &[])),
        (
            "three_entries",
            index::encode(&meta(1, 4000, 40), &[(1, 32), (12, 1100), (30, 3000)]),
        ),
        (
            "one_entry",
            index::encode(&meta(1000, 100, 1001), &[(1000, 32)]),
        ),
        ("newer_version", version),
        ("version_1", v1),
    ]
}

fn journal_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let records = [
        Record::Reserve {
            id: 1,
            attempts: 1,
            priority: 0,
        },
        Record::Ack { id: 1 },
        Record::Reserve {
            id: 2,
            attempts: 2,
            priority: 9,
        },
        Record::Nack {
            id: 2,
            until: 1_700_000_001_000,
        },
        Record::Bury { id: 2 },
        Record::Kick { id: 2 },
        Record::DeadLetter { id: 3 },
        Record::Delete { id: 4 },
        Record::Priority { id: 5, priority: 3 },
        Record::Track { id: 6 },
    ];
    let mut file = journal::encode_header(7).to_vec();
    for r in &records {
        file.extend_from_slice(&r.encode());
    }
    let mut torn = file.clone();
    torn.truncate(torn.len() - 10);
    // A batch reserve and its batch ack: a run record each.
    let batch: Vec<Record> = (10..20)
        .map(|id| Record::Reserve {
            id,
            attempts: 1,
            priority: 2,
        })
        .chain((10..20).map(|id| Record::Ack { id }))
        .collect();
    let mut runs = journal::encode_header(7).to_vec();
    journal::encode_all(&batch, &mut runs);
    vec![
        ("header_only", journal::encode_header(7).to_vec()),
        ("every_kind", file),
        ("runs", runs),
        ("torn", torn),
        ("record", Record::Ack { id: 99 }.encode().to_vec()),
        ("zeros", vec![0; 80]),
    ]
}

fn checkpoint_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut state = GroupState::new(50);
    state.acked_total = 40;
    state.dead_lettered_total = 1;
    state.max_attempts = 10;
    let entries = [
        (3, EntryState::Buried, 10, 0),
        (7, EntryState::Ready, 2, 4),
        (9, EntryState::Delayed(1_700_000_009_000), 1, 0),
        (12, EntryState::Reserved(1_700_000_000_900), 3, 0),
    ];
    for (id, st, attempts, priority) in entries {
        state.set(
            id,
            Entry {
                state: st,
                attempts,
                priority,
            },
        );
    }
    let every_state = checkpoint::encode(4, &state);
    state.closed_cleanly = true;
    vec![
        ("empty", checkpoint::encode(1, &GroupState::new(1))),
        ("every_state", every_state),
        ("closed_cleanly", checkpoint::encode(5, &state)),
    ]
}

fn ops_seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Pairs of (operation, argument); operation % 9: 0-1 push, 2 batch,
    // 3-4 reserve, 5 ack, 6 nack, 7 clock (arg < 128) or compact, 8 reopen.
    let mut fill_and_compact = Vec::new();
    for _ in 0..40 {
        fill_and_compact.extend_from_slice(&[0, 200]);
    }
    for _ in 0..40 {
        fill_and_compact.extend_from_slice(&[3, 0, 5, 0]);
    }
    fill_and_compact.extend_from_slice(&[7, 200, 8, 0, 0, 10]);
    vec![
        (
            "push_reserve_ack",
            vec![0, 10, 0, 20, 3, 0, 5, 0, 3, 1, 5, 0],
        ),
        (
            "nack_until_buried",
            vec![0, 5, 3, 0, 6, 0, 3, 0, 6, 0, 3, 0, 6, 0, 3, 0],
        ),
        (
            "lease_expiry",
            vec![0, 5, 0, 6, 3, 0, 7, 20, 3, 7, 7, 100, 3, 0, 5, 0],
        ),
        (
            "reopen_releases",
            vec![2, 4, 3, 0, 3, 0, 5, 0, 8, 0, 3, 0, 5, 1, 8, 0, 3, 0],
        ),
        ("refused_settles", vec![0, 1, 5, 250, 6, 251, 3, 0, 5, 202]),
        ("fill_and_compact", fill_and_compact),
    ]
}

/// The seed inputs of `target`, by name.
///
/// # Panics
///
/// For a target that does not exist.
pub fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    match target {
        "frame_decode" => frame_seeds(),
        "segment_recover" => segment_seeds(),
        "index_decode" => index_seeds(),
        "journal_decode" => journal_seeds(),
        "checkpoint_decode" => checkpoint_seeds(),
        "ops_vs_model" => ops_seeds(),
        other => panic!("no fuzz target {other}"),
    }
}
