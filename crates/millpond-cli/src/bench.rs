//! `millpond bench`: producer threads push, consumer threads reserve and
//! ack, for a count of messages or a duration; prints throughput and
//! latency percentiles (push call, and push to reserve).
//!
//! Each payload starts with a 16-byte stamp: the run's id and the push
//! time (ns since the run began). Consumers ack every message they get but
//! measure only this run's, so a backlog left by an earlier run is drained
//! without skewing the figures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use millpond::{Durability, Group, Options, Queue, Store};
use serde_json::{Value, json};

use crate::args::{DurabilityArg, JsonArg, parse_duration};
use crate::failure::{Error, error};
use crate::progress::Progress;
use crate::{Global, Outcome, durability, loadgen, output};

/// Bytes of the stamp at the start of each payload.
const STAMP_BYTES: u64 = 16;
/// The consumers' group.
const GROUP: &str = "bench";
/// Lease of a consumer's reservation.
const LEASE: Duration = Duration::from_secs(60);
/// How long an idle consumer waits for a message before it looks again.
const CONSUMER_WAIT: Duration = Duration::from_millis(20);
/// After the producers end, how long consumers may go without a message
/// before the run ends anyway.
const DRAIN_IDLE_MAX: Duration = Duration::from_secs(10);
/// Latency samples kept per thread (the rest are counted, not kept).
const SAMPLES_PER_THREAD_MAX: usize = 10_000_000;

pub const HELP: &str = "\
Runs against the store in --store (created if needed), in the queue --queue
(default bench) and the group \"bench\", with the background compactor on, as
an application would. Latency is measured per push call (a batch of --batch
messages is one call) and from push to reserve for each message.

Output: the setup, throughput of pushes and of consumption (messages and
payload bytes per second), and p50/p99/p999/max latencies. With --json:
  {\"producers\": 4, \"consumers\": 4, \"message_bytes\": 100, \"durability\": \"sync\",
   \"pushed\": 100000, \"consumed\": 100000, \"elapsed_ms\": 5210,
   \"push_per_s\": 19193.8, \"push_bytes_per_s\": 1919380.0, \"consume_per_s\": 19190.1,
   \"push_latency_us\": {\"p50\": 180, \"p99\": 950, \"p999\": 2100, \"max\": 4100},
   \"end_to_end_latency_us\": {\"p50\": …, …}}

With --server ADDR it measures a queue server instead: --clients threads,
each with its own connection, speak --protocol (beanstalk: millpond serve or
beanstalkd; redis-list: LPUSH, LMOVE to a processing list, LREM; redis-stream:
XADD, XREADGROUP, XACK; nats: JetStream publish, pull with no_wait, ack),
sending --pipeline commands before reading their replies. --workload put, reserve-delete (until --count, --duration or an empty
queue) or cycle. It reports ops/s, latency (batch sent to reply), its own CPU
and, with --server-pid, the server's (from /proc/<pid>/stat).

Examples:
  millpond bench
  millpond bench --producers 8 --consumers 0 --batch 64 --durability buffered
  millpond bench --duration 30s --size 4096 --json
  millpond bench --server 127.0.0.1:11300 --clients 8 --pipeline 16 --duration 5s
  millpond bench --server 127.0.0.1:6379 --protocol redis-list --workload reserve-delete";

/// Arguments of `millpond bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Producer threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    producers: u32,

    /// Consumer threads (0: measure pushes only).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=256))]
    consumers: u32,

    /// Payload size in bytes (at least 16: the stamp).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(STAMP_BYTES..=16 << 20))]
    size: u64,

    /// Messages to push in total.
    #[arg(long, default_value_t = 100_000, conflicts_with = "duration")]
    count: u64,

    /// Push for this long instead of a count (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Messages per push call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    batch: u32,

    /// Most messages a consumer reserves (and acks) at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    reserve_batch: u32,

    /// The queue to use.
    #[arg(long, short = 'q', value_name = "NAME", default_value = "bench")]
    queue: String,

    #[command(flatten)]
    durability: DurabilityArg,

    #[command(flatten)]
    json: JsonArg,

    #[command(flatten)]
    server: loadgen::ServerArgs,
}

