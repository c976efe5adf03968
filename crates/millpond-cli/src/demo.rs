//! `millpond demo`: a small real job on a real store.
//!
//! Several producer threads push stamped payloads (see [`payload`]) into
//! the queue `demo` with `push_batch` (and `push` for a batch of one) while
//! one reader thread follows the log with a [`Reader`] and checks every
//! message: ids contiguous from where this run began, every payload byte,
//! and each producer's messages in the order it pushed them, none missing.
//! Each run appends to whatever the store already holds.

mod payload;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use millpond::{Durability, Options, Queue, Reader, RecoveryReport, Store};

use crate::{Error, Global, Outcome, durability};

/// The queue the demo writes to.
const QUEUE: &str = "demo";
/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// How long the reader waits after catching up with the producers.
const READER_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Verification problems printed in full; the rest are only counted.
const PROBLEMS_SHOWN_MAX: usize = 10;
/// The largest payload the demo offers (the store's default limit).
const PAYLOAD_BYTES_MAX: u64 = 16 << 20;

/// Arguments of `millpond demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Messages to push in total.
    #[arg(long, default_value_t = 200_000)]
    count: u64,

    /// Payload size in bytes (at least 20: the verification stamp).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(payload::STAMP_BYTES as u64..=PAYLOAD_BYTES_MAX))]
    size: u64,

    /// Producer threads pushing concurrently.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    producers: u32,

    /// Messages per push_batch call (1 means one push per message).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    batch: u32,

    /// When a push counts as done.
    #[arg(long, default_value = "sync", value_name = durability::VALUES,
          value_parser = durability::parse)]
    durability: Durability,
}

/// Runs the demo against the store in `global.store`.
///
/// # Errors
///
/// Opening the store (for example [`millpond::Error::Locked`]), a failed
/// push or read, or a closing error.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    let size = usize::try_from(args.size)?;
    let store = Store::open(
        &global.store,
        Options::default().durability(args.durability),
    )?;
    let queue = store.queue(QUEUE)?;
    let first_id = queue.next_id();
    let job = Job {
        queue: &queue,
        run: payload::new_run(),
        count: args.count,
        size,
        producers: args.producers,
        batch_len: args.batch as usize,
        first_id,
        pushed: AtomicU64::new(0),
        calls: AtomicU64::new(0),
        read: AtomicU64::new(0),
        producers_running: AtomicUsize::new(args.producers as usize),
        stop: AtomicBool::new(false),
    };

    let started = Instant::now();
    let verdict = job.execute(started)?;
    let (pushed, calls) = (job.pushed.into_inner(), job.calls.into_inner());
    let elapsed = started.elapsed();
    let next_id = queue.next_id();
    let stats = queue.log_stats()?;
    drop(queue);
    store.close()?;

    let summary = Summary {
        args: &args,
        store: &store,
        report: store.recovery_report(),
        pushed,
        calls,
        first_id,
        next_id,
        verdict: &verdict,
        elapsed,
        segments: stats.segments,
        bytes_on_disk: stats.bytes_on_disk,
    };
    summary.print();
    Ok(if verdict.is_ok(args.count) {
        Outcome::Success
    } else {
        Outcome::CheckFailed
    })
}

/// The shared state of one run.
struct Job<'a> {
    queue: &'a Queue,
    run: u64,
    count: u64,
    size: usize,
    producers: u32,
    batch_len: usize,
    first_id: u64,
    /// Messages whose push returned.
    pushed: AtomicU64,
    /// Calls of `push` and `push_batch` that returned.
    calls: AtomicU64,
    /// Messages the reader has read.
    read: AtomicU64,
    producers_running: AtomicUsize,
    /// Set when a thread failed, so the others end early.
    stop: AtomicBool,
}

