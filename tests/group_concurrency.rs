//! Many producers and many consumers of one group at once, no failures
//! injected: every message is delivered and acked exactly once.
//!
//! 8 producer threads push messages whose payload names (producer, seq);
//! 8 consumer threads of group "default" reserve and ack them concurrently
//! with the pushes. Every delivery is checked against what was pushed
//! (payload bytes, id, attempt 1), and per-message flags catch a second
//! delivery or a second ack; at the end no message may be missing, and the
//! group's figures must agree, also after a reopen.
//!
//! - `buffered_batches`: `Durability::Buffered`, producers `push_batch` 100
//!   at a time, consumers `reserve_batch(64)` and `ack_batch`; 1,000,000
//!   messages of 16–100 bytes. Measured on 2 cores: about 10 s in a debug
//!   build (the default CI run), about 1.2 s in release, so the count is
//!   not scaled down for debug builds.
//! - `sync_singles`: `Durability::Sync`, one `push` per message, consumers
//!   `reserve_timeout` and `ack` one at a time, 50,000 messages.
//!
//! Both print their runtime and rate (visible with `--nocapture`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use millpond::{Delivery, Durability, Group, Queue, Store};
use millpond_suite::{FsKind, Place};

const PRODUCERS: u64 = 8;
const CONSUMERS: usize = 8;
const LEASE: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_millis(100);
const PUSH_CHUNK: u64 = 100;
const RESERVE_BATCH: usize = 64;
/// Bytes of the (producer, seq) header of each payload.
const HEADER: usize = 12;
/// How long a run may take before the test reports a stall.
const DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Errors kept for the report (the count is kept in full).
const ERRORS_KEPT: usize = 20;

/// How producers push and consumers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `push_batch` / `reserve_batch` + `ack_batch`.
    Batches,
    /// `push` / `reserve_timeout` + `ack`, one message at a time.
    Singles,
}