/// State shared by the threads of a run.
#[derive(Debug)]
struct Run {
    id: u64,
    epoch: Instant,
    size: usize,
    batch: u64,
    /// Messages to push, or `None` for a duration.
    count: Option<u64>,
    deadline: Option<Instant>,
    /// Messages claimed by producers (count mode).
    claimed: AtomicU64,
    pushed: AtomicU64,
    consumed: AtomicU64,
    producers_done: AtomicBool,
    /// When the last push returned, ns since `epoch`.
    push_end_ns: AtomicU64,
    /// When the last message of this run was consumed, ns since `epoch`.
    consume_end_ns: AtomicU64,
    /// Set on a failure or when draining stalls: every thread stops.
    stop: AtomicBool,
}

/// Latency samples in nanoseconds.
type Samples = Vec<u64>;

/// Runs `millpond bench`.
///
/// # Errors
///
/// The engine's errors; a thread that failed.
pub fn run(global: &Global, args: Args) -> Result<Outcome, Error> {
    if args.server.server.is_some() {
        return loadgen::run(loadgen::Plan {
            count: args.duration.is_none().then_some(args.count),
            duration: args.duration,
            size: usize::try_from(args.size)?,
            queue: args.queue,
            json: args.json.json,
            args: args.server,
        });
    }
    let mode = args.durability.durability;
    let store = Store::open(&global.store, Options::default().durability(mode))?;
    let queue = store.queue(&args.queue)?;
    let group = if args.consumers > 0 {
        Some(queue.group(GROUP)?)
    } else {
        None
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let run = Run {
        id: seed ^ u64::from(std::process::id()).rotate_left(32),
        epoch: Instant::now(),
        size: usize::try_from(args.size)?,
        batch: u64::from(args.batch),
        count: args.duration.is_none().then_some(args.count),
        deadline: args.duration.map(|d| Instant::now() + d),
        claimed: AtomicU64::new(0),
        pushed: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        producers_done: AtomicBool::new(false),
        push_end_ns: AtomicU64::new(0),
        consume_end_ns: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    };
    let (push_samples, e2e_samples, push_elapsed, consume_elapsed) =
        execute(&run, &args, &queue, group.as_ref())?;
    drop((group, queue));
    store.close()?;

    let pushed = run.pushed.load(Ordering::Relaxed);
    let consumed = run.consumed.load(Ordering::Relaxed);
    let result = Figures {
        pushed,
        consumed,
        push_elapsed,
        consume_elapsed,
        push_latency: Percentiles::of(push_samples),
        e2e_latency: Percentiles::of(e2e_samples),
    };
    if args.json.json {
        output::json_document(&result.to_json(&args))?;
    } else {
        result.print(&args);
    }
    if args.consumers > 0 && consumed < pushed {
        return Err(error(format!(
            "consumers got {consumed} of the {pushed} messages pushed before they went {} \
             without one",
            output::duration(DRAIN_IDLE_MAX)
        )));
    }
    Ok(Outcome::Success)
}

/// Runs the threads; returns push-call latencies, push-to-reserve
/// latencies, and how long pushing and consuming took.
fn execute(
    run: &Run,
    args: &Args,
    queue: &Queue,
    group: Option<&Group>,
) -> Result<(Samples, Samples, Duration, Duration), Error> {
    let progress = match run.count {
        Some(count) => Progress::count(count, "bench"),
        None => Progress::spinner("bench"),
    };
    thread::scope(|scope| {
        let producers: Vec<_> = (0..args.producers)
            .map(|_| scope.spawn(|| guard(run, || produce(run, queue))))
            .collect();
        let consumers: Vec<_> = match group {
            Some(group) => (0..args.consumers)
                .map(|_| scope.spawn(|| guard(run, || consume(run, group, args.reserve_batch))))
                .collect(),
            None => Vec::new(),
        };
        let mut first_err: Option<Error> = None;
        let mut push_samples = Vec::new();
        let mut producers = producers;
        // Draw progress until the producers end, then until consumers do.
        loop {
            draw(run, &progress, args.consumers > 0);
            if producers.iter().all(|p| p.is_finished()) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        for p in producers.drain(..) {
            match p.join() {
                Ok(Ok(samples)) => push_samples.extend(samples),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| error("a producer thread panicked"));
                }
            }
        }
        run.producers_done.store(true, Ordering::Release);
        while !consumers.iter().all(|c| c.is_finished()) {
            draw(run, &progress, true);
            thread::sleep(Duration::from_millis(100));
        }
        let mut e2e_samples = Vec::new();
        for c in consumers {
            match c.join() {
                Ok(Ok(samples)) => e2e_samples.extend(samples),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| error("a consumer thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok((
                push_samples,
                e2e_samples,
                Duration::from_nanos(run.push_end_ns.load(Ordering::Relaxed)),
                Duration::from_nanos(run.consume_end_ns.load(Ordering::Relaxed)),
            )),
        }
    })
}