impl Job<'_> {
    /// Runs producers and the reader to the end, drawing progress from this
    /// thread. Returns what the reader found.
    fn execute(&self, started: Instant) -> Result<Verdict, Error> {
        let mut progress = Progress::new(self.count);
        thread::scope(|scope| {
            let producers: Vec<_> = (0..self.producers)
                .map(|producer| scope.spawn(move || self.produce(producer)))
                .collect();
            let reader = scope.spawn(|| self.read_back());
            while !reader.is_finished() {
                thread::sleep(Duration::from_millis(10));
                progress.draw(&self.pushed, &self.read, started, false);
            }
            progress.draw(&self.pushed, &self.read, started, true);
            progress.clear();

            let mut first_err = None;
            for handle in producers {
                if let Err(e) = join(handle, "producer") {
                    first_err.get_or_insert(e);
                }
            }
            let verdict = join(reader, "reader");
            match (first_err, verdict) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(verdict)) => Ok(verdict),
            }
        })
    }

    fn share(&self, producer: u32) -> u64 {
        share(self.count, self.producers, producer)
    }

    fn produce(&self, producer: u32) -> Result<(), Error> {
        let _running = RunningGuard(&self.producers_running);
        let result = self.produce_inner(producer);
        if result.is_err() {
            self.stop.store(true, Ordering::Relaxed);
        }
        result
    }

    fn produce_inner(&self, producer: u32) -> Result<(), Error> {
        let share = self.share(producer);
        let mut batch: Vec<Vec<u8>> = (0..self.batch_len.min(share as usize))
            .map(|_| Vec::with_capacity(self.size))
            .collect();
        let mut seq = 0;
        while seq < share && !self.stop.load(Ordering::Relaxed) {
            let len = self.batch_len.min((share - seq) as usize);
            for (offset, buf) in batch[..len].iter_mut().enumerate() {
                let stamp = payload::Stamp {
                    run: self.run,
                    producer,
                    seq: seq + offset as u64,
                };
                payload::encode(stamp, self.size, buf);
            }
            if len == 1 {
                let id = self.queue.push(&batch[0])?;
                assert!(
                    id >= self.first_id,
                    "push returned id {id} below {}",
                    self.first_id
                );
            } else {
                let ids = self.queue.push_batch(&batch[..len])?;
                assert_eq!(
                    ids.end - ids.start,
                    len as u64,
                    "push_batch returned {ids:?}"
                );
            }
            seq += len as u64;
            self.pushed.fetch_add(len as u64, Ordering::Relaxed);
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Follows the log from `first_id` until every producer has ended and
    /// the reader has caught up, checking each message.
    fn read_back(&self) -> Result<Verdict, Error> {
        let result = self.read_back_inner();
        if result.is_err() {
            self.stop.store(true, Ordering::Relaxed);
        }
        result
    }

    fn read_back_inner(&self) -> Result<Verdict, Error> {
        let mut reader: Reader = self.queue.reader(self.first_id);
        let mut verdict = Verdict::new(self.run, self.size, self.first_id, self.producers);
        loop {
            // Every push of a producer that has ended is visible to readers,
            // so a reader that is caught up after this load has read them all.
            let producers_ended = self.producers_running.load(Ordering::Acquire) == 0;
            match reader.next() {
                Some(message) => {
                    let message = message?;
                    verdict.check(message.id, &message.payload);
                    self.read.store(verdict.read, Ordering::Relaxed);
                }
                None if producers_ended => break,
                None => thread::sleep(READER_POLL_INTERVAL),
            }
        }
        for producer in 0..self.producers {
            let (found, expected) = (verdict.next_seq[producer as usize], self.share(producer));
            if found != expected && !self.stop.load(Ordering::Relaxed) {
                verdict.problem(format!(
                    "producer {producer}: read {found} of its {expected} messages"
                ));
            }
        }
        Ok(verdict)
    }
}

/// Messages producer `producer` pushes: an even share of `count`.
fn share(count: u64, producers: u32, producer: u32) -> u64 {
    let producers = u64::from(producers);
    count / producers + u64::from(u64::from(producer) < count % producers)
}

/// Decrements the count of running producers when a producer ends, also
/// by a panic, so the reader never waits for a thread that is gone.
struct RunningGuard<'a>(&'a AtomicUsize);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

fn join<T>(handle: thread::ScopedJoinHandle<'_, Result<T, Error>>, what: &str) -> Result<T, Error> {
    handle
        .join()
        .map_err(|_| format!("the {what} thread panicked"))?
}

/// What the reader found.
#[derive(Debug)]
struct Verdict {
    /// The run's stamp.
    run: u64,
    /// Payload size in bytes.
    size: usize,
    /// The id the next message must have.
    next_id: u64,
    /// Per producer, the seq its next message must have.
    next_seq: Vec<u64>,
    /// Messages that passed every check.
    verified: u64,
    /// Messages read.
    read: u64,
    /// The first problems, described.
    problems: Vec<String>,
    /// All problems, counted.
    problem_count: u64,
}

