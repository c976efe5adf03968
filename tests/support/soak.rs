//! The crash soak's driver, shared by `tests/crash_soak.rs` (50 rounds in
//! CI) and `millpond-soak-child soak --rounds N` (long soaks, see
//! `scripts/crash-soak.sh`).
//!
//! Each round spawns a worker process (`millpond-soak-child worker`) on one
//! store in a real directory: producer threads push under `Sync` and print
//! each id once its push returned; consumer threads reserve from the
//! `default` group, print each delivery, and ack (or sometimes nack) it,
//! printing each ack once it returned. The store compacts every 100 ms and
//! rolls 16 KiB segments, so kills land in pushes, reserves, acks, journal
//! checkpoints, compaction and recovery alike. After a random 20–300 ms the
//! worker gets SIGKILL; the driver reopens the store and checks:
//!
//! - every push that returned is in the log, exactly its bytes, under its
//!   id, unless the group acked it (then compaction may have reclaimed it;
//!   the worker prints `acking` before each ack, so an ack cut short by
//!   the kill is known to be possible);
//! - the log holds each pushed message at most once (by content), in
//!   ascending ids, and ids only grow: a round's pushes get ids above
//!   everything earlier rounds saw;
//! - no message whose ack returned is delivered again (checked on every
//!   delivery the workers print) and the group reports it finished
//!   (`peek` is `None`);
//! - a pushed message not acked is still live in the group, its attempts
//!   at least the attempt of its last printed delivery (delivery counting
//!   survives the kill);
//! - after the last round, a drain delivers every pushed message that was
//!   never acked, exactly once, and nothing acked.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use millpond::{Options, Store};

use crate::kill_payload;

/// (round, thread, seq) of a pushed message.
pub type Origin = (u32, u32, u64);

/// The options the worker and the driver both use.
pub fn options() -> Options {
    Options::default()
        .segment_bytes_max(16 << 10)
        .index_interval_bytes(512)
        .compact_interval(Some(Duration::from_millis(100)))
}

/// SplitMix64.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((u128::from(z) * u128::from(n)) >> 64) as u64
    }
}

/// What a soak did.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Rounds run (each ended by SIGKILL).
    pub rounds: u32,
    /// Rounds killed before the worker had opened the store.
    pub killed_in_open: u32,
    /// Pushes that returned (printed by the workers).
    pub pushes: u64,
    /// Deliveries printed by the workers.
    pub deliveries: u64,
    /// Deliveries of a message delivered before (after a kill or a nack).
    pub redeliveries: u64,
    /// Acks that returned.
    pub acks: u64,
    /// Nacks that returned.
    pub nacks: u64,
    /// Messages read back and compared after reopens.
    pub messages_verified: u64,
    /// Acked messages the group was asked about after reopens.
    pub acks_verified: u64,
    /// Torn tails recovery truncated.
    pub torn_tails: u32,
    /// Messages the final drain delivered (never acked before).
    pub drained: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Totals {
    /// One line of figures.
    pub fn line(&self) -> String {
        format!(
            "{} rounds ({} killed while opening) in {:.1?}: {} pushes, {} deliveries ({} redeliveries), {} acks, {} nacks; verified {} messages and {} acks after reopens, {} torn tails truncated, {} drained at the end; 0 lost, 0 redelivered after ack",
            self.rounds,
            self.killed_in_open,
            self.elapsed,
            self.pushes,
            self.deliveries,
            self.redeliveries,
            self.acks,
            self.nacks,
            self.messages_verified,
            self.acks_verified,
            self.torn_tails,
            self.drained
        )
    }
}

/// What the driver knows from the workers' output.
#[derive(Default)]
struct Model {
    /// Pushes that returned: id -> origin.
    pushed: BTreeMap<u64, Origin>,
    /// Ids whose ack returned, with the round it returned in.
    acked: BTreeMap<u64, u32>,
    /// Ids an ack was called for (it may or may not have taken effect if
    /// the kill came before it returned).
    acking: BTreeSet<u64>,
    /// Last printed delivery attempt by id.
    attempts: BTreeMap<u64, u32>,
    /// `next_id` after the last reopen: ids of later pushes start here.
    next_id: u64,
}