/// The payload of message `seq` of `producer`: the two numbers, then
/// filler bytes derived from them, 16–100 bytes in all.
fn message(producer: u64, seq: u64) -> Vec<u8> {
    let mut x = (producer << 40 ^ seq).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = 16 + (x >> 32) as usize % 85;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(producer as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// What every thread shares.
struct Shared {
    total: u64,
    per_producer: u64,
    /// Id each message got from its push, 0 until the push returned.
    pushed_id: Vec<AtomicU64>,
    /// Id each message was delivered with, 0 until delivered.
    delivered_id: Vec<AtomicU64>,
    delivered: Vec<AtomicBool>,
    acked: Vec<AtomicBool>,
    acked_count: AtomicU64,
    deliveries: AtomicU64,
    errors: Mutex<(u64, Vec<String>)>,
    stop: AtomicBool,
}

impl Shared {
    fn new(total: u64) -> Shared {
        let flags = |n| (0..n).map(|_| AtomicBool::new(false)).collect();
        let ids = |n| (0..n).map(|_| AtomicU64::new(0)).collect();
        Shared {
            total,
            per_producer: total / PRODUCERS,
            pushed_id: ids(total),
            delivered_id: ids(total),
            delivered: flags(total),
            acked: flags(total),
            acked_count: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            errors: Mutex::new((0, Vec::new())),
            stop: AtomicBool::new(false),
        }
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        errors.0 += 1;
        if errors.1.len() < ERRORS_KEPT {
            errors.1.push(e);
        }
    }

    /// A fatal error: record it and stop every thread.
    fn fatal(&self, e: String) {
        self.error(e);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn index(&self, producer: u64, seq: u64) -> usize {
        (producer * self.per_producer + seq) as usize
    }

    /// Checks one delivery; returns its message index if it is one of ours.
    fn delivered(&self, d: &Delivery) -> Option<usize> {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        if d.payload.len() < HEADER {
            self.error(format!("id {}: payload of {} bytes", d.id, d.payload.len()));
            return None;
        }
        let producer = u64::from(u32::from_le_bytes(d.payload[..4].try_into().unwrap()));
        let seq = u64::from_le_bytes(d.payload[4..HEADER].try_into().unwrap());
        if producer >= PRODUCERS || seq >= self.per_producer {
            self.error(format!("id {}: unknown message ({producer}, {seq})", d.id));
            return None;
        }
        if d.payload != message(producer, seq) {
            self.error(format!(
                "id {}: payload of ({producer}, {seq}) differs",
                d.id
            ));
        }
        if d.attempt != 1 {
            self.error(format!(
                "id {}: ({producer}, {seq}) delivered with attempt {}",
                d.id, d.attempt
            ));
        }
        let i = self.index(producer, seq);
        self.delivered_id[i].store(d.id, Ordering::Relaxed);
        if self.delivered[i].swap(true, Ordering::Relaxed) {
            self.error(format!(
                "id {}: ({producer}, {seq}) delivered a second time (attempt {})",
                d.id, d.attempt
            ));
        }
        Some(i)
    }

    /// Marks messages acked after their ack returned.
    fn acked(&self, indexes: &[usize]) {
        for &i in indexes {
            if self.acked[i].swap(true, Ordering::Relaxed) {
                self.error(format!("message {i} acked a second time"));
            }
        }
        self.acked_count
            .fetch_add(indexes.len() as u64, Ordering::SeqCst);
    }

    fn done(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.acked_count.load(Ordering::SeqCst) >= self.total
    }
}

fn produce(q: &Queue, s: &Shared, producer: u64, mode: Mode) {
    let mut seq = 0;
    while seq < s.per_producer && !s.stop.load(Ordering::Relaxed) {
        let n = match mode {
            Mode::Batches => PUSH_CHUNK.min(s.per_producer - seq),
            Mode::Singles => 1,
        };
        let first = if n == 1 {
            q.push(message(producer, seq))
        } else {
            let batch: Vec<Vec<u8>> = (seq..seq + n).map(|k| message(producer, k)).collect();
            q.push_batch(&batch).map(|ids| {
                assert_eq!(ids.end - ids.start, n);
                ids.start
            })
        };
        match first {
            Ok(first) => {
                for k in 0..n {
                    s.pushed_id[s.index(producer, seq + k)].store(first + k, Ordering::Relaxed);
                }
            }
            Err(e) => return s.fatal(format!("producer {producer}: push at seq {seq}: {e}")),
        }
        seq += n;
    }
}

fn consume(g: &Group, s: &Shared, consumer: usize, mode: Mode) {
    while !s.done() {
        let got = match mode {
            Mode::Batches => match g.reserve_batch(RESERVE_BATCH, LEASE) {
                Ok(b) if !b.is_empty() => Ok(b),
                // Nothing ready: wait for a push (or the end).
                Ok(_) => g
                    .reserve_timeout(LEASE, WAIT)
                    .map(|d| d.into_iter().collect()),
                Err(e) => Err(e),
            },
            Mode::Singles => g
                .reserve_timeout(LEASE, WAIT)
                .map(|d| d.into_iter().collect()),
        };
        let batch: Vec<Delivery> = match got {
            Ok(b) => b,
            Err(e) => return s.fatal(format!("consumer {consumer}: reserve: {e}")),
        };
        if batch.is_empty() {
            continue;
        }
        let indexes: Vec<usize> = batch.iter().filter_map(|d| s.delivered(d)).collect();
        let ids: Vec<u64> = batch.iter().map(|d| d.id).collect();
        let acked = match mode {
            Mode::Batches => g.ack_batch(&ids),
            Mode::Singles => ids.iter().try_for_each(|&id| g.ack(id)),
        };
        if let Err(e) = acked {
            return s.fatal(format!("consumer {consumer}: ack of {ids:?}: {e}"));
        }
        s.acked(&indexes);
    }
}

fn run(total: u64, durability: Durability, mode: Mode) {
    assert_eq!(total % PRODUCERS, 0);
    let place = Place::new(FsKind::Real);
    let store = Store::open(&place.path, place.options.clone().durability(durability)).unwrap();
    let q = store.queue("jobs").unwrap();
    let g = q.group("default").unwrap();
    let s = Arc::new(Shared::new(total));
    let started = Instant::now();

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (q, s) = (q.clone(), s.clone());
            thread::spawn(move || produce(&q, &s, p, mode))
        })
        .collect();
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|c| {
            let (g, s) = (g.clone(), s.clone());
            thread::spawn(move || consume(&g, &s, c, mode))
        })
        .collect();

    // Wait for the end; on a stall, report instead of hanging (a thread
    // stuck inside the engine could not be joined).
    let deadline = started + DEADLINE;
    while !(producers.iter().all(|h| h.is_finished()) && consumers.iter().all(|h| h.is_finished()))
    {
        if Instant::now() > deadline {
            s.stop.store(true, Ordering::SeqCst);
            panic!(
                "{mode:?}: no end after {DEADLINE:?}: acked {} of {total}, {} deliveries, \
                 stats {:?}, errors {:?}",
                s.acked_count.load(Ordering::SeqCst),
                s.deliveries.load(Ordering::SeqCst),
                g.stats(),
                s.errors.lock().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    for h in producers.into_iter().chain(consumers) {
        h.join().expect("worker thread panicked");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{mode:?} {durability:?}: {total} messages through {PRODUCERS} producers and \
         {CONSUMERS} consumers in {elapsed:.2?} ({:.0} msg/s)",
        total as f64 / elapsed.as_secs_f64()
    );

    {
        let errors = s.errors.lock().unwrap();
        assert_eq!(
            errors.0, 0,
            "{} errors, the first: {:#?}",
            errors.0, errors.1
        );
    }
    let missing: Vec<usize> = (0..total as usize)
        .filter(|&i| !s.delivered[i].load(Ordering::Relaxed) || !s.acked[i].load(Ordering::Relaxed))
        .take(ERRORS_KEPT)
        .collect();
    assert!(
        missing.is_empty(),
        "messages never delivered or acked, the first: {missing:?}"
    );
    assert_eq!(s.deliveries.load(Ordering::SeqCst), total, "deliveries");
    assert_eq!(s.acked_count.load(Ordering::SeqCst), total, "acks");
    let wrong_id: Vec<(usize, u64, u64)> = (0..total as usize)
        .map(|i| {
            (
                i,
                s.pushed_id[i].load(Ordering::Relaxed),
                s.delivered_id[i].load(Ordering::Relaxed),
            )
        })
        .filter(|&(_, pushed, delivered)| pushed != delivered || pushed == 0)
        .take(ERRORS_KEPT)
        .collect();
    assert!(
        wrong_id.is_empty(),
        "(message, pushed id, delivered id): {wrong_id:?}"
    );

    let check = |g: &Group, when: &str| {
        let st = g.stats().unwrap();
        assert_eq!(st.acked_total, total, "{when}: {st:?}");
        assert_eq!(st.pushed_total, total, "{when}: {st:?}");
        assert_eq!(
            (
                st.reserved,
                st.ready,
                st.delayed,
                st.buried,
                st.dead_lettered_total
            ),
            (0, 0, 0, 0, 0),
            "{when}: {st:?}"
        );
        assert!(
            g.reserve(LEASE).unwrap().is_none(),
            "{when}: a message left"
        );
    };
    check(&g, "at the end");
    drop((g, q));
    store.close().unwrap();
    drop(store);

    let store = Store::open(&place.path, place.options.clone().durability(durability)).unwrap();
    let q = store.queue("jobs").unwrap();
    let g = q.group("default").unwrap();
    check(&g, "after reopen");
    drop((g, q));
    store.close().unwrap();
}

#[test]
fn buffered_batches() {
    run(1_000_000, Durability::Buffered, Mode::Batches);
}

#[test]
fn sync_singles() {
    run(50_000, Durability::Sync, Mode::Singles);
}
