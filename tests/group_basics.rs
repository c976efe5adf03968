//! Consumer groups: reserve, ack, nack, touch, bury, kick, peek, priority,
//! delay, fan-out, bad input, and ack state that survives reopen.

use std::sync::Arc;
use std::time::Duration;

use millpond::{Error, GroupOptions, ManualClock, MessageState, PushOptions, StartAt, Store};
use millpond_suite::on_each_fs;

const LEASE: Duration = Duration::from_secs(30);

#[test]
fn fifo_reserve_ack_and_nothing_acked_returns_after_reopen() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let q = store.queue("jobs").unwrap();
        let g = q.group("default").unwrap();
        let ids: Vec<u64> = (0..10)
            .map(|i| q.push(format!("job {i}")).unwrap())
            .collect();
        for (i, id) in ids.iter().enumerate().take(6) {
            let d = g.reserve(LEASE).unwrap().expect("ready");
            assert_eq!(d.id, *id);
            assert_eq!(d.payload, format!("job {i}").into_bytes());
            assert_eq!(d.attempt, 1);
            if i % 2 == 0 {
                g.ack(d.id).unwrap();
            }
        }
        let s = g.stats().unwrap();
        assert_eq!((s.reserved, s.acked_total, s.ready), (3, 3, 4));
        drop((g, q));
        store.close().unwrap();
        drop(store);

        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let q = store.queue("jobs").unwrap();
        let g = q.group("default").unwrap();
        // A clean close keeps the leases: the holder may ack after reopening
        // (another process, say), and acked messages never come back.
        assert_eq!(g.recovery().leases_released, 0);
        assert_eq!(g.stats().unwrap().reserved, 3);
        g.ack(ids[1]).unwrap();
        let mut got = Vec::new();
        while let Some(d) = g.reserve(LEASE).unwrap() {
            got.push((d.id, d.attempt));
            g.ack(d.id).unwrap();
        }
        assert_eq!(
            got,
            vec![(ids[6], 1), (ids[7], 1), (ids[8], 1), (ids[9], 1)]
        );
        g.ack_batch(&[ids[3], ids[5]]).unwrap();
        let s = g.stats().unwrap();
        assert_eq!((s.reserved, s.acked_total, s.ready), (0, 10, 0));
    });
}

#[test]
fn leases_held_at_a_clean_close_expire_after_reopen_with_the_attempt_counted() {
    on_each_fs(|place| {
        let clock = ManualClock::new(1_000_000);
        let options = place.options.clone().clock(Arc::new(clock.clone()));
        let store = Store::open(&place.path, options.clone()).unwrap();
        let q = store.queue("jobs").unwrap();
        let g = q.group("default").unwrap();
        let id = q.push(b"x").unwrap();
        assert_eq!(g.reserve(LEASE).unwrap().unwrap().id, id);
        drop((g, q));
        store.close().unwrap();
        drop(store);
        let store = Store::open(&place.path, options).unwrap();
        let g = store.queue("jobs").unwrap().group("default").unwrap();
        assert!(g.reserve(LEASE).unwrap().is_none(), "still leased");
        clock.advance(30_001);
        let d = g.reserve(LEASE).unwrap().expect("lease expired");
        assert_eq!((d.id, d.attempt), (id, 2));
    });
}

#[test]
fn fan_out_every_group_sees_every_message_once() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let q = store.queue("events").unwrap();
        let a = q.group("a").unwrap();
        let b = q.group("b").unwrap();
        for i in 0..50u32 {
            q.push(i.to_le_bytes()).unwrap();
        }
        for g in [&a, &b] {
            let mut seen = Vec::new();
            while let Some(d) = g.reserve(LEASE).unwrap() {
                seen.push(u32::from_le_bytes(d.payload.try_into().unwrap()));
                g.ack(d.id).unwrap();
            }
            assert_eq!(seen, (0..50).collect::<Vec<_>>());
        }
        let tail = q
            .group_with(
                "late",
                GroupOptions {
                    start: StartAt::Tail,
                    ..GroupOptions::default()
                },
            )
            .unwrap();
        assert!(tail.reserve(LEASE).unwrap().is_none());
        let id = q.push(b"new").unwrap();
        assert_eq!(tail.reserve(LEASE).unwrap().unwrap().id, id);
        assert_eq!(q.group_names(), vec!["a", "b", "default", "late"]);
    });
}

