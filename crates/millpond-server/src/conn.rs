//! One client connection: reads commands, answers them in order.
//!
//! Everything that arrived is parsed before anything is written, so a
//! pipelined burst costs one read and one write. `put` and `delete` are
//! handed to the tube's writer threads and answered when their batch is
//! done; any other command first waits for those answers, so replies keep
//! the order of the commands. A `reserve` that has to wait writes the
//! replies before it first, then waits for a wake-up from a put, release
//! or kick into a watched tube, a delay or lease falling due, a pause
//! ending, its own timeout or `DEADLINE_SOON`.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use millpond::{Delivery, Error as EngineError, MessageState, Peeked, PushOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot, watch};

use crate::broker::{Broker, JOB_HEADER_BYTES, job_header, put_seq, split_payload, unix_ms};
use crate::proto::{self, Command, LINE_BYTES_MAX, Op, Parsed};
use crate::tubes::{Tube, TubeError, job_id, split_job_id};
use crate::writer::{self, DeleteReq, PutOutcome, PutReq};

/// A reserved job enters its safety margin this long before its TTR ends.
const SAFETY_MARGIN: Duration = Duration::from_secs(1);
/// The lease a reserve starts with, before the job's own TTR (read from
/// the job) replaces it.
const LEASE_INITIAL: Duration = Duration::from_secs(120);
/// Longest TTR kept; longer ones are cut to the engine's lease limit.
const TTR_MAX_S: u32 = 30 * 24 * 3600;
/// Output written before parsing more of a burst.
const OUT_FLUSH_BYTES: usize = 256 << 10;
/// A client whose replies cannot be written for this long (it does not
/// read them) is disconnected.
const WRITE_STALL_MAX: Duration = Duration::from_secs(30);

/// A reservation this connection holds.
#[derive(Debug)]
struct Held {
    tube: Arc<Tube>,
    message: u64,
    ttr: Duration,
    deadline: Instant,
    priority: u32,
}

/// A reply that is not known yet.
enum Pending {
    Put(oneshot::Receiver<PutOutcome>),
    Delete(u64, oneshot::Receiver<Result<bool, ()>>),
    /// Run by the connection itself when settled ([`Writers::inline`]):
    /// consecutive deletes from one tube go in one batch.
    ///
    /// [`Writers::inline`]: crate::writer::Writers::inline
    DeleteNow {
        job: u64,
        tube: Arc<Tube>,
        message: u64,
        reserved_ok: bool,
    },
}