/// Runs a thread body; a failure stops every other thread.
fn guard(run: &Run, body: impl FnOnce() -> Result<Samples, Error>) -> Result<Samples, Error> {
    let result = body();
    if result.is_err() {
        run.stop.store(true, Ordering::Relaxed);
    }
    result
}

fn draw(run: &Run, progress: &Progress, consumers: bool) {
    let elapsed = run.epoch.elapsed();
    let pushed = run.pushed.load(Ordering::Relaxed);
    let consumed = run.consumed.load(Ordering::Relaxed);
    progress.set_position(if consumers { consumed } else { pushed });
    let mut message = format!(
        "pushed {} ({})",
        output::count(pushed),
        output::per_second(pushed, elapsed)
    );
    if consumers {
        message.push_str(&format!(
            " consumed {} ({})",
            output::count(consumed),
            output::per_second(consumed, elapsed)
        ));
    }
    progress.set_message(message);
}

fn now_ns(run: &Run) -> u64 {
    u64::try_from(run.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn produce(run: &Run, queue: &Queue) -> Result<Samples, Error> {
    let mut samples = Vec::new();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    loop {
        if run.stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match (run.count, run.deadline) {
            (Some(count), _) => {
                let start = run.claimed.fetch_add(run.batch, Ordering::Relaxed);
                if start >= count {
                    break;
                }
                run.batch.min(count - start)
            }
            (None, Some(deadline)) => {
                if Instant::now() >= deadline {
                    break;
                }
                run.batch
            }
            (None, None) => unreachable!("a run has a count or a deadline"),
        } as usize;
        let started = now_ns(run);
        payloads.resize_with(n, Vec::new);
        for p in &mut payloads[..n] {
            p.clear();
            p.extend_from_slice(&run.id.to_le_bytes());
            p.extend_from_slice(&started.to_le_bytes());
            p.resize(run.size, 0xA5);
        }
        if n == 1 {
            queue.push(&payloads[0])?;
        } else {
            queue.push_batch(&payloads[..n])?;
        }
        if samples.len() < SAMPLES_PER_THREAD_MAX {
            samples.push(now_ns(run) - started);
        }
        run.pushed.fetch_add(n as u64, Ordering::Relaxed);
    }
    run.push_end_ns.fetch_max(now_ns(run), Ordering::Relaxed);
    Ok(samples)
}

fn consume(run: &Run, group: &Group, reserve_batch: u32) -> Result<Samples, Error> {
    let mut samples = Vec::new();
    let mut idle_since: Option<Instant> = None;
    loop {
        if run.stop.load(Ordering::Relaxed) {
            break;
        }
        let producers_done = run.producers_done.load(Ordering::Acquire);
        let pushed = run.pushed.load(Ordering::Relaxed);
        if producers_done && run.consumed.load(Ordering::Relaxed) >= pushed {
            break;
        }
        let mut deliveries = group.reserve_batch(reserve_batch as usize, LEASE)?;
        if deliveries.is_empty() {
            deliveries.extend(group.reserve_timeout(LEASE, CONSUMER_WAIT)?);
        }
        if deliveries.is_empty() {
            if producers_done {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > DRAIN_IDLE_MAX {
                    break;
                }
            }
            continue;
        }
        idle_since = None;
        let now = now_ns(run);
        let ids: Vec<u64> = deliveries.iter().map(|d| d.id).collect();
        let mut ours = 0;
        for d in &deliveries {
            let stamp = d.payload.get(..16).and_then(|s| {
                let run_id = u64::from_le_bytes(s[..8].try_into().ok()?);
                let pushed_ns = u64::from_le_bytes(s[8..].try_into().ok()?);
                (run_id == run.id).then_some(pushed_ns)
            });
            if let Some(pushed_ns) = stamp {
                ours += 1;
                if samples.len() < SAMPLES_PER_THREAD_MAX {
                    samples.push(now.saturating_sub(pushed_ns));
                }
            }
        }
        group.ack_batch(&ids)?;
        if ours > 0 {
            run.consumed.fetch_add(ours, Ordering::Relaxed);
            run.consume_end_ns.fetch_max(now_ns(run), Ordering::Relaxed);
        }
    }
    Ok(samples)
}

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    samples: usize,
}

impl Percentiles {
    pub(crate) fn of(mut samples: Samples) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: *samples.last().expect("not empty"),
            samples: samples.len(),
        }
    }

    pub(crate) fn text(&self) -> String {
        if self.samples == 0 {
            return "no samples".to_owned();
        }
        let d = |ns: u64| output::duration(Duration::from_nanos(ns));
        format!(
            "p50 {}  p99 {}  p999 {}  max {}",
            d(self.p50),
            d(self.p99),
            d(self.p999),
            d(self.max)
        )
    }

    pub(crate) fn to_json(self) -> Value {
        if self.samples == 0 {
            return Value::Null;
        }
        json!({
            "p50": self.p50 / 1000,
            "p99": self.p99 / 1000,
            "p999": self.p999 / 1000,
            "max": self.max / 1000,
            "samples": self.samples,
        })
    }
}