macro_rules! fail {
    ($($t:tt)*) => { return Err(format!($($t)*)) };
}

/// Runs `rounds` rounds on a store in `dir` with the worker binary `exe`;
/// `seed` chooses thread counts and kill times. Prints one line per round
/// when `verbose`.
///
/// # Errors
///
/// The first broken guarantee, with its round.
pub fn run(
    exe: &Path,
    dir: &Path,
    rounds: u32,
    seed: u64,
    verbose: bool,
) -> Result<Totals, String> {
    let started = Instant::now();
    let store = dir.join("store");
    let mut model = Model {
        next_id: 1,
        ..Model::default()
    };
    let mut totals = Totals::default();
    for round in 0..rounds {
        let mut rng = Rng(seed ^ (u64::from(round) << 20));
        let producers = 1 + rng.below(3) as u32;
        let consumers = 1 + rng.below(3) as u32;
        let kill_after = Duration::from_millis(20 + rng.below(281));
        let out = run_worker(exe, &store, round, producers, consumers, kill_after)?;
        let opened = apply_output(&out, round, &mut model, &mut totals)?;
        totals.killed_in_open += u32::from(!opened);
        check_store(&store, round, &mut model, &mut totals, &mut rng)?;
        totals.rounds += 1;
        if verbose {
            println!(
                "round {round}: {producers} producers, {consumers} consumers, SIGKILL after {kill_after:?}{}; {} pushed, {} acked so far",
                if opened { "" } else { " (while opening)" },
                model.pushed.len(),
                model.acked.len()
            );
        }
    }
    drain(&store, &model, &mut totals)?;
    totals.elapsed = started.elapsed();
    Ok(totals)
}

fn run_worker(
    exe: &Path,
    store: &Path,
    round: u32,
    producers: u32,
    consumers: u32,
    kill_after: Duration,
) -> Result<String, String> {
    let mut child = Command::new(exe)
        .arg("worker")
        .arg(store)
        .arg(round.to_string())
        .arg(producers.to_string())
        .arg(consumers.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", exe.display()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    std::thread::sleep(kill_after);
    child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let out = reader
        .join()
        .expect("stdout reader")
        .map_err(|e| format!("read worker output: {e}"))?;
    if status.signal() != Some(9) {
        fail!(
            "round {round}: the worker should die of SIGKILL, not {status:?} (it exits only on an error)"
        );
    }
    let text = String::from_utf8(out).map_err(|e| format!("round {round}: worker output: {e}"))?;
    // A line cut short by the kill is ignored; complete ones end in '\n'.
    Ok(text[..text.rfind('\n').map_or(0, |i| i + 1)].to_owned())
}

fn num<T: std::str::FromStr>(s: Option<&&str>, line: &str, round: u32) -> Result<T, String> {
    s.and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("round {round}: bad worker line {line:?}"))
}

