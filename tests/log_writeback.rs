//! Under `Buffered`, a background thread fsyncs the active segment once
//! 8 MiB were written to it since its last fsync, so the push that rolls
//! to the next segment (sealing fsyncs the old one) does not wait for a
//! whole segment's writeback. It promises nothing to callers (`flush` is
//! still what makes pushes durable), but what it syncs survives a power
//! cut, and a failure of its fsync poisons the queue like any other.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use millpond::fs::{CrashOptions, Fault, FaultError, FaultKind, SimFs};
use millpond::{Durability, Error, Options, Store};
use millpond_suite::payload;

/// 12 MiB of 4 KiB messages: past the 8 MiB that wakes the thread, well
/// under a segment (64 MiB), so no roll fsyncs anything.
const N: u64 = 3072;
const SIZE: usize = 4096;
/// Messages that fit in the first 8 MiB of the segment (frames are a
/// little longer than their payloads).
const IN_8_MIB: u64 = (8 << 20) / (SIZE as u64 + 64);

fn options(fs: &SimFs) -> Options {
    Options::default()
        .fs(Arc::new(fs.clone()))
        .durability(Durability::Buffered)
        .compact_interval(None)
}

/// Waits (up to 20 s) until `done` holds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn buffered_writeback_makes_a_long_run_durable_without_a_flush() {
    let fs = SimFs::new(7);
    let store = Store::open("/s", options(&fs)).unwrap();
    let q = store.queue("q").unwrap();
    let syncs_at_open = fs.stats().syncs;
    for i in 0..N {
        assert_eq!(q.push(payload(i, SIZE)).unwrap(), i + 1);
    }
    eventually("the writeback fsync", || fs.stats().syncs > syncs_at_open);

    // Only what was fsynced survives: no flush, no close.
    let image = fs.crash_image(CrashOptions::clean());
    drop(q);
    drop(store);
    let store = Store::open("/s", options(&image)).unwrap();
    let q = store.queue("q").unwrap();
    let got: Vec<(u64, Vec<u8>)> = q
        .reader(1)
        .map(|m| {
            let m = m.unwrap();
            (m.id, m.payload)
        })
        .collect();
    assert!(
        got.len() as u64 >= IN_8_MIB,
        "{} messages survived, the first 8 MiB hold {IN_8_MIB}",
        got.len()
    );
    for (i, (id, p)) in got.iter().enumerate() {
        assert_eq!((*id, p), (i as u64 + 1, &payload(i as u64, SIZE)));
    }
}

#[test]
fn failed_writeback_fsync_poisons_the_queue() {
    let fs = SimFs::new(8);
    let store = Store::open("/s", options(&fs)).unwrap();
    let q = store.queue("q").unwrap();
    // The next fsync of any file: with no flush, no roll and no group,
    // the writeback thread's.
    fs.inject(Fault {
        kind: FaultKind::Sync,
        nth: 1,
        error: FaultError::Eio,
    });
    // Pushes succeed until the failure is seen, then every one fails.
    let mut err = None;
    for i in 0..N {
        if let Err(e) = q.push(payload(i, SIZE)) {
            err = Some(e);
            break;
        }
    }
    if err.is_none() {
        eventually("the queue to be poisoned", || match q.push(b"after") {
            Ok(_) => false,
            Err(e) => {
                err = Some(e);
                true
            }
        });
    }
    match err.unwrap() {
        Error::Poisoned { queue, cause } => {
            assert_eq!(queue, "q");
            assert!(cause.contains("fsync segment"), "{cause}");
            assert!(
                cause.contains(&*Path::new("/s/queues/q").to_string_lossy()),
                "{cause}"
            );
        }
        other => panic!("want Poisoned, got {other:?}"),
    }
    assert!(matches!(q.flush(), Err(Error::Poisoned { .. })));
}
