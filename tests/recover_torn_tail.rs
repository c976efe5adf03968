//! A torn tail, the partial last record a crash leaves, is truncated on
//! recovery and reported, and the log continues after the last valid
//! message (guarantee 4). A newest segment whose header never became
//! durable is rewritten. Runs on the real, the in-memory and the simulated
//! file system.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use millpond::fs::{Fs, OpenMode, SimFs};
use millpond::log::frame::{self, Attrs};
use millpond::log::segment;
use millpond::{Options, Store};
use millpond_suite::{FsKind, Place, payload};

/// Runs `body` on the real, the in-memory and the simulated file system.
fn on_every_fs(body: impl Fn(Place)) {
    body(Place::new(FsKind::Real));
    body(Place::new(FsKind::Mem));
    let mut sim = Place::new(FsKind::Mem);
    sim.options = sim.options.clone().fs(Arc::new(SimFs::new(7)));
    body(sim);
}

fn msg(id: u64) -> Vec<u8> {
    payload(id, 40 + (id % 50) as usize)
}

fn read_file(fs: &dyn Fs, path: &Path) -> Vec<u8> {
    fs.open(path, OpenMode::Read)
        .unwrap()
        .map()
        .unwrap()
        .to_vec()
}

fn append(fs: &dyn Fs, path: &Path, bytes: &[u8]) {
    let f = fs.open(path, OpenMode::ReadWrite).unwrap();
    let end = f.len().unwrap();
    f.write_all_at(bytes, end).unwrap();
    f.sync_data().unwrap();
}

fn seg_path(store: &Path, first_id: u64) -> PathBuf {
    store.join("queues/q").join(segment::file_name(first_id))
}

/// Pushes ids `1..=n` as `msg(id)`, closes, and returns the file system.
fn fill(path: &Path, options: &Options, n: u64) -> Arc<dyn Fs> {
    let store = Store::open(path, options.clone()).unwrap();
    let fs = store.fs().clone();
    let q = store.queue("q").unwrap();
    // One commit: a write per segment and few fsyncs, for speed.
    let batch: Vec<Vec<u8>> = (1..=n).map(msg).collect();
    assert_eq!(q.push_batch(&batch).unwrap(), 1..n + 1);
    drop(q);
    store.close().unwrap();
    fs
}

/// Checks ids `1..=n` read back, the next push gets `n + 1`, and a clean
/// close then reopens without scanning.
fn assert_continues(path: &Path, options: &Options, store: Store, n: u64, context: &str) {
    let q = store.queue("q").unwrap();
    for id in 1..=n {
        let m = q
            .read(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{context}: id {id} lost"));
        assert_eq!(m.payload, msg(id), "{context}: id {id}");
    }
    let ids: Vec<u64> = q.reader(1).map(|m| m.unwrap().id).collect();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "{context}: reader");
    assert_eq!(q.next_id(), n + 1, "{context}");
    assert_eq!(q.push(msg(n + 1)).unwrap(), n + 1, "{context}: next push");
    assert_eq!(
        q.read(n + 1).unwrap().unwrap().payload,
        msg(n + 1),
        "{context}"
    );
    drop(q);
    store.close().unwrap();
    drop(store);
    let store = Store::open(path, options.clone()).unwrap();
    let report = store.recovery_report();
    assert!(report.is_clean(), "{context}: {report:?}");
    assert_eq!(report.segments_scanned(), 0, "{context}");
    let q = store.queue("q").unwrap();
    assert_eq!(q.next_id(), n + 2, "{context}");
    assert_eq!(
        q.read(n + 1).unwrap().unwrap().payload,
        msg(n + 1),
        "{context}"
    );
}

