//! Write-path benchmarks of the log: the bars of the performance issue.
//!
//! `cargo bench --bench log` (about 5 minutes). Every store lives in a fresh
//! temporary directory (`tempfile`, under `$TMPDIR`, default `/tmp`), never
//! in the work tree. Compare the figures with `benches/fio-baseline.sh`, run
//! in the same session on the same file system; `docs/benchmarks.md` has the
//! figures, the ratios and the bars.
//!
//! Groups:
//! - `buffered`: `Durability::Buffered`, one thread, 100-byte messages:
//!   single `push`, and `push_batch` of 1,000. The `seg1g` variants use
//!   1 GiB segments so that no segment is sealed (no fsync) while timed:
//!   they isolate what sealing costs.
//! - `sync_push`: `Durability::Sync`, single `push` of 100 bytes from 1, 4, 16
//!   and 64 threads (group commit). Wall time of all threads.
//! - `sync_batch_4k`: `Durability::Sync`, `push_batch` of 256 messages of
//!   4 KiB (1 MiB of payload per commit); throughput in payload bytes. Two
//!   page-cache conditions, matching two fio rows (see below).
//!
//! Stores are replaced (closed and deleted, outside the timed region) once
//! they hold more than a few hundred MiB, so disk use stays bounded (except
//! `sync_batch_4k/batch_256`, which keeps one store of up to ~4 GiB).
//!
//! On the development VM, writing into page cache pages the guest has not
//! used in the last seconds costs a host page fault per page (~0.4 GB/s),
//! while reusing pages just freed runs at several GB/s; replacing stores
//! gives the benches mostly the second case. `docs/benchmarks.md` explains
//! how this moves the figures.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use millpond::{Durability, Options, Queue, Store};
use tempfile::TempDir;

/// Bytes of frame header per message without priority or delay.
const FRAME_OVERHEAD: u64 = 28;

/// A store with one queue in a temporary directory, replaced when it grows
/// past a limit.
struct Fixture {
    options: Options,
    limit: u64,
    written: u64,
    live: Option<(Queue, Store, TempDir)>,
}

impl Fixture {
    fn new(options: Options, limit: u64) -> Fixture {
        let mut f = Fixture {
            options,
            limit,
            written: 0,
            live: None,
        };
        f.open();
        f
    }

    fn open(&mut self) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store"), self.options.clone()).expect("open");
        let queue = store.queue("bench").expect("queue");
        self.live = Some((queue, store, dir));
        self.written = 0;
    }

    /// The queue, after replacing the store if it holds more than the limit
    /// (the close, its fsync and the deletion happen here, untimed).
    fn queue(&mut self) -> Queue {
        if self.written >= self.limit {
            self.close();
            self.open();
        }
        self.live.as_ref().expect("open").0.clone()
    }

    fn add(&mut self, bytes: u64) {
        self.written += bytes;
    }

    fn close(&mut self) {
        if let Some((queue, store, dir)) = self.live.take() {
            drop(queue);
            store.close().expect("close");
            drop(store);
            drop(dir);
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.close();
    }
}

fn buffered(c: &mut Criterion) {
    let mut g = c.benchmark_group("buffered");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    let msg = [0xA5u8; 100];
    let frame = FRAME_OVERHEAD + 100;
    for (name, segment) in [("", 64u64 << 20), ("/seg1g", 1 << 30)] {
        let options = Options::default()
            .durability(Durability::Buffered)
            .segment_bytes_max(segment);

        let mut fx = Fixture::new(options.clone(), 512 << 20);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("push/100B{name}"), |b| {
            b.iter_custom(|iters| {
                let q = fx.queue();
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(q.push(black_box(&msg)).expect("push"));
                }
                let e = t.elapsed();
                fx.add(iters * frame);
                e
            });
        });
        drop(fx);

        let batch = vec![msg; 1000];
        let mut fx = Fixture::new(options, 512 << 20);
        g.throughput(Throughput::Elements(1000));
        g.bench_function(format!("push_batch_1000/100B{name}"), |b| {
            b.iter_custom(|iters| {
                let q = fx.queue();
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(q.push_batch(black_box(&batch)).expect("push_batch"));
                }
                let e = t.elapsed();
                fx.add(iters * 1000 * frame);
                e
            });
        });
    }
    g.finish();
}

/// Pushes `iters` messages from `threads` threads (split evenly) and returns
/// the wall time from the moment all threads are ready until the last push
/// returned.
fn push_from_threads(q: &Queue, threads: u64, iters: u64, msg: &[u8]) -> Duration {
    if threads == 1 {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(q.push(msg).expect("push"));
        }
        return t.elapsed();
    }
    let start = Barrier::new(threads as usize + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let q = q.clone();
                let start = &start;
                let n = iters / threads + u64::from(i < iters % threads);
                s.spawn(move || {
                    start.wait();
                    for _ in 0..n {
                        black_box(q.push(msg).expect("push"));
                    }
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for h in handles {
            h.join().expect("pusher");
        }
        t.elapsed()
    })
}

fn sync_push(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_push");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(1));
    let msg = [0x5Au8; 100];
    for threads in [1u64, 4, 16, 64] {
        let mut fx = Fixture::new(Options::default(), 256 << 20);
        g.bench_with_input(
            BenchmarkId::new("100B/threads", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let q = fx.queue();
                    let e = push_from_threads(&q, threads, iters, &msg);
                    fx.add(iters * (FRAME_OVERHEAD + 100));
                    e
                });
            },
        );
    }
    g.finish();
}

fn sync_batch_4k(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_batch_4k");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(256 * 4096));
    let batch = vec![[0x3Cu8; 4096]; 256];
    // `batch_256`: one store for the whole group, so every write lands in
    // page cache pages the VM has not used recently, like fio's
    // `append1m_fdatasync` on a new file. `batch_256/recycled`: the store is
    // replaced every 512 MiB, so writes mostly reuse pages just freed, like
    // fio's `append1m_fdatasync_recycled` (see benches/fio-baseline.sh).
    for (name, limit) in [("batch_256", u64::MAX), ("batch_256/recycled", 512 << 20)] {
        let mut fx = Fixture::new(Options::default(), limit);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let q = fx.queue();
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(q.push_batch(black_box(&batch)).expect("push_batch"));
                }
                let e = t.elapsed();
                fx.add(iters * 256 * (FRAME_OVERHEAD + 4096));
                e
            });
        });
    }
    g.finish();
}

criterion_group!(benches, buffered, sync_push, sync_batch_4k);
criterion_main!(benches);
