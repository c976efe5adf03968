//! Compactor benchmarks: copy-forward throughput, and the latency of `Sync`
//! pushes while the compactor is busy. Prints figures, no criterion
//! (`harness = false`): a copy-forward pass consumes its input, so every
//! sample needs a new setup, and latency percentiles need every push.
//!
//! `cargo bench --bench compact` (about 2.5 minutes, up to ~0.6 GB on disk at
//! once). Stores live in temporary directories under `$TMPDIR` (default
//! `/tmp`), deleted afterwards.
//!
//! Setup of a queue "needing copy-forward" (untimed): a store opened with
//! `Durability::Buffered` and no background compactor gets `S` full 64 MiB
//! segments of 100-byte messages (524,287 frames of 128 bytes each) plus
//! 1,000 messages in the active segment; the `default` group reserves every
//! message and acks four of every five (ids not divisible by 5), so 20 % of
//! every sealed segment's bytes are live (the stragglers stay reserved);
//! then the store is closed cleanly and reopened for the measurement (the
//! stragglers stay tracked by the group, so they stay live). With the
//! default `copy_forward_percent` (25) a pass rewrites every sealed
//! segment. Diagnosis knobs: see `apply_policy`.
//!
//! - `copy_forward`: times `Store::compact_now()` over such a queue
//!   (`S` = 8 by default, `MILLPOND_BENCH_CF_SEGMENTS`), three rounds
//!   (`MILLPOND_BENCH_ROUNDS`), each on a new store; reports the live bytes
//!   rewritten per second (frames of the stragglers), and the input
//!   (sealed segment bytes) per second.
//! - `push_latency`: one thread pushes single 100-byte messages under
//!   `Durability::Sync` and records each push's latency, in windows: idle
//!   (10,000 pushes, `MILLPOND_BENCH_PUSHES`, nothing else running), busy
//!   (pushing for as long as one `compact_now` pass on another thread copies
//!   forward a queue of `S` = 8 segments, `MILLPOND_BENCH_BUSY_SEGMENTS`;
//!   that thread runs at nice 19 like the store's background compactor
//!   thread, `MILLPOND_BENCH_COMPACTOR_NICE=0` keeps it at normal priority),
//!   idle again. Four rounds (`MILLPOND_BENCH_ROUNDS`), each on a new store:
//!   odd rounds push to another queue of the same store (`busy_other`),
//!   even ones to the queue being compacted (`busy_same`). Each busy p99 is
//!   compared with the mean p99 of the two idle windows around it, so that
//!   the load of the machine, which moves over minutes, is about the same
//!   for both.
//!
//! `MILLPOND_BENCH_GROUPS=copy_forward` (or `push_latency`) runs one alone.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use millpond::{CompactReport, DEFAULT_GROUP, Durability, GroupOptions, Options, Queue, Store};

/// Frames of a 100-byte message per full 64 MiB segment.
const FRAMES_PER_SEGMENT: u64 = 524_287;
const FRAME: u64 = 128;
const SEGMENT_HEADER: u64 = 32;
const TAIL: u64 = 1000;
const LEASE: Duration = Duration::from_secs(3600);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

fn wanted(group: &str) -> bool {
    std::env::var("MILLPOND_BENCH_GROUPS").map_or(true, |v| v.split(',').any(|g| g.trim() == group))
}

/// Options of the measurement: `Sync` (the default), no background
/// compactor.
fn options() -> Options {
    Options::default().compact_interval(None)
}

/// Builds queue `name` in the store at `path` with `segments` sealed
/// segments at 20 % live (see the module docs). Returns the live (straggler)
/// frame bytes in the sealed segments.
fn prepare(path: &Path, name: &str, segments: u64) -> u64 {
    let t = Instant::now();
    let store =
        Store::open(path, options().durability(Durability::Buffered)).expect("open for setup");
    let q = store.queue(name).expect("queue");
    // No checkpoint while setting up: a checkpoint rewrites every tracked
    // entry (here up to 1.7 M), and would run every 4 MiB of journal.
    let grp = q
        .group_with(
            DEFAULT_GROUP,
            GroupOptions {
                checkpoint_journal_bytes: 1 << 40,
                ..GroupOptions::default()
            },
        )
        .expect("group");
    let total = segments * FRAMES_PER_SEGMENT + TAIL;
    let batch = vec![[0xC3u8; 100]; 1000];
    let mut left = total;
    while left > 0 {
        let k = left.min(1000) as usize;
        q.push_batch(&batch[..k]).expect("push_batch");
        left -= k as u64;
    }
    let mut acks = Vec::with_capacity(1000);
    let mut reserved = 0;
    while reserved < total {
        let ds = grp.reserve_batch(1000, LEASE).expect("reserve_batch");
        assert!(!ds.is_empty());
        reserved += ds.len() as u64;
        acks.clear();
        acks.extend(ds.iter().map(|d| d.id).filter(|id| id % 5 != 0));
        grp.ack_batch(&acks).expect("ack_batch");
    }
    let stats = q.log_stats().expect("stats");
    assert_eq!(stats.segments as u64, segments + 1, "segment layout");
    drop(grp);
    drop(q);
    store.close().expect("close after setup");
    let sealed_end = 1 + segments * FRAMES_PER_SEGMENT; // first id of the active segment
    let live = (sealed_end - 1) / 5; // ids 5, 10, ... below sealed_end
    eprintln!(
        "setup {name}: {segments} sealed segments, {total} messages, {live} stragglers in them, {:.1?}",
        t.elapsed()
    );
    live * FRAME
}