enum Mode {
    /// Reading a command line.
    Command,
    /// Discarding an overlong line up to its end.
    EndLine,
    /// Discarding a body, then replying.
    Discard(u64, &'static [u8]),
    /// Waiting for a put body of this many bytes (with `\r\n`).
    Body {
        priority: u32,
        delay_s: u32,
        ttr_s: u32,
        bytes: usize,
    },
}

enum Flow {
    Go,
    Close,
}

struct Conn {
    id: u64,
    broker: Arc<Broker>,
    used: Arc<Tube>,
    watched: Vec<Arc<Tube>>,
    held: HashMap<u64, Held>,
    producer: bool,
    worker: bool,
    notify: Arc<Notify>,
    pending: VecDeque<Pending>,
    out: Vec<u8>,
    /// Tubes this connection has named by number (saves the registry
    /// lock on every job id).
    known: HashMap<u32, Arc<Tube>>,
}

/// Serves one connection until it closes, errs, or shutdown is asked.
pub async fn serve(broker: Arc<Broker>, stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let default = match broker.tubes.by_name("default") {
        Ok(t) => t,
        Err(_) => return,
    };
    default.using.fetch_add(1, Ordering::Relaxed);
    default.watching.fetch_add(1, Ordering::Relaxed);
    let mut c = Conn {
        id: broker.connection_id(),
        broker: broker.clone(),
        used: default.clone(),
        watched: vec![default],
        held: HashMap::new(),
        producer: false,
        worker: false,
        notify: Arc::new(Notify::new()),
        pending: VecDeque::new(),
        out: Vec::with_capacity(4096),
        known: HashMap::new(),
    };
    tracing::debug!(conn = c.id, ?peer, "connected");
    let (mut rd, mut wr) = stream.into_split();
    let r = c.run(&mut rd, &mut wr, &mut shutdown).await;
    if let Err(e) = r {
        tracing::debug!(conn = c.id, error = %e, "connection ended");
    }
    c.finish().await;
    tracing::debug!(conn = c.id, "closed");
}

impl Conn {
    async fn run(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        shutdown: &mut watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let cfg = &self.broker.config;
        let in_max = (cfg.max_job_bytes as usize + 2 + LINE_BYTES_MAX).max(64 << 10);
        let mut inbuf: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut start = 0usize;
        let mut mode = Mode::Command;
        loop {
            // Answer everything complete in the buffer.
            loop {
                let avail = &inbuf[start..];
                match mode {
                    Mode::Command | Mode::EndLine => {
                        let Some(n) = proto::line_end(avail) else {
                            if avail.len() >= LINE_BYTES_MAX {
                                start += LINE_BYTES_MAX;
                                mode = Mode::EndLine;
                                continue;
                            }
                            break;
                        };
                        start += n;
                        if matches!(mode, Mode::EndLine) {
                            mode = Mode::Command;
                            self.error(proto::BAD_FORMAT);
                            continue;
                        }
                        let line = &avail[..n - 2];
                        match proto::parse(line, self.broker.config.max_job_bytes) {
                            Parsed::Reply(r) => self.error(r),
                            Parsed::TooBig { bytes } => {
                                self.broker.count(Op::Put);
                                mode = Mode::Discard(bytes, proto::JOB_TOO_BIG);
                            }
                            Parsed::Command(Command::Put {
                                priority,
                                delay_s,
                                ttr_s,
                                bytes,
                            }) => {
                                self.broker.count(Op::Put);
                                mode = Mode::Body {
                                    priority,
                                    delay_s,
                                    ttr_s,
                                    bytes: bytes as usize + 2,
                                };
                            }
                            Parsed::Command(cmd) => {
                                self.broker.count(cmd.op());
                                let is_batched = matches!(cmd, Command::Delete(_));
                                if !is_batched {
                                    self.settle_pending().await;
                                }
                                let flow = match cmd {
                                    Command::Reserve(timeout) => {
                                        self.reserve(timeout, rd, wr, shutdown).await?
                                    }
                                    Command::ReserveForever => {
                                        self.reserve(None, rd, wr, shutdown).await?
                                    }
                                    cmd => self.exec(cmd).await,
                                };
                                if let Flow::Close = flow {
                                    self.settle_pending().await;
                                    write_out(wr, &mut self.out).await?;
                                    return Ok(());
                                }
                            }
                        }
                    }
                    Mode::Discard(left, reply) => {
                        let take = (avail.len() as u64).min(left);
                        start += take as usize;
                        if take == left {
                            mode = Mode::Command;
                            self.error(reply);
                        } else {
                            mode = Mode::Discard(left - take, reply);
                            break;
                        }
                    }
                    Mode::Body {
                        priority,
                        delay_s,
                        ttr_s,
                        bytes,
                    } => {
                        if avail.len() < bytes {
                            break;
                        }
                        start += bytes;
                        mode = Mode::Command;
                        let body = &avail[..bytes];
                        self.put(priority, delay_s, ttr_s, body);
                    }
                }
                if self.out.len() >= OUT_FLUSH_BYTES {
                    self.settle_pending().await;
                    write_out(wr, &mut self.out).await?;
                }
            }
            self.settle_pending().await;
            write_out(wr, &mut self.out).await?;
            // Keep what is left at the front, then read more.
            if start > 0 {
                inbuf.drain(..start);
                start = 0;
            }
            let want = match mode {
                Mode::Body { bytes, .. } => bytes,
                _ => LINE_BYTES_MAX,
            };
            if inbuf.capacity() - inbuf.len() < (16 << 10) {
                inbuf.reserve((want.min(in_max)).max(16 << 10));
            }
            if let Mode::Discard(..) = mode {
                inbuf.clear();
            }
            tokio::select! {
                r = rd.read_buf(&mut inbuf) => {
                    if r? == 0 {
                        return Ok(());
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Records an error reply.
    fn error(&mut self, reply: &'static [u8]) {
        self.broker.errors.fetch_add(1, Ordering::Relaxed);
        self.out.extend_from_slice(reply);
    }

    fn put(&mut self, priority: u32, delay_s: u32, ttr_s: u32, body: &[u8]) {
        if !body.ends_with(b"\r\n") {
            self.error(proto::EXPECTED_CRLF);
            return;
        }
        if self.broker.draining.load(Ordering::Relaxed) {
            self.error(proto::DRAINING);
            return;
        }
        if !self.producer {
            self.producer = true;
            self.broker.producers.fetch_add(1, Ordering::Relaxed);
        }
        let ttr_s = ttr_s.clamp(1, TTR_MAX_S);
        let data = &body[..body.len() - 2];
        let mut payload = Vec::with_capacity(JOB_HEADER_BYTES + data.len());
        payload.extend_from_slice(&job_header(ttr_s, delay_s, self.broker.next_put_seq()));
        payload.extend_from_slice(data);
        let opts = PushOptions {
            priority,
            delay: Duration::from_secs(u64::from(delay_s)),
        };
        let (tx, rx) = oneshot::channel();
        let req = PutReq {
            payload,
            opts,
            reply: tx,
        };
        if self.used.writers.put(req) {
            self.pending.push_back(Pending::Put(rx));
        } else {
            self.error(proto::DRAINING);
        }
    }

    /// Runs the puts and deletes this connection holds and writes the
    /// answers of batched commands, in order.
    async fn settle_pending(&mut self) {
        while let Some(p) = self.pending.pop_front() {
            match p {
                Pending::Put(rx) => {
                    let outcome = rx.await.unwrap_or(PutOutcome::Internal);
                    self.put_reply(outcome);
                }
                Pending::Delete(job, rx) => {
                    let outcome = rx.await.unwrap_or(Err(()));
                    self.delete_reply(job, outcome);
                }
                Pending::DeleteNow {
                    job,
                    tube,
                    message,
                    reserved_ok,
                } => {
                    let mut jobs = vec![job];
                    let mut ids = vec![(message, reserved_ok)];
                    while let Some(Pending::DeleteNow { tube: t, .. }) = self.pending.front()
                        && Arc::ptr_eq(t, &tube)
                    {
                        if let Some(Pending::DeleteNow {
                            job,
                            message,
                            reserved_ok,
                            ..
                        }) = self.pending.pop_front()
                        {
                            jobs.push(job);
                            ids.push((message, reserved_ok));
                        }
                    }
                    match writer::delete_batch(&tube, &ids) {
                        Ok(done) => {
                            for (job, ok) in jobs.into_iter().zip(done) {
                                self.delete_reply(job, Ok(ok));
                            }
                        }
                        Err(()) => {
                            for job in jobs {
                                self.delete_reply(job, Err(()));
                            }
                        }
                    }
                }
            }
        }
    }

    fn put_reply(&mut self, outcome: PutOutcome) {
        match outcome {
            PutOutcome::Inserted(id) => {
                self.broker.puts_total.fetch_add(1, Ordering::Relaxed);
                let _ = write!(Buf(&mut self.out), "INSERTED {id}\r\n");
            }
            PutOutcome::OutOfMemory => self.error(proto::OUT_OF_MEMORY),
            PutOutcome::Internal => self.error(proto::INTERNAL_ERROR),
        }
    }

    fn delete_reply(&mut self, job: u64, outcome: Result<bool, ()>) {
        match outcome {
            Ok(true) => {
                self.held.remove(&job);
                self.broker.deletes_total.fetch_add(1, Ordering::Relaxed);
                self.out.extend_from_slice(b"DELETED\r\n");
            }
            Ok(false) => {
                self.held.remove(&job);
                self.out.extend_from_slice(proto::NOT_FOUND);
            }
            Err(()) => self.error(proto::INTERNAL_ERROR),
        }
    }

    /// The tube of a job id, if it exists.
    fn tube_of(&mut self, job: u64) -> Option<(Arc<Tube>, u64)> {
        let (number, message) = split_job_id(job);
        if message == 0 {
            return None;
        }
        if let Some(t) = self.known.get(&number) {
            return Some((t.clone(), message));
        }
        let tube = self.broker.tubes.by_number(number).ok().flatten()?;
        if self.known.len() < 64 {
            self.known.insert(number, tube.clone());
        }
        Some((tube, message))
    }

    fn tube_named(&mut self, name: &str) -> Option<Arc<Tube>> {
        match self.broker.tubes.by_name(name) {
            Ok(t) => Some(t),
            Err(TubeError::Full) => {
                self.error(proto::OUT_OF_MEMORY);
                None
            }
            Err(TubeError::Engine(e)) => {
                tracing::error!(error = %e, tube = name, "opening tube failed");
                self.error(proto::INTERNAL_ERROR);
                None
            }
        }
    }

    fn engine_error(&mut self, e: &EngineError) {
        tracing::error!(conn = self.id, error = %e, "engine error");
        self.error(proto::INTERNAL_ERROR);
    }

    /// `FOUND`/`RESERVED <id> <bytes>\r\n<body>\r\n`.
    fn job_reply(&mut self, word: &str, job: u64, payload: &[u8]) {
        let (_, _, body) = split_payload(payload);
        let _ = write!(Buf(&mut self.out), "{word} {job} {}\r\n", body.len());
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\r\n");
    }

    fn yaml_reply(&mut self, body: &str) {
        let _ = write!(Buf(&mut self.out), "OK {}\r\n", body.len());
        self.out.extend_from_slice(body.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn peek_reply(&mut self, tube: &Tube, r: millpond::Result<Option<Peeked>>) {
        match r {
            Ok(Some(p)) => self.job_reply("FOUND", job_id(tube.number, p.id), &p.payload),
            Ok(None) => self.out.extend_from_slice(proto::NOT_FOUND),
            Err(e) => self.engine_error(&e),
        }
    }

    /// Takes a delivery: the job's TTR becomes its lease, the connection
    /// holds it.
    fn take(&mut self, tube: &Arc<Tube>, d: &Delivery) -> u64 {
        let (ttr_s, _, _) = split_payload(&d.payload);
        let ttr = Duration::from_secs(u64::from(ttr_s.clamp(1, TTR_MAX_S)));
        if ttr != LEASE_INITIAL {
            let _ = tube.group.touch(d.id, ttr);
        }
        tube.owners
            .lock()
            .expect("owners lock")
            .insert(d.id, self.id);
        let job = job_id(tube.number, d.id);
        self.held.insert(
            job,
            Held {
                tube: tube.clone(),
                message: d.id,
                ttr,
                deadline: Instant::now() + ttr,
                priority: d.priority,
            },
        );
        job
    }

    /// Whether this connection holds `job` (its reservation not run out).
    fn holds(&self, job: u64) -> Option<&Held> {
        self.held.get(&job).filter(|h| {
            h.tube.owners.lock().expect("owners lock").get(&h.message) == Some(&self.id)
        })
    }

    /// Drops reservations whose TTR ended; returns the soonest deadline
    /// left.
    fn prune_held(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let before = self.held.len();
        self.held.retain(|_, h| h.deadline > now);
        let expired = before - self.held.len();
        if expired > 0 {
            self.broker
                .timeouts
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
        self.held.values().map(|h| h.deadline).min()
    }

    /// One attempt to reserve from the watched tubes: the best (priority,
    /// id) among those not paused.
    fn try_reserve(&mut self) -> millpond::Result<Option<(Arc<Tube>, Delivery)>> {
        if let [tube] = self.watched.as_slice() {
            // The common case, without allocating.
            if tube.paused_until().is_some() {
                return Ok(None);
            }
            return Ok(tube
                .group
                .reserve(LEASE_INITIAL)?
                .map(|d| (tube.clone(), d)));
        }
        let candidates: Vec<Arc<Tube>> = self
            .watched
            .iter()
            .filter(|t| t.paused_until().is_none())
            .cloned()
            .collect();
        let tube = match candidates.len() {
            0 => return Ok(None),
            1 => candidates[0].clone(),
            _ => {
                // beanstalkd takes the lowest (priority, id), and its ids
                // follow put order across tubes: here, (priority, put
                // sequence, id).
                let mut best: Option<((u32, u64, u64), Arc<Tube>)> = None;
                for t in &candidates {
                    if let Some(p) = t.group.peek_ready()? {
                        let key = (p.priority, put_seq(&p.payload), job_id(t.number, p.id));
                        if best.as_ref().is_none_or(|(k, _)| key < *k) {
                            best = Some((key, t.clone()));
                        }
                    }
                }
                match best {
                    Some((_, t)) => t,
                    None => return Ok(None),
                }
            }
        };
        Ok(tube.group.reserve(LEASE_INITIAL)?.map(|d| (tube, d)))
    }

    async fn reserve(
        &mut self,
        timeout: Option<u32>,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        shutdown: &mut watch::Receiver<bool>,
    ) -> std::io::Result<Flow> {
        if !self.worker {
            self.worker = true;
            self.broker.workers.fetch_add(1, Ordering::Relaxed);
        }
        let until = timeout.map(|t| Instant::now() + Duration::from_secs(u64::from(t)));
        for t in &self.watched {
            t.add_waiter(&self.notify);
        }
        let mut waiting = false;
        let mut data_seen = false;
        let result = loop {
            let soonest = self.prune_held();
            let deadline_soon = soonest.is_some_and(|d| Instant::now() + SAFETY_MARGIN >= d);
            match self.try_reserve() {
                Ok(Some((tube, d))) => {
                    let job = self.take(&tube, &d);
                    self.job_reply("RESERVED", job, &d.payload);
                    break Flow::Go;
                }
                Ok(None) => {}
                Err(e) => {
                    self.engine_error(&e);
                    break Flow::Go;
                }
            }
            if deadline_soon {
                self.out.extend_from_slice(proto::DEADLINE_SOON);
                break Flow::Go;
            }
            let now = Instant::now();
            if until.is_some_and(|u| now >= u) {
                self.out.extend_from_slice(proto::TIMED_OUT);
                break Flow::Go;
            }
            let mut wake = until.unwrap_or(now + Duration::from_secs(3600));
            if let Some(s) = soonest {
                wake = wake.min(s.checked_sub(SAFETY_MARGIN).unwrap_or(now));
            }
            let now_ms = unix_ms();
            for t in &self.watched {
                if let Ok(Some(due)) = t.group.next_due_ms() {
                    wake = wake.min(now + Duration::from_millis(due.saturating_sub(now_ms)));
                }
                if let Some(p) = t.paused_until() {
                    wake = wake.min(p);
                }
            }
            if !waiting {
                waiting = true;
                self.broker.waiting.fetch_add(1, Ordering::Relaxed);
                for t in &self.watched {
                    t.waiting.fetch_add(1, Ordering::Relaxed);
                }
                write_out(wr, &mut self.out).await?;
            }
            let mut probe = [0u8; 1];
            tokio::select! {
                () = self.notify.notified() => {}
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
                r = rd.peek_or_eof(&mut probe), if !data_seen => {
                    if r {
                        // The client closed its side: beanstalkd answers
                        // TIMED_OUT and then closes.
                        self.out.extend_from_slice(proto::TIMED_OUT);
                        break Flow::Close;
                    }
                    // Data arrived: it waits in the socket until the
                    // reserve is answered.
                    data_seen = true;
                }
                _ = shutdown.changed() => break Flow::Close,
            }
        };
        for t in &self.watched {
            t.remove_waiter(&self.notify);
            if waiting {
                t.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if waiting {
            self.broker.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(result)
    }

    async fn exec(&mut self, cmd: Command<'_>) -> Flow {
        match cmd {
            Command::Put { .. } | Command::Reserve(_) | Command::ReserveForever => {
                unreachable!("handled by the caller")
            }
            Command::Quit => return Flow::Close,
            Command::Delete(job) => {
                let Some((tube, message)) = self.tube_of(job) else {
                    self.out.extend_from_slice(proto::NOT_FOUND);
                    return Flow::Go;
                };
                let reserved_ok = self.holds(job).is_some();
                if tube.writers.inline() {
                    self.pending.push_back(Pending::DeleteNow {
                        job,
                        tube,
                        message,
                        reserved_ok,
                    });
                    return Flow::Go;
                }
                let (tx, rx) = oneshot::channel();
                let req = DeleteReq {
                    message,
                    reserved_ok,
                    reply: tx,
                };
                if tube.writers.delete(req) {
                    self.pending.push_back(Pending::Delete(job, rx));
                } else {
                    self.error(proto::INTERNAL_ERROR);
                }
            }
            Command::Peek(job) => match self.tube_of(job) {
                Some((tube, message)) => {
                    let r = tube.group.peek(message);
                    self.peek_reply(&tube, r);
                }
                None => self.out.extend_from_slice(proto::NOT_FOUND),
            },
            Command::PeekReady => {
                let tube = self.used.clone();
                let r = tube.group.peek_ready();
                self.peek_reply(&tube, r);
            }
            Command::PeekDelayed => {
                let tube = self.used.clone();
                let r = tube.group.peek_delayed();
                self.peek_reply(&tube, r);
            }
            Command::PeekBuried => {
                let tube = self.used.clone();
                let r = tube.group.peek_buried();
                self.peek_reply(&tube, r);
            }
            Command::ReserveJob(job) => {
                let Some((tube, message)) = self.tube_of(job) else {
                    self.out.extend_from_slice(proto::NOT_FOUND);
                    return Flow::Go;
                };
                if !self.worker {
                    self.worker = true;
                    self.broker.workers.fetch_add(1, Ordering::Relaxed);
                }
                match tube.group.reserve_id(message, LEASE_INITIAL) {
                    Ok(Some(d)) => {
                        let job = self.take(&tube, &d);
                        self.job_reply("RESERVED", job, &d.payload);
                    }
                    Ok(None) => self.out.extend_from_slice(proto::NOT_FOUND),
                    Err(e) => self.engine_error(&e),
                }
            }
            Command::Release {
                id,
                priority,
                delay_s,
            } => {
                let Some(h) = self.holds(id) else {
                    self.out.extend_from_slice(proto::NOT_FOUND);
                    return Flow::Go;
                };
                let (tube, message) = (h.tube.clone(), h.message);
                let delay = Duration::from_secs(u64::from(delay_s));
                let g = tube.group.clone();
                let r = blocking(move || g.release(message, priority, delay)).await;
                self.settled(id, &tube, r, b"RELEASED\r\n");
                tube.wake();
            }
            Command::Bury { id, priority } => {
                let Some(h) = self.holds(id) else {
                    self.out.extend_from_slice(proto::NOT_FOUND);
                    return Flow::Go;
                };
                let (tube, message) = (h.tube.clone(), h.message);
                let g = tube.group.clone();
                let r = blocking(move || g.bury_with(message, priority)).await;
                self.settled(id, &tube, r, b"BURIED\r\n");
            }
            Command::Touch(job) => {
                let Some(h) = self.holds(job) else {
                    self.out.extend_from_slice(proto::NOT_FOUND);
                    return Flow::Go;
                };
                let (tube, message, ttr) = (h.tube.clone(), h.message, h.ttr);
                match tube.group.touch(message, ttr) {
                    Ok(()) => {
                        if let Some(h) = self.held.get_mut(&job) {
                            h.deadline = Instant::now() + ttr;
                        }
                        self.out.extend_from_slice(b"TOUCHED\r\n");
                    }
                    Err(EngineError::NotReserved { .. }) => {
                        self.held.remove(&job);
                        self.out.extend_from_slice(proto::NOT_FOUND);
                    }
                    Err(e) => self.engine_error(&e),
                }
            }
            Command::Kick(n) => {
                let g = self.used.group.clone();
                let n = n as usize;
                let r = blocking(move || match g.kick(n)? {
                    0 => g.kick_delayed(n),
                    k => Ok(k),
                })
                .await;
                match r {
                    Ok(k) => {
                        let _ = write!(Buf(&mut self.out), "KICKED {k}\r\n");
                        self.used.wake();
                    }
                    Err(e) => self.engine_error(&e),
                }
            }
            Command::KickJob(job) => {
                let Some((tube, message)) = self.tube_of(job) else {
                    self.out.extend_from_slice(proto::NOT_FOUND);
                    return Flow::Go;
                };
                let g = tube.group.clone();
                match blocking(move || g.kick_id(message)).await {
                    Ok(()) => {
                        self.out.extend_from_slice(b"KICKED\r\n");
                        tube.wake();
                    }
                    Err(EngineError::NotBuried { .. }) => {
                        self.out.extend_from_slice(proto::NOT_FOUND);
                    }
                    Err(e) => self.engine_error(&e),
                }
            }
            Command::Stats => {
                let b = self.broker.clone();
                let body = blocking(move || Ok(b.stats_yaml()))
                    .await
                    .unwrap_or_default();
                self.yaml_reply(&body);
            }
            Command::StatsJob(job) => {
                let Some((tube, message)) = self.tube_of(job) else {
                    self.out.extend_from_slice(proto::NOT_FOUND);
                    return Flow::Go;
                };
                match tube.group.peek(message) {
                    Ok(Some(p)) => {
                        let body = job_yaml(job, &tube, &p);
                        self.yaml_reply(&body);
                    }
                    Ok(None) => self.out.extend_from_slice(proto::NOT_FOUND),
                    Err(e) => self.engine_error(&e),
                }
            }
            Command::StatsTube(name) => match self.broker.tubes.find_live(name) {
                Some(t) => {
                    let body = self.broker.tube_yaml(&t);
                    self.yaml_reply(&body);
                }
                None => self.out.extend_from_slice(proto::NOT_FOUND),
            },
            Command::ListTubes => {
                let mut body = String::from("---\n");
                for t in self.broker.tubes.all() {
                    if t.is_live() {
                        let _ = writeln!(body, "- {}", t.name);
                    }
                }
                self.yaml_reply(&body);
            }
            Command::ListTubeUsed => {
                let _ = write!(Buf(&mut self.out), "USING {}\r\n", self.used.name);
            }
            Command::ListTubesWatched => {
                let mut body = String::from("---\n");
                for t in &self.watched {
                    let _ = writeln!(body, "- {}", t.name);
                }
                self.yaml_reply(&body);
            }
            Command::Use(name) => {
                let Some(t) = self.tube_named(name) else {
                    return Flow::Go;
                };
                t.using.fetch_add(1, Ordering::Relaxed);
                self.used.using.fetch_sub(1, Ordering::Relaxed);
                self.used = t;
                let _ = write!(Buf(&mut self.out), "USING {}\r\n", self.used.name);
            }
            Command::Watch(name) => {
                let Some(t) = self.tube_named(name) else {
                    return Flow::Go;
                };
                if !self.watched.iter().any(|w| Arc::ptr_eq(w, &t)) {
                    t.watching.fetch_add(1, Ordering::Relaxed);
                    self.watched.push(t);
                }
                let _ = write!(Buf(&mut self.out), "WATCHING {}\r\n", self.watched.len());
            }
            Command::Ignore(name) => {
                if let Some(i) = self.watched.iter().position(|t| t.name == name) {
                    if self.watched.len() < 2 {
                        self.out.extend_from_slice(proto::NOT_IGNORED);
                        return Flow::Go;
                    }
                    let t = self.watched.remove(i);
                    t.watching.fetch_sub(1, Ordering::Relaxed);
                }
                let _ = write!(Buf(&mut self.out), "WATCHING {}\r\n", self.watched.len());
            }
            Command::PauseTube { name, delay_s } => match self.broker.tubes.find_live(name) {
                Some(t) => {
                    let d = if delay_s == 0 {
                        Duration::from_nanos(1)
                    } else {
                        Duration::from_secs(u64::from(delay_s))
                    };
                    *t.paused.lock().expect("pause lock") = Some((Instant::now() + d, d));
                    t.pauses.fetch_add(1, Ordering::Relaxed);
                    t.wake();
                    self.out.extend_from_slice(b"PAUSED\r\n");
                }
                None => self.out.extend_from_slice(proto::NOT_FOUND),
            },
        }
        Flow::Go
    }

    /// The reply of a release or bury.
    fn settled(&mut self, job: u64, tube: &Tube, r: millpond::Result<()>, ok: &[u8]) {
        match r {
            Ok(()) => {
                let h = self.held.remove(&job);
                if let Some(h) = h {
                    tube.owners.lock().expect("owners lock").remove(&h.message);
                }
                self.out.extend_from_slice(ok);
            }
            Err(EngineError::NotReserved { .. }) => {
                self.held.remove(&job);
                self.out.extend_from_slice(proto::NOT_FOUND);
            }
            Err(e) => self.engine_error(&e),
        }
    }

    /// The connection is gone: its reservations go back to ready, its
    /// counts come off.
    async fn finish(&mut self) {
        self.settle_pending().await;
        let held: Vec<Held> = self.held.drain().map(|(_, h)| h).collect();
        for h in held {
            let mine = {
                let mut owners = h.tube.owners.lock().expect("owners lock");
                if owners.get(&h.message) == Some(&self.id) {
                    owners.remove(&h.message);
                    true
                } else {
                    false
                }
            };
            if !mine || h.deadline <= Instant::now() {
                continue;
            }
            let g = h.tube.group.clone();
            let (message, priority) = (h.message, h.priority);
            match blocking(move || g.release(message, priority, Duration::ZERO)).await {
                Ok(()) | Err(EngineError::NotReserved { .. }) => h.tube.wake(),
                Err(e) => tracing::warn!(conn = self.id, error = %e, "releasing on close failed"),
            }
        }
        self.used.using.fetch_sub(1, Ordering::Relaxed);
        for t in &self.watched {
            t.watching.fetch_sub(1, Ordering::Relaxed);
        }
        if self.producer {
            self.broker.producers.fetch_sub(1, Ordering::Relaxed);
        }
        if self.worker {
            self.broker.workers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The body of `stats-job`.
fn job_yaml(job: u64, tube: &Tube, p: &Peeked) -> String {
    let now = unix_ms();
    let (ttr_s, delay_s, _) = split_payload(&p.payload);
    let (state, left_ms) = match p.state {
        MessageState::Ready => ("ready", 0),
        MessageState::Delayed(t) => ("delayed", t.saturating_sub(now)),
        MessageState::Reserved(t) => ("reserved", t.saturating_sub(now)),
        MessageState::Buried => ("buried", 0),
    };
    format!(
        "---\nid: {job}\ntube: {}\nstate: {state}\npri: {}\nage: {}\ndelay: {delay_s}\n\
         ttr: {ttr_s}\ntime-left: {}\nfile: 0\nreserves: {}\ntimeouts: 0\nreleases: 0\n\
         buries: 0\nkicks: 0\n",
        tube.name,
        p.priority,
        now.saturating_sub(p.enqueued_ms) / 1000,
        left_ms / 1000,
        p.attempts,
    )
}

/// Runs an engine call that may wait for an fsync off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> millpond::Result<T> + Send + 'static,
) -> millpond::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(_) => Err(EngineError::Closed),
    }
}

async fn write_out(wr: &mut OwnedWriteHalf, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(WRITE_STALL_MAX, wr.write_all(out)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client does not read its replies",
            ));
        }
    }
    out.clear();
    Ok(())
}

/// `fmt::Write` into a byte buffer.
struct Buf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Waiting for the peer to close while a reserve blocks.
trait PeekOrEof {
    /// Resolves true at end of stream (or an error), false when data is
    /// readable.
    async fn peek_or_eof(&mut self, probe: &mut [u8; 1]) -> bool;
}

impl PeekOrEof for OwnedReadHalf {
    async fn peek_or_eof(&mut self, probe: &mut [u8; 1]) -> bool {
        !matches!(self.peek(probe).await, Ok(n) if n > 0)
    }
}
