//! A batch larger than one write buffer (64 KiB) is encoded into several
//! chunks of its segment and written one after the other: its ids stay
//! contiguous, every message reads back (by id and in order, before and
//! after a reopen, across a segment roll inside the batch), and a power
//! cut after it returned under `Sync` loses none of it.

use std::sync::Arc;

use millpond::fs::{CrashOptions, SimFs};
use millpond::{Durability, Options, Store};
use millpond_suite::{Place, on_each_fs, payload};

/// Sizes that do not divide 64 KiB evenly, from 1 byte to 3 KiB.
fn batch(first: u64, n: u64) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| payload(i, 1 + (i as usize * 37) % 3000))
        .collect()
}

/// Every message of `q` from id 1, as (id, payload).
fn read_all(q: &millpond::Queue) -> Vec<(u64, Vec<u8>)> {
    q.reader(1)
        .map(|m| m.map(|m| (m.id, m.payload)).unwrap())
        .collect()
}

/// Opens (or reopens) the store of `durability` at `place`: no
/// compaction, segments of `segment_bytes`.
fn open_at(place: &Place, durability: Durability, segment_bytes: u64) -> Store {
    let options = place
        .options
        .clone()
        .durability(durability)
        .compact_interval(None)
        .segment_bytes_max(segment_bytes);
    Store::open(place.path.join(format!("{durability:?}")), options).unwrap()
}

