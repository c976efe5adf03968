//! Consumer-group benchmarks: the reserve + ack cycle, its independence of
//! the queue's depth, and (opt-in) recovery after a crash with millions of
//! messages pending.
//!
//! `cargo bench --bench groups` (about 1.5 minutes). Every store lives in a
//! fresh temporary directory (`tempfile`, under `$TMPDIR`, default `/tmp`)
//! and is deleted afterwards. All benches use the queue's `default` group
//! (every queue has it; a second group would hold back the compactor).
//! `docs/benchmarks.md` has the figures, the ratios and the bars.
//!
//! Groups (criterion):
//! - `cycle`: `Durability::Buffered`, one thread, 100-byte messages:
//!   `reserve(lease)` + `ack(id)` per message, and `reserve_batch(64)` +
//!   `ack_batch` (throughput counts messages). The messages are pushed
//!   (`push_batch`) and flushed outside the timed region.
//! - `sync_cycle`: `Durability::Sync`, 1, 4 and 16 worker threads, each
//!   looping `reserve` + `ack` (an ack returns once its journal record is
//!   fsynced; concurrent acks share fsyncs). Wall time of all workers.
//!
//! Printed figures (no criterion):
//! - `depth`: `Buffered`, `reserve` + `ack` with 10 messages pending versus
//!   10 million, in three stores measured in turns (slices of 10,000
//!   cycles, 12 s), so that the machine's load weighs on all alike. Each
//!   variant pushes 10 messages (untimed) before each timed run of 10
//!   cycles, so the depth stays where it is. `10/unwritten` leaves the 10
//!   new messages in the `Buffered` write buffer, so the first reserve of
//!   each run writes them (a consumer at the tail pays that `pwrite`); `10`
//!   and `10M` force that write outside the timed region.
//!
//! Opt-in (`MILLPOND_BENCH_BIG=1`, or `MILLPOND_BENCH_GROUPS=recovery`):
//! - `recovery`: a child process (this binary, re-executed with
//!   `MILLPOND_BENCH_CHILD=recovery`) pushes 11 M messages under `Sync`,
//!   reserves the first 2 M and acks every other one (1 M acks, out of
//!   order), so 10 M are pending and 1 M reserved; then it is killed with
//!   SIGKILL. The parent times `Store::open` + `queue` + `group`. The same
//!   workload closed cleanly gives the comparison. Writes about 1.5 GB per
//!   run, three runs.
//!
//! `MILLPOND_BENCH_GROUPS=cycle,depth` (any of `cycle`, `sync_cycle`,
//! `depth`, `recovery`) runs only those groups.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use millpond::{DEFAULT_GROUP, Durability, Group, Options, Queue, Store};
use tempfile::TempDir;

/// Bytes of a 100-byte message's frame.
const FRAME: u64 = 128;
const LEASE: Duration = Duration::from_secs(600);
const QUEUE: &str = "bench";
const CHILD_ENV: &str = "MILLPOND_BENCH_CHILD";

/// Whether the group should run (see `MILLPOND_BENCH_GROUPS`); `recovery`
/// also runs with `MILLPOND_BENCH_BIG=1`.
fn wanted(group: &str) -> bool {
    match std::env::var("MILLPOND_BENCH_GROUPS") {
        Ok(v) => v.split(',').any(|g| g.trim() == group),
        Err(_) => {
            group != "recovery" || std::env::var("MILLPOND_BENCH_BIG").is_ok_and(|v| v == "1")
        }
    }
}

/// Pushes `n` 100-byte messages with `push_batch` of up to `batch`.
fn fill(q: &Queue, n: u64, batch: usize) {
    let msgs = vec![[0xA5u8; 100]; batch];
    let mut left = n;
    while left > 0 {
        let k = left.min(batch as u64) as usize;
        q.push_batch(&msgs[..k]).expect("push_batch");
        left -= k as u64;
    }
}

/// A store with one queue and its `default` group in a temporary
/// directory, holding at least as many pending messages as asked for;
/// replaced (untimed) once a few hundred MiB went through it.
struct Fixture {
    options: Options,
    limit: u64,
    written: u64,
    pending: u64,
    live: Option<(Group, Queue, Store, TempDir)>,
}

impl Fixture {
    fn new(options: Options, limit: u64) -> Fixture {
        Fixture {
            options,
            limit,
            written: 0,
            pending: 0,
            live: None,
        }
    }