/// The results of a run.
#[derive(Debug)]
struct Figures {
    pushed: u64,
    consumed: u64,
    push_elapsed: Duration,
    consume_elapsed: Duration,
    push_latency: Percentiles,
    e2e_latency: Percentiles,
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

impl Figures {
    fn print(&self, args: &Args) {
        let mode = durability::display(args.durability.durability);
        println!(
            "millpond bench: {} producers, {} consumers, {} of {}, push batch {}, durability {mode}",
            args.producers,
            args.consumers,
            output::plural(self.pushed, "message"),
            output::bytes(args.size),
            args.batch
        );
        println!(
            "pushed   {} in {}: {} msg/s, {}",
            output::count(self.pushed),
            output::duration(self.push_elapsed),
            output::count(rate(self.pushed, self.push_elapsed).round() as u64),
            output::bytes_per_second(self.pushed * args.size, self.push_elapsed)
        );
        if args.consumers > 0 {
            println!(
                "consumed {} in {}: {} msg/s, {}",
                output::count(self.consumed),
                output::duration(self.consume_elapsed),
                output::count(rate(self.consumed, self.consume_elapsed).round() as u64),
                output::bytes_per_second(self.consumed * args.size, self.consume_elapsed)
            );
        }
        println!("push call latency:       {}", self.push_latency.text());
        if args.consumers > 0 {
            println!("push-to-reserve latency: {}", self.e2e_latency.text());
        }
        if args.durability.durability == Durability::Buffered {
            println!(
                "(buffered: pushes were fsynced when the store closed, not before they returned)"
            );
        }
    }

    fn to_json(&self, args: &Args) -> Value {
        json!({
            "producers": args.producers,
            "consumers": args.consumers,
            "message_bytes": args.size,
            "push_batch": args.batch,
            "durability": durability::display(args.durability.durability),
            "queue": args.queue,
            "pushed": self.pushed,
            "consumed": self.consumed,
            "push_elapsed_ms": self.push_elapsed.as_millis() as u64,
            "elapsed_ms": self.consume_elapsed.as_millis() as u64,
            "push_per_s": rate(self.pushed, self.push_elapsed),
            "push_bytes_per_s": rate(self.pushed * args.size, self.push_elapsed),
            "consume_per_s": rate(self.consumed, self.consume_elapsed),
            "push_latency_us": self.push_latency.to_json(),
            "end_to_end_latency_us": self.e2e_latency.to_json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_rank() {
        let p = Percentiles::of((1..=1000).collect());
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500, 990, 999, 1000));
        let one = Percentiles::of(vec![7]);
        assert_eq!((one.p50, one.p999, one.max), (7, 7, 7));
        assert_eq!(Percentiles::of(Vec::new()).samples, 0);
    }
}
