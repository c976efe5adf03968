//! A queue that went quiet with every message acknowledged gives back its
//! active segment too: the compactor rolls a finished active segment and
//! deletes it. (Every queue has the default group; these use only it.)

use std::time::Duration;

use millpond::{DEFAULT_GROUP, Options, Store};
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