/// Bytes a crash could leave after the last valid frame: what they are,
/// the bytes, and how many whole valid frames (of ids `next_id..`) they
/// start with, which recovery keeps.
fn tails(next_id: u64) -> Vec<(&'static str, Vec<u8>, u64)> {
    let ts = 1_700_000_000_000;
    let mut frame = Vec::new();
    frame::encode(&mut frame, next_id, ts, &Attrs::default(), &msg(next_id));
    let mut bad_crc = frame.clone();
    *bad_crc.last_mut().unwrap() ^= 0x10;
    let mut two = frame.clone();
    frame::encode(
        &mut two,
        next_id + 1,
        ts,
        &Attrs::default(),
        &msg(next_id + 1),
    );
    assert_ne!(
        *frame.last().unwrap(),
        0,
        "the zero below must change the frame"
    );
    let mut then_zeros = frame[..frame.len() - 1].to_vec();
    then_zeros.extend_from_slice(&[0; 512]);
    vec![
        ("half a frame", frame[..frame.len() / 2].to_vec(), 0),
        (
            "a frame header only",
            frame[..frame::HEADER_LEN].to_vec(),
            0,
        ),
        ("a few bytes", frame[..5].to_vec(), 0),
        ("a whole frame failing its checksum", bad_crc, 0),
        ("a frame cut short then zeros", then_zeros, 0),
        (
            "a frame and half of the next",
            two[..frame.len() + 20].to_vec(),
            1,
        ),
    ]
}

fn torn_tail_case(place: Place, segment_bytes_max: u64, n: u64, segments: usize) {
    let options = place.options.clone().segment_bytes_max(segment_bytes_max);
    for (what, garbage, kept_frames) in tails(n + 1) {
        for drop_index in [false, true] {
            let context = format!("{what}, index file removed: {drop_index}");
            // One fresh store per case, in its own directory.
            let case = place
                .path
                .join(format!("{}-{drop_index}", what.replace(' ', "-")));
            let fs = fill(&case, &options, n);
            let firsts: Vec<u64> = fs
                .list_dir(&case.join("queues/q"))
                .unwrap()
                .iter()
                .filter_map(|name| segment::parse_file_name(name))
                .collect();
            assert_eq!(firsts.len(), segments, "{context}: segments {firsts:?}");
            let seg = seg_path(&case, *firsts.last().unwrap());
            if drop_index {
                let mut idx = seg.clone();
                idx.set_extension("idx");
                fs.remove_file(&idx).unwrap();
            }
            let mut valid = read_file(&*fs, &seg);
            append(&*fs, &seg, &garbage);
            let kept = if kept_frames == 1 {
                frame_len(&garbage)
            } else {
                0
            };
            valid.extend_from_slice(&garbage[..kept as usize]);
            let end = valid.len() as u64;

            let store = Store::open(&case, options.clone())
                .unwrap_or_else(|e| panic!("{context}: a torn tail must not fail the open: {e}"));
            let report = store.recovery_report();
            assert_eq!(report.queues.len(), 1);
            let qr = &report.queues[0];
            let torn = qr
                .torn_tail
                .as_ref()
                .unwrap_or_else(|| panic!("{context}: torn tail not reported: {qr:?}"));
            assert_eq!(torn.path, seg, "{context}");
            assert_eq!(
                torn.offset, end,
                "{context}: the cut is where valid data ends"
            );
            let dropped = garbage.len() as u64 - kept;
            assert_eq!(torn.bytes, dropped, "{context}");
            assert_eq!(qr.bytes_truncated, dropped, "{context}");
            assert!(
                qr.damaged.is_empty() && qr.header_rewritten.is_none(),
                "{context}: {qr:?}"
            );
            assert_eq!(
                qr.segments_scanned, 1,
                "{context}: only the tail is scanned"
            );
            assert!(!report.is_clean(), "{context}");
            assert_eq!(
                read_file(&*fs, &seg),
                valid,
                "{context}: the file is truncated back to its valid bytes"
            );
            assert_continues(&case, &options, store, n + kept_frames, &context);
        }
    }
}

/// The length of the frame at the start of `bytes`, by its header.
fn frame_len(bytes: &[u8]) -> u64 {
    frame::HEADER_LEN as u64 + u64::from(u32::from_le_bytes(bytes[4..8].try_into().unwrap()))
}

#[test]
fn torn_tail_of_the_only_segment_is_truncated_and_reported() {
    on_every_fs(|place| torn_tail_case(place, 64 << 20, 20, 1));
}

#[test]
fn torn_tail_after_sealed_segments_is_truncated_and_reported() {
    // 40-89 byte payloads, 68-117 byte frames: 100 messages need 3+ segments.
    on_every_fs(|place| torn_tail_case(place, 4096, 100, 3));
}

