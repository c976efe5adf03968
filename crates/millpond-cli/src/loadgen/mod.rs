//! `millpond bench --server ADDR`: a load generator for queue servers.
//!
//! Runs one thread per client, each with its own TCP connection, against
//! `millpond serve`, beanstalkd (its text protocol), Redis (a list with
//! the reliable-queue pattern, or a stream with a consumer group) or NATS
//! JetStream (a work-queue stream with a pull consumer), so the same
//! workload measures each server side by side. The protocol
//! codecs are written here, by hand: on a 2-core machine a slow client
//! decides the result, and its CPU is reported beside every figure.
//!
//! A client sends `--pipeline` commands before it reads their replies
//! (1: strict request/response). Workloads:
//! - `put`: put messages;
//! - `reserve-delete`: reserve a message and delete (ack) it, until the
//!   count, the duration, or the queue runs dry;
//! - `cycle`: each client puts a batch, then reserves and deletes as many.
//!
//! Latency of an operation is the time from writing its batch to reading
//! its (last) reply. CPU time comes from `/proc/<pid>/stat`: the load
//! generator's own, and the server's with `--server-pid`.

mod beanstalk;
mod conn;
mod cpu;
mod nats;
mod redis;
mod resp;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::Percentiles;
use crate::failure::{Error, error};
use crate::{Outcome, output};

use self::conn::Conn;

/// Most latency samples kept over all clients (each client keeps its
/// first share; the rest are counted, not kept).
const SAMPLES_MAX: usize = 4_000_000;

/// The protocol and queue pattern the load generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// beanstalkd's text protocol: put, reserve-with-timeout 0, delete
    /// (millpond serve, beanstalkd).
    Beanstalk,
    /// Redis list, reliable-queue pattern: LPUSH, LMOVE to a processing
    /// list, LREM.
    RedisList,
    /// Redis stream with a consumer group: XADD, XREADGROUP, XACK.
    RedisStream,
    /// NATS JetStream work-queue stream on file storage: publish and wait
    /// for the PubAck, pull one message with no_wait, ack and wait for the
    /// ack's reply.
    Nats,
}

/// What each client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Put messages.
    Put,
    /// Reserve messages and delete them, until the queue runs dry.
    ReserveDelete,
    /// Put a batch, then reserve and delete as many, repeatedly.
    Cycle,
}

/// The arguments of server mode, flattened into `millpond bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Against a server (--server)")]
pub struct ServerArgs {
    /// Measure a queue server at HOST:PORT instead of a store (ignores
    /// --store, --producers, --consumers, --batch, --reserve-batch and
    /// --durability).
    #[arg(long, value_name = "ADDR",
          conflicts_with_all = ["producers", "consumers", "batch", "reserve_batch", "durability"])]
    pub server: Option<String>,

    /// The server's protocol and queue pattern.
    #[arg(long, value_enum, default_value_t = Protocol::Beanstalk, requires = "server")]
    pub protocol: Protocol,

    /// The workload.
    #[arg(long, value_enum, default_value_t = Workload::Put, requires = "server")]
    pub workload: Workload,

    /// Client connections, one thread each.
    #[arg(long, default_value_t = 1, requires = "server",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub clients: u32,

    /// Commands a client sends before it reads their replies (1: strict
    /// request/response).
    #[arg(long, value_name = "DEPTH", default_value_t = 1, requires = "server",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub pipeline: u32,

    /// Priority of the jobs put with the beanstalk protocol (lower is more
    /// urgent; 1024 is the default of pheanstalk, a widely used client;
    /// greenstalk uses 65536).
    #[arg(long, default_value_t = 1024, requires = "server")]
    pub priority: u32,

    /// The server's process id: report its CPU time over the run.
    #[arg(long, value_name = "PID", requires = "server")]
    pub server_pid: Option<u32>,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server mode arguments.
    pub args: ServerArgs,
    /// Operations to do in total, or `None` with a duration.
    pub count: Option<u64>,
    /// How long to run, or `None` with a count.
    pub duration: Option<Duration>,
    /// Payload bytes of each message.
    pub size: usize,
    /// The tube (beanstalk) or key (Redis).
    pub queue: String,
    /// Print JSON.
    pub json: bool,
}

/// One connection's side of a protocol.
pub trait Session {
    /// Puts one message per body, pipelined: writes them all, then reads
    /// the replies, calling `done` after each.
    ///
    /// # Errors
    ///
    /// I/O; a reply other than success.
    fn put(&mut self, bodies: &[Vec<u8>], done: &mut dyn FnMut()) -> io::Result<()>;

