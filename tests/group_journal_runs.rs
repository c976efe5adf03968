//! A batch of fresh reserves and a batch of acks of consecutive ids each
//! journal one run record (`docs/format.md`, kinds 10 and 11), and a
//! journal of run records is checkpointed by the records it stands for,
//! not by its bytes alone, so a crash never leaves more to replay than a
//! journal of one record per message would at eight times its size.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::{CrashOptions, SimFs};
use millpond::group::journal;
use millpond::{DEFAULT_GROUP, Durability, GroupOptions, Options, Store};
use millpond_suite::{journal_files, payload};

const LEASE: Duration = Duration::from_secs(60);
const GROUP_DIR: &str = "/s/queues/q/groups/default";

fn open(fs: &SimFs, checkpoint_journal_bytes: u64) -> Store {
    let store = Store::open(
        "/s",
        Options::default()
            .fs(Arc::new(fs.clone()))
            .compact_interval(None)
            .durability(Durability::Sync),
    )
    .unwrap();
    store
        .queue("q")
        .unwrap()
        .group_with(
            DEFAULT_GROUP,
            GroupOptions {
                checkpoint_journal_bytes,
                ..GroupOptions::default()
            },
        )
        .unwrap();
    store
}

/// The group's journal files: (name, slots, records they stand for).
fn journals(fs: &SimFs) -> Vec<(String, usize, u64)> {
    journal_files(fs, Path::new(GROUP_DIR))
        .into_iter()
        .map(|name| {
            let path = Path::new(GROUP_DIR).join(&name);
            let bytes = fs.file_bytes(&path).unwrap();
            let seq = journal::parse_file_name(&name).unwrap();
            let r = journal::read(&path, &bytes, seq).unwrap();
            (name, r.slots.len(), r.record_count())
        })
        .collect()
}

/// Pushes `n` messages, then reserves and acks them in batches of
/// `batch`, checking every delivery.
fn drain(store: &Store, n: u64, batch: usize) {
    let q = store.queue("q").unwrap();
    let pushed: Vec<Vec<u8>> = (0..n).map(|i| payload(i, 20)).collect();
    for chunk in pushed.chunks(10_000) {
        q.push_batch(chunk).unwrap();
    }
    let g = q.group(DEFAULT_GROUP).unwrap();
    let mut next = 1;
    loop {
        let ds = g.reserve_batch(batch, LEASE).unwrap();
        if ds.is_empty() {
            break;
        }
        for d in &ds {
            assert_eq!((d.id, d.attempt), (next, 1));
            assert_eq!(d.payload, pushed[(next - 1) as usize]);
            next += 1;
        }
        let ids: Vec<u64> = ds.iter().map(|d| d.id).collect();
        g.ack_batch(&ids).unwrap();
    }
    assert_eq!(next, n + 1, "every message delivered once");
}

#[test]
fn a_drain_in_batches_journals_a_run_record_per_batch() {
    let sim = SimFs::new(1);
    let store = open(&sim, 4 << 20);
    drain(&store, 10_000, 1_000);
    // Ten batches: a reserve run and an ack run each.
    let js = journals(&sim);
    assert_eq!(js.len(), 1, "{js:?}");
    assert_eq!((js[0].1, js[0].2), (20, 20_000), "{js:?}");
    drop(store);
}

#[test]
fn a_journal_of_run_records_is_checkpointed_by_the_records_it_stands_for() {
    // 64 KiB: 2,730 records of 24 bytes; at most eight times that many
    // records (21,840) before a checkpoint. The drain journals 400 run
    // records (9.6 KB), standing for 400,000 records.
    let bound = 64 << 10;
    let most = bound / journal::RECORD_LEN as u64 * 8;
    let sim = SimFs::new(2);
    let store = open(&sim, bound);
    drain(&store, 200_000, 1_000);
    for (name, _, records) in journals(&sim) {
        assert!(records <= most, "{name}: {records} records to replay");
    }
    // A crash now replays at most that much, and loses no ack.
    let image = sim.crash_image(CrashOptions::harsh());
    drop(store);
    let store = open(&image, bound);
    let g = store.queue("q").unwrap().group(DEFAULT_GROUP).unwrap();
    let replayed = g.recovery().records_replayed;
    assert!(replayed <= most, "{replayed} records replayed");
    assert!(
        g.reserve(LEASE).unwrap().is_none(),
        "every message was acked"
    );
}

/// A batch's reserve run record counts its deliveries through a power cut
/// (guarantee 3): once a later settle's fsync made it durable, the
/// messages still reserved come back as their second attempt.
#[test]
fn a_reserve_run_counts_its_deliveries_through_a_power_cut() {
    let sim = SimFs::new(3);
    let store = open(&sim, 4 << 20);
    let q = store.queue("q").unwrap();
    for i in 0..5 {
        q.push(payload(i, 20)).unwrap();
    }
    let g = q.group(DEFAULT_GROUP).unwrap();
    let ids: Vec<u64> = g
        .reserve_batch(5, LEASE)
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    // Its fsync carries the reserve run written before it.
    g.ack(1).unwrap();
    let image = sim.crash_image(CrashOptions::harsh());
    drop((g, q, store));

    let store = open(&image, 4 << 20);
    let g = store.queue("q").unwrap().group(DEFAULT_GROUP).unwrap();
    let again: Vec<(u64, u32)> = g
        .reserve_batch(10, LEASE)
        .unwrap()
        .iter()
        .map(|d| (d.id, d.attempt))
        .collect();
    assert_eq!(again, [(2, 2), (3, 2), (4, 2), (5, 2)]);
}
