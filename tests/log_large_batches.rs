//! A batch larger than one write buffer (64 KiB) is encoded into several
//! chunks of its segment and written one after the other: its ids stay
//! contiguous, every message reads back (by id and in order, before and
//! after a reopen, across a segment roll inside the batch), and a power
//! cut after it returned under `Sync` loses none of it.

use std::sync::Arc;

use millpond::fs::{CrashOptions, SimFs};
use millpond::{Durability, Options, Store};
use millpond_suite::{on_each_fs, payload};

/// Sizes that do not divide 64 KiB evenly, from 1 byte to 3 KiB.
fn batch(first: u64, n: u64) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| payload(i, 1 + (i as usize * 37) % 3000))
        .collect()
}

#[test]
fn large_batches_read_back_whole_across_chunks_and_rolls() {
    on_each_fs(|place| {
        for durability in [Durability::Sync, Durability::Buffered] {
            let path = place.path.join(format!("{durability:?}"));
            // Segments of 1 MiB: the 2.4 MB batches below roll inside.
            let options = place
                .options
                .clone()
                .durability(durability)
                .compact_interval(None)
                .segment_bytes_max(1 << 20);
            let store = Store::open(&path, options.clone()).unwrap();
            let q = store.queue("q").unwrap();
            let mut want = Vec::new();
            for round in 0..3 {
                let b = batch(want.len() as u64, 1600);
                let ids = q.push_batch(&b).unwrap();
                assert_eq!(
                    ids,
                    want.len() as u64 + 1..want.len() as u64 + 1601,
                    "round {round}"
                );
                want.extend(b);
            }
            assert!(q.log_stats().unwrap().segments >= 6);
            let check = |q: &millpond::Queue| {
                let got: Vec<(u64, Vec<u8>)> = q
                    .reader(1)
                    .map(|m| m.map(|m| (m.id, m.payload)).unwrap())
                    .collect();
                assert_eq!(got.len(), want.len());
                for (i, (id, p)) in got.iter().enumerate() {
                    assert_eq!((*id, p), (i as u64 + 1, &want[i]), "{durability:?}");
                }
                for id in [1, 2, 700, 1601, 2999, 4800] {
                    let m = q.read(id).unwrap().expect("present");
                    assert_eq!(m.payload, want[id as usize - 1], "read({id})");
                }
            };
            check(&q);
            drop(q);
            store.close().unwrap();
            drop(store);
            let store = Store::open(&path, options).unwrap();
            check(&store.queue("q").unwrap());
        }
    });
}

#[test]
fn large_sync_batch_survives_a_power_cut_whole() {
    let fs = SimFs::new(11);
    let options = Options::default()
        .fs(Arc::new(fs.clone()))
        .compact_interval(None)
        .segment_bytes_max(1 << 20);
    let store = Store::open("/s", options.clone()).unwrap();
    let q = store.queue("q").unwrap();
    let b = batch(0, 1600);
    assert_eq!(q.push_batch(&b).unwrap(), 1..1601);
    let image = fs.crash_image(CrashOptions::harsh());
    let store = Store::open("/s", options.fs(Arc::new(image))).unwrap();
    let got: Vec<Vec<u8>> = store
        .queue("q")
        .unwrap()
        .reader(1)
        .map(|m| m.unwrap().payload)
        .collect();
    assert_eq!(got, b);
}
