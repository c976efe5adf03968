//! A queue that went quiet with every message acknowledged gives back its
//! active segment too: the compactor rolls a finished active segment and
//! deletes it. A group journal of acks is given back the same way: the
//! pass replaces it with a checkpoint. (Every queue has the default group;
//! these use only it.)

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::{CrashOptions, Fs, OpenMode, SimFs};
use millpond::{DEFAULT_GROUP, Durability, Options, Store};
use millpond_suite::payload;

#[test]
fn finished_active_segment_is_rolled_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::default().compact_interval(None);
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    let q = store.queue("q").unwrap();
    let g = q.group(DEFAULT_GROUP).unwrap();
    // 3 MiB of frames: one (active) segment, above the roll threshold.
    let batch: Vec<Vec<u8>> = (0..3000).map(|i| payload(i, 1000)).collect();
    let ids = q.push_batch(&batch).unwrap();
    let before = q.log_stats().unwrap();
    assert_eq!(before.segments, 1);
    assert!(before.bytes_on_disk > 3_000_000, "{before:?}");

    // Not finished yet: the pass keeps everything.
    let r = store.compact_now().unwrap();
    assert_eq!(r.segments_deleted, 0, "{r:?}");
    assert_eq!(q.log_stats().unwrap().segments, 1);

    for _ in ids.clone() {
        let d = g.reserve(Duration::from_secs(30)).unwrap().unwrap();
        g.ack(d.id).unwrap();
    }
    let r = store.compact_now().unwrap();
    assert_eq!(r.segments_deleted, 1, "{r:?}");
    // The roll and the copies of the group's state held locks pushes and
    // reserves take; the report says for how long, within the pass.
    assert!(
        r.longest_hold > Duration::ZERO && r.longest_hold <= r.duration,
        "{r:?}"
    );
    let after = q.log_stats().unwrap();
    assert_eq!(after.segments, 1, "{after:?}");
    assert!(after.bytes_on_disk < 4096, "{after:?}");
    assert_eq!(after.next_id, ids.end);
    assert!(q.read(ids.start).unwrap().is_none());

    // Ids go on, before and after a reopen; nothing comes back.
    assert_eq!(q.push(b"next").unwrap(), ids.end);
    drop((g, q));
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), opts).unwrap();
    assert!(
        store.recovery_report().is_clean(),
        "{:?}",
        store.recovery_report()
    );
    let q = store.queue("q").unwrap();
    let g = q.group(DEFAULT_GROUP).unwrap();
    let d = g.reserve(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!((d.id, d.payload.as_slice()), (ids.end, &b"next"[..]));
    assert!(g.reserve(Duration::from_secs(30)).unwrap().is_none());
    assert_eq!(q.push(b"after").unwrap(), ids.end + 1);
}

#[test]
fn small_finished_active_segment_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default().compact_interval(None)).unwrap();
    let q = store.queue("q").unwrap();
    let g = q.group(DEFAULT_GROUP).unwrap();
    let id = q.push(payload(0, 1000)).unwrap();
    let d = g.reserve(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!(d.id, id);
    g.ack(id).unwrap();
    let r = store.compact_now().unwrap();
    assert_eq!(r.segments_deleted, 0, "{r:?}");
    assert_eq!(q.log_stats().unwrap().segments, 1);
    assert_eq!(q.read(id).unwrap().unwrap().payload, payload(0, 1000));
}

/// Bytes of every journal file of the default group of queue `q`.
fn journal_bytes(fs: &dyn Fs, store: &Path) -> u64 {
    let dir = store.join("queues/q/groups").join(DEFAULT_GROUP);
    fs.list_dir(&dir)
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("journal-"))
        .map(|n| {
            fs.open(&dir.join(n), OpenMode::Read)
                .unwrap()
                .len()
                .unwrap()
        })
        .sum()
}

/// A quiet group's journal of reserves and acks (48 bytes per finished
/// message) is replaced by a checkpoint in a pass, instead of staying until
/// `checkpoint_journal_bytes` (4 MiB) that a quiet group never reaches; and
/// the checkpoint carries what is still tracked through a power cut: the
/// in-flight message comes back with its attempt counted, the ready ones
/// follow, and no acked one is delivered again.
#[test]
fn long_journal_is_replaced_by_a_checkpoint() {
    for durability in [Durability::Sync, Durability::Buffered] {
        let sim = SimFs::new(7);
        let opts = Options::default()
            .fs(Arc::new(sim.clone()))
            .compact_interval(None)
            .durability(durability);
        let store = Store::open("/s", opts.clone()).unwrap();
        let q = store.queue("q").unwrap();
        let g = q.group(DEFAULT_GROUP).unwrap();
        let batch: Vec<Vec<u8>> = (0..1010).map(|i| payload(i, 100)).collect();
        let ids = q.push_batch(&batch).unwrap();
        for id in ids.start..ids.start + 999 {
            let d = g.reserve(Duration::from_secs(60)).unwrap().unwrap();
            assert_eq!(d.id, id);
            g.ack(id).unwrap();
        }
        let in_flight = g.reserve(Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!(in_flight.id, ids.start + 999);
        if durability == Durability::Sync {
            // (`Buffered` records may still be in the journal's buffer.)
            let before = journal_bytes(&sim, Path::new("/s"));
            assert!(before >= 999 * 48, "{before}");
        }

        let r = store.compact_now().unwrap();
        assert_eq!(r.journals_checkpointed, 1, "{durability:?}: {r:?}");
        assert!(
            r.journal_bytes_reclaimed >= 999 * 48,
            "{durability:?}: {r:?}"
        );
        let after = journal_bytes(&sim, Path::new("/s"));
        assert!(
            after < 4096,
            "{durability:?}: {after} bytes of journal left"
        );
        // Nothing new since: the next pass leaves the journal alone.
        let r = store.compact_now().unwrap();
        assert_eq!(r.journals_checkpointed, 0, "{durability:?}: {r:?}");

        let image = sim.crash_image(CrashOptions::harsh());
        drop((g, q, store));
        let store = Store::open("/s", opts.fs(Arc::new(image))).unwrap();
        let q = store.queue("q").unwrap();
        let g = q.group(DEFAULT_GROUP).unwrap();
        let d = g.reserve(Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!((d.id, d.attempt), (in_flight.id, 2), "{durability:?}");
        let rest: Vec<u64> = std::iter::from_fn(|| g.reserve(Duration::from_secs(60)).unwrap())
            .map(|d| {
                assert_eq!(d.attempt, 1);
                d.id
            })
            .collect();
        assert_eq!(
            rest,
            (ids.start + 1000..ids.end).collect::<Vec<_>>(),
            "{durability:?}"
        );
    }
}
