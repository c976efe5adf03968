//! Named regressions for bugs found in review of the log.

use std::fs;
use std::path::{Path, PathBuf};

use millpond::{Options, Store, TornTail};
use millpond_suite::payload;

/// Reopening with a smaller `message_bytes_max` once treated durable frames
/// above the new limit as a torn tail and truncated them.
#[test]
fn reopen_with_smaller_message_limit_keeps_durable_frames() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let q = store.queue("q").unwrap();
    for i in 0..3 {
        q.push(payload(i, 1000)).unwrap();
    }
    drop(q);
    store.close().unwrap();
    drop(store);
    // Force a scan of the tail on open.
    let qdir = dir.path().join("queues/q");
    fs::remove_file(qdir.join("00000000000000000001.idx")).unwrap();
    let store = Store::open(dir.path(), Options::default().message_bytes_max(500)).unwrap();
    assert!(
        store.recovery_report().is_clean(),
        "{:?}",
        store.recovery_report()
    );
    let q = store.queue("q").unwrap();
    for i in 0..3u64 {
        assert_eq!(q.read(i + 1).unwrap().unwrap().payload, payload(i, 1000));
    }
    assert!(matches!(
        q.push(payload(9, 501)),
        Err(millpond::Error::MessageTooLarge {
            size: 501,
            max: 500
        })
    ));
}

/// A bit flip in an index file's version field once made the queue
/// unopenable (`UnsupportedVersion`) instead of rebuilding the derived file.
#[test]
fn damaged_index_version_is_rebuilt_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().segment_bytes_max(4096);
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let q = store.queue("q").unwrap();
    for i in 0..100 {
        q.push(payload(i, 100)).unwrap();
    }
    drop(q);
    store.close().unwrap();
    drop(store);
    let idx = dir.path().join("queues/q/00000000000000000001.idx");
    let mut bytes = fs::read(&idx).unwrap();
    bytes[9] ^= 1; // version 1 -> 257
    fs::write(&idx, &bytes).unwrap();
    let store = Store::open(dir.path(), options).unwrap();
    let q = store.queue("q").unwrap();
    let all: Vec<_> = q.reader(1).map(|m| m.unwrap()).collect();
    assert_eq!(all.len(), 100);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64, 100));
    }
}

/// Pushes `payloads` to queue `q` of a store in `dir`, closes it and
/// removes the segment's index file, so that the next open scans the whole
/// segment (the region recovery scans is what was written since the last
/// index). Returns the segment's path and bytes.
fn closed_segment_without_index(dir: &Path, payloads: &[Vec<u8>]) -> (PathBuf, Vec<u8>) {
    let store = Store::open(dir, Options::default()).unwrap();
    let q = store.queue("q").unwrap();
    for p in payloads {
        q.push(p).unwrap();
    }
    drop(q);
    store.close().unwrap();
    drop(store);
    let qdir = dir.join("queues/q");
    fs::remove_file(qdir.join("00000000000000000001.idx")).unwrap();
    let seg = qdir.join("00000000000000000001.seg");
    let bytes = fs::read(&seg).unwrap();
    (seg, bytes)
}

/// Opens the store in `dir`, which must report a torn tail of its queue:
/// the store and the tail.
fn open_cut(dir: &Path) -> (Store, TornTail) {
    let store = Store::open(dir, Options::default()).unwrap();
    let torn = store.recovery_report().queues[0]
        .torn_tail
        .clone()
        .expect("reported");
    (store, torn)
}

/// Opening the store in `dir` must fail with damage at `offset`.
fn open_fails_with_damage_at(dir: &Path, offset: u64) {
    match Store::open(dir, Options::default()) {
        Err(millpond::Error::Corruption { offset: at, .. }) => assert_eq!(at, offset),
        other => panic!("expected damage at {offset}: {other:?}"),
    }
}

