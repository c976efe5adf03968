//! The operations-versus-model target: bytes as a sequence of pushes,
//! reserves, acks, nacks, clock moves, compactions and reopens on one
//! queue and its default group, on an in-memory store, checked step by
//! step against a small model.
//!
//! The model covers messages at the default priority with no delay: the
//! group delivers the lowest ready id; a lease that expired is released at
//! the next reserve, with its attempt counted, and a message with
//! `MAX_ATTEMPTS` deliveries is buried instead of released. Leases survive
//! a clean close and reopen (expired ones are released by the open). At
//! the end every message is acked or buried, and nothing else is left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::MemFs;
use millpond::{Clock, Error, Group, GroupOptions, ManualClock, Options, Queue, Store};

use crate::payload;

const STORE: &str = "/fuzz/ops";
const START_MS: u64 = 1_700_000_000_000;
const MAX_ATTEMPTS: u32 = 3;
/// Operations run at most; longer inputs are cut.
const OPS_MAX: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Reserved { deadline_ms: u64 },
    Acked,
    Buried,
}

#[derive(Debug, Clone, Copy)]
struct Msg {
    len: usize,
    attempts: u32,
    state: State,
}

/// The model's messages, with the ready ones and the reserved ones also
/// kept apart, so a step costs the same however many messages the input
/// has pushed (the fuzzer runs millions of inputs of up to `OPS_MAX`
/// steps).
#[derive(Debug, Default)]
struct Model {
    msgs: BTreeMap<u64, Msg>,
    ready: BTreeSet<u64>,
    /// Reserved ids and their lease deadlines.
    reserved: BTreeMap<u64, u64>,
    next_id: u64,
}

impl Model {
    fn pushed(&mut self, id: u64, len: usize) {
        assert_eq!(id, self.next_id, "push got an unexpected id");
        self.msgs.insert(
            id,
            Msg {
                len,
                attempts: 0,
                state: State::Ready,
            },
        );
        self.ready.insert(id);
        self.next_id += 1;
    }

    /// Moves a message to a new state, keeping the sets in step.
    fn set(&mut self, id: u64, state: State) {
        let m = self.msgs.get_mut(&id).expect("modelled");
        match m.state {
            State::Ready => {
                self.ready.remove(&id);
            }
            State::Reserved { .. } => {
                self.reserved.remove(&id);
            }
            State::Acked | State::Buried => {}
        }
        m.state = state;
        match state {
            State::Ready => {
                self.ready.insert(id);
            }
            State::Reserved { deadline_ms } => {
                self.reserved.insert(id, deadline_ms);
            }
            State::Acked | State::Buried => {}
        }
    }

    /// A lease that ended: released with its attempt counted, or buried.
    fn release(&mut self, id: u64) {
        let attempts = self.msgs.get(&id).expect("modelled").attempts;
        let state = if attempts >= MAX_ATTEMPTS {
            State::Buried
        } else {
            State::Ready
        };
        self.set(id, state);
    }

    fn expire(&mut self, now_ms: u64) {
        let due: Vec<u64> = self
            .reserved
            .iter()
            .filter(|(_, deadline_ms)| **deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.release(id);
        }
    }

    fn reserved(&self) -> Vec<u64> {
        self.reserved.keys().copied().collect()
    }

    fn count(&self, state: State) -> u64 {
        self.msgs.values().filter(|m| m.state == state).count() as u64
    }
}

struct Harness {
    fs: MemFs,
    clock: ManualClock,
    store: Store,
    queue: Queue,
    group: Group,
}

fn group_options() -> GroupOptions {
    GroupOptions {
        max_attempts: MAX_ATTEMPTS,
        // Small, so journals rotate and checkpoints are written often.
        checkpoint_journal_bytes: 512,
        ..GroupOptions::default()
    }
}

impl Harness {
    fn open(fs: MemFs, clock: ManualClock) -> Harness {
        let options = Options::default()
            .fs(Arc::new(fs.clone()))
            .clock(Arc::new(clock.clone()))
            .compact_interval(None)
            .segment_bytes_max(4096)
            .index_interval_bytes(64);
        let store = Store::open(Path::new(STORE), options).expect("open store");
        let queue = store.queue("q").expect("queue");
        let group = queue.group_with("default", group_options()).expect("group");
        Harness {
            fs,
            clock,
            store,
            queue,
            group,
        }
    }

    fn reopen(self) -> Harness {
        let Harness {
            fs,
            clock,
            store,
            queue,
            group,
        } = self;
        drop(group);
        drop(queue);
        store.close().expect("close store");
        Harness::open(fs, clock)
    }
}

