//! Out-of-order operations a broker needs (beanstalkd's `delete` of a job
//! in any state, `release` and `bury` with a new priority, `reserve-job`,
//! `kick` of delayed jobs), checked live and after a power cut replays
//! their journal records.

use std::sync::Arc;
use std::time::Duration;

use crate::fs::{CrashOptions, SimFs};
use crate::{Group, ManualClock, MessageState, Options, PushOptions, Queue, Store};

const LEASE: Duration = Duration::from_secs(60);

fn open(sim: &SimFs, clock: &ManualClock) -> (Store, Queue, Group) {
    let store = Store::open(
        "/store",
        Options::default()
            .fs(Arc::new(sim.clone()))
            .clock(Arc::new(clock.clone())),
    )
    .unwrap();
    let q = store.queue("tube").unwrap();
    let g = q.group("beanstalkd").unwrap();
    (store, q, g)
}

fn reserved_id(g: &Group) -> u64 {
    g.reserve(LEASE).unwrap().expect("a ready message").id
}

/// Builds: ready 3 (delayed, kicked), 6 (fresh), 1 (released at
/// priority 7); buried 2 (priority 3); deleted 4 (while fresh) and 5
/// (reserved by id).
fn scenario(q: &Queue, g: &Group) {
    let hour = PushOptions {
        priority: 0,
        delay: Duration::from_secs(3600),
    };
    let plain = PushOptions::default();
    let ids = q
        .push_batch_with(&[
            (b"one".as_slice(), plain),
            (b"two", plain),
            (b"three", hour),
            (b"four", plain),
            (b"five", plain),
            (b"six", plain),
        ])
        .unwrap();
    assert_eq!(ids, 1..7);
    assert_eq!(g.delete_batch(&[(4, false)]).unwrap(), vec![true]);
    assert_eq!(reserved_id(g), 1);
    g.release(1, 7, Duration::ZERO).unwrap();
    assert_eq!(reserved_id(g), 2);
    g.bury_with(2, 3).unwrap();
    let d = g.reserve_id(5, LEASE).unwrap().expect("5 is ready");
    assert_eq!(
        (d.id, d.payload.as_slice(), d.attempt),
        (5, &b"five"[..], 1)
    );
    assert_eq!(g.reserve_id(5, LEASE).unwrap(), None, "already reserved");
    assert_eq!(g.delete_batch(&[(5, false)]).unwrap(), vec![false]);
    assert_eq!(
        g.delete_batch(&[(5, true), (99, true), (4, true)]).unwrap(),
        vec![true, false, false]
    );
    assert_eq!(g.peek_delayed().unwrap().expect("3 is delayed").id, 3);
    assert_eq!(g.kick_delayed(10).unwrap(), 1);
    assert_eq!(g.kick_delayed(10).unwrap(), 0);
}

fn check(g: &Group) {
    let s = g.stats().unwrap();
    assert_eq!((s.ready, s.reserved, s.delayed, s.buried), (3, 0, 0, 1));
    assert_eq!(s.acked_total, 2);
    let one = g.peek(1).unwrap().unwrap();
    assert_eq!((one.state, one.priority), (MessageState::Ready, 7));
    let two = g.peek_buried().unwrap().unwrap();
    assert_eq!((two.id, two.priority), (2, 3));
    assert_eq!(g.peek(4).unwrap(), None);
    assert_eq!(g.peek(5).unwrap(), None);
    let order: Vec<u64> = (0..3).map(|_| reserved_id(g)).collect();
    assert_eq!(order, vec![3, 6, 1]);
    assert!(g.reserve(LEASE).unwrap().is_none());
}

#[test]
fn out_of_order_ops_live() {
    let (sim, clock) = (SimFs::new(7), ManualClock::new(1_000_000));
    let (_store, q, g) = open(&sim, &clock);
    scenario(&q, &g);
    check(&g);
}

#[test]
fn out_of_order_ops_replay_after_power_cut() {
    let (sim, clock) = (SimFs::new(8), ManualClock::new(1_000_000));
    {
        let (_store, q, g) = open(&sim, &clock);
        scenario(&q, &g);
        let image = sim.crash_image(CrashOptions::clean());
        let (_store2, _q2, g2) = open(&image, &clock);
        check(&g2);
    }
}

#[test]
fn kick_job_reaches_a_delayed_message_behind_ready_ones() {
    let (sim, clock) = (SimFs::new(9), ManualClock::new(1_000_000));
    let (_store, q, g) = open(&sim, &clock);
    let later = PushOptions {
        priority: 0,
        delay: Duration::from_secs(60),
    };
    q.push_batch_with(&[(b"a".as_slice(), PushOptions::default()), (b"b", later)])
        .unwrap();
    g.kick_id(2).unwrap();
    assert_eq!(reserved_id(&g), 1);
    assert_eq!(reserved_id(&g), 2);
    assert!(matches!(
        g.kick_id(1),
        Err(crate::Error::NotBuried { id: 1, .. })
    ));
}
