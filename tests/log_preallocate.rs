//! The active segment file is extended with zeros ahead of its frames
//! (`Options::preallocate_bytes`), so an fsync after a small append has no
//! file size to commit. The zeros never reach a reader, a sealed segment
//! or a cleanly closed one, and after a power cut they are kept, not
//! reported as a torn tail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use millpond::fs::{CrashOptions, Fs, MemFs, OpenMode, RealFs, SimFs};
use millpond::log::segment;
use millpond::{Durability, Options, Store};
use millpond_suite::payload;

const N: u64 = 50;

fn msg(id: u64) -> Vec<u8> {
    payload(id, 60 + (id % 40) as usize)
}

fn segments(fs: &dyn Fs, store: &Path) -> Vec<(PathBuf, u64)> {
    let dir = store.join("queues/q");
    let mut names: Vec<String> = fs
        .list_dir(&dir)
        .unwrap()
        .into_iter()
        .filter(|n| segment::parse_file_name(n).is_some())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let p = dir.join(n);
            let len = fs.open(&p, OpenMode::Read).unwrap().len().unwrap();
            (p, len)
        })
        .collect()
}

/// Where the frames of a segment end, by decoding them.
fn frames_end(fs: &dyn Fs, path: &Path) -> u64 {
    let bytes = fs
        .open(path, OpenMode::Read)
        .unwrap()
        .map()
        .unwrap()
        .to_vec();
    let first = segment::parse_file_name(path.file_name().unwrap().to_str().unwrap()).unwrap();
    let s = segment::scan(&bytes, segment::HEADER_LEN, first, None, 4096, 1 << 28);
    s.end
}

fn on_each_fs(body: impl Fn(Arc<dyn Fs>, PathBuf)) {
    let dir = tempfile::tempdir().unwrap();
    body(Arc::new(RealFs), dir.path().join("store"));
    body(Arc::new(MemFs::new()), PathBuf::from("/store"));
}

#[test]
fn active_segment_is_extended_ahead_and_trimmed_on_close() {
    on_each_fs(|fs, path| {
        let options = Options::default().fs(fs.clone()).compact_interval(None);
        let store = Store::open(&path, options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        for id in 1..=N {
            assert_eq!(q.push(msg(id)).unwrap(), id);
        }
        let segs = segments(&*fs, &path);
        assert_eq!(segs.len(), 1);
        let (seg, len) = &segs[0];
        let end = frames_end(&*fs, seg);
        assert!(end > segment::HEADER_LEN);
        // 64 KiB past the first push's end (the first step), cut to
        // whole pages.
        assert!(
            *len == 64 << 10 && *len > end,
            "file {len}, frames end at {end}"
        );
        assert_eq!(q.log_stats().unwrap().bytes_on_disk, *len);
        let ids: Vec<u64> = q.reader(0).map(|m| m.unwrap().id).collect();
        assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "no zeros read");
        drop(q);
        store.close().unwrap();
        assert_eq!(segments(&*fs, &path)[0].1, end, "close cuts the zeros");

        let store = Store::open(&path, options).unwrap();
        let report = store.recovery_report();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.segments_scanned(), 0);
        let q = store.queue("q").unwrap();
        assert_eq!(q.push(msg(N + 1)).unwrap(), N + 1);
        assert_eq!(q.read(N + 1).unwrap().unwrap().payload, msg(N + 1));
    });
}

/// The step doubles with the file, up to `preallocate_bytes`: a busy
/// segment extends once per MiB, a quiet one holds 64 KiB of zeros.
#[test]
fn preallocation_step_grows_with_the_file() {
    on_each_fs(|fs, path| {
        let options = Options::default()
            .fs(fs.clone())
            .compact_interval(None)
            .durability(Durability::Sync);
        let store = Store::open(&path, options).unwrap();
        let q = store.queue("q").unwrap();
        let payload = vec![7u8; 4000];
        let mut lens = Vec::new();
        for _ in 0..1200 {
            q.push(&payload).unwrap();
            let (_, len) = segments(&*fs, &path).remove(0);
            if lens.last() != Some(&len) {
                lens.push(len);
            }
        }
        // About 4.8 MB of frames: 64 KiB, then about twice the file each
        // time, then 1 MiB steps.
        assert_eq!(lens[0], 64 << 10, "{lens:?}");
        for w in lens.windows(2) {
            let grew = w[1] - w[0];
            assert!(grew <= (1 << 20) + 8192, "{lens:?}");
        }
        let (seg, len) = segments(&*fs, &path).remove(0);
        let end = frames_end(&*fs, &seg);
        assert!(len > end && len - end <= 1 << 20, "{len} {end}");
        assert!(lens.len() >= 8, "{lens:?}");
    });
}

#[test]
fn preallocate_zero_appends_only_frames() {
    on_each_fs(|fs, path| {
        let options = Options::default()
            .fs(fs.clone())
            .compact_interval(None)
            .preallocate_bytes(0);
        let store = Store::open(&path, options).unwrap();
        let q = store.queue("q").unwrap();
        for id in 1..=N {
            q.push(msg(id)).unwrap();
        }
        let (seg, len) = segments(&*fs, &path).remove(0);
        assert_eq!(len, frames_end(&*fs, &seg));
    });
}

