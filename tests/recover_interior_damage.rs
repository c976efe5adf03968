//! Damage in the interior of the log is reported with file and offset and
//! never drops the valid records after it (guarantee 4): in the newest
//! segment (found by recovery's scan: `RecoveryMode::Fail` refuses,
//! `Skip` keeps the rest readable), in sealed segments (found when read,
//! with or without their index file), in a segment header, and in index
//! files (derived data, rebuilt transparently).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use millpond::fs::{Fs, OpenMode};
use millpond::log::{index, segment};
use millpond::{DamagedRange, Error, Options, Queue, RecoveryMode, Store};
use millpond_suite::{on_each_fs, payload};

const N: u64 = 100;

fn msg(id: u64) -> Vec<u8> {
    payload(id, PAYLOAD_BYTES)
}

/// 100-byte payloads: 128-byte frames, 31 to a 4 KiB segment.
const PAYLOAD_BYTES: usize = 100;
const FRAME_BYTES: u64 = 28 + PAYLOAD_BYTES as u64;

fn read_file(fs: &dyn Fs, path: &Path) -> Vec<u8> {
    fs.open(path, OpenMode::Read)
        .unwrap()
        .map()
        .unwrap()
        .to_vec()
}

fn write_file(fs: &dyn Fs, path: &Path, bytes: &[u8]) {
    let f = fs.open(path, OpenMode::CreateTruncate).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_data().unwrap();
}

fn flip_bit(fs: &dyn Fs, path: &Path, offset: u64, bit: u8) {
    let f = fs.open(path, OpenMode::ReadWrite).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ (1 << bit)], offset).unwrap();
    f.sync_data().unwrap();
}

fn seg_path(store: &Path, first_id: u64) -> PathBuf {
    store.join("queues/q").join(segment::file_name(first_id))
}

fn idx_path(store: &Path, first_id: u64) -> PathBuf {
    store
        .join("queues/q")
        .join(segment::index_file_name(first_id))
}

/// Pushes ids `1..=N`, closes, returns the file system.
fn fill(path: &Path, options: &Options) -> Arc<dyn Fs> {
    let store = Store::open(path, options.clone()).unwrap();
    let fs = store.fs().clone();
    let q = store.queue("q").unwrap();
    // One commit: a write per segment and few fsyncs, for speed.
    let batch: Vec<Vec<u8>> = (1..=N).map(msg).collect();
    assert_eq!(q.push_batch(&batch).unwrap(), 1..N + 1);
    drop(q);
    store.close().unwrap();
    fs
}

/// Offsets of the frames in a segment file, by walking their headers, as
/// (id, offset); checks each frame is a plain one of `FRAME_BYTES`.
fn frame_offsets(bytes: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = segment::HEADER_LEN as usize;
    while pos < bytes.len() {
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        let id = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
        let flags = u32::from_le_bytes(bytes[pos + 24..pos + 28].try_into().unwrap());
        assert_eq!(
            (len as usize, flags),
            (PAYLOAD_BYTES, 0),
            "frame of id {id}"
        );
        out.push((id, pos as u64));
        pos += FRAME_BYTES as usize;
    }
    assert_eq!(pos, bytes.len());
    out
}

/// Damages the payload of message `id` in segment `first_id`; returns the
/// frame's offset.
fn damage_payload(fs: &dyn Fs, store: &Path, first_id: u64, id: u64) -> u64 {
    let seg = seg_path(store, first_id);
    let offsets = frame_offsets(&read_file(fs, &seg));
    let &(_, offset) = offsets
        .iter()
        .find(|(i, _)| *i == id)
        .unwrap_or_else(|| panic!("id {id} is in segment {first_id}"));
    flip_bit(fs, &seg, offset + 28 + 10, 3);
    offset
}

fn assert_corruption(
    result: Result<impl std::fmt::Debug, Error>,
    file: &Path,
    at: u64,
    context: &str,
) {
    match result {
        Err(Error::Corruption {
            path,
            offset,
            detail,
        }) => {
            assert_eq!(path, file, "{context}: path");
            assert_eq!(offset, at, "{context}: offset");
            assert!(!detail.is_empty(), "{context}");
        }
        other => panic!("{context}: want Corruption at {at}, got {other:?}"),
    }
}