/// Writeback has no order: after a power cut a later page of unsynced
/// writes can be on disk while an earlier one reads back as zeros. Recovery
/// once took the zero-filled gap for interior damage and refused to open
/// (`RecoveryMode::Fail`). No frame after such a gap was ever fsynced, so
/// it is now cut like a torn tail, and reported.
#[test]
fn zero_filled_gap_in_unsynced_tail_is_cut_like_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 100)).collect();
    let (seg, mut bytes) = closed_segment_without_index(dir.path(), &payloads);
    let frame = 28 + 100;
    let gap_start = 32 + frame;
    bytes[gap_start..gap_start + frame].fill(0);
    fs::write(&seg, &bytes).unwrap();

    let (store, torn) = open_cut(dir.path());
    assert_eq!(torn.offset, gap_start as u64);
    assert_eq!(torn.bytes, (bytes.len() - gap_start) as u64);
    assert!(torn.detail.contains("zero-filled gap"), "{}", torn.detail);
    assert!(torn.detail.contains("1 frames"), "{}", torn.detail);
    let q = store.queue("q").unwrap();
    assert_eq!(q.read(1).unwrap().unwrap().payload, payload(0, 100));
    assert_eq!(q.read(2).unwrap(), None);
    assert_eq!(q.read(3).unwrap(), None);
    assert_eq!(q.push(b"next").unwrap(), 2);
    // A clean close cuts the zeros written ahead of the frames.
    drop(q);
    store.close().unwrap();
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        (gap_start + 28 + 4) as u64
    );
}

/// The gap that out-of-order writeback leaves can end inside a frame: the
/// sector holding the start of an unsynced frame did not land (it still
/// reads as the preallocated zeros after the durable frame before it), the
/// next sector did. Recovery once took the zeros and the rest of that
/// frame for interior damage, and refused to open after an ordinary power
/// cut (the simulator stepped around it as the known bug
/// `torn-page-mistaken-for-damage`). It is cut like a torn tail now.
#[test]
fn gap_of_unsynced_sectors_ending_inside_a_frame_is_cut_like_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let payloads: Vec<Vec<u8>> = (0..4).map(|i| payload(i, 1000)).collect();
    let (seg, mut bytes) = closed_segment_without_index(dir.path(), &payloads);
    let frame = 28 + 1000;
    // Frame 2 starts at 1060; the sector [1024, 1536) holds the end of
    // frame 1 and the start of frame 2, and only frame 1's part landed.
    let cut = 32 + frame;
    assert_eq!(cut, 1060);
    bytes[cut..1536].fill(0);
    fs::write(&seg, &bytes).unwrap();

    let (store, torn) = open_cut(dir.path());
    assert_eq!(torn.offset, cut as u64);
    assert_eq!(torn.bytes, (bytes.len() - cut) as u64);
    assert!(
        torn.detail.contains(&format!(
            "zero-filled gap of {} bytes to a sector boundary, then {} bytes of a frame",
            1536 - cut,
            cut + frame - 1536
        )),
        "{}",
        torn.detail
    );
    assert!(
        torn.detail.contains("followed by 2 frames"),
        "{}",
        torn.detail
    );
    let q = store.queue("q").unwrap();
    assert_eq!(q.read(1).unwrap().unwrap().payload, payload(0, 1000));
    assert_eq!(q.read(2).unwrap(), None);
    assert_eq!(q.push(b"next").unwrap(), 2);
    assert_eq!(q.read(2).unwrap().unwrap().payload, b"next");
}

/// As above, when the sector that landed after the lost one begins with
/// zero bytes of its own (here the frame's payload starts with 600 zeros):
/// the zeros then run past the sector boundary, and recovery once required
/// them to end exactly there (simulator seeds 136893 and 178542).
#[test]
fn gap_of_unsynced_sectors_followed_by_landed_zeros_is_cut_like_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut second = vec![0u8; 600];
    second.extend(payload(1, 400));
    let payloads = [payload(0, 1000), second, payload(2, 1000), payload(3, 1000)];
    let (seg, mut bytes) = closed_segment_without_index(dir.path(), &payloads);
    let cut = 32 + 28 + 1000;
    bytes[cut..1536].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let (store, torn) = open_cut(dir.path());
    assert_eq!(torn.offset, cut as u64);
    assert!(
        torn.detail.contains("followed by 2 frames"),
        "{}",
        torn.detail
    );
    let q = store.queue("q").unwrap();
    assert_eq!(q.read(1).unwrap().unwrap().payload, payloads[0]);
    assert_eq!(q.read(2).unwrap(), None);
}

