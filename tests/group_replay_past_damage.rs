//! Regression for the simulator's `open-fails-on-damaged-frame` (seeds 5,
//! 54): under `RecoveryMode::Skip`, group recovery that has to scan the log
//! (journal replay from the checkpoint cursor up to a reserved message,
//! setting aside the messages with a priority on the way) must go past a
//! damaged frame, not end `Store::open` with its corruption error.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::{CrashOptions, SimFs};
use millpond::{Options, PushOptions, RecoveryMode, Store};
use millpond_suite::payload;

const STORE: &str = "/store";

fn options(sim: &SimFs) -> Options {
    Options::default()
        .fs(Arc::new(sim.clone()))
        .compact_interval(None)
        .recovery_mode(RecoveryMode::Skip)
}

fn msg(id: u64) -> Vec<u8> {
    payload(id, 100)
}

#[test]
fn group_replay_goes_past_a_damaged_frame_under_skip() {
    let sim = SimFs::new(5);
    let store = Store::open(STORE, options(&sim)).unwrap();
    let q = store.queue("q").unwrap();
    let g = q.group("default").unwrap();
    for id in 1..=10 {
        let priority = if id == 3 || id == 4 { 5 } else { 0 };
        let got = q
            .push_with(
                msg(id),
                PushOptions {
                    priority,
                    ..PushOptions::default()
                },
            )
            .unwrap();
        assert_eq!(got, id);
    }
    // The scan for the third reserve sets 3 and 4 aside (no journal record)
    // and delivers 5: replaying its reserve record scans 3 and 4 again.
    let lease = Duration::from_secs(600);
    let ids: Vec<u64> = (0..3)
        .map(|_| g.reserve(lease).unwrap().unwrap().id)
        .collect();
    assert_eq!(ids, [1, 2, 5]);
    for id in ids {
        g.ack(id).unwrap();
    }

    // Power cut (every ack returned under Sync), then a bit flip in id 3.
    let image = sim.crash_image(CrashOptions::clean());
    drop(g);
    drop(q);
    drop(store);
    let seg = Path::new(STORE).join("queues/q/00000000000000000001.seg");
    let bytes = image.file_bytes(&seg).unwrap();
    let at = bytes
        .windows(100)
        .position(|w| w == msg(3).as_slice())
        .expect("payload of 3");
    image.flip_bit(&seg, at as u64 + 40, 3).unwrap();

    let store = Store::open(STORE, options(&image))
        .unwrap_or_else(|e| panic!("open under Skip must go past the damage: {e}"));
    let damaged: usize = store
        .recovery_report()
        .queues
        .iter()
        .map(|q| q.damaged.len())
        .sum();
    assert_eq!(damaged, 1, "{:?}", store.recovery_report());
    let q = store.queue("q").unwrap();
    let g = q.group("default").unwrap();
    let mut got = BTreeSet::new();
    let mut errors = 0;
    for _ in 0..40 {
        match g.reserve(lease) {
            Ok(Some(d)) => {
                assert_eq!(d.payload, msg(d.id));
                assert!(got.insert(d.id), "id {} twice", d.id);
                g.ack(d.id).unwrap();
            }
            Ok(None) => break,
            Err(e) if e.is_corruption() => errors += 1,
            Err(e) => panic!("reserve: {e}"),
        }
    }
    assert_eq!(
        got,
        BTreeSet::from([4, 6, 7, 8, 9, 10]),
        "intact, unacked messages"
    );
    assert!(errors <= 1, "the damage is reported at most once: {errors}");
}
