//! Guarantee 8, stragglers: a few unacked messages cannot pin whole
//! segments; their frames are copied forward, with their ids.
//!
//! Every segment of the queue holds exactly one straggler, somewhere in its
//! middle; every other message is acked. Three kinds of straggler, one test
//! each: reserved and never acked (in flight), pushed with a delay, buried.
//! After `Store::compact_now`:
//!
//! - every sealed segment was rewritten (and none deleted), to exactly its
//!   header plus the straggler's frame, so the bytes on disk are the live
//!   bytes plus the active segment plus one header per segment;
//! - a second pass rewrites nothing;
//! - every straggler reads back with its id and payload, every acked
//!   message of a sealed segment reads as `None`;
//! - every straggler is delivered again (lease expired, delay due, kicked)
//!   with its id and payload, and nothing else is;
//! - once they are acked, a pass deletes every sealed segment, and the
//!   active one too (it is finished and over a quarter of a segment).
//!
//! Each test runs twice on each file system: delivering the stragglers
//! before a reopen (they come back after it as released leases), and
//! reopening first (their state, and the gaps in the rewritten segments,
//! survive it). After the last reopen the next push continues the ids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::OpenMode;
use millpond::{Group, ManualClock, Options, PushOptions, Queue, Store};
use millpond_suite::{on_each_fs, payload};

const SEGMENT: u64 = 4096;
const SEGMENT_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 28;
/// Bytes a not-before time adds to a frame.
const NOT_BEFORE: u64 = 8;
const SEALED: usize = 8;
const LEASE: Duration = Duration::from_secs(30);
const DELAY: Duration = Duration::from_secs(3600);
const QUEUE: &str = "q";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InFlight,
    Delayed,
    Buried,
}

fn queue_dir(store: &Store) -> PathBuf {
    store.path().join("queues").join(QUEUE)
}

/// First ids of the segment files, sorted, and each file's size.
fn segments(store: &Store) -> Vec<(u64, u64)> {
    let dir = queue_dir(store);
    let names = store.fs().list_dir(&dir).unwrap();
    names
        .iter()
        .filter_map(|n| {
            let first: u64 = n.strip_suffix(".seg")?.parse().ok()?;
            let len = store
                .fs()
                .open(&dir.join(n), OpenMode::Read)
                .unwrap()
                .len()
                .unwrap();
            Some((first, len))
        })
        .collect()
}

struct Pushed {
    /// Straggler id → payload.
    stragglers: BTreeMap<u64, Vec<u8>>,
    /// Every other id, acked.
    acked: Vec<u64>,
    /// The first id of the active segment.
    active_first: u64,
    /// Its length in bytes when the stragglers were set up.
    active_bytes: u64,
}

impl Pushed {
    fn frame_bytes(&self, kind: Kind, id: u64) -> u64 {
        let extra = if kind == Kind::Delayed { NOT_BEFORE } else { 0 };
        FRAME_HEADER + extra + self.stragglers[&id].len() as u64
    }
}

fn open(path: &Path, options: &Options) -> (Store, Queue, Group) {
    let store = Store::open(path, options.clone()).unwrap();
    let q = store.queue(QUEUE).unwrap();
    let g = q.group("default").unwrap();
    (store, q, g)
}