    fn open(&mut self) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store"), self.options.clone()).expect("open");
        let queue = store.queue(QUEUE).expect("queue");
        let group = queue.group(DEFAULT_GROUP).expect("group");
        self.live = Some((group, queue, store, dir));
        self.written = 0;
        self.pending = 0;
    }

    /// The group, with at least `n` messages pending and written (untimed).
    fn ready(&mut self, n: u64) -> (Group, Queue) {
        if self.live.is_none() || self.written + n * FRAME > self.limit {
            self.close();
            self.open();
        }
        let (g, q, _, _) = self.live.as_ref().expect("open");
        if self.pending < n {
            let more = n - self.pending;
            fill(q, more, 1000);
            q.flush().expect("flush");
            self.pending += more;
            self.written += more * FRAME;
        }
        (g.clone(), q.clone())
    }

    fn consumed(&mut self, n: u64) {
        self.pending -= n;
    }

    fn close(&mut self) {
        if let Some((group, queue, store, dir)) = self.live.take() {
            drop(group);
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

fn cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    let options = Options::default().durability(Durability::Buffered);

    let mut fx = Fixture::new(options.clone(), 512 << 20);
    g.throughput(Throughput::Elements(1));
    g.bench_function("reserve_ack/100B", |b| {
        b.iter_custom(|iters| {
            let (grp, _q) = fx.ready(iters);
            let t = Instant::now();
            for _ in 0..iters {
                let d = grp.reserve(LEASE).expect("reserve").expect("a message");
                grp.ack(d.id).expect("ack");
                black_box(d);
            }
            let e = t.elapsed();
            fx.consumed(iters);
            e
        });
    });
    drop(fx);

    let mut fx = Fixture::new(options, 512 << 20);
    g.throughput(Throughput::Elements(64));
    g.bench_function("reserve_batch_64_ack_batch/100B", |b| {
        b.iter_custom(|iters| {
            let (grp, _q) = fx.ready(iters * 64);
            let mut ids = Vec::with_capacity(64);
            let t = Instant::now();
            for _ in 0..iters {
                let ds = grp.reserve_batch(64, LEASE).expect("reserve_batch");
                debug_assert_eq!(ds.len(), 64);
                ids.clear();
                ids.extend(ds.iter().map(|d| d.id));
                grp.ack_batch(&ids).expect("ack_batch");
                black_box(ds);
            }
            let e = t.elapsed();
            fx.consumed(iters * 64);
            e
        });
    });
    g.finish();
}

/// `iters` reserve + ack cycles from `threads` workers (split evenly); the
/// wall time from the moment all are ready until the last one finished.
fn cycles_from_threads(grp: &Group, threads: u64, iters: u64) -> Duration {
    let work = |grp: &Group, n: u64| {
        for _ in 0..n {
            let d = grp.reserve(LEASE).expect("reserve").expect("a message");
            grp.ack(d.id).expect("ack");
            black_box(d);
        }
    };
    if threads == 1 {
        let t = Instant::now();
        work(grp, iters);
        return t.elapsed();
    }
    let start = Barrier::new(threads as usize + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let grp = grp.clone();
                let start = &start;
                let n = iters / threads + u64::from(i < iters % threads);
                s.spawn(move || {
                    start.wait();
                    work(&grp, n);
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        for h in handles {
            h.join().expect("worker");
        }
        t.elapsed()
    })
}

fn sync_cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync_cycle");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(1));
    for threads in [1u64, 4, 16] {
        let mut fx = Fixture::new(Options::default(), 256 << 20);
        g.bench_with_input(
            BenchmarkId::new("reserve_ack/100B/threads", threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let (grp, _q) = fx.ready(iters);
                    let e = cycles_from_threads(&grp, threads, iters);
                    fx.consumed(iters);
                    e
                });
            },
        );
    }
    g.finish();
}

/// Runs `iters` reserve + ack cycles in runs of 10, pushing 10 messages
/// (untimed) before each run; with `force_write` the new messages are
/// also written to the segment file (untimed) before the run.
fn cycles_in_runs_of_10(grp: &Group, q: &Queue, iters: u64, force_write: bool) -> Duration {
    let msgs = [[0x5Au8; 100]; 10];
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let ids = q.push_batch(&msgs).expect("push_batch");
        if force_write {
            // A read makes Buffered frames visible, which writes them.
            black_box(q.read(ids.end - 1).expect("read"));
        }
        let n = left.min(10);
        let t = Instant::now();
        for _ in 0..n {
            let d = grp.reserve(LEASE).expect("reserve").expect("a message");
            grp.ack(d.id).expect("ack");
            black_box(d);
        }
        timed += t.elapsed();
        left -= n;
    }
    timed
}

