//! Replays the fuzz corpora on stable Rust: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` runs through
//! its target function (`millpond_suite::fuzz_targets`), which checks the
//! target's invariants. Crashes the fuzzer found are named regression
//! tests below.
//!
//! To refresh the seed files after a format change:
//! `cargo test --test fuzz_corpus_replay -- --ignored write_seed_corpora`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use millpond_suite::fuzz_targets::{self, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs every file of `kind/<target>/` through its target; returns how many
/// ran. Failures are collected with their file names, then reported.
fn replay(kind: &str, target: &str, run: fn(&[u8])) -> usize {
    let dir = fuzz_dir().join(kind).join(target);
    let paths = files(&dir);
    let mut failed = Vec::new();
    for path in &paths {
        let bytes = std::fs::read(path).expect("read corpus file");
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: failing inputs: {failed:#?}");
    paths.len()
}

fn corpus(target: &str) {
    let (_, run) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("known target");
    let n = replay("corpus", target, *run);
    assert!(
        n >= 3,
        "fuzz/corpus/{target} has {n} inputs, expected its seeds"
    );
    replay("regressions", target, *run);
}

#[test]
fn corpus_frame_decode() {
    corpus("frame_decode");
}

#[test]
fn corpus_segment_recover() {
    corpus("segment_recover");
}

#[test]
fn corpus_index_decode() {
    corpus("index_decode");
}

#[test]
fn corpus_journal_decode() {
    corpus("journal_decode");
}

#[test]
fn corpus_checkpoint_decode() {
    corpus("checkpoint_decode");
}

#[test]
fn corpus_ops_vs_model() {
    corpus("ops_vs_model");
}

/// Every target has a fuzz target file and a corpus directory, so a new
/// target cannot be left out of the replay.
#[test]
fn every_target_is_wired_up() {
    for (name, _) in TARGETS {
        let target_file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target_file.is_file(), "missing {}", target_file.display());
        assert!(!files(&fuzz_dir().join("corpus").join(name)).is_empty());
    }
}

/// The seeds pass their targets as generated, not only as committed.
#[test]
fn seeds_pass() {
    for (name, run) in TARGETS {
        for (seed, bytes) in fuzz_targets::seeds(name) {
            if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
                panic!("seed {seed} of {name} fails");
            }
        }
    }
}

/// Writes the seed inputs into `fuzz/corpus/<target>/seed-<name>`.
#[test]
#[ignore = "writes files; run by hand after a format change"]
fn write_seed_corpora() {
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).expect("create corpus directory");
        for (seed, bytes) in fuzz_targets::seeds(name) {
            std::fs::write(dir.join(format!("seed-{seed}")), bytes).expect("write seed");
        }
    }
}

// Regressions: bugs the fuzz targets found, each replayed by name.