/// Pushes until `SEALED` segments are sealed, one straggler in each
/// segment (its 11th message), and consumes everything else.
fn fill(store: &Store, q: &Queue, g: &Group, kind: Kind) -> Pushed {
    let mut stragglers = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let segs = segments(store);
        let active = segs.last().unwrap().0;
        let has_straggler = stragglers.range(active..).next().is_some();
        if segs.len() > SEALED && has_straggler {
            break;
        }
        let p = payload(seq, 60 + (seq * 13 % 90) as usize);
        seq += 1;
        if !has_straggler && q.next_id() - active >= 10 {
            let id = if kind == Kind::Delayed {
                q.push_with(
                    &p,
                    PushOptions {
                        priority: 0,
                        delay: DELAY,
                    },
                )
                .unwrap()
            } else {
                q.push(&p).unwrap()
            };
            stragglers.insert(id, p);
        } else {
            q.push(&p).unwrap();
        }
    }
    let mut acked = Vec::new();
    while let Some(d) = g.reserve(LEASE).unwrap() {
        match stragglers.get(&d.id) {
            Some(p) => {
                assert_eq!(&d.payload, p);
                match kind {
                    Kind::InFlight => {}
                    Kind::Buried => g.bury(d.id).unwrap(),
                    Kind::Delayed => panic!("delayed id {} delivered early", d.id),
                }
            }
            None => {
                g.ack(d.id).unwrap();
                acked.push(d.id);
            }
        }
    }
    let segs = segments(store);
    assert_eq!(segs.len(), SEALED + 1);
    // Precondition: one straggler in every segment, not at its edges.
    for (i, &(first, _)) in segs.iter().enumerate() {
        let end = segs.get(i + 1).map_or(u64::MAX, |s| s.0);
        let inside: Vec<u64> = stragglers.range(first..end).map(|(id, _)| *id).collect();
        assert_eq!(
            inside.len(),
            1,
            "segment {first}..{end} holds stragglers {inside:?}"
        );
        assert!(
            inside[0] > first && inside[0] + 1 < end,
            "{inside:?} in {first}..{end}"
        );
    }
    Pushed {
        stragglers,
        acked,
        active_first: segs.last().unwrap().0,
        active_bytes: segs.last().unwrap().1,
    }
}

/// The stragglers and acked messages read back as they should, and the
/// segment files are as small as copy-forward makes them.
fn check_compacted(store: &Store, q: &Queue, kind: Kind, pushed: &Pushed) {
    let segs = segments(store);
    assert_eq!(segs.len(), SEALED + 1, "{segs:?}");
    let mut live = 0;
    for (i, &(first, len)) in segs.iter().enumerate() {
        let end = segs.get(i + 1).map_or(u64::MAX, |s| s.0);
        let (&id, _) = pushed.stragglers.range(first..end).next().unwrap();
        live += pushed.frame_bytes(kind, id);
        if i < SEALED {
            assert_eq!(
                len,
                SEGMENT_HEADER + pushed.frame_bytes(kind, id),
                "segment {first} holds more than straggler {id}"
            );
        }
    }
    let stats = q.log_stats().unwrap();
    assert_eq!(stats.first_id, 1);
    assert!(
        stats.bytes_on_disk <= live + SEGMENT + segs.len() as u64 * SEGMENT_HEADER,
        "{} bytes on disk, {live} live; {segs:?}",
        stats.bytes_on_disk
    );
    for (&id, p) in &pushed.stragglers {
        let m = q
            .read(id)
            .unwrap()
            .unwrap_or_else(|| panic!("straggler {id} lost"));
        assert_eq!((m.id, &m.payload), (id, p));
        let expect_nb = kind == Kind::Delayed;
        assert_eq!(m.not_before_ms != 0, expect_nb, "id {id}");
    }
    for &id in pushed.acked.iter().filter(|&&id| id < pushed.active_first) {
        assert_eq!(q.read(id).unwrap(), None, "acked id {id} still reads");
    }
    // A reader walks over the gaps.
    let ids: Vec<u64> = q
        .reader(1)
        .map(|m| m.unwrap().id)
        .take_while(|&id| id < pushed.active_first)
        .collect();
    let want: Vec<u64> = pushed
        .stragglers
        .keys()
        .copied()
        .filter(|&id| id < pushed.active_first)
        .collect();
    assert_eq!(ids, want);
}