/// One variant of the depth comparison: its own store and group.
struct DepthVariant {
    name: &'static str,
    force_write: bool,
    timed: Duration,
    cycles: u64,
    group: Group,
    queue: Queue,
    store: Store,
    _dir: TempDir,
}

/// Reserve + ack at 10 pending versus 10 M pending, interleaved: the
/// variants take turns in slices of 10,000 cycles, so that the load of the
/// machine, which moves over seconds, weighs on all of them alike.
/// Prints each variant's rate, and the median over slices of the ratio of
/// the 10 M rate to the 10 rate. About 20 s (`MILLPOND_BENCH_DEPTH_SECS`,
/// default 12 s measured after 2 s of warm-up), plus the 10 M fill.
fn depth() {
    let secs: u64 = std::env::var("MILLPOND_BENCH_DEPTH_SECS")
        .map_or(12, |v| v.parse().expect("MILLPOND_BENCH_DEPTH_SECS"));
    let options = Options::default().durability(Durability::Buffered);
    let mut variants: Vec<DepthVariant> = [
        ("10", 0u64, true),
        ("10/unwritten", 0, false),
        ("10M", 10_000_000, true),
    ]
    .into_iter()
    .map(|(name, deep, force_write)| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store"), options.clone()).expect("open");
        let queue = store.queue(QUEUE).expect("queue");
        let group = queue.group(DEFAULT_GROUP).expect("group");
        if deep > 0 {
            let t = Instant::now();
            fill(&queue, deep, 1000);
            queue.flush().expect("flush");
            eprintln!(
                "depth/{name}: filled {deep} messages in {:.1?}, {} segments",
                t.elapsed(),
                queue.log_stats().expect("stats").segments
            );
        }
        DepthVariant {
            name,
            force_write,
            timed: Duration::ZERO,
            cycles: 0,
            group,
            queue,
            store,
            _dir: dir,
        }
    })
    .collect();
    const SLICE: u64 = 10_000;
    let warm_up = Duration::from_secs(2);
    let started = Instant::now();
    let mut slice_ratios = Vec::new();
    let mut slice_ratios_unwritten = Vec::new();
    while started.elapsed() < warm_up + Duration::from_secs(secs) {
        let measuring = started.elapsed() >= warm_up;
        let mut times = Vec::with_capacity(variants.len());
        for v in &mut variants {
            let e = cycles_in_runs_of_10(&v.group, &v.queue, SLICE, v.force_write);
            times.push(e.as_secs_f64());
            if measuring {
                v.timed += e;
                v.cycles += SLICE;
            }
        }
        if measuring {
            // Rate of 10 M over rate of 10 = time of 10 over time of 10 M.
            slice_ratios.push(times[0] / times[2]);
            slice_ratios_unwritten.push(times[1] / times[2]);
        }
    }
    for v in &variants {
        let stats = v.group.stats().expect("stats");
        println!(
            "depth/{:<13} {:6.3} M cycles/s ({:.0} ns per reserve + ack) over {} cycles; pending at the end {}",
            v.name,
            v.cycles as f64 / v.timed.as_secs_f64() / 1e6,
            v.timed.as_secs_f64() * 1e9 / v.cycles as f64,
            v.cycles,
            stats.ready + stats.reserved,
        );
    }
    let median = |mut r: Vec<f64>| {
        r.sort_by(f64::total_cmp);
        (r[r.len() / 10], r[r.len() / 2], r[r.len() * 9 / 10])
    };
    let (lo, mid, hi) = median(slice_ratios);
    println!(
        "depth: rate at 10M / rate at 10 = {mid:.3} (median of {} slices; 10th-90th percentile {lo:.3}-{hi:.3})",
        variants[0].cycles / SLICE
    );
    let (lo, mid, hi) = median(slice_ratios_unwritten);
    println!(
        "depth: rate at 10M / rate at 10/unwritten = {mid:.3} (10th-90th percentile {lo:.3}-{hi:.3})"
    );
    for v in variants {
        drop(v.group);
        drop(v.queue);
        v.store.close().expect("close");
    }
}

// ---------------------------------------------------------------------
// Recovery after a crash (opt-in).