/// Without an fsync per push there is no size change per push to save:
/// `Interval` and `Buffered` write only frames, and their group journals
/// only records.
#[test]
fn only_sync_preallocates() {
    for durability in [
        Durability::Interval(std::time::Duration::from_millis(5)),
        Durability::Buffered,
    ] {
        on_each_fs(|fs, path| {
            let options = Options::default()
                .fs(fs.clone())
                .compact_interval(None)
                .durability(durability);
            let store = Store::open(&path, options).unwrap();
            let q = store.queue("q").unwrap();
            let g = q.group("g").unwrap();
            for id in 1..=N {
                q.push(msg(id)).unwrap();
            }
            q.flush().unwrap();
            for id in 1..=N {
                let d = g
                    .reserve(std::time::Duration::from_secs(30))
                    .unwrap()
                    .unwrap();
                assert_eq!(d.id, id);
                g.ack(id).unwrap();
            }
            let (seg, len) = segments(&*fs, &path).remove(0);
            assert_eq!(len, frames_end(&*fs, &seg), "{durability:?}");
            // A reserve and an ack record of 24 bytes per message, a
            // header, nothing like the 64 KiB of a first zero step.
            let gdir = path.join("queues/q/groups/g");
            let journals: Vec<String> = fs
                .list_dir(&gdir)
                .unwrap()
                .into_iter()
                .filter(|n| n.starts_with("journal-"))
                .collect();
            assert!(!journals.is_empty());
            for name in journals {
                let len = fs
                    .open(&gdir.join(&name), OpenMode::Read)
                    .unwrap()
                    .len()
                    .unwrap();
                assert!(len <= 64 + 48 * N, "{durability:?}: {name} is {len} bytes");
            }
        });
    }
}

/// A round of 128 KiB or more extends the file with its frames only: the
/// zeros would cost as much device bandwidth as the frames, for one size
/// commit saved. A small round after it preallocates again.
#[test]
fn large_rounds_write_no_zeros_ahead() {
    on_each_fs(|fs, path| {
        let options = Options::default()
            .fs(fs.clone())
            .compact_interval(None)
            .durability(Durability::Sync);
        let store = Store::open(&path, options).unwrap();
        let q = store.queue("q").unwrap();
        let batch: Vec<Vec<u8>> = (0..64).map(|i| payload(i, 4096)).collect();
        for round in 0..3 {
            q.push_batch(&batch).unwrap();
            let (seg, len) = segments(&*fs, &path).remove(0);
            assert_eq!(len, frames_end(&*fs, &seg), "round {round}");
        }
        q.push(msg(1)).unwrap();
        let (seg, len) = segments(&*fs, &path).remove(0);
        let end = frames_end(&*fs, &seg);
        assert!(
            len >= end + (64 << 10) - 4096,
            "file {len}, frames end at {end}"
        );
    });
}

#[test]
fn sealed_segments_end_at_their_last_frame() {
    on_each_fs(|fs, path| {
        let options = Options::default()
            .fs(fs.clone())
            .compact_interval(None)
            .segment_bytes_max(8192)
            .preallocate_bytes(4096);
        let store = Store::open(&path, options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        let n = 500;
        for id in 1..=n {
            q.push(msg(id)).unwrap();
        }
        let segs = segments(&*fs, &path);
        assert!(segs.len() > 5, "{segs:?}");
        for (seg, len) in &segs[..segs.len() - 1] {
            assert_eq!(*len, frames_end(&*fs, seg), "{seg:?}");
            assert!(*len <= 8192, "{seg:?}: {len}");
        }
        let (seg, len) = segs.last().unwrap();
        assert!(*len > frames_end(&*fs, seg), "the active one runs ahead");
        assert!(*len <= 8192, "never past the segment limit: {len}");
        let ids: Vec<u64> = q.reader(0).map(|m| m.unwrap().id).collect();
        assert_eq!(ids, (1..=n).collect::<Vec<_>>());
        drop(q);
        store.close().unwrap();
        let store = Store::open(&path, options).unwrap();
        let q = store.queue("q").unwrap();
        let ids: Vec<u64> = q.reader(0).map(|m| m.unwrap().id).collect();
        assert_eq!(ids, (1..=n).collect::<Vec<_>>());
    });
}

/// A power cut leaves the preallocated zeros after the last durable frame:
/// the open keeps them (no torn tail, nothing truncated), every `Sync`
/// push is there, and the next push goes right after the last frame.
#[test]
fn power_cut_keeps_zero_tail_and_every_synced_push() {
    for seed in 0..20 {
        let sim = SimFs::new(seed);
        let options = Options::default()
            .fs(Arc::new(sim.clone()))
            .compact_interval(None)
            .durability(Durability::Sync);
        let store = Store::open("/store", options.clone()).unwrap();
        let q = store.queue("q").unwrap();
        for id in 1..=N {
            assert_eq!(q.push(msg(id)).unwrap(), id);
        }
        let image = sim.crash_image(CrashOptions::harsh());
        drop(q);
        drop(store);
        let options = options.fs(Arc::new(image.clone()));
        let store = Store::open("/store", options).unwrap();
        let qr = &store.recovery_report().queues[0];
        assert_eq!(qr.torn_tail, None, "seed {seed}: {qr:?}");
        assert!(qr.zero_tail_bytes > 0, "seed {seed}: {qr:?}");
        let q = store.queue("q").unwrap();
        let ids: Vec<u64> = q.reader(0).map(|m| m.unwrap().id).collect();
        assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "seed {seed}");
        assert_eq!(q.push(msg(N + 1)).unwrap(), N + 1);
        assert_eq!(q.read(N + 1).unwrap().unwrap().payload, msg(N + 1));
    }
}
