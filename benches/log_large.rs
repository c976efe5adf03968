//! Benchmarks over large queues: sequential read of a 1 GiB queue from the
//! page cache, and opening a queue after a clean shutdown at 256 MiB and at
//! 4 GiB.
//!
//! `cargo bench --bench log_large` (a few minutes). Writes about 6 GiB in
//! total, at most about 4.3 GiB at once, in temporary directories (under
//! `$TMPDIR`, default `/tmp`) that are deleted when each group ends.
//!
//! Groups:
//! - `read_1GiB`: a queue whose frames fill 1 GiB, read front to back with
//!   `Queue::reader(first)` from a warm page cache, 100-byte and 4 KiB
//!   messages. Throughput is payload bytes; every message is returned as an
//!   owned `Message` (one allocation and copy of the payload each).
//! - `open_clean`: `Store::open` of a store holding one queue of 256 MiB
//!   (4 segments) or 4 GiB (64 segments) of 4 KiB messages, after a clean
//!   close. `open_read_first` adds `store.queue(..)` and reading the oldest
//!   message (the first segment's map and index are loaded lazily).
//!
//! Filling the queues takes most of the run; a criterion filter does not
//! skip it. To run one group alone (e.g. under `perf`), set
//! `MILLPOND_BENCH_GROUPS=read_1GiB` or `=open_clean`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use millpond::{Durability, Options, Store};

const FRAME_OVERHEAD: u64 = 28;
const QUEUE: &str = "bench";

/// Fills a new store at `path` with messages of `msg_len` bytes until their
/// frames take `frame_bytes`; closes it cleanly. Returns the message count.
fn fill(path: &Path, msg_len: usize, frame_bytes: u64) -> u64 {
    let count = frame_bytes.div_ceil(FRAME_OVERHEAD + msg_len as u64);
    let store = Store::open(path, Options::default().durability(Durability::Buffered))
        .expect("open for fill");
    let q = store.queue(QUEUE).expect("queue");
    let per_batch = ((1usize << 20) / msg_len).max(1);
    let payload = vec![0x6Bu8; msg_len];
    let batch: Vec<&[u8]> = vec![payload.as_slice(); per_batch];
    let mut left = count;
    while left > 0 {
        let n = left.min(per_batch as u64) as usize;
        q.push_batch(&batch[..n]).expect("push_batch");
        left -= n as u64;
    }
    store.close().expect("close after fill");
    count
}

/// Whether the group should run (see `MILLPOND_BENCH_GROUPS`).
fn wanted(group: &str) -> bool {
    std::env::var("MILLPOND_BENCH_GROUPS").map_or(true, |v| v.split(',').any(|g| g.trim() == group))
}

fn read_1gib(c: &mut Criterion) {
    if !wanted("read_1GiB") {
        return;
    }
    let mut g = c.benchmark_group("read_1GiB");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for msg_len in [100usize, 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let count = fill(&path, msg_len, 1 << 30);
        let store = Store::open(&path, Options::default()).expect("reopen");
        let q = store.queue(QUEUE).expect("queue");
        let stats = q.log_stats().expect("stats");
        let first = stats.first_id;
        eprintln!(
            "read_1GiB/{msg_len}B: {count} messages, {} segments, {} bytes on disk",
            stats.segments, stats.bytes_on_disk
        );
        // Warm the page cache (the fill just wrote it, but make sure).
        let mut warm = 0u64;
        for m in q.reader(first) {
            m.expect("read");
            warm += 1;
        }
        assert_eq!(warm, count);
        g.throughput(Throughput::Bytes(count * msg_len as u64));
        g.bench_with_input(
            BenchmarkId::new("reader", format!("{msg_len}B")),
            &msg_len,
            |b, _| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    for _ in 0..iters {
                        let mut n = 0u64;
                        let mut bytes = 0usize;
                        for m in q.reader(first) {
                            let m = m.expect("read");
                            bytes += m.payload.len();
                            n += 1;
                            black_box(&m);
                        }
                        assert_eq!(n, count);
                        black_box(bytes);
                    }
                    t.elapsed()
                });
            },
        );
        drop(q);
        store.close().expect("close");
    }
    g.finish();
}

fn open_clean(c: &mut Criterion) {
    if !wanted("open_clean") {
        return;
    }
    let mut g = c.benchmark_group("open_clean");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes: [(&str, u64); 2] = [("256MiB", 256 << 20), ("4GiB", 4 << 30)];
    let stores: Vec<(&str, PathBuf)> = sizes
        .iter()
        .map(|&(name, bytes)| {
            let path = dir.path().join(name);
            let t = Instant::now();
            let count = fill(&path, 4096, bytes);
            eprintln!(
                "open_clean/{name}: filled {count} messages in {:?}",
                t.elapsed()
            );
            (name, path)
        })
        .collect();
    for (name, path) in &stores {
        {
            let s = Store::open(path, Options::default()).expect("open");
            let q = s.queue(QUEUE).expect("queue");
            let stats = q.log_stats().expect("stats");
            eprintln!(
                "open_clean/{name}: {} segments, {} bytes, recovery {:?}, scanned {}",
                stats.segments,
                stats.bytes_on_disk,
                s.recovery_report().duration,
                s.recovery_report().segments_scanned()
            );
            s.close().expect("close");
        }
        g.bench_function(BenchmarkId::new("open", name), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let s = Store::open(path, Options::default()).expect("open");
                    timed += t.elapsed();
                    assert_eq!(s.recovery_report().segments_scanned(), 0);
                    // Closing (it rewrites the active index) is not timed.
                    s.close().expect("close");
                }
                timed
            });
        });
        g.bench_function(BenchmarkId::new("open_read_first", name), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let s = Store::open(path, Options::default()).expect("open");
                    let q = s.queue(QUEUE).expect("queue");
                    let m = q.read(1).expect("read").expect("first message");
                    timed += t.elapsed();
                    black_box(m);
                    drop(q);
                    s.close().expect("close");
                }
                timed
            });
        });
    }
    g.finish();
}

criterion_group!(benches, read_1gib, open_clean);
criterion_main!(benches);
