//! Guarantee 8, steady state: a queue consumed as fast as it is fed keeps
//! its disk bounded by its live data.
//!
//! 16 KiB segments, the background compactor off. One loop pushes a message,
//! reserves it and acks the oldest delivery once more than [`WINDOW`] are
//! in flight; every 100th message is held much longer (a straggler that
//! pins its segment until copy-forward rewrites it). The loop pushes twenty
//! segments' worth of bytes and calls `Store::compact_now` every two and a
//! half segments. After every pass:
//!
//! - `log_stats().bytes_on_disk` ≤ 2 × live bytes + one segment, where live
//!   bytes are the frames (28-byte header + payload) of every message not
//!   yet acked, counted by the test;
//! - the pass reports the same size as `log_stats`;
//! - every message not yet acked still reads back with its payload.
//!
//! Runs on the real file system, `MemFs` and `SimFs`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::SimFs;
use millpond::{Options, Store};
use millpond_suite::{on_each_fs, payload};

const SEGMENT: u64 = 16 << 10;
const FRAME_HEADER: u64 = 28;
const WINDOW: usize = 20;
/// Every this many messages one is held for [`HOLD`] messages.
const STRAGGLER_EVERY: u64 = 100;
const HOLD: u64 = 180;
const LEASE: Duration = Duration::from_secs(3600);

fn payload_len(i: u64) -> usize {
    100 + (i * 37 % 200) as usize
}

struct Unacked {
    id: u64,
    seq: u64,
    frame: u64,
}

fn run(path: &Path, options: Options) {
    let options = options.segment_bytes_max(SEGMENT).compact_interval(None);
    let store = Store::open(path, options).unwrap();
    let q = store.queue("steady").unwrap();
    let g = q.group("default").unwrap();

    let mut window: VecDeque<Unacked> = VecDeque::new();
    let mut held: VecDeque<(u64, Unacked)> = VecDeque::new();
    let mut live = 0u64;
    let mut pushed_bytes = 0u64;
    let mut next_pass_at = SEGMENT * 5 / 2;
    let mut passes = 0u32;
    let mut seq = 0u64;
    let mut tightest = (0u64, 0u64);
    while pushed_bytes < 20 * SEGMENT {
        let p = payload(seq, payload_len(seq));
        let frame = FRAME_HEADER + p.len() as u64;
        let id = q.push(&p).unwrap();
        live += frame;
        pushed_bytes += frame;
        let d = g.reserve(LEASE).unwrap().expect("the message just pushed");
        assert_eq!((d.id, &d.payload), (id, &p), "seq {seq}");
        let u = Unacked { id, seq, frame };
        if seq % STRAGGLER_EVERY == STRAGGLER_EVERY / 2 {
            held.push_back((seq + HOLD, u));
        } else {
            window.push_back(u);
        }
        while window.len() > WINDOW {
            let u = window.pop_front().unwrap();
            g.ack(u.id).unwrap();
            live -= u.frame;
        }
        while held.front().is_some_and(|(until, _)| *until <= seq) {
            let (_, u) = held.pop_front().unwrap();
            g.ack(u.id).unwrap();
            live -= u.frame;
        }
        seq += 1;

        if pushed_bytes >= next_pass_at {
            next_pass_at += SEGMENT * 5 / 2;
            passes += 1;
            let report = store.compact_now().unwrap();
            let stats = q.log_stats().unwrap();
            let bound = 2 * live + SEGMENT;
            assert!(
                stats.bytes_on_disk <= bound,
                "pass {passes}: {} bytes on disk > 2 × {live} live + {SEGMENT}; {stats:?}; {report:?}",
                stats.bytes_on_disk
            );
            assert_eq!(report.bytes_on_disk, stats.bytes_on_disk, "pass {passes}");
            if stats.bytes_on_disk * tightest.1 >= tightest.0 * bound {
                tightest = (stats.bytes_on_disk, bound);
            }
            for u in window.iter().chain(held.iter().map(|(_, u)| u)) {
                let m = q
                    .read(u.id)
                    .unwrap()
                    .unwrap_or_else(|| panic!("pass {passes}: unacked id {} is gone", u.id));
                assert_eq!(m.payload, payload(u.seq, payload_len(u.seq)), "id {}", u.id);
            }
        }
    }
    assert!(passes >= 7, "{passes} passes");
    let totals = q.compact_stats();
    println!(
        "{passes} passes; tightest: {} of {} bytes allowed; {totals:?}",
        tightest.0, tightest.1
    );
    // Twenty segments went through; all but the last few were reclaimed.
    assert!(
        totals.segments_deleted + totals.segments_rewritten >= 15,
        "{totals:?}"
    );
    assert!(
        totals.segments_rewritten >= 1,
        "no straggler was copied forward: {totals:?}"
    );
    assert!(
        totals.bytes_reclaimed >= 15 * (SEGMENT - 4096),
        "{totals:?}"
    );

    // Ack the rest: one more pass leaves only the active segment.
    for u in window.drain(..).chain(held.drain(..).map(|(_, u)| u)) {
        g.ack(u.id).unwrap();
    }
    assert!(g.reserve(LEASE).unwrap().is_none());
    store.compact_now().unwrap();
    let stats = q.log_stats().unwrap();
    assert_eq!(stats.segments, 1, "{stats:?}");
    assert!(stats.bytes_on_disk <= SEGMENT, "{stats:?}");
    assert_eq!(stats.next_id, seq + 1);
}

#[test]
fn disk_stays_within_twice_the_live_bytes_plus_a_segment() {
    on_each_fs(|place| run(&place.path, place.options.clone()));
}

#[test]
fn disk_stays_within_twice_the_live_bytes_plus_a_segment_on_simfs() {
    let sim = SimFs::new(8);
    run(Path::new("/store"), Options::default().fs(Arc::new(sim)));
}