/// Delivers the stragglers: nothing before `action`, all of them (and
/// nothing else) after it. Leaves them reserved. Returns the attempts.
fn deliver(g: &Group, pushed: &Pushed, action: impl FnOnce()) -> Vec<u32> {
    assert_eq!(g.reserve(LEASE).unwrap(), None, "delivered before its time");
    action();
    let mut got = BTreeMap::new();
    while let Some(d) = g.reserve(LEASE).unwrap() {
        assert!(
            got.insert(d.id, (d.payload, d.attempt)).is_none(),
            "id {} twice",
            d.id
        );
    }
    let ids: Vec<u64> = got.keys().copied().collect();
    let want: Vec<u64> = pushed.stragglers.keys().copied().collect();
    assert_eq!(ids, want, "delivered ids");
    for (id, (p, _)) in &got {
        assert_eq!(p, &pushed.stragglers[id], "payload of {id}");
    }
    got.into_values().map(|(_, a)| a).collect()
}

/// What makes a straggler of `kind` deliverable in a store that was not
/// reopened since it became one.
fn unblock(kind: Kind, g: &Group, clock: &ManualClock, n: usize) {
    match kind {
        Kind::InFlight => clock.advance(LEASE.as_millis() as u64 + 1),
        Kind::Delayed => clock.advance(DELAY.as_millis() as u64 + 1),
        Kind::Buried => assert_eq!(g.kick(usize::MAX).unwrap(), n),
    }
}

/// The attempt number of a straggler's delivery after it was unblocked:
/// a kick resets the count, a delayed message was never delivered.
fn first_redelivery_attempt(kind: Kind) -> u32 {
    match kind {
        Kind::InFlight => 2,
        Kind::Delayed | Kind::Buried => 1,
    }
}

fn ack_all_and_compact(store: &Store, q: &Queue, g: &Group, pushed: &Pushed) {
    for &id in pushed.stragglers.keys() {
        g.ack(id).unwrap();
    }
    let r = store.compact_now().unwrap();
    // The active segment is finished too and holds more than a quarter of a
    // segment: the pass rolls it and deletes it with the sealed ones.
    assert!(
        pushed.active_bytes >= SEGMENT / 4,
        "active segment of {} bytes",
        pushed.active_bytes
    );
    assert_eq!(r.segments_deleted, SEALED as u64 + 1, "{r:?}");
    let stats = q.log_stats().unwrap();
    assert_eq!((stats.segments, stats.first_id), (1, q.next_id()));
    assert_eq!(stats.bytes_on_disk, SEGMENT_HEADER);
}

