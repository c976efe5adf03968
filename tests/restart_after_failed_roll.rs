//! Regression for the simulator's `restart-adopts-unsynced-data` (seeds
//! 393, 418 and, through a dead-letter move, 4144): a roll whose new
//! segment header write failed left a file whose name was never made
//! durable (the directory fsync comes after the header). A process restart
//! (no power cut) found that file empty, rewrote and fsynced its header but
//! did not fsync the directory, so pushes into it returned `Ok` under
//! `Sync` and a power cut then took the whole segment, and them with it.

use std::path::Path;
use std::sync::Arc;

use millpond::fs::{CrashOptions, Fault, FaultError, FaultKind, SimFs};
use millpond::{Error, Options, Store};
use millpond_suite::payload;

const STORE: &str = "/store";

fn options(sim: &SimFs) -> Options {
    Options::default()
        .fs(Arc::new(sim.clone()))
        .segment_bytes_max(4096)
        .index_interval_bytes(256)
}

/// 100-byte payloads: a 4 KiB segment holds 31 of them.
fn msg(i: u64) -> Vec<u8> {
    payload(i, 100)
}

#[test]
fn pushes_after_a_restart_that_rewrote_a_segment_header_survive_a_power_cut() {
    let mut runs = 0;
    for (seed, error) in [
        (1, FaultError::Eio),
        (2, FaultError::Enospc),
        (3, FaultError::Enospc),
        (4, FaultError::Eio),
    ] {
        let context = format!("seed {seed}, {error:?}");
        let sim = SimFs::new(seed);
        let store = Store::open(STORE, options(&sim)).unwrap();
        let q = store.queue("q").unwrap();
        for i in 1..=31 {
            assert_eq!(q.push(msg(i)).unwrap(), i, "{context}");
        }
        assert_eq!(q.log_stats().unwrap().segments, 1, "{context}");
        // The roll for id 32 writes the sealed segment's index (write #1),
        // then the new segment's header (write #2): that one fails.
        sim.inject(Fault {
            kind: FaultKind::Write,
            nth: 2,
            error,
        });
        let err = q.push(msg(32)).unwrap_err();
        assert!(
            matches!(err, Error::Io { op, .. } | Error::DiskFull { op, .. } if op == "write segment header"),
            "{context}: {err:?}"
        );
        drop(q);
        let _ = store.close(); // refuses: the queue is poisoned
        drop(store);

        // Process restart on the same disk: the page cache still holds the
        // new segment's directory entry, which was never fsynced.
        let store = Store::open(STORE, options(&sim)).unwrap();
        let report = store.recovery_report().clone();
        let qr = report.queues.iter().find(|r| r.queue == "q").unwrap();
        assert_eq!(
            qr.header_rewritten.as_deref(),
            Some(Path::new("/store/queues/q/00000000000000000032.seg")),
            "{context}: the empty segment's header is rewritten"
        );
        let q = store.queue("q").unwrap();
        for i in 32..=40 {
            assert_eq!(q.push(msg(i)).unwrap(), i, "{context}: push under Sync");
        }

        // Power cut now: only what is durable survives.
        let image = sim.crash_image(CrashOptions::clean());
        drop(q);
        drop(store);
        let store = Store::open(STORE, options(&image)).unwrap();
        let q = store.queue("q").unwrap();
        for i in 1..=40 {
            let got = q
                .read(i)
                .unwrap_or_else(|e| panic!("{context}: read({i}): {e}"));
            assert_eq!(
                got.map(|m| m.payload),
                Some(msg(i)),
                "{context}: acknowledged push {i} after the power cut"
            );
        }
        assert_eq!(q.next_id(), 41, "{context}: ids continue after 40");
        runs += 1;
    }
    assert_eq!(runs, 4);
}
