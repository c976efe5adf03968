//! An idle group reopened after a crash writes nothing: its checkpoint
//! already says what the open finds and its journal holds no record, so the
//! open keeps both and appends to that journal. What it appends must then
//! survive the next crash like any record, and a group with records, or one
//! closed cleanly, still gets a fresh journal and checkpoint.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::{CrashOptions, Fs, OpenMode, SimFs};
use millpond::group::journal;
use millpond::{DEFAULT_GROUP, Durability, Options, Store};
use millpond_suite::{journal_files, payload};

const LEASE: Duration = Duration::from_secs(60);

fn options(fs: &SimFs) -> Options {
    Options::default()
        .fs(Arc::new(fs.clone()))
        .compact_interval(None)
        .durability(Durability::Sync)
}

fn journals(fs: &SimFs) -> Vec<String> {
    journal_files(fs, Path::new("/s/queues/q/groups/default"))
}

/// Opens the store on `fs`, returns whether the default group kept its
/// files, and leaves the store to the caller.
fn open(fs: &SimFs) -> (Store, bool) {
    let store = Store::open("/s", options(fs)).unwrap();
    let kept = store
        .queue("q")
        .unwrap()
        .group(DEFAULT_GROUP)
        .unwrap()
        .recovery()
        .kept_state_files;
    (store, kept)
}

#[test]
fn idle_group_after_a_crash_keeps_its_files_and_its_next_records_count() {
    for seed in 0..10 {
        let sim = SimFs::new(seed);
        let (store, kept) = open(&sim);
        assert!(!kept, "seed {seed}: a new group has files to write");
        let q = store.queue("q").unwrap();
        for i in 0..5 {
            q.push(payload(i, 50)).unwrap();
        }
        let before = journals(&sim);
        assert_eq!(before.len(), 1, "seed {seed}");

        // Crash with the group idle: nothing to write on the way up.
        let image = sim.crash_image(CrashOptions::harsh());
        drop((q, store));
        let (store, kept) = open(&image);
        assert!(kept, "seed {seed}");
        assert_eq!(journals(&image), before, "seed {seed}");

        // The kept journal takes records, and they are durable.
        let g = store.queue("q").unwrap().group(DEFAULT_GROUP).unwrap();
        let d = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((d.id, d.attempt), (1, 1));
        g.ack(1).unwrap();
        let d = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((d.id, d.attempt), (2, 1));
        // A reserve's record is made durable by the next settle's fsync.
        let d = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((d.id, d.attempt), (3, 1));
        g.ack(3).unwrap();
        let image2 = image.crash_image(CrashOptions::harsh());
        drop((g, store));

        // Records to replay and a lease to release: fresh files.
        let (store, kept) = open(&image2);
        assert!(!kept, "seed {seed}");
        assert_ne!(journals(&image2), before, "seed {seed}");
        let g = store.queue("q").unwrap().group(DEFAULT_GROUP).unwrap();
        assert_eq!(g.recovery().leases_released, 1, "seed {seed}");
        let d = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((d.id, d.attempt), (2, 2), "seed {seed}: the acks held");
        let d = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((d.id, d.attempt), (4, 1), "seed {seed}");
    }
}

#[test]
fn clean_close_then_open_rewrites_the_checkpoint() {
    let sim = SimFs::new(1);
    let (store, _) = open(&sim);
    store.queue("q").unwrap().push(b"a").unwrap();
    store.close().unwrap();
    // The clean close's checkpoint says so; the open must record that the
    // store is open again, or a crash after it would pass for a clean
    // close.
    let (store, kept) = open(&sim);
    assert!(!kept);
    drop(store);
}

/// An idle group's journal of format version 1 is not kept on reopen, so
/// the run records a batch then writes (version 2) never land in a file
/// whose header tells an older build it can read it. The kept journal
/// would take the batch's run records under a version 1 header.
#[test]
fn idle_group_with_a_version_1_journal_gets_a_version_2_one() {
    let sim = SimFs::new(3);
    let (store, _) = open(&sim);
    let q = store.queue("q").unwrap();
    for i in 0..5 {
        q.push(payload(i, 50)).unwrap();
    }
    let image = sim.crash_image(CrashOptions::harsh());
    drop((q, store));

    // Make the idle group's journal what an older build wrote: its header
    // as version 1.
    let [name] = &journals(&image)[..] else {
        panic!("one journal")
    };
    let path = Path::new("/s/queues/q/groups/default").join(name);
    let seq = journal::parse_file_name(name).unwrap();
    let mut header = journal::encode_header(seq);
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&header[..28]);
    header[28..].copy_from_slice(&crc.to_le_bytes());
    let f = image.open(&path, OpenMode::ReadWrite).unwrap();
    f.write_all_at(&header, 0).unwrap();
    f.sync_data().unwrap();
    drop(f);

    let (store, kept) = open(&image);
    assert!(!kept, "a version 1 journal is replaced");
    let g = store.queue("q").unwrap().group(DEFAULT_GROUP).unwrap();
    let ids: Vec<u64> = g
        .reserve_batch(5, LEASE)
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    g.flush().unwrap();
    for name in journals(&image) {
        let path = Path::new("/s/queues/q/groups/default").join(&name);
        let bytes = image.file_bytes(&path).unwrap();
        let replay =
            journal::read(&path, &bytes, journal::parse_file_name(&name).unwrap()).unwrap();
        assert_eq!(replay.version, journal::VERSION, "{name}");
        assert_eq!(replay.record_count(), 5, "{name}: five reserves");
        assert_eq!(
            replay.end,
            journal::HEADER_LEN + journal::RECORD_LEN as u64,
            "{name}: in one run record"
        );
    }
}