fn scenario(kind: Kind, reopen_first: bool, path: &Path, options: Options) {
    let clock = ManualClock::new(1_700_000_000_000);
    let options = options
        .segment_bytes_max(SEGMENT)
        .index_interval_bytes(256)
        .compact_interval(None)
        .clock(Arc::new(clock.clone()));
    let (store, q, g) = open(path, &options);
    let pushed = fill(&store, &q, &g, kind);
    let n = pushed.stragglers.len();

    let r = store.compact_now().unwrap();
    assert_eq!(
        (r.segments_rewritten, r.segments_deleted, r.segments_dropped),
        (SEALED as u64, 0, 0),
        "{r:?}"
    );
    assert_eq!(q.compact_stats().segments_rewritten, SEALED as u64);
    assert!(
        r.bytes_reclaimed >= SEALED as u64 * (SEGMENT - 512),
        "{r:?}"
    );
    check_compacted(&store, &q, kind, &pushed);
    let again = store.compact_now().unwrap();
    assert_eq!(
        (again.segments_rewritten, again.segments_deleted),
        (0, 0),
        "{again:?}"
    );
    let next_id = q.next_id();

    if reopen_first {
        drop((g, q));
        store.close().unwrap();
        drop(store);
        let (store, q, g) = open(path, &options);
        for qr in &store.recovery_report().queues {
            assert!(qr.leftovers_removed.is_empty(), "{qr:?}");
            assert!(qr.damaged.is_empty(), "{qr:?}");
        }
        assert_eq!(q.next_id(), next_id);
        check_compacted(&store, &q, kind, &pushed);
        let attempts = match kind {
            // A clean close keeps the leases; they come back once expired.
            Kind::InFlight => {
                assert!(
                    g.reserve(LEASE).unwrap().is_none(),
                    "leases survive a clean close"
                );
                clock.advance(u64::try_from(LEASE.as_millis()).unwrap() + 1);
                let mut got = BTreeMap::new();
                while let Some(d) = g.reserve(LEASE).unwrap() {
                    assert_eq!(d.payload, pushed.stragglers[&d.id]);
                    got.insert(d.id, d.attempt);
                }
                assert_eq!(got.keys().copied().collect::<Vec<_>>(), {
                    pushed.stragglers.keys().copied().collect::<Vec<_>>()
                });
                got.into_values().collect()
            }
            _ => deliver(&g, &pushed, || unblock(kind, &g, &clock, n)),
        };
        let want = first_redelivery_attempt(kind);
        assert!(attempts.iter().all(|&a| a == want), "{attempts:?}");
        ack_all_and_compact(&store, &q, &g, &pushed);
        drop((g, q));
        store.close().unwrap();
    } else {
        let attempts = deliver(&g, &pushed, || unblock(kind, &g, &clock, n));
        let want = first_redelivery_attempt(kind);
        assert!(attempts.iter().all(|&a| a == want), "{attempts:?}");
        drop((g, q));
        store.close().unwrap();
        drop(store);
        // Delivered, not acked, closed cleanly: the leases still run after
        // reopening, and once they expire the messages come back.
        let (store, q, g) = open(path, &options);
        assert_eq!(q.next_id(), next_id);
        check_compacted(&store, &q, kind, &pushed);
        assert!(
            g.reserve(LEASE).unwrap().is_none(),
            "leases survive a clean close"
        );
        clock.advance(u64::try_from(LEASE.as_millis()).unwrap() + 1);
        let mut got = Vec::new();
        while let Some(d) = g.reserve(LEASE).unwrap() {
            assert_eq!(d.payload, pushed.stragglers[&d.id]);
            assert_eq!(d.attempt, want + 1, "id {}", d.id);
            got.push(d.id);
        }
        assert_eq!(got, pushed.stragglers.keys().copied().collect::<Vec<_>>());
        ack_all_and_compact(&store, &q, &g, &pushed);
        drop((g, q));
        store.close().unwrap();
    }

    // The ids go on where they were.
    let (store, q, g) = open(path, &options);
    assert_eq!(q.next_id(), next_id);
    assert_eq!(q.push(b"after").unwrap(), next_id);
    let d = g.reserve(LEASE).unwrap().unwrap();
    assert_eq!((d.id, d.payload.as_slice()), (next_id, &b"after"[..]));
    assert_eq!(g.reserve(LEASE).unwrap(), None);
    drop((g, q));
    store.close().unwrap();
}

fn run(kind: Kind) {
    for reopen_first in [false, true] {
        on_each_fs(|place| scenario(kind, reopen_first, &place.path, place.options.clone()));
    }
}

#[test]
fn in_flight_stragglers_are_copied_forward() {
    run(Kind::InFlight);
}

#[test]
fn delayed_stragglers_are_copied_forward() {
    run(Kind::Delayed);
}

#[test]
fn buried_stragglers_are_copied_forward() {
    run(Kind::Buried);
}