/// Zeros after the newest segment's last frame (the writer's
/// preallocation, see `Options::preallocate_bytes`, or unsynced writes
/// that reached the disk as zeros) are not a torn tail: nothing is cut or
/// reported as torn, the zeros are counted, and the next push overwrites
/// them.
#[test]
fn zero_tail_is_kept_and_overwritten() {
    on_every_fs(|place| {
        let options = place.options.clone().segment_bytes_max(4096);
        for (what, zeros) in [("one zero byte", 1), ("700 zero bytes", 700)] {
            for drop_index in [false, true] {
                let context = format!("{what}, index file removed: {drop_index}");
                let case = place.path.join(format!("zeros-{zeros}-{drop_index}"));
                let fs = fill(&case, &options, 100);
                let last = fs
                    .list_dir(&case.join("queues/q"))
                    .unwrap()
                    .iter()
                    .filter_map(|name| segment::parse_file_name(name))
                    .max()
                    .unwrap();
                let seg = seg_path(&case, last);
                if drop_index {
                    fs.remove_file(&seg.with_extension("idx")).unwrap();
                }
                let valid = read_file(&*fs, &seg);
                append(&*fs, &seg, &vec![0; zeros]);

                let store = Store::open(&case, options.clone()).unwrap();
                let qr = &store.recovery_report().queues[0];
                assert_eq!(qr.torn_tail, None, "{context}");
                assert_eq!(qr.bytes_truncated, 0, "{context}");
                assert_eq!(qr.zero_tail_bytes, zeros as u64, "{context}");
                assert!(qr.damaged.is_empty(), "{context}: {qr:?}");
                assert_eq!(
                    read_file(&*fs, &seg).len(),
                    valid.len() + zeros,
                    "{context}: nothing is cut at open"
                );
                assert_continues(&case, &options, store, 100, &context);
                // The push after the open went over the zeros, and the
                // clean close cut the rest.
                let bytes = read_file(&*fs, &seg);
                assert_eq!(bytes[..valid.len()], valid[..], "{context}");
                assert_eq!(
                    bytes.len() as u64,
                    valid.len() as u64 + frame::frame_len(msg(101).len(), &Attrs::default()) as u64,
                    "{context}: the file ends at its last frame"
                );
            }
        }
    });
}

#[test]
fn tail_segment_with_an_unfinished_header_is_rewritten() {
    on_every_fs(|place| {
        let options = place.options.clone();
        let header = segment::encode_header(21);
        let cases: [(&str, Vec<u8>); 4] = [
            ("empty file", Vec::new()),
            ("10 bytes of header", header[..10].to_vec()),
            ("31 bytes of header", header[..31].to_vec()),
            ("zeros where the header goes", vec![0; 32 + 600]),
        ];
        for (what, bytes) in cases {
            let case = place.path.join(what.replace(' ', "-"));
            let fs = fill(&case, &options, 20);
            let seg = seg_path(&case, 21);
            let f = fs.open(&seg, OpenMode::CreateNew).unwrap();
            f.write_all_at(&bytes, 0).unwrap();
            f.sync_data().unwrap();
            drop(f);

            let store = Store::open(&case, options.clone())
                .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
            let qr = &store.recovery_report().queues[0];
            assert_eq!(
                qr.header_rewritten.as_deref(),
                Some(seg.as_path()),
                "{what}"
            );
            assert_eq!(qr.torn_tail, None, "{what}");
            assert!(qr.damaged.is_empty(), "{what}");
            assert_eq!(qr.segments, 2, "{what}");
            assert!(!store.recovery_report().is_clean(), "{what}");
            assert_eq!(
                read_file(&*fs, &seg),
                header,
                "{what}: a bare, valid header"
            );
            assert_continues(&case, &options, store, 20, what);
            // The next push went into the rewritten segment.
            let bytes = read_file(&*fs, &seg);
            assert_eq!(bytes[..32], header, "{what}");
            assert_eq!(
                bytes.len() as u64,
                32 + frame::frame_len(msg(21).len(), &Attrs::default()) as u64,
                "{what}"
            );
        }
    });
}