/// As above, when the sector boundary falls 1 to 3 bytes into a frame,
/// inside its CRC: only those bytes were lost (they read back as zeros),
/// and the rest of the frame is intact, so the stored CRC is the computed
/// one with its first bytes zeroed. Recovery once took it for a bit flip
/// (simulator seed 172203, 2 bytes).
#[test]
fn unsynced_sector_ending_inside_a_frames_crc_is_cut_like_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    // The first frame is 28 + 450 bytes: the second starts at 510.
    let payloads = [payload(0, 450), payload(1, 300), payload(2, 300)];
    let (seg, mut bytes) = closed_segment_without_index(dir.path(), &payloads);
    bytes[510..512].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let (store, torn) = open_cut(dir.path());
    assert_eq!(torn.offset, 510);
    assert!(
        torn.detail.contains("followed by 1 frames"),
        "{}",
        torn.detail
    );
    let q = store.queue("q").unwrap();
    assert_eq!(q.read(1).unwrap().unwrap().payload, payloads[0]);
    assert_eq!(q.read(2).unwrap(), None);
}

/// The same two bytes zeroed in a frame that a bit flip also damaged
/// elsewhere do not match its CRC: damage, not a torn tail.
#[test]
fn zeroed_crc_bytes_of_a_frame_flipped_elsewhere_are_damage() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = [payload(0, 450), payload(1, 300), payload(2, 300)];
    let (seg, mut bytes) = closed_segment_without_index(dir.path(), &payloads);
    bytes[510..512].fill(0);
    bytes[510 + 28 + 100] ^= 0x04;
    fs::write(&seg, &bytes).unwrap();
    open_fails_with_damage_at(dir.path(), 510);
}

/// The other side of the rule above: a durable frame damaged by a bit
/// flip, with zeros after it to a sector boundary that are the frame's own
/// payload, is damage, not a torn tail: the zeros do not start where the
/// damage does.
#[test]
fn flipped_frame_with_zero_payload_is_still_reported_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = [payload(0, 1000), vec![0u8; 1000], payload(2, 1000)];
    let (seg, mut bytes) = closed_segment_without_index(dir.path(), &payloads);
    let second = 32 + 28 + 1000;
    bytes[second + 9] ^= 0x10; // the id of the zero-payload frame
    fs::write(&seg, &bytes).unwrap();
    open_fails_with_damage_at(dir.path(), second as u64);
}

/// A reader tailing a `Sync` queue must never return a frame that is written
/// but not yet durable, nor skip one: it caches the visible limit (to keep
/// the writer's lock off the read path) and refreshes it only on reaching
/// it, and a frame met at or past the limit leaves the cursor where it was.
#[test]
fn tailing_reader_under_sync_skips_no_frame() {
    const COUNT: u64 = 1500;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let q = store.queue("q").unwrap();
    let first = q.next_id();
    std::thread::scope(|s| {
        let pusher = q.clone();
        s.spawn(move || {
            for i in 0..COUNT {
                pusher.push(payload(i, 100)).unwrap();
            }
        });
        let mut reader = q.reader(first);
        let mut expected = first;
        while expected < first + COUNT {
            match reader.next() {
                Some(m) => {
                    let m = m.unwrap();
                    assert_eq!(m.id, expected, "the reader skipped or repeated an id");
                    assert_eq!(m.payload, payload(expected - first, 100));
                    expected += 1;
                }
                None => std::thread::yield_now(),
            }
        }
    });
    store.close().unwrap();
}