#[test]
fn large_batches_read_back_whole_across_chunks_and_rolls() {
    on_each_fs(|place| {
        for durability in [Durability::Sync, Durability::Buffered] {
            // Segments of 1 MiB: the 2.4 MB batches below roll inside.
            let store = open_at(&place, durability, 1 << 20);
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
                let got = read_all(q);
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
            let store = open_at(&place, durability, 1 << 20);
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
    let got: Vec<Vec<u8>> = read_all(&store.queue("q").unwrap())
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(got, b);
}

/// A batch of more than 512 KiB of frames is encoded and written in pieces
/// of 256 KiB, with other pushers held back until its last piece is
/// encoded: its ids must stay consecutive while four threads push single
/// messages the whole time, and every id must hold what its pusher sent.
#[test]
fn a_batch_written_in_pieces_keeps_its_ids_among_concurrent_pushers() {
    on_each_fs(|place| {
        for durability in [Durability::Sync, Durability::Buffered] {
            let store = open_at(&place, durability, 4 << 20);
            let q = store.queue("q").unwrap();
            let stop = std::sync::atomic::AtomicBool::new(false);
            let (batches, singles) = std::thread::scope(|s| {
                let pushers: Vec<_> = (0..4u64)
                    .map(|t| {
                        let (q, stop) = (&q, &stop);
                        s.spawn(move || {
                            let mut sent = Vec::new();
                            let mut n = 0u64;
                            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                                let p = payload(1_000_000 * (t + 1) + n, 40);
                                sent.push((q.push(&p).unwrap(), p));
                                n += 1;
                            }
                            sent
                        })
                    })
                    .collect();
                let mut batches = Vec::new();
                for round in 0..4u64 {
                    // 3,000 frames of about 300 bytes: 0.9 MB, four pieces.
                    let b: Vec<Vec<u8>> = (0..3000)
                        .map(|i| payload(round * 10_000 + i, 280))
                        .collect();
                    let ids = q.push_batch(&b).unwrap();
                    assert_eq!(ids.end - ids.start, 3000, "round {round}");
                    batches.push((ids, b));
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                let singles: Vec<(u64, Vec<u8>)> = pushers
                    .into_iter()
                    .flat_map(|h| h.join().unwrap())
                    .collect();
                (batches, singles)
            });
            let mut want = std::collections::BTreeMap::new();
            for (ids, b) in &batches {
                for (id, p) in ids.clone().zip(b) {
                    assert!(want.insert(id, p.clone()).is_none(), "id {id} given twice");
                }
            }
            for (id, p) in &singles {
                assert!(want.insert(*id, p.clone()).is_none(), "id {id} given twice");
            }
            let got = read_all(&q);
            assert_eq!(got.len(), want.len(), "{durability:?}");
            for ((id, p), (want_id, want_p)) in got.iter().zip(&want) {
                assert_eq!((id, p), (want_id, want_p), "{durability:?}");
            }
        }
    });
}

/// A piece that fails to write fails its batch and poisons the queue,
/// and under `Sync` none of the batch survives a power cut (nothing of it
/// was fsynced), while what was acknowledged before it does. Alone, the
/// batch leads every round itself and gets the write's own error.
#[test]
fn a_failed_piece_fails_the_batch() {
    let (err, _) = failed_piece(false);
    assert!(
        matches!(&err, millpond::Error::Io { op, .. } if *op == "write segment"),
        "{err:?}"
    );
}

/// As above, with a thread pushing single messages until refused: those
/// that meet the batch in flight wait behind it and must then be refused,
/// not left waiting. Whichever thread led the failing round gets the
/// write's own error, the other the poisoning it caused (which write the
/// fault meets depends on how the two interleave).
#[test]
fn a_failed_piece_refuses_the_pushers_behind_it() {
    let the_write = |e: &millpond::Error| match e {
        millpond::Error::Io { op, .. } => *op == "write segment",
        millpond::Error::Poisoned { cause, .. } => cause.starts_with("write segment"),
        _ => false,
    };
    let (err, behind) = failed_piece(true);
    assert!(the_write(&err), "{err:?}");
    let behind = behind.expect("the pusher ran");
    assert!(the_write(&behind), "{behind:?}");
}

/// Pushes 10 messages, then a 1.3 MB batch whose 6th write fails (the
/// first piece is four 64 KiB chunks: the sixth is in the second piece's
/// round), with or without a concurrent pusher; checks what a power cut
/// then keeps. Returns the batch's error and the pusher's.
fn failed_piece(with_pusher: bool) -> (millpond::Error, Option<millpond::Error>) {
    let fs = SimFs::new(12);
    let options = Options::default()
        .fs(Arc::new(fs.clone()))
        .compact_interval(None)
        .segment_bytes_max(16 << 20);
    let store = Store::open("/s", options.clone()).unwrap();
    let q = store.queue("q").unwrap();
    let before = batch(0, 10);
    assert_eq!(q.push_batch(&before).unwrap(), 1..11);
    fs.inject(millpond::fs::Fault {
        kind: millpond::fs::FaultKind::Write,
        nth: 6,
        error: millpond::fs::FaultError::Eio,
    });
    let big: Vec<Vec<u8>> = (0..4000).map(|i| payload(i, 300)).collect();
    let (err, behind) = std::thread::scope(|s| {
        let pusher = with_pusher.then(|| {
            s.spawn(|| {
                let mut n = 0u64;
                loop {
                    match q.push(b"behind") {
                        Ok(_) => n += 1,
                        Err(e) => return (n, e),
                    }
                }
            })
        });
        let err = q.push_batch(&big).unwrap_err();
        (err, pusher.map(|p| p.join().unwrap()))
    });
    assert_eq!(fs.stats().faults_injected, 1);
    assert!(matches!(
        q.push(b"after").unwrap_err(),
        millpond::Error::Poisoned { .. }
    ));
    let image = fs.crash_image(CrashOptions::clean());
    let store = Store::open("/s", options.fs(Arc::new(image))).unwrap();
    let got: Vec<Vec<u8>> = read_all(&store.queue("q").unwrap())
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(got[..10], before[..], "acknowledged before the batch");
    assert!(
        got[10..].iter().all(|p| p == b"behind"),
        "nothing of the batch survives"
    );
    let pushed_behind = behind.as_ref().map_or(0, |b| b.0);
    assert!(got.len() - 10 <= pushed_behind as usize);
    (err, behind.map(|b| b.1))
}

/// A power cut while a batch is being written in pieces leaves, after
/// recovery, every message made durable before it and then a prefix of the
/// batch (possibly empty), each with its own payload: no hole, no damage,
/// whichever piece the cut met and whatever the crash tore. Under `Sync`
/// and `Buffered`, with the segment rolling inside the batch.
#[test]
fn a_power_cut_inside_a_piecewise_batch_keeps_a_prefix() {
    for durability in [Durability::Sync, Durability::Buffered] {
        for ops in [0, 1, 3, 6, 9, 14, 22] {
            let fs = SimFs::new(100 + ops);
            let options = Options::default()
                .fs(Arc::new(fs.clone()))
                .durability(durability)
                .compact_interval(None)
                .segment_bytes_max(1 << 20);
            let store = Store::open("/s", options.clone()).unwrap();
            let q = store.queue("q").unwrap();
            let before = batch(0, 50);
            assert_eq!(q.push_batch(&before).unwrap(), 1..51);
            q.flush().unwrap();
            let big: Vec<Vec<u8>> = (0..8000).map(|i| payload(1000 + i, 300)).collect();
            fs.cut_power_after(ops);
            let pushed = q.push_batch(&big);
            assert!(
                pushed.is_err(),
                "{durability:?} {ops}: the power went out during the batch"
            );
            let image = fs.crash_image(CrashOptions::harsh());
            let store = Store::open("/s", options.fs(Arc::new(image))).unwrap();
            let report = store.recovery_report();
            assert!(
                report.queues.iter().all(|q| q.damaged.is_empty()),
                "{durability:?} {ops}: {report:?}"
            );
            let got = read_all(&store.queue("q").unwrap());
            assert!(got.len() >= 50, "{durability:?} {ops}: {}", got.len());
            let want = before.iter().chain(&big);
            for ((id, p), (i, w)) in got.iter().zip(want.enumerate()) {
                assert_eq!((*id, p), (i as u64 + 1, w), "{durability:?} {ops}");
            }
        }
    }
}

/// DESIGN.md guarantee 1 for a batch written in pieces: under `Sync` it is
/// one fsync after its last piece, not one per piece, and readers see none
/// of it until that fsync succeeds. With the fsync failing, the pieces the
/// OS already has stay unread.
#[test]
fn a_piecewise_sync_batch_is_one_fsync_and_unread_until_it() {
    let fs = SimFs::new(13);
    let options = Options::default()
        .fs(Arc::new(fs.clone()))
        .compact_interval(None)
        .segment_bytes_max(16 << 20);
    let store = Store::open("/s", options).unwrap();
    let q = store.queue("q").unwrap();
    let before = batch(0, 10);
    assert_eq!(q.push_batch(&before).unwrap(), 1..11);
    // 4,000 frames of 328 bytes: 1.3 MB, five pieces.
    let big: Vec<Vec<u8>> = (0..4000).map(|i| payload(i, 300)).collect();
    let syncs = fs.stats().syncs;
    assert_eq!(q.push_batch(&big).unwrap(), 11..4011);
    assert_eq!(fs.stats().syncs - syncs, 1, "one fsync for the batch");

    fs.inject(millpond::fs::Fault {
        kind: millpond::fs::FaultKind::Sync,
        nth: 1,
        error: millpond::fs::FaultError::Eio,
    });
    let writes = fs.stats().writes;
    assert!(q.push_batch(&big).is_err());
    assert!(
        fs.stats().writes - writes >= 20,
        "every piece was handed to the OS before the fsync"
    );
    let got = read_all(&q);
    assert_eq!(got.len(), 4010, "none of the failed batch is readable");
    assert_eq!(got[9].1, before[9]);
    assert_eq!(got[4009].1, big[3999]);
}
