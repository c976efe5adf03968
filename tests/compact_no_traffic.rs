//! Guarantee 8, without new traffic: the background compactor gives back
//! the space of acked messages on its own timer; nobody calls
//! `Store::compact_now` and nothing is pushed after the acks.
//!
//! `compact_interval` 50 ms, 4 KiB segments. Six segments are pushed, then
//! everything is reserved and acked. Within 5 s (polled every 50 ms) the
//! sealed segments must be gone: one segment file left, no larger than a
//! segment plus its header, and the compactor's totals count the deletions.

use std::time::{Duration, Instant};

use millpond::Store;
use millpond_suite::{on_each_fs, payload};

const SEGMENT: u64 = 4096;
const SEGMENT_HEADER: u64 = 32;
const SEALED: usize = 6;
const LEASE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

#[test]
fn acked_segments_are_reclaimed_without_new_traffic() {
    on_each_fs(|place| {
        let options = place
            .options
            .clone()
            .segment_bytes_max(SEGMENT)
            .compact_interval(Some(Duration::from_millis(50)));
        let store = Store::open(&place.path, options).unwrap();
        let q = store.queue("idle").unwrap();
        let g = q.group("default").unwrap();
        let mut n = 0u64;
        while q.log_stats().unwrap().segments <= SEALED {
            q.push(payload(n, 200)).unwrap();
            n += 1;
        }
        let before = q.log_stats().unwrap();
        assert!(
            before.bytes_on_disk > SEALED as u64 * (SEGMENT - 512),
            "{before:?}"
        );
        // The compactor runs meanwhile; nothing is acked yet, so it must
        // not take anything.
        for id in 1..=n {
            let d = g.reserve(LEASE).unwrap().expect("pushed");
            assert_eq!((d.id, d.payload), (id, payload(id - 1, 200)));
        }
        assert_eq!(q.log_stats().unwrap().first_id, 1);
        for id in 1..=n {
            g.ack(id).unwrap();
        }
        let acked_at = Instant::now();

        let stats = loop {
            let stats = q.log_stats().unwrap();
            if stats.segments == 1 {
                break stats;
            }
            assert!(
                acked_at.elapsed() < WAIT,
                "sealed segments still there {WAIT:?} after the last ack: {stats:?}, {:?}",
                q.compact_stats()
            );
            std::thread::sleep(POLL);
        };
        assert!(stats.bytes_on_disk <= SEGMENT + SEGMENT_HEADER, "{stats:?}");
        assert_eq!(stats.next_id, n + 1);
        assert!(stats.first_id > 1, "{stats:?}");
        let totals = q.compact_stats();
        assert_eq!(totals.segments_deleted, SEALED as u64, "{totals:?}");
        assert_eq!(
            totals.bytes_reclaimed + stats.bytes_on_disk,
            before.bytes_on_disk,
            "{totals:?}"
        );
        for id in 1..stats.first_id {
            assert_eq!(q.read(id).unwrap(), None, "id {id}");
        }
        assert_eq!(g.reserve(LEASE).unwrap(), None);
        drop((g, q));
        store.close().unwrap();
    });
}