#[test]
fn priority_delay_lease_expiry_nack_bury_kick() {
    on_each_fs(|place| {
        let clock = ManualClock::new(1_000_000);
        let options = place.options.clone().clock(Arc::new(clock.clone()));
        let store = Store::open(&place.path, options).unwrap();
        let q = store.queue("q").unwrap();
        let g = q
            .group_with(
                "g",
                GroupOptions {
                    max_attempts: 2,
                    ..GroupOptions::default()
                },
            )
            .unwrap();
        let low = q
            .push_with(
                b"low",
                PushOptions {
                    priority: 5,
                    delay: Duration::ZERO,
                },
            )
            .unwrap();
        let late = q
            .push_with(
                b"late",
                PushOptions {
                    priority: 0,
                    delay: Duration::from_secs(10),
                },
            )
            .unwrap();
        let plain = q.push(b"plain").unwrap();
        let urgent = q
            .push_with(
                b"urgent",
                PushOptions {
                    priority: 1,
                    delay: Duration::ZERO,
                },
            )
            .unwrap();

        // (priority, id): plain (0) first, then urgent (1), then low (5).
        assert_eq!(g.peek_ready().unwrap().unwrap().id, plain);
        let order: Vec<u64> = (0..3)
            .map(|_| g.reserve(LEASE).unwrap().unwrap().id)
            .collect();
        assert_eq!(order, vec![plain, urgent, low]);
        assert!(g.reserve(LEASE).unwrap().is_none(), "late is delayed");
        let delayed = g.peek_delayed().unwrap().unwrap();
        assert_eq!(
            (delayed.id, delayed.state),
            (late, MessageState::Delayed(1_010_000))
        );
        clock.advance(10_000);
        assert_eq!(g.reserve(LEASE).unwrap().unwrap().id, late);

        // Lease expiry returns the message with the attempt counted; at
        // max_attempts it is buried.
        g.ack(urgent).unwrap();
        g.ack(late).unwrap();
        clock.advance(31_000);
        let again = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((again.id, again.attempt), (plain, 2));
        g.touch(plain, Duration::from_secs(100)).unwrap();
        clock.advance(50_000);
        // `low` expired at attempt 1 and is ready again; plain was touched.
        let low_again = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((low_again.id, low_again.attempt), (low, 2));
        g.nack(low, Some(Duration::ZERO)).unwrap();
        assert_eq!(g.peek_buried().unwrap().unwrap().id, low, "out of attempts");
        assert_eq!(g.stats().unwrap().dead_lettered_total, 1);
        g.bury(plain).unwrap();
        assert_eq!(g.stats().unwrap().buried, 2);
        assert_eq!(g.kick(1).unwrap(), 1);
        let kicked = g.reserve(LEASE).unwrap().unwrap();
        assert_eq!((kicked.id, kicked.attempt), (low, 1));
        g.kick_id(plain).unwrap();
        assert_eq!(g.peek(plain).unwrap().unwrap().state, MessageState::Ready);
    });
}

#[test]
fn settling_foreign_or_unknown_ids_is_a_specific_error() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        let a = q.group("a").unwrap();
        let b = q.group("b").unwrap();
        let id = q.push(b"x").unwrap();
        let d = a.reserve(LEASE).unwrap().unwrap();
        assert_eq!(d.id, id);
        assert!(
            matches!(b.ack(id), Err(Error::NotReserved { ref group, id: i }) if group == "b" && i == id)
        );
        assert!(matches!(
            a.ack(999),
            Err(Error::NotReserved { id: 999, .. })
        ));
        assert!(matches!(a.kick_id(id), Err(Error::NotBuried { .. })));
        a.ack(id).unwrap();
        assert!(
            matches!(a.ack(id), Err(Error::NotReserved { .. })),
            "double ack"
        );
        assert!(matches!(
            a.reserve(Duration::ZERO),
            Err(Error::InvalidLease { .. })
        ));
        assert!(matches!(
            a.reserve(Duration::from_secs(40 * 24 * 3600)),
            Err(Error::InvalidLease { .. })
        ));
        assert!(matches!(
            q.group("bad/name"),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(q.group(".."), Err(Error::InvalidName { .. })));
    });
}