    /// Reserves up to `n` messages, pipelined, without waiting for any;
    /// returns how many it got (fewer when the queue ran dry).
    ///
    /// # Errors
    ///
    /// I/O; a reply that is neither a message nor "none".
    fn reserve(&mut self, n: usize) -> io::Result<usize>;

    /// Deletes (acks) every message of the last [`Session::reserve`],
    /// pipelined, calling `done` after each reply.
    ///
    /// # Errors
    ///
    /// I/O; a reply other than success.
    fn settle(&mut self, done: &mut dyn FnMut()) -> io::Result<()>;
}

/// State the clients of a run share.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    claimed: AtomicU64,
    /// Set when a client fails: the others stop.
    stop: AtomicBool,
    /// The end of a run with a duration, set once every client is
    /// connected.
    deadline: OnceLock<Instant>,
}

impl Shared {
    /// Claims up to a pipeline's worth of operations; 0 when the run is
    /// over.
    fn claim(&self) -> usize {
        let depth = u64::from(self.plan.args.pipeline);
        if self.stop.load(Ordering::Relaxed) {
            return 0;
        }
        if let Some(deadline) = self.deadline.get() {
            return if Instant::now() < *deadline {
                depth as usize
            } else {
                0
            };
        }
        let count = self.plan.count.unwrap_or(0);
        let start = self.claimed.fetch_add(depth, Ordering::Relaxed);
        usize::try_from(depth.min(count.saturating_sub(start))).expect("at most the depth")
    }
}

/// What one client did.
#[derive(Debug, Default)]
struct ClientResult {
    ops: u64,
    /// Reserves that found no message.
    empty: u64,
    samples: Vec<u64>,
    /// When its last operation ended.
    end: Option<Instant>,
}

/// Writes the client number and the sequence number as 16 hex digits
/// into the front of `body` (fewer if it is shorter), so every payload
/// differs, as real jobs do.
fn stamp(body: &mut [u8], client: usize, seq: u64) {
    let text = format!("{:06x}{:010x}", client & 0xff_ffff, seq & 0xff_ffff_ffff);
    let n = body.len().min(text.len());
    body[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// Runs the load generator.
///
/// # Errors
///
/// An address that does not resolve; a server pid that does not exist; a
/// client that could not connect or got a reply it did not expect.
pub fn run(plan: Plan) -> Result<Outcome, Error> {
    let addr_text = plan.args.server.clone().unwrap_or_default();
    let addr = resolve(&addr_text)?;
    let clients = plan.args.clients as usize;
    let server_pid = plan.args.server_pid;
    if let Some(pid) = server_pid {
        cpu::cpu_time(Some(pid)).map_err(|e| error(format!("--server-pid {pid}: {e}")))?;
    }
    let shared = Shared {
        plan,
        claimed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        deadline: OnceLock::new(),
    };
    // Twice: once every client is connected, then to start together.
    let barrier = Barrier::new(clients + 1);
    let (results, started, client_cpu, server_cpu) = thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|index| {
                let (shared, barrier) = (&shared, &barrier);
                scope.spawn(move || client(shared, addr, index, barrier))
            })
            .collect();
        barrier.wait();
        let client_before = cpu::cpu_time(None);
        let server_before = server_pid.map(|pid| cpu::cpu_time(Some(pid)));
        let started = Instant::now();
        if let Some(d) = shared.plan.duration {
            shared.deadline.set(started + d).expect("set once");
        }
        barrier.wait();
        let mut results = Vec::with_capacity(clients);
        let mut first_err: Option<Error> = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(result)) => results.push(result),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| error("a client thread panicked"));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let client_cpu = cpu::cpu_time(None)?.saturating_sub(client_before?);
        let server_cpu = match (server_pid, server_before) {
            (Some(pid), Some(before)) => Some(
                cpu::cpu_time(Some(pid))
                    .map_err(|e| error(format!("--server-pid {pid} after the run: {e}")))?
                    .saturating_sub(before?),
            ),
            _ => None,
        };
        Ok::<_, Error>((results, started, client_cpu, server_cpu))
    })?;
    let plan = &shared.plan;
    let figures = Figures::of(results, started, client_cpu, server_cpu);
    if plan.json {
        output::json_document(&figures.to_json(plan, addr))?;
    } else {
        figures.print(plan, addr);
    }
    Ok(Outcome::Success)
}

fn resolve(text: &str) -> Result<SocketAddr, Error> {
    let mut addrs = text.to_socket_addrs().map_err(|e| {
        error(format!(
            "--server {text:?} is not a HOST:PORT that resolves: {e}"
        ))
    })?;
    addrs
        .next()
        .ok_or_else(|| error(format!("--server {text:?} resolves to no address")))
}