/// Applies one round's output to the model; returns whether the worker
/// got as far as opening the store.
fn apply_output(
    out: &str,
    round: u32,
    model: &mut Model,
    totals: &mut Totals,
) -> Result<bool, String> {
    let mut opened = false;
    let mut min_push = u64::MAX;
    for line in out.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.first().copied() {
            Some("opened") => opened = true,
            Some("push") => {
                let id: u64 = num(f.get(1), line, round)?;
                let origin: Origin = (
                    num(f.get(2), line, round)?,
                    num(f.get(3), line, round)?,
                    num(f.get(4), line, round)?,
                );
                if origin.0 != round {
                    fail!("round {round}: {line:?} names another round");
                }
                if let Some(old) = model.pushed.insert(id, origin) {
                    fail!("round {round}: id {id} returned by two pushes: {old:?} and {origin:?}");
                }
                min_push = min_push.min(id);
                totals.pushes += 1;
            }
            Some("got") => {
                let id: u64 = num(f.get(1), line, round)?;
                let attempt: u32 = num(f.get(2), line, round)?;
                let origin: Origin = (
                    num(f.get(3), line, round)?,
                    num(f.get(4), line, round)?,
                    num(f.get(5), line, round)?,
                );
                if let Some(r) = model.acked.get(&id) {
                    fail!(
                        "round {round}: id {id} delivered again (attempt {attempt}) though its ack returned in round {r}"
                    );
                }
                if let Some(&o) = model.pushed.get(&id)
                    && o != origin
                {
                    fail!(
                        "round {round}: id {id} delivered as {origin:?}, but its push returned for {o:?}"
                    );
                }
                let before = model.attempts.insert(id, attempt);
                if let Some(b) = before {
                    if attempt <= b {
                        fail!(
                            "round {round}: id {id} delivered as attempt {attempt} after attempt {b}: a delivery was not counted"
                        );
                    }
                    totals.redeliveries += 1;
                }
                totals.deliveries += 1;
            }
            Some("acking") => {
                model.acking.insert(num(f.get(1), line, round)?);
            }
            Some("ack") => {
                let id: u64 = num(f.get(1), line, round)?;
                if model.acked.insert(id, round).is_some() {
                    fail!("round {round}: id {id} acked twice");
                }
                totals.acks += 1;
            }
            Some("nack") => totals.nacks += 1,
            _ => fail!("round {round}: bad worker line {line:?}"),
        }
    }
    if min_push < model.next_id {
        fail!(
            "round {round}: a push got id {min_push}, below {} which the store had handed out before: ids must only grow",
            model.next_id
        );
    }
    Ok(opened)
}

/// Reopens the store after a kill and checks it against the model.
fn check_store(
    path: &Path,
    round: u32,
    model: &mut Model,
    totals: &mut Totals,
    rng: &mut Rng,
) -> Result<(), String> {
    let store = Store::open(path, options())
        .map_err(|e| format!("round {round}: reopen after SIGKILL failed: {e}"))?;
    for qr in &store.recovery_report().queues {
        if !qr.damaged.is_empty() {
            fail!("round {round}: recovery found damage after a kill: {qr:?}");
        }
        totals.torn_tails += u32::from(qr.torn_tail.is_some());
    }
    let q = store
        .queue("q")
        .map_err(|e| format!("round {round}: queue: {e}"))?;
    let g = q
        .group("default")
        .map_err(|e| format!("round {round}: group: {e}"))?;
    let next_id = q.next_id();
    if next_id < model.next_id {
        fail!(
            "round {round}: next_id went back from {} to {next_id}",
            model.next_id
        );
    }
    if let Some((&max, _)) = model.pushed.last_key_value()
        && next_id <= max
    {
        fail!("round {round}: next_id {next_id}, but id {max} was pushed");
    }
    model.next_id = next_id;

    // The whole log: ascending ids, each pushed message at most once, every
    // payload one a worker pushed.
    let mut seen: BTreeSet<Origin> = BTreeSet::new();
    let mut last = 0;
    let mut present = BTreeSet::new();
    for m in q.reader(1) {
        let m = m.map_err(|e| format!("round {round}: reader: {e}"))?;
        if m.id <= last {
            fail!("round {round}: reader gave id {} after {last}", m.id);
        }
        last = m.id;
        let Some(origin) = kill_payload::claimed(&m.payload) else {
            fail!("round {round}: id {} holds a payload never pushed", m.id);
        };
        if m.payload != kill_payload::message(origin.0, origin.1, origin.2) {
            fail!(
                "round {round}: id {} claims {origin:?} but its bytes differ",
                m.id
            );
        }
        if !seen.insert(origin) {
            fail!(
                "round {round}: {origin:?} is in the log twice (again at id {})",
                m.id
            );
        }
        if let Some(&o) = model.pushed.get(&m.id)
            && o != origin
        {
            fail!(
                "round {round}: id {} holds {origin:?}, but its push returned for {o:?}",
                m.id
            );
        }
        present.insert(m.id);
        totals.messages_verified += 1;
    }
    // Every push that returned and was not acked: in the log and live in
    // the group, with every printed delivery counted.
    for (&id, &origin) in &model.pushed {
        if model.acked.contains_key(&id) || model.acking.contains(&id) {
            continue;
        }
        if !present.contains(&id) {
            fail!(
                "round {round}: id {id} ({origin:?}) was lost: its push returned, it was never acked, and the log no longer holds it"
            );
        }
        let peeked = g
            .peek(id)
            .map_err(|e| format!("round {round}: peek({id}): {e}"))?;
        let Some(p) = peeked else {
            fail!(
                "round {round}: id {id} ({origin:?}) was never acked, yet the group says it is finished"
            );
        };
        if p.payload != kill_payload::message(origin.0, origin.1, origin.2) {
            fail!("round {round}: peek({id}) gave other bytes");
        }
        if let Some(&a) = model.attempts.get(&id)
            && p.attempts < a
        {
            fail!(
                "round {round}: id {id} was delivered as attempt {a}, the group counts {} attempts",
                p.attempts
            );
        }
    }
    // Acked messages stay finished: all of the last two rounds', a sample
    // of the older ones.
    let older: Vec<u64> = model
        .acked
        .iter()
        .filter(|&(_, &r)| r + 2 <= round)
        .map(|(&id, _)| id)
        .collect();
    let mut ask: Vec<u64> = model
        .acked
        .iter()
        .filter(|&(_, &r)| r + 2 > round)
        .map(|(&id, _)| id)
        .collect();
    for _ in 0..older.len().min(500) {
        ask.push(older[rng.below(older.len() as u64) as usize]);
    }
    for id in ask {
        let peeked = g
            .peek(id)
            .map_err(|e| format!("round {round}: peek({id}): {e}"))?;
        if let Some(p) = peeked {
            fail!(
                "round {round}: id {id} was acked in round {}, yet the group has it as {:?}",
                model.acked[&id],
                p.state
            );
        }
        totals.acks_verified += 1;
    }
    drop(g);
    drop(q);
    store
        .close()
        .map_err(|e| format!("round {round}: close: {e}"))?;
    Ok(())
}

