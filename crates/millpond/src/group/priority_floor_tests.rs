//! A queue whose messages share one priority, whatever it is, costs a
//! group no memory per message (the log's priority floor), and (priority,
//! id) order holds when other priorities arrive, across segment rolls,
//! reopens, and index files written before the floor was kept.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::fs::{Fs, MemFs, OpenMode};
use crate::{Durability, Group, Options, PushOptions, Queue, Store};

const LEASE: Duration = Duration::from_secs(60);
const COMMON: u32 = 1024;

fn open(fs: &MemFs) -> (Store, Queue, Group) {
    let store = Store::open(
        "/store",
        Options::default()
            .fs(Arc::new(fs.clone()))
            .durability(Durability::Buffered)
            // Small segments: about a hundred messages each.
            .segment_bytes_max(4096)
            .index_interval_bytes(256),
    )
    .unwrap();
    let q = store.queue("q").unwrap();
    let g = q.group("g").unwrap();
    (store, q, g)
}

fn push(q: &Queue, n: usize, priority: u32) -> Vec<u64> {
    (0..n)
        .map(|i| {
            q.push_with(
                format!("m{i}").as_bytes(),
                PushOptions {
                    priority,
                    delay: Duration::ZERO,
                },
            )
            .unwrap()
        })
        .collect()
}

/// Reserves and acks until the queue is empty; returns (id, priority) in
/// delivery order and how many messages the group tracked at each
/// delivery.
fn drain_counting(g: &Group) -> (Vec<(u64, u32)>, Vec<usize>) {
    let mut got = Vec::new();
    let mut tracked = Vec::new();
    while let Some(d) = g.reserve(LEASE).unwrap() {
        tracked.push(g.tracked());
        g.ack(d.id).unwrap();
        got.push((d.id, d.priority));
    }
    (got, tracked)
}

/// As `drain_counting`, with the most messages tracked at once.
fn drain(g: &Group) -> (Vec<(u64, u32)>, usize) {
    let (got, tracked) = drain_counting(g);
    (got, tracked.into_iter().max().unwrap_or(0))
}

#[test]
fn uniform_nonzero_priority_tracks_only_the_message_in_flight() {
    let fs = MemFs::new();
    let (_store, q, g) = open(&fs);
    let ids = push(&q, 1500, COMMON);
    q.flush().unwrap();
    assert!(
        q.log_stats().unwrap().segments > 5,
        "spans several segments"
    );
    let (got, most) = drain(&g);
    assert_eq!(got, ids.iter().map(|&id| (id, COMMON)).collect::<Vec<_>>());
    assert_eq!(most, 1, "only the reserved message is tracked");
    assert_eq!(g.tracked(), 0);
}

#[test]
fn floor_survives_reopen_through_index_files() {
    let fs = MemFs::new();
    let ids = {
        let (store, q, _g) = open(&fs);
        let ids = push(&q, 1200, COMMON);
        store.close().unwrap();
        ids
    };
    let (_store, _q, g) = open(&fs);
    let (got, most) = drain(&g);
    assert_eq!(got.len(), ids.len());
    assert!(got.iter().map(|e| e.0).eq(ids.iter().copied()));
    assert_eq!(
        most, 1,
        "sealed segments' floors come from their index files"
    );
}

#[test]
fn lower_priority_pushed_behind_the_read_ahead_message_goes_first() {
    let fs = MemFs::new();
    let (_store, q, g) = open(&fs);
    let common = push(&q, 100, COMMON);
    // The group reads the next fresh message ahead when it reserves; the
    // urgent push below is still in the user-space buffer (`Buffered`)
    // when the group next reserves, and must count all the same.
    let first = g.reserve(LEASE).unwrap().unwrap();
    assert_eq!(first.id, common[0]);
    g.ack(first.id).unwrap();
    let urgent = push(&q, 1, 5)[0];
    let later = push(&q, 1, COMMON + 1)[0];
    let (got, _) = drain(&g);
    let mut want = vec![(urgent, 5)];
    want.extend(common[1..].iter().map(|&id| (id, COMMON)));
    want.push((later, COMMON + 1));
    assert_eq!(got, want, "(priority, id) order");
    // The urgent message lowered the floor of its segment only: once the
    // group is past that segment, the common priority costs nothing again.
    let more = push(&q, 1000, COMMON);
    let (got, tracked) = drain_counting(&g);
    assert!(got.iter().map(|e| e.0).eq(more.iter().copied()));
    assert_eq!(tracked[500..].iter().max(), Some(&1), "{tracked:?}");
}