/// Connects and opens the protocol's session.
fn open(plan: &Plan, addr: SocketAddr, index: usize) -> io::Result<Box<dyn Session>> {
    let conn = Conn::connect(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {addr}: {e}")))?;
    Ok(match plan.args.protocol {
        Protocol::Beanstalk => Box::new(beanstalk::Beanstalk::open(
            conn,
            &plan.queue,
            plan.args.priority,
        )?),
        Protocol::RedisList => Box::new(redis::RedisList::open(conn, &plan.queue)?),
        Protocol::RedisStream => Box::new(redis::RedisStream::open(conn, &plan.queue, index)?),
        Protocol::Nats => Box::new(nats::Nats::open(conn, &plan.queue, index)?),
    })
}

/// One client's thread: connects, waits for the others, runs the
/// workload. A failure stops every client.
fn client(
    shared: &Shared,
    addr: SocketAddr,
    index: usize,
    barrier: &Barrier,
) -> Result<ClientResult, Error> {
    let session = open(&shared.plan, addr, index);
    barrier.wait();
    barrier.wait();
    let result = session.and_then(|mut s| work(shared, s.as_mut(), index));
    if result.is_err() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    result.map_err(|e| error(format!("client {index}: {e}")))
}

fn work(shared: &Shared, session: &mut dyn Session, index: usize) -> io::Result<ClientResult> {
    let plan = &shared.plan;
    let depth = plan.args.pipeline as usize;
    let samples_max = (SAMPLES_MAX / plan.args.clients as usize).max(10_000);
    let mut bodies = vec![vec![b'x'; plan.size]; depth];
    let mut result = ClientResult::default();
    let mut seq = 0u64;
    loop {
        let n = shared.claim();
        if n == 0 {
            break;
        }
        let sent = Instant::now();
        let samples = &mut result.samples;
        let mut done = || {
            if samples.len() < samples_max {
                samples.push(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
        };
        let got = match plan.args.workload {
            Workload::Put => {
                for body in &mut bodies[..n] {
                    stamp(body, index, seq);
                    seq += 1;
                }
                session.put(&bodies[..n], &mut done)?;
                n
            }
            Workload::ReserveDelete => {
                let got = session.reserve(n)?;
                session.settle(&mut done)?;
                got
            }
            Workload::Cycle => {
                for body in &mut bodies[..n] {
                    stamp(body, index, seq);
                    seq += 1;
                }
                session.put(&bodies[..n], &mut || {})?;
                let got = session.reserve(n)?;
                session.settle(&mut done)?;
                got
            }
        };
        result.ops += got as u64;
        result.empty += (n - got) as u64;
        result.end = Some(Instant::now());
        if got < n && plan.args.workload == Workload::ReserveDelete {
            // The queue ran dry.
            break;
        }
    }
    Ok(result)
}

/// The results of a run.
#[derive(Debug)]
struct Figures {
    ops: u64,
    empty: u64,
    elapsed: Duration,
    latency: Percentiles,
    client_cpu: Duration,
    server_cpu: Option<Duration>,
}

impl Figures {
    fn of(
        results: Vec<ClientResult>,
        started: Instant,
        client_cpu: Duration,
        server_cpu: Option<Duration>,
    ) -> Figures {
        let end = results
            .iter()
            .filter_map(|r| r.end)
            .max()
            .unwrap_or(started);
        let ops = results.iter().map(|r| r.ops).sum();
        let empty = results.iter().map(|r| r.empty).sum();
        let samples = results.into_iter().flat_map(|r| r.samples).collect();
        Figures {
            ops,
            empty,
            elapsed: end.duration_since(started),
            latency: Percentiles::of(samples),
            client_cpu,
            server_cpu,
        }
    }

    fn ops_per_s(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.ops as f64 / seconds
        } else {
            0.0
        }
    }

    /// CPU microseconds per operation and percent of one core.
    fn cpu(&self, cpu: Duration) -> (f64, f64) {
        let per_op = if self.ops > 0 {
            cpu.as_secs_f64() * 1e6 / self.ops as f64
        } else {
            0.0
        };
        let seconds = self.elapsed.as_secs_f64();
        let core = if seconds > 0.0 {
            100.0 * cpu.as_secs_f64() / seconds
        } else {
            0.0
        };
        (per_op, core)
    }

    fn print(&self, plan: &Plan, addr: SocketAddr) {
        let args = &plan.args;
        println!(
            "millpond bench --server {addr}: {}, {}, {} client(s), pipeline {}, {} payloads, queue {}",
            protocol_name(args.protocol),
            workload_name(args.workload),
            args.clients,
            args.pipeline,
            output::bytes(plan.size as u64),
            plan.queue
        );
        println!(
            "{} {} in {}: {} ops/s",
            output::count(self.ops),
            workload_unit(args.workload),
            output::duration(self.elapsed),
            output::count(self.ops_per_s().round() as u64)
        );
        println!("latency (batch sent to reply): {}", self.latency.text());
        let (per_op, core) = self.cpu(self.client_cpu);
        println!(
            "client CPU {:.2}s: {core:.0}% of a core, {per_op:.1} µs/op",
            self.client_cpu.as_secs_f64()
        );
        if let Some(server_cpu) = self.server_cpu {
            let (per_op, core) = self.cpu(server_cpu);
            println!(
                "server CPU {:.2}s: {core:.0}% of a core, {per_op:.1} µs/op",
                server_cpu.as_secs_f64()
            );
        }
        if self.empty > 0 {
            println!(
                "{} found the queue empty",
                output::plural(self.empty, "reserve")
            );
        }
    }

    fn to_json(&self, plan: &Plan, addr: SocketAddr) -> Value {
        let args = &plan.args;
        let (client_us_per_op, client_core_pct) = self.cpu(self.client_cpu);
        let server = self.server_cpu.map(|cpu| {
            let (us_per_op, core_pct) = self.cpu(cpu);
            json!({
                "cpu_s": cpu.as_secs_f64(),
                "cpu_us_per_op": us_per_op,
                "core_pct": core_pct,
            })
        });
        json!({
            "server": addr.to_string(),
            "protocol": protocol_name(args.protocol),
            "workload": workload_name(args.workload),
            "clients": args.clients,
            "pipeline": args.pipeline,
            "message_bytes": plan.size,
            "queue": plan.queue,
            "ops": self.ops,
            "empty_reserves": self.empty,
            "elapsed_ms": self.elapsed.as_secs_f64() * 1e3,
            "ops_per_s": self.ops_per_s(),
            "latency_us": self.latency.to_json(),
            "client_cpu": {
                "cpu_s": self.client_cpu.as_secs_f64(),
                "cpu_us_per_op": client_us_per_op,
                "core_pct": client_core_pct,
            },
            "server_cpu": server,
        })
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Beanstalk => "beanstalk",
        Protocol::RedisList => "redis-list",
        Protocol::RedisStream => "redis-stream",
        Protocol::Nats => "nats",
    }
}

fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Put => "put",
        Workload::ReserveDelete => "reserve-delete",
        Workload::Cycle => "cycle",
    }
}