impl Verdict {
    fn new(run: u64, size: usize, first_id: u64, producers: u32) -> Verdict {
        Verdict {
            run,
            size,
            next_id: first_id,
            next_seq: vec![0; producers as usize],
            verified: 0,
            read: 0,
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    /// Checks the next message read: its id, its bytes, its producer's order.
    fn check(&mut self, id: u64, bytes: &[u8]) {
        self.read += 1;
        let mut ok = true;
        if id != self.next_id {
            ok = false;
            self.problem(format!("read id {id}, expected {}", self.next_id));
        }
        self.next_id = id + 1;
        let stamp = match payload::check(bytes, self.run, self.size) {
            Ok(stamp) => stamp,
            Err(e) => return self.problem(format!("id {id}: {e}")),
        };
        let Some(next_seq) = self.next_seq.get_mut(stamp.producer as usize) else {
            return self.problem(format!("id {id}: unknown producer {}", stamp.producer));
        };
        let expected = *next_seq;
        *next_seq = stamp.seq + 1;
        if stamp.seq != expected {
            return self.problem(format!(
                "id {id}: producer {} seq {}, expected seq {expected}",
                stamp.producer, stamp.seq
            ));
        }
        if ok {
            self.verified += 1;
        }
    }

    fn problem(&mut self, description: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_SHOWN_MAX {
            self.problems.push(description);
        }
    }

    fn is_ok(&self, count: u64) -> bool {
        self.problem_count == 0 && self.verified == count && self.read == count
    }
}

/// The live progress line on stderr, drawn only when stderr is a terminal.
struct Progress {
    enabled: bool,
    count: u64,
    last_drawn: Option<Instant>,
    width: usize,
}

impl Progress {
    fn new(count: u64) -> Progress {
        Progress {
            enabled: std::io::stderr().is_terminal(),
            count,
            last_drawn: None,
            width: 0,
        }
    }

    fn draw(&mut self, pushed: &AtomicU64, read: &AtomicU64, started: Instant, force: bool) {
        let due = self
            .last_drawn
            .is_none_or(|t| t.elapsed() >= PROGRESS_INTERVAL);
        if !self.enabled || !(due || force) {
            return;
        }
        self.last_drawn = Some(Instant::now());
        let (pushed, read) = (pushed.load(Ordering::Relaxed), read.load(Ordering::Relaxed));
        let seconds = started.elapsed().as_secs_f64();
        let rate = if seconds > 0.0 {
            pushed as f64 / seconds
        } else {
            0.0
        };
        let line = format!(
            "pushed {pushed}/{count}  read {read}/{count}  {rate:.0} msg/s",
            count = self.count
        );
        self.width = self.width.max(line.len());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line:<width$}", width = self.width);
        let _ = err.flush();
    }

    fn clear(&mut self) {
        if self.enabled && self.width > 0 {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{:width$}\r", "", width = self.width);
            let _ = err.flush();
        }
    }
}

/// The report printed on stdout at the end.
struct Summary<'a> {
    args: &'a Args,
    store: &'a Store,
    report: &'a RecoveryReport,
    pushed: u64,
    calls: u64,
    first_id: u64,
    next_id: u64,
    verdict: &'a Verdict,
    elapsed: Duration,
    segments: usize,
    bytes_on_disk: u64,
}

impl Summary<'_> {
    fn print(&self) {
        let args = self.args;
        let mode = durability::display(args.durability);
        println!(
            "millpond demo: store {}, queue {QUEUE:?}, durability {mode}",
            self.store.path().display()
        );
        self.print_recovery();
        let ids = if self.next_id > self.first_id {
            format!("ids {}..={}", self.first_id, self.next_id - 1)
        } else {
            "no ids".to_owned()
        };
        println!(
            "pushed {} of {} bytes from {} in {} (batches of up to {}): {ids}",
            plural(self.pushed, "message"),
            args.size,
            plural(u64::from(args.producers), "producer"),
            plural(self.calls, "push call"),
            args.batch,
        );
        let verdict = self.verdict;
        if verdict.is_ok(args.count) {
            println!(
                "read and verified {}: ids contiguous, every payload byte, each producer's order",
                plural(verdict.verified, "message")
            );
        } else {
            println!(
                "VERIFICATION FAILED: read {}, verified {} of {} messages, {} problems",
                verdict.read, verdict.verified, args.count, verdict.problem_count
            );
            for problem in &verdict.problems {
                eprintln!("problem: {problem}");
            }
            if verdict.problem_count > verdict.problems.len() as u64 {
                eprintln!(
                    "problem: ... and {} more",
                    verdict.problem_count - verdict.problems.len() as u64
                );
            }
        }
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        let bytes = self.pushed as f64 * args.size as f64;
        println!(
            "elapsed {seconds:.2} s: {:.0} msg/s, {:.1} MB/s of payload (pushed, read back and checked)",
            self.pushed as f64 / seconds,
            bytes / seconds / 1e6
        );
        println!("durability {mode}: {}", explain(args.durability));
        println!(
            "log: {}, {:.1} MB on disk; store closed cleanly",
            plural(self.segments as u64, "segment"),
            self.bytes_on_disk as f64 / 1e6
        );
    }

    fn print_recovery(&self) {
        let report = self.report;
        let segments_found: usize = report.queues.iter().map(|q| q.segments).sum();
        println!(
            "recovery at open: {}, {} found, {} scanned, {} truncated, {} ({:.1} ms)",
            plural(report.queues.len() as u64, "queue"),
            plural(segments_found as u64, "segment"),
            report.segments_scanned(),
            plural(report.bytes_truncated(), "byte"),
            if report.is_clean() {
                "clean"
            } else {
                "repaired"
            },
            report.duration.as_secs_f64() * 1e3
        );
        for queue in &report.queues {
            if let Some(torn) = &queue.torn_tail {
                println!(
                    "  queue {:?}: torn tail truncated in {} at offset {}: {} bytes ({})",
                    queue.queue,
                    torn.path.display(),
                    torn.offset,
                    torn.bytes,
                    torn.detail
                );
            }
            for damaged in &queue.damaged {
                println!(
                    "  queue {:?}: damaged range skipped in {} at offset {}: {} bytes ({})",
                    queue.queue,
                    damaged.path.display(),
                    damaged.offset,
                    damaged.len,
                    damaged.detail
                );
            }
            if let Some(path) = &queue.header_rewritten {
                println!(
                    "  queue {:?}: unfinished segment header rewritten in {}",
                    queue.queue,
                    path.display()
                );
            }
        }
    }
}