/// A sealed segment whose header fails its check (damaged, or a newer
/// format version) must not stop a consumer group: `Queue::reader` reports
/// the segment once and goes on to the next one, and the group must too.
/// Found by `segment_recover` on its `seed-newer_version` input (and any
/// mutation of a sealed segment's header): every `reserve` returned the
/// same error forever and the message in the next segment was never
/// delivered. `GroupInner::peek_fresh` rebuilds its reader at the group's
/// cursor whenever the reader's position differs from it, and
/// `LogReader::next` moves its position to the next segment when a segment
/// cannot be loaded, so the reader is rebuilt at the bad segment each time.
#[test]
fn sealed_header_damage_wedges_group() {
    use std::sync::Arc;
    use std::time::Duration;

    use millpond::fs::{Fs, MemFs, OpenMode};
    use millpond::log::{frame, segment};
    use millpond::{Options, Store};

    for newer_version in [true, false] {
        let fs = MemFs::new();
        let dir = Path::new("/s/queues/q");
        fs.create_dir_all(dir).unwrap();
        let mut header = segment::encode_header(1);
        if newer_version {
            header[8] = 2;
        } else {
            header[16] = 9;
        }
        let crc = crc32fast::hash(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        let sealed = fs
            .open(&dir.join(segment::file_name(1)), OpenMode::CreateTruncate)
            .unwrap();
        sealed.write_all_at(&header, 0).unwrap();
        let mut tail = segment::encode_header(100).to_vec();
        frame::encode(&mut tail, 100, 5, &frame::Attrs::default(), b"after");
        let file = fs
            .open(&dir.join(segment::file_name(100)), OpenMode::CreateTruncate)
            .unwrap();
        file.write_all_at(&tail, 0).unwrap();
        let options = Options::default()
            .fs(Arc::new(fs.clone()))
            .compact_interval(None);
        let store = Store::open("/s", options).unwrap();
        let q = store.queue("q").unwrap();
        let read: Vec<Result<u64, bool>> = q
            .reader(0)
            .map(|m| m.map(|m| m.id).map_err(|e| e.is_corruption()))
            .collect();
        assert_eq!(read, [Err(!newer_version), Ok(100)], "the reader goes on");
        let g = q.group("default").unwrap();
        let mut delivered = None;
        for _ in 0..3 {
            if let Ok(Some(d)) = g.reserve(Duration::from_secs(10)) {
                delivered = Some(d.id);
                break;
            }
        }
        assert_eq!(delivered, Some(100), "newer_version {newer_version}");
    }
}

/// Opens a store on a fresh in-memory file system whose queue `q` holds
/// the given segment files, and reads the queue from the start.
fn read_planted(files: &[(u64, Vec<u8>)]) -> Vec<Result<u64, String>> {
    use std::sync::Arc;

    use millpond::fs::{Fs, MemFs, OpenMode};
    use millpond::log::segment;
    use millpond::{Options, Store};

    let fs = MemFs::new();
    let dir = Path::new("/s/queues/q");
    fs.create_dir_all(dir).unwrap();
    for (first_id, bytes) in files {
        let f = fs
            .open(
                &dir.join(segment::file_name(*first_id)),
                OpenMode::CreateTruncate,
            )
            .unwrap();
        f.write_all_at(bytes, 0).unwrap();
    }
    let options = Options::default()
        .fs(Arc::new(fs.clone()))
        .compact_interval(None);
    let store = Store::open("/s", options).unwrap();
    let q = store.queue("q").unwrap();
    q.reader(0)
        .map(|m| m.map(|m| m.id).map_err(|e| e.to_string()))
        .collect()
}

/// A sealed segment whose bytes hold a checksum-valid frame with an id at
/// or past the next segment's first id must not hide the next segment.
/// Found by `segment_recover` after 8,827,656 executions (input
/// `fuzz/regressions/segment_recover/stray_frame_past_next_segment`: a
/// frame with id 0x06a3fe2e73000008 in a segment before a tail whose first
/// id is 2^41 + 1): `LogReader::next` took any frame at or past the
/// visible end for a write not yet visible, returned `Ok(None)` and sought
/// the same place on every call, so neither readers nor groups ever
/// reached the tail's messages.
#[test]
fn stray_frame_past_next_segment_stalls_reader() {
    use millpond::log::{frame, segment};

    let attrs = frame::Attrs::default();
    let mut sealed = segment::encode_header(1).to_vec();
    frame::encode(&mut sealed, 1, 5, &attrs, b"one");
    frame::encode(&mut sealed, 2, 5, &attrs, b"two");
    // Both a stray id inside the tail's range and one far past the end.
    for stray in [101, 0x06a3_fe2e_7300_0008] {
        let mut bytes = sealed.clone();
        frame::encode(&mut bytes, stray, 5, &attrs, b"stray");
        frame::encode(&mut bytes, 3, 5, &attrs, b"three");
        let mut tail = segment::encode_header(100).to_vec();
        frame::encode(&mut tail, 100, 5, &attrs, b"hundred");
        frame::encode(&mut tail, 101, 5, &attrs, b"hundred and one");
        let read = read_planted(&[(1, bytes), (100, tail)]);
        // The sealed segment ends at the stray frame; the ids from the
        // tail's first on are the tail's.
        assert_eq!(read, [Ok(1), Ok(2), Ok(100), Ok(101)], "stray id {stray}");
    }
}

/// A segment file named with the largest id, `18446744073709551615.seg`,
/// must not crash the reader. Found by `segment_recover` (a 25-byte input
/// whose header field names that id, so the short tail segment was
/// rewritten under that name): reading the queue panicked with "attempt to
/// add with overflow" in `Log::segment_after` (`first_id + 1`,
/// `crates/millpond/src/log/mod.rs`) when the reader reached the end of
/// the segment. Release builds wrap instead of panicking.
#[test]
fn id_max_segment_name_overflows() {
    use millpond::log::segment;

    let read = read_planted(&[(u64::MAX, segment::encode_header(u64::MAX).to_vec())]);
    assert_eq!(read, []);
}

/// A frame with the id `u64::MAX` and a valid CRC must be reported or
/// read, not crash recovery. Found by `segment_recover`: `segment::scan`
/// sets `next_id = f.id + 1` (`crates/millpond/src/log/segment.rs`), which
/// overflows; the cursor and the reader do the same (`min_id = f.id + 1`,
/// `next_id = f.id + 1`).
#[test]
fn id_max_frame_overflows_scan() {
    use millpond::log::{frame, segment};

    let first_id = u64::MAX - 1;
    let mut bytes = segment::encode_header(first_id).to_vec();
    frame::encode(&mut bytes, u64::MAX, 1, &frame::Attrs::default(), b"x");
    // No writer hands out u64::MAX (the id after it could not be
    // represented): the frame is reported as bad, never read, and nothing
    // panics.
    let s = segment::scan(&bytes, segment::HEADER_LEN, first_id, None, 64, 1 << 20);
    assert_eq!(s.frames, 0);
    let (offset, _, detail) = s.torn.expect("reported");
    assert_eq!(offset, segment::HEADER_LEN);
    assert!(detail.contains("u64::MAX"), "{detail}");
    let read = read_planted(&[(first_id, bytes)]);
    assert!(read.is_empty());
}

/// When the next id is `u64::MAX` (a queue whose newest segment is named
/// with it), a push must be refused: no message can have that id (frames
/// with it decode as bad), and the id after it cannot be represented.
/// Found by `segment_recover` (push after recovery, once frames with id
/// `u64::MAX` became bad): the writer encodes the frame, then
/// `chunk.end_id = id + 1` (`crates/millpond/src/log/writer.rs`) panics
/// with "attempt to add with overflow" while holding the writer lock, so
/// closing the store panics on the poisoned lock. Release builds wrap
/// instead: the push returns `Ok(u64::MAX)` for a message that is never
/// readable, and the next id becomes 0.
#[test]
fn push_at_id_max_overflows() {
    use std::sync::Arc;

    use millpond::fs::{Fs, MemFs, OpenMode};
    use millpond::log::segment;
    use millpond::{Options, Store};

    let fs = MemFs::new();
    let dir = Path::new("/s/queues/q");
    fs.create_dir_all(dir).unwrap();
    let first_id = u64::MAX - 1;
    let f = fs
        .open(
            &dir.join(segment::file_name(first_id)),
            OpenMode::CreateTruncate,
        )
        .unwrap();
    f.write_all_at(&segment::encode_header(first_id), 0)
        .unwrap();
    let options = Options::default()
        .fs(Arc::new(fs.clone()))
        .compact_interval(None);
    let store = Store::open("/s", options.clone()).unwrap();
    let q = store.queue("q").unwrap();
    assert_eq!(q.push(b"last").unwrap(), u64::MAX - 1);
    assert_eq!(q.next_id(), u64::MAX);
    assert!(
        matches!(
            q.push(b"one too many"),
            Err(millpond::Error::IdsExhausted { .. })
        ),
        "ids are exhausted"
    );
    assert_eq!(q.next_id(), u64::MAX);
    drop(q);
    store.close().unwrap();
    let store = Store::open("/s", options).unwrap();
    let q = store.queue("q").unwrap();
    let ids: Vec<u64> = q.reader(0).map(|m| m.unwrap().id).collect();
    assert_eq!(ids, [u64::MAX - 1]);
}