fn copy_forward() {
    let segments = env_u64("MILLPOND_BENCH_CF_SEGMENTS", 8);
    let rounds = env_u64("MILLPOND_BENCH_ROUNDS", 3);
    let sealed_bytes = segments * (SEGMENT_HEADER + FRAMES_PER_SEGMENT * FRAME);
    let mut rates = Vec::new();
    for round in 1..=rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let live = prepare(&path, "cf", segments);
        let store = Store::open(&path, options()).expect("open");
        let q = store.queue("cf").expect("queue");
        let before = q.log_stats().expect("stats").bytes_on_disk;
        let t = Instant::now();
        let r = store.compact_now().expect("compact_now");
        let e = t.elapsed();
        let after = q.log_stats().expect("stats").bytes_on_disk;
        assert_eq!(r.segments_rewritten, segments, "{r:?}");
        let written = sealed_bytes - r.bytes_reclaimed;
        let rate = live as f64 / e.as_secs_f64() / 1e6;
        rates.push(rate);
        println!(
            "copy_forward/round{round}: {segments} segments ({:.0} MB) at 20 % live: compact_now {:.0} ms \
             | live {:.1} MB -> {rate:.1} MB/s of live data, input {:.0} MB/s \
             | rewritten {} segments, {:.1} MB written, {:.0} MB reclaimed, on disk {:.0} -> {:.0} MB \
             | longest lock hold {:.0} us",
            sealed_bytes as f64 / 1e6,
            e.as_secs_f64() * 1e3,
            live as f64 / 1e6,
            sealed_bytes as f64 / e.as_secs_f64() / 1e6,
            r.segments_rewritten,
            written as f64 / 1e6,
            r.bytes_reclaimed as f64 / 1e6,
            before as f64 / 1e6,
            after as f64 / 1e6,
            r.longest_hold.as_secs_f64() * 1e6,
        );
        drop(q);
        store.close().expect("close");
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "copy_forward: median {:.1} MB/s of live data over {rounds} rounds (min {:.1}, max {:.1})",
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
}

/// Diagnosis knobs: `MILLPOND_BENCH_PUSHER_POLICY` / `_COMPACTOR_POLICY`
/// set to `chrt` arguments (e.g. `-f 1` for SCHED_FIFO priority 1, `-i 0`
/// for SCHED_IDLE) apply that scheduling policy to the pushing thread or to
/// the compacting thread (`chrt -p` on the thread's id; needs root for
/// FIFO). Unset: both run as ordinary threads.
fn apply_policy(var: &str) -> bool {
    let Ok(args) = std::env::var(var) else {
        return false;
    };
    chrt(&args);
    true
}

/// The nice value the compacting thread of `busy_window` runs at: 19, as
/// the store's background compactor thread sets for itself
/// (`MILLPOND_BENCH_COMPACTOR_NICE=0` runs it at normal priority, as a
/// `compact_now` caller would).
fn compactor_nice() -> i32 {
    std::env::var("MILLPOND_BENCH_COMPACTOR_NICE")
        .map_or(19, |v| v.parse().expect("MILLPOND_BENCH_COMPACTOR_NICE"))
}

/// The id of the calling thread.
fn thread_id() -> String {
    let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    me.file_name()
        .and_then(|t| t.to_str())
        .expect("thread id")
        .to_owned()
}

