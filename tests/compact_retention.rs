//! Retention (`Queue::set_retention`): whole sealed segments are dropped,
//! oldest first, even when a group lags; the group counts what it lost.
//!
//! - `max_bytes`: with a group that never consumes and one that consumed
//!   everything, a pass drops the oldest sealed segments until the segment
//!   files fit the limit, and no more; the log's first id moves to the
//!   first remaining segment; the lagging group's `retention_lost_total`
//!   is the number of dropped messages and its next reserve returns the
//!   first remaining id; the other group lost nothing. A limit below one
//!   segment drops every sealed segment but never the active one. The lost
//!   counts survive a clean reopen.
//! - `max_age` with a [`ManualClock`]: segments whose newest message is
//!   older than `max_age` are dropped, the segment holding the first newer
//!   message and everything after it are kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::OpenMode;
use millpond::{Group, ManualClock, Options, Queue, Retention, Store};
use millpond_suite::{on_each_fs, payload};

const SEGMENT: u64 = 4096;
const LEASE: Duration = Duration::from_secs(60);
const QUEUE: &str = "stream";
const T0: u64 = 1_700_000_000_000;
const MINUTE: u64 = 60_000;

fn queue_dir(store: &Store) -> PathBuf {
    store.path().join("queues").join(QUEUE)
}

/// (first id, bytes) of every segment file, oldest first.
fn segments(store: &Store) -> Vec<(u64, u64)> {
    let dir = queue_dir(store);
    let names = store.fs().list_dir(&dir).unwrap();
    names
        .iter()
        .filter_map(|n| {
            let first: u64 = n.strip_suffix(".seg")?.parse().ok()?;
            let f = store.fs().open(&dir.join(n), OpenMode::Read).unwrap();
            Some((first, f.len().unwrap()))
        })
        .collect()
}

fn msg(id: u64) -> Vec<u8> {
    payload(id, 100 + (id * 7 % 120) as usize)
}

/// Pushes until the log has `segments` segment files; returns the last id.
fn push_segments(q: &Queue, segments: usize, clock: Option<&ManualClock>) -> u64 {
    let mut last = 0;
    while q.log_stats().unwrap().segments < segments || last == 0 {
        let id = q.next_id();
        last = q.push(msg(id)).unwrap();
        assert_eq!(last, id);
        if let Some(c) = clock {
            c.advance(1);
        }
    }
    last
}

fn consume_all(g: &Group) -> u64 {
    let mut n = 0;
    while let Some(d) = g.reserve(LEASE).unwrap() {
        assert_eq!(d.payload, msg(d.id));
        g.ack(d.id).unwrap();
        n += 1;
    }
    n
}

fn open(path: &Path, options: &Options) -> (Store, Queue, Group, Group) {
    let store = Store::open(path, options.clone()).unwrap();
    let q = store.queue(QUEUE).unwrap();
    let lagging = q.group("default").unwrap();
    let done = q.group("done").unwrap();
    (store, q, lagging, done)
}

#[test]
fn max_bytes_drops_oldest_segments_and_counts_what_lagging_groups_lost() {
    on_each_fs(|place| {
        let options = place
            .options
            .clone()
            .segment_bytes_max(SEGMENT)
            .compact_interval(None);
        let (store, q, lagging, done) = open(&place.path, &options);
        let last = push_segments(&q, 10, None);
        assert_eq!(consume_all(&done), last);

        let segs = segments(&store);
        assert_eq!(segs.len(), 10);
        let max_bytes = 3 * SEGMENT;
        let mut total: u64 = segs.iter().map(|s| s.1).sum();
        assert_eq!(total, q.log_stats().unwrap().bytes_on_disk);
        let mut dropped = 0;
        while dropped + 1 < segs.len() && total > max_bytes {
            total -= segs[dropped].1;
            dropped += 1;
        }
        assert!(dropped >= 6, "{segs:?}");
        let first_kept = segs[dropped].0;

        q.set_retention(Retention {
            max_age: None,
            max_bytes: Some(max_bytes),
        });
        let r = store.compact_now().unwrap();
        assert_eq!(r.segments_dropped, dropped as u64, "{r:?}");
        assert_eq!(r.segments_deleted, 0, "{r:?}");
        assert_eq!(r.retention_lost, first_kept - 1, "{r:?}");
        let stats = q.log_stats().unwrap();
        assert_eq!(stats.first_id, first_kept, "{stats:?}");
        assert_eq!(stats.segments, segs.len() - dropped);
        assert_eq!(stats.bytes_on_disk, total);
        assert!(stats.bytes_on_disk <= max_bytes, "{stats:?}");
        assert!(
            stats.bytes_on_disk + segs[dropped - 1].1 > max_bytes,
            "dropped one segment too many: {stats:?}"
        );
        assert_eq!(segments(&store), segs[dropped..].to_vec());
        assert_eq!(q.read(first_kept - 1).unwrap(), None);
        assert_eq!(q.read(1).unwrap(), None);
        assert_eq!(
            q.read(first_kept).unwrap().unwrap().payload,
            msg(first_kept)
        );

        assert_eq!(
            lagging.stats().unwrap().retention_lost_total,
            first_kept - 1
        );
        assert_eq!(done.stats().unwrap().retention_lost_total, 0);
        let d = lagging.reserve(LEASE).unwrap().unwrap();
        assert_eq!(
            (d.id, d.payload, d.attempt),
            (first_kept, msg(first_kept), 1)
        );

        // Within the limit now: another pass drops nothing.
        let again = store.compact_now().unwrap();
        assert_eq!(again.segments_dropped, 0, "{again:?}");

        // A limit below one segment drops every sealed segment, not the
        // active one; the in-flight delivery was in a dropped one.
        q.set_retention(Retention {
            max_age: None,
            max_bytes: Some(1),
        });
        let active_first = segs.last().unwrap().0;
        let r = store.compact_now().unwrap();
        assert_eq!(
            r.segments_dropped,
            (segs.len() - dropped - 1) as u64,
            "{r:?}"
        );
        assert_eq!(r.retention_lost, active_first - first_kept, "{r:?}");
        let stats = q.log_stats().unwrap();
        assert_eq!((stats.segments, stats.first_id), (1, active_first));
        assert_eq!(stats.next_id, last + 1);
        assert_eq!(
            lagging.stats().unwrap().retention_lost_total,
            active_first - 1
        );
        assert_eq!(done.stats().unwrap().retention_lost_total, 0);
        let d = lagging.reserve(LEASE).unwrap().unwrap();
        assert_eq!((d.id, d.payload), (active_first, msg(active_first)));
        lagging.ack(d.id).unwrap();

        // The counts and the log survive a clean reopen (retention itself
        // is not stored: nothing more is dropped).
        drop((lagging, done, q));
        store.close().unwrap();
        drop(store);
        let (store, q, lagging, done) = open(&place.path, &options);
        let stats = q.log_stats().unwrap();
        assert_eq!((stats.segments, stats.first_id), (1, active_first));
        assert_eq!(
            lagging.stats().unwrap().retention_lost_total,
            active_first - 1
        );
        assert_eq!(done.stats().unwrap().retention_lost_total, 0);
        let r = store.compact_now().unwrap();
        assert_eq!(r.segments_dropped, 0, "{r:?}");
        assert_eq!(consume_all(&lagging), last - active_first);
        assert_eq!(consume_all(&done), 0);
        assert_eq!(q.push(msg(last + 1)).unwrap(), last + 1);
        drop((lagging, done, q));
        store.close().unwrap();
    });
}

