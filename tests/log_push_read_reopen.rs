//! Push and read across segment rolls, reopen, and ids that continue.

use millpond::{Durability, Store};
use millpond_suite::{on_each_fs, payload};

#[test]
fn push_read_across_rolls_and_reopen() {
    on_each_fs(|place| {
        let options = place
            .options
            .clone()
            .segment_bytes_max(8 << 10)
            .index_interval_bytes(256);
        let store = Store::open(&place.path, options.clone()).unwrap();
        let q = store.queue("jobs").unwrap();
        let mut ids = Vec::new();
        for i in 0..500u64 {
            ids.push(q.push(payload(i, (i % 97) as usize)).unwrap());
        }
        assert_eq!(ids, (1..=500).collect::<Vec<_>>());
        let stats = q.log_stats().unwrap();
        assert!(stats.segments > 3, "segments rolled: {stats:?}");
        for (i, id) in ids.iter().enumerate() {
            let m = q.read(*id).unwrap().expect("present");
            assert_eq!(m.id, *id);
            assert_eq!(m.payload, payload(i as u64, i % 97));
        }
        assert_eq!(q.read(501).unwrap(), None);
        assert_eq!(q.read(0).unwrap(), None);
        let read: Vec<u64> = q.reader(1).map(|m| m.unwrap().id).collect();
        assert_eq!(read, ids);
        drop(q);
        store.close().unwrap();
        drop(store);

        let store = Store::open(&place.path, options).unwrap();
        let report = store.recovery_report();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.segments_scanned(), 0, "clean reopen scans nothing");
        let q = store.queue("jobs").unwrap();
        assert_eq!(q.next_id(), 501);
        assert_eq!(q.push(b"after").unwrap(), 501);
        let read: Vec<_> = q.reader(495).map(|m| m.unwrap()).collect();
        assert_eq!(
            read.iter().map(|m| m.id).collect::<Vec<_>>(),
            (495..=501).collect::<Vec<_>>()
        );
        assert_eq!(read.last().unwrap().payload, b"after");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                q.read(*id).unwrap().unwrap().payload,
                payload(i as u64, i % 97)
            );
        }
    });
}

#[test]
fn every_durability_mode_reads_back_what_it_pushed() {
    for durability in [
        Durability::Sync,
        Durability::Interval(std::time::Duration::from_millis(5)),
        Durability::Buffered,
    ] {
        on_each_fs(|place| {
            let options = place
                .options
                .clone()
                .durability(durability)
                .segment_bytes_max(16 << 10);
            let store = Store::open(&place.path, options.clone()).unwrap();
            let q = store.queue("q").unwrap();
            let batch: Vec<Vec<u8>> = (0..300).map(|i| payload(i, 50)).collect();
            let range = q.push_batch(&batch).unwrap();
            assert_eq!(range, 1..301);
            let single = q.push(b"x").unwrap();
            assert_eq!(single, 301);
            let got: Vec<_> = q.reader(1).map(|m| m.unwrap().payload).collect();
            assert_eq!(got.len(), 301, "{durability:?}");
            assert_eq!(&got[..300], &batch[..]);
            drop(q);
            store.close().unwrap();
            drop(store);
            let store = Store::open(&place.path, options).unwrap();
            let q = store.queue("q").unwrap();
            assert_eq!(q.next_id(), 302, "{durability:?}");
            assert_eq!(q.read(150).unwrap().unwrap().payload, payload(149, 50));
        });
    }
}
