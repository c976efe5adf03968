//! Sizing sealed segments maps none of them: `Queue::log_stats` and a
//! compaction pass that has nothing to delete read file lengths only, so a
//! process that pushes a long backlog (and runs the background compactor)
//! keeps no segment and no index resident. Before, every sealed segment was
//! loaded by the first pass: 256 KiB of index per full segment stayed in
//! the process's RSS (compare (f): 13 MiB with 10 M pending).
//!
//! A group's first reserve after a reopen needs the priority floor of every
//! segment ahead of it: it reads each sealed segment's index header (56
//! bytes, their own checksum) and maps only the segment it reads from.
//! Before, it loaded every sealed segment (its map, and its whole index
//! read and checked): on a long backlog, a read of every index file.
//!
//! And an index is checked from a copy, not through its map; one longer
//! than any index of its segment could be is not read, but rebuilt.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use millpond::fs::{Fs, MemFs, OpenMode};
use millpond::{DEFAULT_GROUP, Group, Options, Queue, Store};
use millpond_suite::hook_fs::{HookFs, Hooks};
use millpond_suite::payload;

/// A [`MemFs`] that records the path of every file mapped.
#[derive(Debug, Clone)]
struct MapLog {
    fs: HookFs,
    mapped: Arc<Mutex<Vec<PathBuf>>>,
}

impl MapLog {
    fn new() -> MapLog {
        let mapped: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let log = mapped.clone();
        let hooks = Hooks {
            map: Some(Arc::new(move |path: &Path| {
                log.lock().unwrap().push(path.to_owned());
                Ok(())
            })),
            ..Hooks::default()
        };
        MapLog {
            fs: HookFs::new(Arc::new(MemFs::new()), hooks),
            mapped,
        }
    }

    fn list_dir(&self, path: &Path) -> Vec<String> {
        self.fs.list_dir(path).unwrap()
    }
}

const N: u64 = 400;

fn setup() -> (MapLog, Options) {
    let fs = MapLog::new();
    let opts = Options::default()
        .fs(Arc::new(fs.fs.clone()))
        .compact_interval(None)
        .segment_bytes_max(4096);
    let store = Store::open("/s", opts.clone()).unwrap();
    let q = store.queue("q").unwrap();
    for i in 0..N {
        assert_eq!(q.push(payload(i, 100)).unwrap(), i + 1);
    }
    drop(q);
    store.close().unwrap();
    (fs, opts)
}

fn segment_files(fs: &MapLog) -> Vec<(String, u64)> {
    let dir = Path::new("/s/queues/q");
    let mut out: Vec<(String, u64)> = fs
        .list_dir(dir)
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .map(|n| {
            let len = fs
                .fs
                .open(&dir.join(&n), OpenMode::Read)
                .unwrap()
                .len()
                .unwrap();
            (n, len)
        })
        .collect();
    out.sort();
    out
}

/// The store of [`setup`] reopened, with its segment files, a queue
/// handle and the default group, and the log of maps emptied.
fn reopened() -> (MapLog, Vec<(String, u64)>, Store, Queue, Group) {
    let (fs, opts) = setup();
    let files = segment_files(&fs);
    assert!(files.len() > 8, "{files:?}");
    let store = Store::open("/s", opts).unwrap();
    let q = store.queue("q").unwrap();
    let g = q.group(DEFAULT_GROUP).unwrap();
    fs.mapped.lock().unwrap().clear();
    (fs, files, store, q, g)
}

#[test]
fn sizing_and_an_idle_pass_map_no_sealed_segment() {
    let (fs, files, store, q, g) = reopened();

    let stats = q.log_stats().unwrap();
    assert_eq!(stats.segments, files.len());
    assert_eq!(
        stats.bytes_on_disk,
        files.iter().map(|(_, len)| len).sum::<u64>()
    );
    // Nothing read yet: nothing below the group's cursor to delete.
    let r = store.compact_now().unwrap();
    assert_eq!((r.segments_deleted, r.segments_rewritten), (0, 0), "{r:?}");
    assert_eq!(r.bytes_on_disk, stats.bytes_on_disk);
    let mapped = fs.mapped.lock().unwrap().clone();
    assert!(mapped.is_empty(), "mapped: {mapped:?}");

    // Reading still works, from the first segment on.
    let d = g.reserve(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!((d.id, d.payload), (1, payload(0, 100)));
    let ids: Vec<u64> = q.reader(1).map(|m| m.unwrap().id).collect();
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
}

#[test]
fn index_longer_than_its_segment_allows_is_rebuilt_unread() {
    let (fs, opts) = setup();
    let (first, len) = segment_files(&fs).remove(1);
    let idx = Path::new("/s/queues/q").join(first.replace(".seg", ".idx"));
    // Far more entries than a segment of `len` bytes has frames.
    let f = fs.fs.open(&idx, OpenMode::ReadWrite).unwrap();
    f.set_len(len * 64).unwrap();
    drop(f);
    let store = Store::open("/s", opts).unwrap();
    let q = store.queue("q").unwrap();
    let ids: Vec<u64> = q.reader(1).map(|m| m.unwrap().id).collect();
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
    let mapped = fs.mapped.lock().unwrap().clone();
    assert!(!mapped.contains(&idx), "the oversized index was mapped");
    // Rebuilt and saved: the file is an index of its segment again.
    let rebuilt = fs.fs.open(&idx, OpenMode::Read).unwrap().len().unwrap();
    assert!(rebuilt < len, "index is {rebuilt} bytes, segment {len}");
}

#[test]
fn first_reserve_after_reopen_maps_only_the_segment_it_reads() {
    let (fs, files, _store, _q, g) = reopened();

    let d = g.reserve(Duration::from_secs(30)).unwrap().unwrap();
    assert_eq!((d.id, d.payload), (1, payload(0, 100)));
    let dir = Path::new("/s/queues/q");
    let first = &files[0].0;
    let mut mapped = fs.mapped.lock().unwrap().clone();
    mapped.sort();
    mapped.dedup();
    assert_eq!(
        mapped,
        vec![dir.join(first.replace(".seg", ".idx")), dir.join(first)],
        "only the first segment and its index are mapped"
    );
    // The rest are read in order as the group goes on.
    let mut ids = vec![d.id];
    g.ack(d.id).unwrap();
    while let Some(d) = g.reserve(Duration::from_secs(30)).unwrap() {
        ids.push(d.id);
        g.ack(d.id).unwrap();
    }
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
}