/// Messages pushed and reserved by the recovery child (half of the
/// reserved ones are acked). `MILLPOND_BENCH_RECOVERY_SCALE=<divisor>`
/// shrinks both, to try the bench quickly.
fn recovery_sizes() -> (u64, u64) {
    let div: u64 = std::env::var("MILLPOND_BENCH_RECOVERY_SCALE")
        .map_or(1, |v| v.parse().expect("MILLPOND_BENCH_RECOVERY_SCALE"));
    (11_000_000 / div, 2_000_000 / div)
}

/// The child: the workload, then `ready` on stdout; then either waits to be
/// killed (`crash`) or closes the store cleanly (`clean`).
fn recovery_child(path: &Path, mode: &str) -> ExitCode {
    let t = Instant::now();
    let store = Store::open(path, Options::default()).expect("child open");
    let q = store.queue(QUEUE).expect("queue");
    let grp = q.group(DEFAULT_GROUP).expect("group");
    let (pushed, to_reserve) = recovery_sizes();
    fill(&q, pushed, 10_000);
    let filled = t.elapsed();
    let mut ids = Vec::with_capacity(500);
    let mut reserved = 0;
    while reserved < to_reserve {
        let ds = grp.reserve_batch(1000, LEASE).expect("reserve_batch");
        assert_eq!(ds.len(), 1000);
        reserved += ds.len() as u64;
        ids.clear();
        ids.extend(ds.iter().map(|d| d.id).step_by(2));
        grp.ack_batch(&ids).expect("ack_batch");
    }
    let stats = grp.stats().expect("stats");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ready pushed={} ready={} reserved={} acked={} fill={:.1?} total={:.1?}",
        stats.pushed_total,
        stats.ready,
        stats.reserved,
        stats.acked_total,
        filled,
        t.elapsed()
    )
    .expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    if mode == "crash" {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    drop(grp);
    drop(q);
    store.close().expect("close");
    ExitCode::SUCCESS
}

/// Times `Store::open` + `queue` + `group` and prints what recovery found.
fn timed_open(label: &str, path: &Path) -> Store {
    let t = Instant::now();
    let store = Store::open(path, Options::default()).expect("open");
    let q = store.queue(QUEUE).expect("queue");
    let grp = q.group(DEFAULT_GROUP).expect("group");
    let e = t.elapsed();
    let r = store.recovery_report();
    let gr = grp.recovery();
    let stats = grp.stats().expect("stats");
    println!(
        "recovery/{label}: open+queue+group {:.1} ms | store recovery {:.1} ms, \
         segments scanned {}, bytes truncated {} | group recovery {:.1} ms, \
         records replayed {}, leases released {} | ready {} reserved {} acked {}",
        e.as_secs_f64() * 1e3,
        r.duration.as_secs_f64() * 1e3,
        r.segments_scanned(),
        r.bytes_truncated(),
        gr.duration.as_secs_f64() * 1e3,
        gr.records_replayed,
        gr.leases_released,
        stats.ready,
        stats.reserved,
        stats.acked_total,
    );
    store
}

fn recovery() {
    let exe = std::env::current_exe().expect("current exe");
    for (mode, run) in [("crash", 1), ("crash", 2), ("clean", 1)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, "recovery")
            .env("MILLPOND_BENCH_CHILD_PATH", &path)
            .env("MILLPOND_BENCH_CHILD_MODE", mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read child");
        assert!(line.starts_with("ready"), "child said {line:?}");
        println!("recovery/{mode}{run}: child {}", line.trim_end());
        if mode == "crash" {
            child.kill().expect("SIGKILL child");
        }
        let status = child.wait().expect("wait child");
        assert_eq!(mode == "clean", status.success(), "child: {status}");
        let store = timed_open(&format!("{mode}{run}/first_open"), &path);
        store.close().expect("close");
        drop(store);
        for i in 1..=3 {
            let store = timed_open(&format!("{mode}{run}/then_clean_open_{i}"), &path);
            store.close().expect("close");
        }
    }
}

fn main() -> ExitCode {
    if std::env::var(CHILD_ENV).is_ok_and(|v| v == "recovery") {
        let path = std::env::var_os("MILLPOND_BENCH_CHILD_PATH").expect("child path");
        let mode = std::env::var("MILLPOND_BENCH_CHILD_MODE").expect("child mode");
        return recovery_child(Path::new(&path), &mode);
    }
    let mut c = Criterion::default().configure_from_args();
    if wanted("cycle") {
        cycle(&mut c);
    }
    if wanted("sync_cycle") {
        sync_cycle(&mut c);
    }
    c.final_summary();
    if wanted("depth") {
        depth();
    }
    if wanted("recovery") {
        recovery();
    }
    ExitCode::SUCCESS
}