fn workload_unit(w: Workload) -> &'static str {
    match w {
        Workload::Put => "puts",
        Workload::ReserveDelete => "reserve+deletes",
        Workload::Cycle => "put+reserve+delete cycles",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(count: Option<u64>, duration: Option<Duration>, pipeline: u32) -> Shared {
        let args = ServerArgs {
            server: Some("127.0.0.1:1".into()),
            protocol: Protocol::Beanstalk,
            workload: Workload::Put,
            clients: 1,
            pipeline,
            priority: 1024,
            server_pid: None,
        };
        Shared {
            plan: Plan {
                args,
                count,
                duration,
                size: 100,
                queue: "q".into(),
                json: false,
            },
            claimed: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            deadline: OnceLock::new(),
        }
    }

    #[test]
    fn a_count_is_claimed_a_pipeline_at_a_time_and_never_exceeded() {
        let s = shared(Some(10), None, 4);
        let claims: Vec<usize> = (0..5).map(|_| s.claim()).collect();
        assert_eq!(claims, [4, 4, 2, 0, 0]);
        let stopped = shared(Some(10), None, 4);
        stopped.stop.store(true, Ordering::Relaxed);
        assert_eq!(stopped.claim(), 0);
    }

    #[test]
    fn a_duration_claims_until_its_deadline() {
        let s = shared(None, Some(Duration::from_secs(60)), 16);
        s.deadline
            .set(Instant::now() + Duration::from_secs(60))
            .unwrap();
        assert_eq!((s.claim(), s.claim()), (16, 16));
        let over = shared(None, Some(Duration::ZERO), 16);
        over.deadline.set(Instant::now()).unwrap();
        assert_eq!(over.claim(), 0);
    }

    #[test]
    fn stamps_make_payloads_differ() {
        let mut a = vec![b'x'; 20];
        stamp(&mut a, 3, 0x1f);
        assert_eq!(&a, b"000003000000001fxxxx");
        let mut short = vec![b'x'; 4];
        stamp(&mut short, 3, 1);
        assert_eq!(&short, b"0000");
    }
}