#[test]
fn mixed_priorities_come_out_in_priority_then_id_order() {
    let fs = MemFs::new();
    let (_store, q, g) = open(&fs);
    let mut want = Vec::new();
    for (i, p) in [7u32, 3, 7, 9, 3, 0, 7, 7, 1]
        .iter()
        .cycle()
        .take(300)
        .enumerate()
    {
        let id = q
            .push_with(
                format!("{i}").as_bytes(),
                PushOptions {
                    priority: *p,
                    delay: Duration::ZERO,
                },
            )
            .unwrap();
        want.push((id, *p));
    }
    want.sort_by_key(|&(id, p)| (p, id));
    let (got, _) = drain(&g);
    assert_eq!(got, want);
}

/// Rewrites the priority floor of every index file under `dir` to 0, as a
/// file written before the field was kept (it was reserved, zero).
fn zero_floors(fs: &MemFs, dir: &Path) -> usize {
    let mut n = 0;
    for name in fs.list_dir(dir).unwrap() {
        if !name.ends_with(".idx") {
            continue;
        }
        let path = dir.join(&name);
        let f = fs.open(&path, OpenMode::ReadWrite).unwrap();
        let v2 = f.map().unwrap().to_vec();
        assert_eq!(
            &v2[8..12],
            &2u32.to_le_bytes(),
            "{name} is a version 2 index"
        );
        // Rewritten as the version 1 file a build from before the floor
        // was kept would have left: the same header fields with floor 0,
        // one checksum over the header and the entries.
        let mut bytes = v2[..48].to_vec();
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes[40..48].copy_from_slice(&[0; 8]);
        bytes.extend_from_slice(&v2[56..]);
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes[..44]);
        h.update(&bytes[48..]);
        bytes[44..48].copy_from_slice(&h.finalize().to_le_bytes());
        f.set_len(0).unwrap();
        f.write_all_at(&bytes, 0).unwrap();
        n += 1;
    }
    n
}

#[test]
fn index_files_without_a_floor_keep_order_at_the_cost_of_tracking() {
    // The same queue twice: 600 common messages, an urgent one, 600 more;
    // reopened with the index files as written, and as version 1 files
    // without a floor (0: no claim).
    let run = |zeroed: bool| {
        let fs = MemFs::new();
        let (first, urgent, second) = {
            let (store, q, _g) = open(&fs);
            let first = push(&q, 600, COMMON);
            let urgent = push(&q, 1, 2)[0];
            let second = push(&q, 600, COMMON);
            store.close().unwrap();
            (first, urgent, second)
        };
        if zeroed {
            assert!(zero_floors(&fs, Path::new("/store/queues/q")) > 10);
        }
        let (_store, _q, g) = open(&fs);
        let (got, most) = drain(&g);
        let mut want = vec![(urgent, 2)];
        want.extend(first.iter().chain(&second).map(|&id| (id, COMMON)));
        assert_eq!(got, want, "(priority, id) order, zeroed: {zeroed}");
        most
    };
    // With floors, the scan sets aside the common messages ahead of the
    // urgent one (and the rest of its segment), then reads at COMMON.
    let with_floors = run(false);
    assert!(
        (600..700).contains(&with_floors),
        "tracked at most {with_floors}"
    );
    // Without, every segment may hold priority 0: everything is set aside.
    let without = run(true);
    assert!(without > 1150, "no claim: tracked at most {without}");
}