#[test]
fn reserve_timeout_is_woken_by_a_push() {
    let place = millpond_suite::Place::new(millpond_suite::FsKind::Real);
    let store = Store::open(&place.path, place.options.clone()).unwrap();
    let q = store.queue("q").unwrap();
    let g = q.group("default").unwrap();
    let started = std::time::Instant::now();
    assert!(
        g.reserve_timeout(LEASE, Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    let q2 = q.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        q2.push(b"wake").unwrap()
    });
    let d = g
        .reserve_timeout(LEASE, Duration::from_secs(20))
        .unwrap()
        .expect("woken");
    assert_eq!(d.id, t.join().unwrap());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn out_of_attempts_moves_to_the_dead_letter_queue() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let q = store.queue("work").unwrap();
        let opts = GroupOptions {
            max_attempts: 2,
            dead_letter_queue: Some("dead".into()),
            ..GroupOptions::default()
        };
        let g = q.group_with("default", opts.clone()).unwrap();
        let poison = q
            .push_with(
                b"poison",
                PushOptions {
                    priority: 7,
                    delay: Duration::ZERO,
                },
            )
            .unwrap();
        let fine = q.push(b"fine").unwrap();
        // Default priority first.
        assert_eq!(g.reserve(LEASE).unwrap().unwrap().id, fine);
        g.ack(fine).unwrap();
        for attempt in 1..=2 {
            let d = g.reserve(LEASE).unwrap().unwrap();
            assert_eq!((d.id, d.attempt), (poison, attempt));
            g.nack(poison, Some(Duration::ZERO)).unwrap();
        }
        let d = g.reserve(LEASE).unwrap();
        assert!(d.is_none(), "poison is gone from the group: {d:?}");
        let s = g.stats().unwrap();
        assert_eq!((s.buried, s.dead_lettered_total, s.acked_total), (0, 1, 1));
        let dead = store.queue("dead").unwrap().group("default").unwrap();
        let moved = dead
            .reserve(LEASE)
            .unwrap()
            .expect("moved to the dead-letter queue");
        assert_eq!(
            (moved.payload.as_slice(), moved.priority),
            (b"poison".as_slice(), 7)
        );
        assert!(matches!(
            q.group_with(
                "x",
                GroupOptions {
                    dead_letter_queue: Some("work".into()),
                    ..GroupOptions::default()
                }
            ),
            Err(Error::InvalidOption {
                option: "dead_letter_queue",
                ..
            })
        ));
        drop((g, q, dead));
        store.close().unwrap();
        drop(store);
        // Nothing comes back after reopen: the move was journaled.
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let g = store
            .queue("work")
            .unwrap()
            .group_with("default", opts)
            .unwrap();
        assert!(g.reserve(LEASE).unwrap().is_none());
        assert!(g.peek(poison).unwrap().is_none());
    });
}

#[test]
fn buried_before_a_dead_letter_queue_was_set_move_when_it_is() {
    on_each_fs(|place| {
        let store = Store::open(&place.path, place.options.clone()).unwrap();
        let q = store.queue("work").unwrap();
        let g = q
            .group_with(
                "g",
                GroupOptions {
                    max_attempts: 1,
                    ..GroupOptions::default()
                },
            )
            .unwrap();
        let id = q.push(b"bad").unwrap();
        assert_eq!(g.reserve(LEASE).unwrap().unwrap().id, id);
        g.nack(id, None).unwrap();
        assert_eq!(g.peek_buried().unwrap().unwrap().id, id);
        let g = q
            .group_with(
                "g",
                GroupOptions {
                    max_attempts: 1,
                    dead_letter_queue: Some("dlq".into()),
                    ..GroupOptions::default()
                },
            )
            .unwrap();
        assert!(g.peek_buried().unwrap().is_none());
        let dlq = store.queue("dlq").unwrap().group("default").unwrap();
        assert_eq!(dlq.reserve(LEASE).unwrap().unwrap().payload, b"bad");
    });
}
