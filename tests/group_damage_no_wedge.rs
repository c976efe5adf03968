//! Regression for the simulator's `group-wedged-by-damage` (seeds 1157,
//! 1595, 2574): damaged frames, two in a row across a segment boundary and
//! two in a row inside a segment, must not wedge a consumer group. Each
//! group's reserves report the damage, deliver every intact message, and
//! end; a damaged message the group had already tracked is buried once it
//! fails its check, and a kick makes it ready to fail (once) again.
//! Real files: the bits are flipped in the segment files on disk.
//!
//! Without the group cursor moving past what its fresh reader could not
//! read (`peek_fresh` in `group/mod.rs`), every reserve restarted the
//! reader at the cursor and this test sees the two errors at the boundary
//! alternate forever.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use millpond::{Error, Group, Options, RecoveryMode, Store};
use millpond_suite::payload;

const GROUPS: [&str; 3] = ["default", "g1", "g2"];
const COUNT: u64 = 100;
const LEASE: Duration = Duration::from_secs(600);

fn options() -> Options {
    Options::default()
        .segment_bytes_max(4096)
        .index_interval_bytes(256)
        .compact_interval(None)
        .recovery_mode(RecoveryMode::Skip)
}

fn msg(id: u64) -> Vec<u8> {
    payload(id, 100)
}

fn segments(qdir: &Path) -> Vec<(u64, PathBuf)> {
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(qdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| {
            let id = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (id, p)
        })
        .collect();
    segs.sort();
    segs
}

/// Flips one bit in the middle of message `id`'s payload on disk.
fn damage(qdir: &Path, id: u64) -> PathBuf {
    let segs = segments(qdir);
    let (_, path) = segs.iter().rev().find(|(first, _)| *first <= id).unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    let needle = msg(id);
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("payload of {id} in {}", path.display()));
    bytes[at + 50] ^= 0x10;
    std::fs::write(path, &bytes).unwrap();
    path.clone()
}

/// Reserves and acks until the group has nothing ready; returns the
/// delivered ids and the corruption errors. Fails if the group keeps
/// reporting errors without getting anywhere.
fn drain(g: &Group) -> (BTreeSet<u64>, Vec<Error>) {
    let (mut got, mut errors) = (BTreeSet::new(), Vec::new());
    for _ in 0..COUNT * 2 {
        match g.reserve(LEASE) {
            Ok(Some(d)) => {
                assert_eq!(d.payload, msg(d.id), "{}: id {}", g.name(), d.id);
                assert!(got.insert(d.id), "{}: id {} twice", g.name(), d.id);
                g.ack(d.id).unwrap();
            }
            Ok(None) => return (got, errors),
            Err(e) if e.is_corruption() => {
                assert!(
                    errors.len() < 8,
                    "{}: the group is wedged: {errors:?}, then {e}",
                    g.name()
                );
                errors.push(e);
            }
            Err(e) => panic!("{}: reserve: {e}", g.name()),
        }
    }
    panic!("{}: reserve never ran out", g.name());
}

#[test]
fn damaged_frames_across_a_segment_boundary_do_not_wedge_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let qdir = dir.path().join("queues/q");
    let store = Store::open(dir.path(), options()).unwrap();
    let q = store.queue("q").unwrap();
    let groups: Vec<Group> = GROUPS.iter().map(|n| q.group(n).unwrap()).collect();
    for id in 1..=COUNT {
        assert_eq!(q.push(msg(id)).unwrap(), id);
    }
    let segs = segments(&qdir);
    assert!(segs.len() >= 3, "{segs:?}");
    // The last message of the first segment and the first of the second;
    // two in a row inside the second segment.
    let boundary = segs[1].0;
    let damaged: BTreeSet<u64> = [boundary - 1, boundary, boundary + 5, boundary + 6].into();
    // Group g2 tracks the damaged messages first (delivered, nacked), so
    // its reserves read them by id rather than by scanning.
    let all = groups[2].reserve_batch(COUNT as usize, LEASE).unwrap();
    assert_eq!(all.len() as u64, COUNT);
    for d in all {
        if damaged.contains(&d.id) {
            groups[2].nack(d.id, Some(Duration::ZERO)).unwrap();
        } else {
            groups[2].ack(d.id).unwrap();
        }
    }
    drop(groups);
    drop(q);
    store.close().unwrap();
    drop(store);

    let damaged_files: BTreeSet<PathBuf> = damaged.iter().map(|&id| damage(&qdir, id)).collect();
    let store = Store::open(dir.path(), options()).unwrap();
    let q = store.queue("q").unwrap();
    let intact: BTreeSet<u64> = (1..=COUNT).filter(|id| !damaged.contains(id)).collect();
    for name in GROUPS {
        let g = q.group(name).unwrap();
        let (got, errors) = drain(&g);
        let want = if name == "g2" {
            BTreeSet::new()
        } else {
            intact.clone()
        };
        assert_eq!(got, want, "{name}: every intact message, once");
        assert!(!errors.is_empty(), "{name}: the damage is reported");
        for e in &errors {
            let Error::Corruption { path, .. } = e else {
                unreachable!()
            };
            assert!(damaged_files.contains(path), "{name}: {e}");
        }
        if name == "g2" {
            // Tracked: each damaged message is buried when it fails.
            assert_eq!(errors.len(), damaged.len(), "{name}: {errors:?}");
            for round in 0..3 {
                assert_eq!(
                    g.kick(usize::MAX).unwrap(),
                    damaged.len(),
                    "{name}: kick {round}"
                );
                let (got, errors) = drain(&g);
                assert!(got.is_empty(), "{name}: {got:?}");
                assert_eq!(errors.len(), damaged.len(), "{name}: kick {round}");
            }
        } else {
            // Scanned: one report per damaged range (the boundary pair is
            // two ranges, one per segment; the inner pair is one).
            assert!(errors.len() <= 3, "{name}: {errors:?}");
            assert_eq!(g.kick(usize::MAX).unwrap(), 0, "{name}");
        }
        assert!(g.reserve(LEASE).unwrap().is_none(), "{name}: nothing left");
    }
}

/// A batch reserve that meets a damaged message after it reserved others
/// hands those out and reports the damage on the next call. It used to
/// drop the error: the scan had moved past the damaged frame, so no later
/// call met it again, and `millpond reserve -n 5` (which reserves in
/// batches) exited 0 over a damaged message.
#[test]
fn regression_batch_reserve_dropped_the_damage_it_met() {
    let dir = tempfile::tempdir().unwrap();
    let qdir = dir.path().join("queues/q");
    let store = Store::open(dir.path(), options()).unwrap();
    let q = store.queue("q").unwrap();
    for id in 1..=10 {
        assert_eq!(q.push(msg(id)).unwrap(), id);
    }
    drop(q);
    store.close().unwrap();
    drop(store);
    let damaged = damage(&qdir, 3);

    let store = Store::open(dir.path(), options()).unwrap();
    let g = store.queue("q").unwrap().group("default").unwrap();
    let ids = |ds: Vec<millpond::Delivery>| ds.iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(g.reserve_batch(5, LEASE).unwrap()), [1, 2]);
    match g.reserve_batch(5, LEASE) {
        Err(Error::Corruption { path, .. }) => assert_eq!(path, damaged),
        other => panic!("the damage is reported next: {:?}", other.map(ids)),
    }
    assert_eq!(ids(g.reserve_batch(5, LEASE).unwrap()), [4, 5, 6, 7, 8]);
    // Once: a single reserve goes on from there.
    assert_eq!(g.reserve(LEASE).unwrap().map(|d| d.id), Some(9));
}