#[test]
fn delayed_message_behind_common_priority_ones_is_found_by_peek_and_kick() {
    let fs = MemFs::new();
    let (_store, q, g) = open(&fs);
    let common = push(&q, 50, COMMON);
    let delayed = q
        .push_with(
            b"later",
            PushOptions {
                priority: COMMON,
                delay: Duration::from_secs(3600),
            },
        )
        .unwrap();
    let peeked = g.peek_delayed().unwrap().expect("the delayed message");
    assert_eq!(
        (peeked.id, peeked.payload.as_slice()),
        (delayed, &b"later"[..])
    );
    assert!(matches!(peeked.state, crate::MessageState::Delayed(_)));
    assert_eq!(g.kick_delayed(10).unwrap(), 1);
    let (got, _) = drain(&g);
    let mut want: Vec<_> = common.iter().map(|&id| (id, COMMON)).collect();
    want.push((delayed, COMMON));
    assert_eq!(got, want);
}

#[test]
fn delayed_message_behind_a_ready_priority_0_one_is_found_by_peek_and_kick() {
    let fs = MemFs::new();
    let (delayed, ready) = {
        let (store, q, g) = open(&fs);
        let ready = push(&q, 3, 0);
        let hour = PushOptions {
            priority: 0,
            delay: Duration::from_secs(3600),
        };
        let later = q.push_with(b"later", hour).unwrap();
        let sooner = q
            .push_with(
                b"sooner",
                PushOptions {
                    delay: Duration::from_secs(60),
                    ..hour
                },
            )
            .unwrap();
        // The group's scan stops at the first ready message; the delayed
        // ones behind it are still found, soonest due first.
        let peeked = g.peek_delayed().unwrap().expect("a delayed message");
        assert_eq!(
            (peeked.id, peeked.payload.as_slice()),
            (sooner, &b"sooner"[..])
        );
        assert!(matches!(peeked.state, crate::MessageState::Delayed(_)));
        assert_eq!(g.kick_delayed(1).unwrap(), 1);
        assert_eq!(g.peek_delayed().unwrap().map(|p| p.id), Some(later));
        store.close().unwrap();
        (vec![sooner, later], ready)
    };
    // After a reopen (the kick's records replayed): the kicked one is
    // ready, the other still delayed.
    let (_store, _q, g) = open(&fs);
    assert_eq!(g.peek_delayed().unwrap().map(|p| p.id), Some(delayed[1]));
    let (got, _) = drain(&g);
    let mut want: Vec<_> = ready.iter().map(|&id| (id, 0)).collect();
    want.push((delayed[0], 0));
    assert_eq!(got, want);
}

#[test]
fn floor_in_a_damaged_index_header_is_not_believed() {
    let fs = MemFs::new();
    let (common, urgent, later) = {
        let (store, q, _g) = open(&fs);
        let common = push(&q, 400, COMMON);
        let urgent = push(&q, 1, 5)[0];
        let later = push(&q, 300, COMMON);
        store.close().unwrap();
        (common, urgent, later)
    };
    // The sealed segment holding the urgent message: its index claims
    // floor 5. Make the header claim COMMON, checksum left as it was.
    let dir = Path::new("/store/queues/q");
    let mut firsts: Vec<u64> = fs
        .list_dir(dir)
        .unwrap()
        .iter()
        .filter_map(|n| n.strip_suffix(".idx")?.parse().ok())
        .collect();
    firsts.sort_unstable();
    let holder = *firsts.iter().rev().find(|&&f| f <= urgent).unwrap();
    assert!(holder > firsts[0] && holder < *firsts.last().unwrap());
    let path = dir.join(format!("{holder:020}.idx"));
    let f = fs.open(&path, OpenMode::ReadWrite).unwrap();
    let mut bytes = f.map().unwrap().to_vec();
    assert_eq!(&bytes[40..44], &5u32.to_le_bytes(), "the floor field");
    bytes[40..44].copy_from_slice(&COMMON.to_le_bytes());
    f.write_all_at(&bytes, 0).unwrap();
    drop(f);

    // Believed, the scan would read the common messages at floor COMMON
    // and meet the urgent one in id order, after 400 of them.
    let (_store, _q, g) = open(&fs);
    let (got, _) = drain(&g);
    let mut want = vec![(urgent, 5)];
    want.extend(common.iter().chain(&later).map(|&id| (id, COMMON)));
    assert_eq!(got, want, "(priority, id) order");
}