/// After the last round: every pushed message never acked is delivered
/// exactly once, and nothing acked is.
fn drain(path: &Path, model: &Model, totals: &mut Totals) -> Result<(), String> {
    let store = Store::open(path, options()).map_err(|e| format!("drain: open: {e}"))?;
    let q = store.queue("q").map_err(|e| format!("drain: queue: {e}"))?;
    let g = q
        .group("default")
        .map_err(|e| format!("drain: group: {e}"))?;
    // Messages a nack delayed (backoff) and messages the workers' kills
    // dead-lettered (buried) come back too.
    g.kick_delayed(usize::MAX)
        .map_err(|e| format!("drain: kick delayed: {e}"))?;
    g.kick(usize::MAX)
        .map_err(|e| format!("drain: kick: {e}"))?;
    let mut got = BTreeSet::new();
    for _ in 0..10_000_000u64 {
        let Some(d) = g
            .reserve(Duration::from_secs(3600))
            .map_err(|e| format!("drain: reserve: {e}"))?
        else {
            break;
        };
        if let Some(r) = model.acked.get(&d.id) {
            fail!(
                "drain: id {} delivered though its ack returned in round {r}",
                d.id
            );
        }
        if !got.insert(d.id) {
            fail!("drain: id {} delivered twice", d.id);
        }
        if let Some(&(r, t, s)) = model.pushed.get(&d.id)
            && d.payload != kill_payload::message(r, t, s)
        {
            fail!("drain: id {} delivered with other bytes", d.id);
        }
        g.ack(d.id)
            .map_err(|e| format!("drain: ack {}: {e}", d.id))?;
    }
    for (&id, origin) in &model.pushed {
        let maybe_acked = model.acked.contains_key(&id) || model.acking.contains(&id);
        if !maybe_acked && !got.contains(&id) {
            let state = g.peek(id).map(|p| p.map(|p| p.state));
            fail!(
                "drain: id {id} ({origin:?}) was pushed and never acked, but the drain did not deliver it (peek: {state:?})"
            );
        }
    }
    totals.drained = got.len() as u64;
    drop(g);
    drop(q);
    store.close().map_err(|e| format!("drain: close: {e}"))?;
    Ok(())
}