/// `renice -n <nice> -p <this thread>` (the nice value is per thread on
/// Linux).
fn renice(nice: i32) {
    if nice == 0 {
        return;
    }
    let tid = thread_id();
    let status = std::process::Command::new("renice")
        .args(["-n", &nice.to_string(), "-p", &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run renice");
    assert!(status.success(), "renice {nice} for thread {tid}: {status}");
}

/// `chrt <policy> -p <priority> <this thread>`.
fn chrt(args: &str) {
    let tid = thread_id();
    let mut words = args.split_whitespace();
    let status = std::process::Command::new("chrt")
        .arg(words.next().expect("policy"))
        .arg("-p")
        .args(words)
        .arg(&tid)
        .status()
        .expect("run chrt");
    assert!(status.success(), "chrt {args} for thread {tid}: {status}");
}

/// The pusher's policy for the time of one window (back to SCHED_OTHER
/// after it, so that the setup never runs with a real-time priority).
struct PusherPolicy(bool);

impl PusherPolicy {
    fn new() -> PusherPolicy {
        PusherPolicy(apply_policy("MILLPOND_BENCH_PUSHER_POLICY"))
    }
}

impl Drop for PusherPolicy {
    fn drop(&mut self) {
        if self.0 {
            chrt("-o 0");
        }
    }
}

/// One timed push of a 100-byte message: (when it completed, latency ns).
fn push_once(q: &Queue) -> (Instant, u64) {
    let t = Instant::now();
    q.push([0x5Au8; 100]).expect("push");
    let done = Instant::now();
    (done, (done - t).as_nanos() as u64)
}

/// Latency percentiles (ns) of one window.
#[derive(Debug, Clone, Copy)]
struct Pcts {
    n: usize,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    rate: f64,
}

fn pcts(mut lat: Vec<u64>, wall: Duration) -> Pcts {
    assert!(!lat.is_empty(), "no pushes in the window");
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Pcts {
        n: lat.len(),
        p50: p(0.5),
        p99: p(0.99),
        p999: p(0.999),
        max: lat[lat.len() - 1],
        rate: lat.len() as f64 / wall.as_secs_f64(),
    }
}

fn print_pcts(label: &str, p: &Pcts) {
    println!(
        "{label:<34} n={:6}  p50 {:6.0} us  p99 {:6.0} us  p99.9 {:6.0} us  max {:7.0} us  {:5.0} pushes/s",
        p.n,
        p.p50 as f64 / 1e3,
        p.p99 as f64 / 1e3,
        p.p999 as f64 / 1e3,
        p.max as f64 / 1e3,
        p.rate,
    );
}

/// `n` pushes to `q` with nothing else running.
fn idle_window(q: &Queue, n: usize) -> Pcts {
    let _policy = PusherPolicy::new();
    let t = Instant::now();
    let lat: Vec<u64> = (0..n).map(|_| push_once(q).1).collect();
    pcts(lat, t.elapsed())
}

/// Pushes to `q` for as long as one `compact_now` pass runs on another
/// thread (it copies forward every sparse segment of the store).
fn busy_window(store: &Store, q: &Queue) -> (Pcts, CompactReport, Duration) {
    let _policy = PusherPolicy::new();
    let done = AtomicBool::new(false);
    let (lat, wall, report, pass) = std::thread::scope(|s| {
        let compactor = s.spawn(|| {
            renice(compactor_nice());
            apply_policy("MILLPOND_BENCH_COMPACTOR_POLICY");
            let t = Instant::now();
            let r = store.compact_now().expect("compact_now");
            let e = t.elapsed();
            done.store(true, Ordering::Release);
            (r, e)
        });
        let t = Instant::now();
        let mut lat = Vec::new();
        while !done.load(Ordering::Acquire) {
            lat.push(push_once(q).1);
        }
        let wall = t.elapsed();
        let (r, e) = compactor.join().expect("compactor");
        (lat, wall, r, e)
    });
    (pcts(lat, wall), report, pass)
}

fn push_latency() {
    let n = env_u64("MILLPOND_BENCH_PUSHES", 10_000) as usize;
    let segments = env_u64("MILLPOND_BENCH_BUSY_SEGMENTS", 8);
    let rounds = env_u64("MILLPOND_BENCH_ROUNDS", 4);
    let mut ratios: Vec<(&str, f64)> = Vec::new();
    for round in 1..=rounds {
        // Odd rounds push to another queue, even ones to the queue being
        // compacted.
        let kind = if round % 2 == 1 {
            "busy_other"
        } else {
            "busy_same"
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        prepare(&path, "cf", segments);
        let store = Store::open(&path, options()).expect("open");
        let lat_q = store.queue("lat").expect("queue");
        let target = if kind == "busy_same" {
            store.queue("cf").expect("queue")
        } else {
            lat_q.clone()
        };
        let before = idle_window(&lat_q, n);
        print_pcts(&format!("round{round}/idle (before)"), &before);
        let (busy, report, pass) = busy_window(&store, &target);
        assert_eq!(report.segments_rewritten, segments, "{report:?}");
        print_pcts(&format!("round{round}/{kind}"), &busy);
        let after = idle_window(&lat_q, n);
        print_pcts(&format!("round{round}/idle (after)"), &after);
        let reference = (before.p99 + after.p99) as f64 / 2.0;
        let ratio = busy.p99 as f64 / reference;
        println!(
            "round{round}: pass {:.0} ms rewrote {} segments (longest lock hold {:.0} us); p99 {kind} {:.0} us vs idle {:.0} / {:.0} us: {ratio:.2}x",
            pass.as_secs_f64() * 1e3,
            report.segments_rewritten,
            report.longest_hold.as_secs_f64() * 1e6,
            busy.p99 as f64 / 1e3,
            before.p99 as f64 / 1e3,
            after.p99 as f64 / 1e3,
        );
        ratios.push((kind, ratio));
        drop(target);
        drop(lat_q);
        store.close().expect("close");
    }
    for kind in ["busy_other", "busy_same"] {
        let mut r: Vec<f64> = ratios
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|&(_, r)| r)
            .collect();
        r.sort_by(f64::total_cmp);
        if !r.is_empty() {
            println!(
                "push_latency/{kind}: p99 busy / p99 idle around it: {} (median {:.2}x)",
                r.iter()
                    .map(|x| format!("{x:.2}x"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r[r.len() / 2]
            );
        }
    }
}

fn main() {
    if wanted("copy_forward") {
        copy_forward();
    }
    if wanted("push_latency") {
        push_latency();
    }
}