/// Regression (guarantee 8): one straggler whose frame fails its checksum
/// (bit rot in a sealed segment) makes every compaction pass fail at that
/// segment, so nothing after it is reclaimed: not the fully acked segments
/// of the same queue, and not those of any queue whose name sorts after
/// it. `compact_queue` runs its plan in order and returns at the first
/// error (`log.read` of the live id, in the live-bytes measure and in
/// `Log::rewrite_segment`), and `StoreInner::compact_all` ends the pass at
/// the first queue that fails; the background compactor retries the same
/// failing pass forever.
///
/// Expected: the damaged segment is kept (its damage still reported on
/// read, never silently dropped by a rewrite), everything else is
/// reclaimed.
#[test]
fn regression_damaged_straggler_blocks_compaction_of_every_queue() {
    use millpond::fs::SimFs;
    let sim = SimFs::new(1);
    let options = Options::default()
        .fs(Arc::new(sim.clone()))
        .segment_bytes_max(SEGMENT)
        .compact_interval(None);
    let path = Path::new("/store");
    let store = Store::open(path, options.clone()).unwrap();
    for name in ["a", "b"] {
        let q = store.queue(name).unwrap();
        while q.log_stats().unwrap().segments < 4 {
            q.push([7u8; 100]).unwrap();
        }
        let g = q.group("default").unwrap();
        while let Some(d) = g.reserve(LEASE).unwrap() {
            // In "a", id 5 of the first segment stays in flight.
            if (name, d.id) != ("a", 5) {
                g.ack(d.id).unwrap();
            }
        }
    }
    store.close().unwrap();
    drop(store);
    // Id 5 is the fifth 128-byte frame after the 32-byte segment header:
    // flip a bit of its payload.
    let seg = Path::new("/store/queues/a/00000000000000000001.seg");
    sim.flip_bit(seg, SEGMENT_HEADER + 4 * 128 + 60, 3).unwrap();

    let store = Store::open(path, options).unwrap();
    let a = store.queue("a").unwrap();
    let b = store.queue("b").unwrap();
    assert!(a.read(5).unwrap_err().to_string().contains("checksum"));
    let pass = store.compact_now();
    let (sa, sb) = (a.log_stats().unwrap(), b.log_stats().unwrap());
    assert_eq!(
        sb.segments, 1,
        "queue b, fully acked, kept its sealed segments: {sb:?}; pass {pass:?}"
    );
    assert_eq!(
        sa.segments, 2,
        "queue a kept fully acked segments: {sa:?}; pass {pass:?}"
    );
    assert!(a.read(5).is_err(), "the damage was dropped silently");
}

/// Regression (guarantees 2 and 4), found alongside the one above: a
/// tracked message (here a straggler whose lease was released by a
/// reopen) whose frame fails its checksum wedges its group. Every
/// `reserve` returns the same `Error::Corruption` again
/// (`GroupInner::reserve_locked` returns the error of `log.read` for the
/// best tracked ready id without moving past it), so the valid messages
/// after it are never delivered, although `Group::reserve` documents that
/// "the next call continues after them".
#[test]
fn regression_damaged_tracked_message_wedges_its_group() {
    use millpond::fs::SimFs;
    let sim = SimFs::new(1);
    let options = Options::default()
        .fs(Arc::new(sim.clone()))
        .compact_interval(None);
    let path = Path::new("/store");
    let store = Store::open(path, options.clone()).unwrap();
    let q = store.queue("a").unwrap();
    for _ in 0..10 {
        q.push([7u8; 100]).unwrap();
    }
    let g = q.group("default").unwrap();
    assert_eq!(g.reserve(LEASE).unwrap().unwrap().id, 1);
    drop((g, q));
    store.close().unwrap();
    drop(store);
    let seg = Path::new("/store/queues/a/00000000000000000001.seg");
    sim.flip_bit(seg, SEGMENT_HEADER + 60, 3).unwrap();

    let store = Store::open(path, options).unwrap();
    let g = store.queue("a").unwrap().group("default").unwrap();
    let (mut delivered, mut errors) = (Vec::new(), 0);
    for _ in 0..30 {
        match g.reserve(LEASE) {
            Ok(Some(d)) => delivered.push(d.id),
            Ok(None) => break,
            Err(e) => {
                assert!(e.to_string().contains("checksum"), "{e}");
                errors += 1;
            }
        }
    }
    assert!(errors >= 1, "the damage was not reported");
    assert_eq!(
        delivered,
        (2..=10).collect::<Vec<u64>>(),
        "{errors} reserves failed"
    );
}