/// `count` and `noun`, with an `s` unless the count is one.
fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// What a durability mode meant for the pushes just made.
fn explain(durability: Durability) -> &'static str {
    match durability {
        Durability::Sync => {
            "every push returned after its bytes were fdatasynced; concurrent pushes shared writes and fsyncs (group commit)"
        }
        Durability::Interval(_) => {
            "pushes returned once written to the OS (shared writes); a timer fsynced at least once per interval, so a power cut loses at most the last interval"
        }
        Durability::Buffered => {
            "pushes returned after a copy into a user-space buffer, written in large chunks; fsynced when the store closed"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u64 = 0xfeed_f00d;
    const SIZE: usize = 64;

    fn bytes(producer: u32, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        payload::encode(
            payload::Stamp {
                run: RUN,
                producer,
                seq,
            },
            SIZE,
            &mut out,
        );
        out
    }

    #[test]
    fn interleaved_producers_in_order_pass() {
        let mut verdict = Verdict::new(RUN, SIZE, 10, 2);
        for (id, (producer, seq)) in (10..).zip([(0, 0), (1, 0), (1, 1), (0, 1), (0, 2)]) {
            verdict.check(id, &bytes(producer, seq));
        }
        assert_eq!(
            (verdict.read, verdict.verified, verdict.problem_count),
            (5, 5, 0)
        );
        assert!(verdict.is_ok(5));
        assert!(!verdict.is_ok(6), "a missing message must fail");
    }

    #[test]
    fn gaps_duplicates_reorders_and_damage_are_problems() {
        let mut verdict = Verdict::new(RUN, SIZE, 1, 2);
        verdict.check(1, &bytes(0, 0));
        verdict.check(3, &bytes(0, 1)); // id 2 missing
        verdict.check(4, &bytes(0, 1)); // duplicate seq
        verdict.check(5, &bytes(1, 1)); // producer 1 skipped seq 0
        let mut damaged = bytes(1, 2);
        damaged[SIZE - 1] ^= 0x80;
        verdict.check(6, &damaged);
        verdict.check(7, &bytes(2, 0)); // no producer 2
        let mut other_run = Vec::new();
        payload::encode(
            payload::Stamp {
                run: RUN + 1,
                producer: 0,
                seq: 2,
            },
            SIZE,
            &mut other_run,
        );
        verdict.check(8, &other_run);
        assert_eq!(verdict.read, 7);
        assert_eq!(verdict.verified, 1);
        assert_eq!(verdict.problem_count, 6, "{:#?}", verdict.problems);
        assert!(
            verdict.problems[0].contains("read id 3, expected 2"),
            "{:?}",
            verdict.problems
        );
        assert!(!verdict.is_ok(7));
    }

    #[test]
    fn problems_shown_are_bounded() {
        let mut verdict = Verdict::new(RUN, SIZE, 0, 1);
        for id in 0..100 {
            verdict.check(id, b"short");
        }
        assert_eq!(verdict.problem_count, 100);
        assert_eq!(verdict.problems.len(), PROBLEMS_SHOWN_MAX);
    }

    #[test]
    fn shares_add_up_to_the_count() {
        for (count, producers) in [(0, 1), (1, 4), (10, 3), (200_000, 4), (7, 7)] {
            let total: u64 = (0..producers).map(|p| share(count, producers, p)).sum();
            assert_eq!(total, count, "{count} over {producers}");
        }
    }
}