/// Every message but `bad` reads back; `bad` reports corruption in `file`
/// at `at`; the reader yields `1..bad`, one error, then the rest.
fn assert_reads_around(q: &Queue, bad: u64, file: &Path, at: u64, context: &str) {
    for id in (1..=N).filter(|&id| id != bad) {
        let m = q
            .read(id)
            .unwrap_or_else(|e| panic!("{context}: read({id}): {e}"));
        assert_eq!(m.map(|m| m.payload), Some(msg(id)), "{context}: id {id}");
    }
    assert_corruption(q.read(bad), file, at, &format!("{context}: read({bad})"));
    let items: Vec<_> = q.reader(1).take(N as usize + 10).collect();
    assert_eq!(items.len(), N as usize, "{context}: reader items");
    for (i, item) in items.into_iter().enumerate() {
        let i = i as u64 + 1;
        if i == bad {
            assert_corruption(item, file, at, &format!("{context}: reader"));
        } else {
            let m = item.unwrap_or_else(|e| panic!("{context}: reader at {i}: {e}"));
            assert_eq!((m.id, m.payload), (i, msg(i)), "{context}: reader");
        }
    }
}

#[test]
fn damaged_frame_in_the_newest_segment_fails_or_is_skipped() {
    on_each_fs(|place| {
        let options = place.options.clone();
        let fs = fill(&place.path, &options);
        let seg = seg_path(&place.path, 1);
        let at = damage_payload(&*fs, &place.path, 1, 40);
        assert_eq!(at, segment::HEADER_LEN + 39 * FRAME_BYTES);
        // As after a crash: no index file, so recovery scans the segment.
        fs.remove_file(&idx_path(&place.path, 1)).unwrap();
        let damaged = read_file(&*fs, &seg);

        let err = Store::open(&place.path, options.clone());
        assert_corruption(err, &seg, at, "open under RecoveryMode::Fail");
        let err = Store::open(&place.path, options.clone()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(
            read_file(&*fs, &seg),
            damaged,
            "a refused open changes nothing"
        );

        let skip = options.clone().recovery_mode(RecoveryMode::Skip);
        let store = Store::open(&place.path, skip.clone()).unwrap();
        let report = store.recovery_report().clone();
        assert!(!report.is_clean());
        let qr = &report.queues[0];
        assert_eq!(
            qr.torn_tail, None,
            "damage followed by valid frames is not a torn tail"
        );
        assert_eq!(qr.damaged.len(), 1, "{qr:?}");
        let DamagedRange {
            path,
            offset,
            len,
            detail,
        } = &qr.damaged[0];
        assert_eq!((path, *offset, *len), (&seg, at, FRAME_BYTES));
        assert!(detail.contains("checksum"), "{detail}");
        assert_eq!(read_file(&*fs, &seg), damaged, "damage is kept in place");
        let q = store.queue("q").unwrap();
        assert_reads_around(&q, 40, &seg, at, "Skip");
        assert_eq!(q.next_id(), N + 1);
        assert_eq!(q.push(b"after").unwrap(), N + 1);
        assert_eq!(q.read(N + 1).unwrap().unwrap().payload, b"after");
        drop(q);
        store.close().unwrap();
        drop(store);

        // The damage is still reported after a clean reopen, in either mode.
        for mode in [RecoveryMode::Skip, RecoveryMode::Fail] {
            let store = Store::open(&place.path, options.clone().recovery_mode(mode)).unwrap();
            let q = store.queue("q").unwrap();
            assert_corruption(q.read(40), &seg, at, &format!("{mode:?} after reopen"));
            assert_eq!(q.read(41).unwrap().unwrap().payload, msg(41));
            let errors = q.reader(1).filter(|m| m.is_err()).count();
            assert_eq!(errors, 1, "{mode:?}: one error for one damaged frame");
            assert_eq!(q.reader(1).filter(|m| m.is_ok()).count(), N as usize);
        }
    });
}

#[test]
fn damaged_frame_under_a_valid_index_is_reported_when_read() {
    on_each_fs(|place| {
        let options = place.options.clone();
        let fs = fill(&place.path, &options);
        let seg = seg_path(&place.path, 1);
        let at = damage_payload(&*fs, &place.path, 1, 40);
        // A clean shutdown left an index covering the whole segment, so the
        // open does not scan it (bounded recovery) and succeeds even under
        // `Fail`; the damage is found by the reads.
        let store = Store::open(&place.path, options.clone()).unwrap();
        assert_eq!(store.recovery_report().segments_scanned(), 0);
        let q = store.queue("q").unwrap();
        assert_reads_around(&q, 40, &seg, at, "index present");
    });
}

/// The sealed-segment cases: 4 KiB segments starting at 1, 32, 63 and 94.
fn sealed_case(bad: u64, drop_index: bool) {
    on_each_fs(|place| {
        let context = format!("id {bad}, index removed: {drop_index}");
        let options = place.options.clone().segment_bytes_max(4096);
        let fs = fill(&place.path, &options);
        let names = fs.list_dir(&place.path.join("queues/q")).unwrap();
        let firsts: Vec<u64> = names
            .iter()
            .filter_map(|n| segment::parse_file_name(n))
            .collect();
        assert_eq!(firsts, [1, 32, 63, 94]);
        let seg = seg_path(&place.path, 1);
        let idx = idx_path(&place.path, 1);
        let at = damage_payload(&*fs, &place.path, 1, bad);
        if drop_index {
            fs.remove_file(&idx).unwrap();
        }
        let store = Store::open(&place.path, options.clone()).unwrap();
        assert!(
            store.recovery_report().is_clean(),
            "{context}: sealed segments are read lazily"
        );
        let q = store.queue("q").unwrap();
        assert_reads_around(&q, bad, &seg, at, &context);
        // A removed index was rebuilt, without hiding the damage.
        let rebuilt = index::decode(&read_file(&*fs, &idx)).unwrap();
        // A rebuilt index cannot count a damaged last frame: it ends at 31.
        let next_id = if bad == 31 && drop_index { 31 } else { 32 };
        assert_eq!(
            (rebuilt.first_id, rebuilt.covered_bytes, rebuilt.next_id),
            (1, segment::HEADER_LEN + 31 * FRAME_BYTES, next_id),
            "{context}"
        );
        drop(q);
        store.close().unwrap();
        drop(store);
        let store = Store::open(&place.path, options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        assert_reads_around(&q, bad, &seg, at, &format!("{context}, reopened"));
    });
}

#[test]
fn damaged_frame_in_a_sealed_segment_with_its_index() {
    sealed_case(10, false);
}

#[test]
fn damaged_frame_in_a_sealed_segment_whose_index_is_rebuilt() {
    sealed_case(10, true);
}

#[test]
fn damaged_last_frame_of_a_sealed_segment() {
    sealed_case(31, false);
    sealed_case(31, true);
}

#[test]
fn damaged_first_frame_of_a_sealed_segment() {
    sealed_case(1, true);
}

/// Regression: when a sealed segment's header failed its check, the reader
/// returned the same error on every call without moving past the segment,
/// so it never ended and never reached the valid segments after it.
#[test]
fn damaged_sealed_segment_header_is_reported_and_later_segments_stay_readable() {
    on_each_fs(|place| {
        let options = place.options.clone().segment_bytes_max(4096);
        let fs = fill(&place.path, &options);
        let seg = seg_path(&place.path, 1);
        flip_bit(&*fs, &seg, 17, 0); // the first id, under the header CRC
        let store = Store::open(&place.path, options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        for id in [1, 15, 31] {
            assert_corruption(q.read(id), &seg, 0, &format!("read({id})"));
        }
        for id in 32..=N {
            assert_eq!(q.read(id).unwrap().unwrap().payload, msg(id), "id {id}");
        }
        // One error for the damaged segment, then the valid messages after it.
        let items: Vec<_> = q.reader(1).take(N as usize + 10).collect();
        assert!(!items.is_empty());
        let errors = items.iter().filter(|m| m.is_err()).count();
        let ids: Vec<u64> = items
            .iter()
            .filter_map(|m| m.as_ref().ok().map(|m| m.id))
            .collect();
        assert_eq!(
            (errors, ids),
            (1, (32..=N).collect::<Vec<_>>()),
            "reader over a segment whose header is damaged"
        );
    });
}

#[test]
fn garbage_index_files_are_rebuilt_transparently() {
    on_each_fs(|place| {
        let options = place.options.clone().segment_bytes_max(4096);
        let fs = fill(&place.path, &options);
        let garbage = payload(7, 300);
        // A sealed segment's index, and the tail's.
        for first in [1, 94] {
            write_file(&*fs, &idx_path(&place.path, first), &garbage);
        }
        // Another segment's valid index in place of segment 32's.
        let other = read_file(&*fs, &idx_path(&place.path, 63));
        write_file(&*fs, &idx_path(&place.path, 32), &other);

        let store = Store::open(&place.path, options.clone()).unwrap();
        let report = store.recovery_report();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.segments_scanned(), 1, "the tail is scanned");
        let q = store.queue("q").unwrap();
        for id in 1..=N {
            assert_eq!(q.read(id).unwrap().unwrap().payload, msg(id), "id {id}");
        }
        let ids: Vec<u64> = q.reader(1).map(|m| m.unwrap().id).collect();
        assert_eq!(ids, (1..=N).collect::<Vec<_>>());
        assert_eq!(q.push(b"next").unwrap(), N + 1);
        drop(q);
        store.close().unwrap();
        drop(store);
        for (first, next) in [(1, 32), (32, 63), (94, N + 2)] {
            let meta = index::decode(&read_file(&*fs, &idx_path(&place.path, first)))
                .unwrap_or_else(|e| panic!("index of {first} not rewritten: {e:?}"));
            assert_eq!((meta.first_id, meta.next_id), (first, next));
        }
        let store = Store::open(&place.path, options).unwrap();
        assert_eq!(store.recovery_report().segments_scanned(), 0);
        assert_eq!(
            store.queue("q").unwrap().read(5).unwrap().unwrap().payload,
            msg(5)
        );
    });
}