/// Runs the bytes as operations; see the module documentation.
pub fn ops_vs_model(data: &[u8]) {
    let mut h = Harness::open(MemFs::new(), ManualClock::new(START_MS));
    let mut m = Model {
        next_id: 1,
        ..Model::default()
    };
    for op in data.chunks(2).take(OPS_MAX) {
        let (code, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        match code % 9 {
            0 | 1 => push(&h, &mut m, arg),
            2 => push_batch(&h, &mut m, arg),
            3 | 4 => reserve(&h, &mut m, arg),
            5 => ack(&h, &mut m, arg),
            6 => nack(&h, &mut m, arg),
            7 if arg < 128 => h.clock.advance(u64::from(arg) * 10),
            7 => {
                h.store.compact_now().expect("compact");
            }
            _ => {
                h = h.reopen();
                m.expire(h.clock.now_ms());
                assert_eq!(h.queue.next_id(), m.next_id, "reopen changed next_id");
            }
        }
    }
    drain(&h, &mut m);
}

fn push(h: &Harness, m: &mut Model, arg: u8) {
    let len = usize::from(arg);
    let id = h.queue.push(payload(m.next_id, len)).expect("push");
    m.pushed(id, len);
}

fn push_batch(h: &Harness, m: &mut Model, arg: u8) {
    let n = u64::from(arg % 5);
    let lens: Vec<usize> = (0..n)
        .map(|i| (usize::from(arg) * 7 + i as usize) % 200)
        .collect();
    let batch: Vec<Vec<u8>> = (0..n)
        .map(|i| payload(m.next_id + i, lens[i as usize]))
        .collect();
    let ids = h.queue.push_batch(&batch).expect("push batch");
    assert_eq!(ids.end - ids.start, n);
    for (id, len) in ids.zip(lens) {
        m.pushed(id, len);
    }
}

fn reserve(h: &Harness, m: &mut Model, arg: u8) {
    let lease_ms = (u64::from(arg % 8) + 1) * 100;
    let now = h.clock.now_ms();
    m.expire(now);
    let want = m.ready.first().copied();
    let got = h
        .group
        .reserve(Duration::from_millis(lease_ms))
        .expect("reserve");
    match (want, got) {
        (None, None) => {}
        (Some(id), Some(d)) => {
            assert_eq!(d.id, id, "reserve delivered the wrong message");
            let msg = m.msgs.get_mut(&id).expect("modelled");
            msg.attempts += 1;
            assert_eq!(d.attempt, msg.attempts, "attempt of message {id}");
            assert_eq!(d.payload, payload(id, msg.len), "payload of message {id}");
            m.set(
                id,
                State::Reserved {
                    deadline_ms: now + lease_ms,
                },
            );
        }
        (want, got) => panic!("reserve: model says {want:?}, group gave {got:?}"),
    }
}

/// The id an ack or nack is aimed at: mostly a reserved one, sometimes
/// any id (which must be refused unless it is reserved).
fn target(m: &Model, arg: u8) -> u64 {
    if arg < 200 && !m.reserved.is_empty() {
        let n = usize::from(arg) % m.reserved.len();
        *m.reserved.keys().nth(n).expect("n is below the length")
    } else {
        u64::from(arg) % (m.next_id + 2)
    }
}

fn settled(m: &mut Model, id: u64, r: Result<(), Error>, op: &str) -> Option<Msg> {
    let reserved = m.reserved.contains_key(&id);
    match r {
        Ok(()) => {
            assert!(reserved, "{op} of {id} accepted, but it is not reserved");
            m.msgs.get_mut(&id).copied()
        }
        Err(Error::NotReserved { id: e, .. }) => {
            assert_eq!(e, id);
            assert!(!reserved, "{op} of reserved {id} refused");
            None
        }
        Err(e) => panic!("{op} of {id}: {e}"),
    }
}

fn ack(h: &Harness, m: &mut Model, arg: u8) {
    let id = target(m, arg);
    if settled(m, id, h.group.ack(id), "ack").is_some() {
        m.set(id, State::Acked);
    }
}

fn nack(h: &Harness, m: &mut Model, arg: u8) {
    let id = target(m, arg);
    if settled(m, id, h.group.nack(id, Some(Duration::ZERO)), "nack").is_some() {
        m.release(id);
    }
}

/// Lets every lease run out and takes everything still deliverable, in
/// order, acking it; then checks the group's figures against the model.
fn drain(h: &Harness, m: &mut Model) {
    h.clock.advance(3_600_000);
    loop {
        reserve(h, m, 0);
        let reserved = m.reserved();
        if reserved.is_empty() {
            break;
        }
        assert_eq!(reserved.len(), 1);
        ack(h, m, 0);
        assert_eq!(m.msgs[&reserved[0]].state, State::Acked);
    }
    let stats = h.group.stats().expect("stats");
    let count = |s: State| m.count(s);
    assert_eq!(stats.ready, 0);
    assert_eq!(stats.reserved, 0);
    assert_eq!(stats.buried, count(State::Buried), "buried messages");
    assert_eq!(stats.acked_total, count(State::Acked), "acks counted");
    assert_eq!(stats.pushed_total, m.next_id - 1);
    assert_eq!(
        count(State::Acked) + count(State::Buried),
        m.msgs.len() as u64
    );
}
