//! Under `Interval`, the timer thread's fsync runs outside a flush round:
//! a push (which waits for its round's write only) returns while the
//! timer's fsync is still running. It used to wait for that fsync
//! whenever the timer held the round. What the timer synced survives a
//! power cut, and a failure of its fsync poisons the queue.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use millpond::fs::{CrashOptions, Fault, FaultError, FaultKind, SimFs};
use millpond::{Durability, Error, Options, Store};
use millpond_suite::hook_fs::{HookFs, Hooks};

/// Holds every fsync of a segment file while closed.
#[derive(Default)]
struct Gate {
    /// (closed, fsyncs held so far)
    state: Mutex<(bool, u64)>,
    cv: Condvar,
}

impl Gate {
    fn hooks(self: &Arc<Gate>) -> Hooks {
        let gate = self.clone();
        Hooks {
            sync_data: Some(Arc::new(move |path: &Path| {
                if path.extension().is_some_and(|e| e == "seg") {
                    let mut st = gate.state.lock().unwrap();
                    if st.0 {
                        st.1 += 1;
                        gate.cv.notify_all();
                        while st.0 {
                            st = gate.cv.wait(st).unwrap();
                        }
                    }
                }
                Ok(())
            })),
            ..Hooks::default()
        }
    }

    fn set_closed(&self, closed: bool) {
        self.state.lock().unwrap().0 = closed;
        self.cv.notify_all();
    }

    /// Waits (up to 10 s) until an fsync is held.
    fn wait_held(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        let mut st = self.state.lock().unwrap();
        while st.1 == 0 {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the timer never fsynced");
            st = self.cv.wait_timeout(st, left).unwrap().0;
        }
    }
}

fn options(fs: Arc<dyn millpond::fs::Fs>) -> Options {
    Options::default()
        .fs(fs)
        .durability(Durability::Interval(Duration::from_millis(10)))
        .compact_interval(None)
}

#[test]
fn push_returns_while_the_timer_fsync_runs() {
    let sim = SimFs::new(3);
    let gate = Arc::new(Gate::default());
    let fs = HookFs::new(Arc::new(sim.clone()), gate.hooks());
    let store = Store::open("/s", options(Arc::new(fs))).unwrap();
    let q = store.queue("q").unwrap();

    gate.set_closed(true);
    assert_eq!(q.push(b"first").unwrap(), 1);
    gate.wait_held();

    // The timer is inside its fsync: a push must not wait for it.
    let (tx, rx) = mpsc::channel();
    let pusher = {
        let q = q.clone();
        std::thread::spawn(move || tx.send(q.push(b"second")).unwrap())
    };
    let pushed = rx.recv_timeout(Duration::from_secs(5));
    gate.set_closed(false);
    pusher.join().unwrap();
    assert_eq!(
        pushed
            .expect("the push waited for the timer's fsync")
            .unwrap(),
        2
    );

    // Both are durable within a few ticks, with no flush: a power cut
    // keeps them.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let image = sim.crash_image(CrashOptions::clean());
        let s = Store::open("/s", options(Arc::new(image))).unwrap();
        let got: Vec<(u64, Vec<u8>)> = s
            .queue("q")
            .unwrap()
            .reader(1)
            .map(|m| m.map(|m| (m.id, m.payload)).unwrap())
            .collect();
        if got.len() == 2 {
            assert_eq!(got, vec![(1, b"first".to_vec()), (2, b"second".to_vec())]);
            break;
        }
        assert!(Instant::now() < until, "not durable yet: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn failed_timer_fsync_poisons_the_queue() {
    let sim = SimFs::new(4);
    let store = Store::open("/s", options(Arc::new(sim.clone()))).unwrap();
    let q = store.queue("q").unwrap();
    // The next fsync: with no flush, no roll and no group, the timer's.
    sim.inject(Fault {
        kind: FaultKind::Sync,
        nth: 1,
        error: FaultError::Eio,
    });
    assert_eq!(q.push(b"first").unwrap(), 1);
    let until = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match q.push(b"more") {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < until, "never poisoned");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    match err {
        Error::Poisoned { queue, cause } => {
            assert_eq!(queue, "q");
            assert!(cause.contains("fsync segment"), "{cause}");
        }
        other => panic!("want Poisoned, got {other:?}"),
    }
    assert!(matches!(q.flush(), Err(Error::Poisoned { .. })));
}

#[test]
fn idle_timer_wakes_for_the_next_write() {
    let sim = SimFs::new(5);
    let store = Store::open("/s", options(Arc::new(sim.clone()))).unwrap();
    let q = store.queue("q").unwrap();
    let durable = |n: usize| {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let image = sim.crash_image(CrashOptions::clean());
            let s = Store::open("/s", options(Arc::new(image))).unwrap();
            let got = s.queue("q").unwrap().reader(1).count();
            if got == n {
                return;
            }
            assert!(Instant::now() < until, "{got} of {n} durable");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Each push finds the timer asleep with nothing to sync (at open, and
    // after the last sync plus many ticks of 10 ms): the round that writes
    // it must wake the timer, or it is never fsynced.
    for n in 1..=3 {
        std::thread::sleep(Duration::from_millis(100));
        q.push(format!("m{n}").as_bytes()).unwrap();
        durable(n);
    }
}

#[test]
fn idle_group_journal_timer_wakes_for_the_next_ack() {
    let sim = SimFs::new(6);
    let store = Store::open("/s", options(Arc::new(sim.clone()))).unwrap();
    let q = store.queue("q").unwrap();
    let g = q.group("g").unwrap();
    q.push(b"first").unwrap();
    q.push(b"second").unwrap();
    // Let both timers go idle: the log's and the group journal's.
    std::thread::sleep(Duration::from_millis(200));
    let d = g.reserve(Duration::from_secs(60)).unwrap().unwrap();
    assert_eq!(d.id, 1);
    g.ack(d.id).unwrap();
    // No flush: the journal timer must wake for the ack (and the reserve
    // before it) and fsync them, or after a power cut the group delivers
    // the first message again.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let image = sim.crash_image(CrashOptions::clean());
        let s = Store::open("/s", options(Arc::new(image))).unwrap();
        let next = s
            .queue("q")
            .unwrap()
            .group("g")
            .unwrap()
            .reserve(Duration::from_secs(60))
            .unwrap()
            .map(|d| d.id);
        if next == Some(2) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the ack is not durable: next {next:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