#[test]
fn max_age_drops_segments_whose_newest_message_is_too_old() {
    on_each_fs(|place| {
        let clock = ManualClock::new(T0);
        let options = place
            .options
            .clone()
            .segment_bytes_max(SEGMENT)
            .compact_interval(None)
            .clock(Arc::new(clock.clone()));
        let (store, q, lagging, done) = open(&place.path, &options);
        let old_last = push_segments(&q, 5, Some(&clock));
        clock.advance(60 * MINUTE);
        let new_first = old_last + 1;
        let last = push_segments(&q, 9, Some(&clock));
        clock.advance(10 * MINUTE);
        assert_eq!(consume_all(&done), last);
        assert!(q.read(old_last).unwrap().unwrap().timestamp_ms < T0 + MINUTE);
        assert!(q.read(new_first).unwrap().unwrap().timestamp_ms >= T0 + 60 * MINUTE);

        let segs = segments(&store);
        // The segment holding the first new message is the first kept.
        let kept = segs.iter().rposition(|s| s.0 <= new_first).unwrap();
        assert!(kept >= 3, "{segs:?}");
        let first_kept = segs[kept].0;

        q.set_retention(Retention {
            max_age: Some(Duration::from_secs(30 * 60)),
            max_bytes: None,
        });
        let r = store.compact_now().unwrap();
        assert_eq!(r.segments_dropped, kept as u64, "{r:?}");
        assert_eq!(r.retention_lost, first_kept - 1, "{r:?}");
        assert_eq!(segments(&store), segs[kept..].to_vec());
        let stats = q.log_stats().unwrap();
        assert_eq!(stats.first_id, first_kept);
        assert_eq!(q.read(first_kept - 1).unwrap(), None);
        assert_eq!(q.read(new_first).unwrap().unwrap().payload, msg(new_first));
        assert_eq!(
            lagging.stats().unwrap().retention_lost_total,
            first_kept - 1
        );
        assert_eq!(done.stats().unwrap().retention_lost_total, 0);
        let d = lagging.reserve(LEASE).unwrap().unwrap();
        assert_eq!((d.id, d.payload), (first_kept, msg(first_kept)));
        lagging.ack(d.id).unwrap();

        // Nothing newer is dropped while it is young enough.
        clock.advance(15 * MINUTE);
        let r = store.compact_now().unwrap();
        assert_eq!(r.segments_dropped, 0, "{r:?}");

        // Once everything is too old, every sealed segment goes; the active
        // one stays and the log goes on.
        clock.advance(60 * MINUTE);
        let active_first = segs.last().unwrap().0;
        let r = store.compact_now().unwrap();
        assert_eq!(r.segments_dropped, (segs.len() - kept - 1) as u64, "{r:?}");
        let stats = q.log_stats().unwrap();
        assert_eq!((stats.segments, stats.first_id), (1, active_first));
        assert_eq!(
            q.read(active_first).unwrap().unwrap().payload,
            msg(active_first)
        );
        assert_eq!(
            lagging.stats().unwrap().retention_lost_total,
            active_first - 2
        );
        assert_eq!(q.push(msg(last + 1)).unwrap(), last + 1);
        assert_eq!(consume_all(&lagging), last + 2 - active_first);
        drop((lagging, done, q));
        store.close().unwrap();
    });
}
