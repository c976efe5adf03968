//! One seed: its configuration, the workload, the faults, the oracle and
//! the checks.
//!
//! The oracle is deliberately simple, not a model of the engine (the
//! suite's `tests/group_model.rs` models groups exactly). Per queue it
//! knows which pushes returned `Ok` (key → id) and which keys were ever
//! attempted; per group, which keys it acked (and which acks ended in an
//! error, so may or may not have landed), and a lower bound on each
//! message's delivery count. Payloads name their key (see
//! [`crate::payload`]), so every byte a consumer gets is checked against
//! what was pushed whatever id it comes under.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use millpond::fs::{CrashOptions, Fault, FaultError, FaultKind, Fs, SimFs};
use millpond::{
    Backoff, Delivery, Error, Group, GroupOptions, ManualClock, Options, PushOptions, Queue,
    RecoveryMode, Retention, Store,
};

use crate::payload::{self, payload};
use crate::rng::Rng;
use crate::totals::Totals;

const STORE: &str = "/store";
const DEAD: &str = "dead";
const GROUP_NAMES: [&str; 3] = ["default", "g1", "g2"];
const T0: u64 = 1_700_000_000_000;
const SECOND: u64 = 1000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
/// Operations remembered for a failure report.
const RECENT: usize = 24;
/// Corruption errors one drain accepts before it calls the engine stuck.
const DRAIN_CORRUPTION_MAX: u64 = 2000;
/// The same corruption error this many times from one group between two
/// kicks: the group is stuck. (A kick makes buried damaged messages ready
/// again, so each is reported once more after every kick; messages of one
/// damaged range share its error.)
const WEDGE_REPEATS: u32 = 20;

/// What a check returns: `Err` holds the description of a failure.
pub(crate) type Check<T = ()> = Result<T, String>;

macro_rules! bail {
    ($($t:tt)*) => {
        return Err(format!($($t)*))
    };
}

// ---------------------------------------------------------------------------
// Configuration drawn from the seed

#[derive(Debug, Clone)]
struct GroupCfg {
    name: &'static str,
    opts: GroupOptions,
}

#[derive(Debug, Clone)]
struct QueueCfg {
    name: String,
    groups: Vec<GroupCfg>,
}

#[derive(Debug, Clone)]
struct Config {
    queues: Vec<QueueCfg>,
    dead: bool,
    segment_bytes: u64,
    index_interval: u32,
    copy_forward: u8,
    flips: bool,
    retention: bool,
    reorder: bool,
    ops: usize,
    fault_one_in: u64,
    /// `Options::compact_journal_bytes`: drawn from a stream of its own
    /// (so the draws above, and the seeds that replay known cases, stay
    /// as they were); half the seeds below the groups' own checkpoint
    /// sizes, so compaction replaces journals too.
    compact_journal_bytes: u64,
}

impl Config {
    fn draw(rng: &mut Rng) -> Config {
        let n_queues = 2 + rng.below(2) as usize;
        let mut dead = false;
        let queues = (0..n_queues)
            .map(|i| {
                let n_groups = 1 + rng.index(3);
                let groups = GROUP_NAMES[..n_groups]
                    .iter()
                    .map(|&name| {
                        let base = rng.range(100, 2000);
                        let dlq = rng.one_in(4);
                        dead |= dlq;
                        GroupCfg {
                            name,
                            opts: GroupOptions {
                                max_attempts: rng.range(1, 5) as u32,
                                backoff: Backoff {
                                    base: Duration::from_millis(base),
                                    max: Duration::from_millis(rng.range(base, 60 * SECOND)),
                                    jitter_percent: rng.below(31) as u8,
                                },
                                // Small, so checkpoints and journal rotations
                                // happen often.
                                checkpoint_journal_bytes: 32 + 24 * rng.range(2, 60),
                                dead_letter_queue: dlq.then(|| DEAD.to_owned()),
                                ..GroupOptions::default()
                            },
                        }
                    })
                    .collect();
                QueueCfg {
                    name: format!("q{i}"),
                    groups,
                }
            })
            .collect();
        Config {
            queues,
            dead,
            segment_bytes: [4096, 4096, 6144, 8192][rng.index(4)],
            index_interval: [64, 256, 1024][rng.index(3)],
            copy_forward: [0, 25, 50, 100][rng.index(4)],
            flips: rng.one_in(4),
            retention: rng.one_in(8),
            reorder: rng.one_in(3),
            ops: rng.range(120, 360) as usize,
            fault_one_in: rng.range(12, 40),
            compact_journal_bytes: 16 << 10,
        }
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for q in &self.queues {
            let gs: Vec<String> = q
                .groups
                .iter()
                .map(|g| {
                    format!(
                        "{}(max {}{}, ckpt {}B)",
                        g.name,
                        g.opts.max_attempts,
                        if g.opts.dead_letter_queue.is_some() {
                            ", dlq"
                        } else {
                            ""
                        },
                        g.opts.checkpoint_journal_bytes
                    )
                })
                .collect();
            let _ = write!(s, "{}[{}] ", q.name, gs.join(" "));
        }
        let _ = write!(
            s,
            "segment {}B, index {}B, copy-forward {}%, compaction checkpoints journals from {}B, flips {}, retention {}, reorder {}, {} ops, a fault 1 in {}",
            self.segment_bytes,
            self.index_interval,
            self.copy_forward,
            self.compact_journal_bytes,
            self.flips,
            self.retention,
            self.reorder,
            self.ops,
            self.fault_one_in
        );
        s
    }
}

// ---------------------------------------------------------------------------
// The oracle

/// Lower bounds on the deliveries of one message in one group: `mem`
/// holds while the process lives (and across a restart: a reserve returns
/// only once its journal record is written), `dur` across a power cut (a
/// reserve record is durable once a later settle of the group returned).
#[derive(Debug, Clone, Copy, Default)]
struct Bound {
    mem: u32,
    dur: u32,
}

#[derive(Debug)]
struct GroupModel {
    name: &'static str,
    max_attempts: u32,
    dlq: bool,
    /// Keys whose ack returned `Ok`: never delivered again.
    acked: BTreeSet<u32>,
    /// Keys whose ack returned an error: may or may not come back.
    maybe_acked: BTreeSet<u32>,
    /// Keys that may be buried (bury, out of attempts), with their ids.
    maybe_buried: BTreeMap<u32, u64>,
    /// Keys kicked while maybe delayed: delivered before their delay.
    delay_void: BTreeSet<u32>,
    bounds: BTreeMap<u32, Bound>,
    /// Keys whose `mem` bound is not yet durable.
    dirty: BTreeSet<u32>,
}

impl GroupModel {
    fn new(cfg: &GroupCfg) -> GroupModel {
        GroupModel {
            name: cfg.name,
            max_attempts: cfg.opts.max_attempts,
            dlq: cfg.opts.dead_letter_queue.is_some(),
            acked: BTreeSet::new(),
            maybe_acked: BTreeSet::new(),
            maybe_buried: BTreeMap::new(),
            delay_void: BTreeSet::new(),
            bounds: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// A settle returned `Ok` under `Sync`: every record before it is
    /// durable.
    fn promote(&mut self) {
        for seq in std::mem::take(&mut self.dirty) {
            if let Some(b) = self.bounds.get_mut(&seq) {
                b.dur = b.mem;
            }
        }
    }

    /// A power cut: only durable records count.
    fn power_cut(&mut self) {
        for seq in std::mem::take(&mut self.dirty) {
            if let Some(b) = self.bounds.get_mut(&seq) {
                b.mem = b.dur;
            }
        }
    }

    /// A kick may have reset the attempts of `seq`.
    fn reset(&mut self, seq: u32) {
        self.bounds.remove(&seq);
        self.dirty.remove(&seq);
    }

    fn reset_all(&mut self) {
        self.bounds.clear();
        self.dirty.clear();
    }
}

#[derive(Debug, Clone, Copy)]
struct PushMeta {
    priority: u32,
    not_before: u64,
}

#[derive(Debug)]
struct QueueModel {
    name: String,
    index: u8,
    /// Keys `0..attempted` were pushed or attempted.
    attempted: u32,
    meta: Vec<PushMeta>,
    /// Keys whose push returned `Ok`, with their ids.
    confirmed: BTreeMap<u32, u64>,
    /// Keys whose frame had a bit flipped.
    damaged: BTreeSet<u32>,
    /// Keys retention may have dropped.
    exposed: BTreeSet<u32>,
    /// Segment files with flipped bits: the only ones corruption may name.
    flipped: BTreeSet<PathBuf>,
    /// Every bit flipped in a frame, oldest first.
    flips: Vec<FrameFlip>,
    retention: Option<Retention>,
    /// Ids below this were dropped by retention (or finished).
    retention_floor: u64,
    /// A push failed on a write or fsync: pushes must fail with
    /// `Poisoned` until the store is reopened.
    poisoned: bool,
    /// Largest id a push returned since the store opened.
    last_id: u64,
    groups: Vec<GroupModel>,
}

/// One bit flipped in a frame, with the frame's bytes before the flip (so
/// it can be undone only while the frame is still there, unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FrameFlip {
    path: PathBuf,
    frame_offset: u64,
    original: Vec<u8>,
    offset: u64,
    bit: u8,
}

#[derive(Debug, Clone)]
struct Held {
    q: usize,
    g: usize,
    id: u64,
    seq: u32,
    deadline: u64,
}

struct Handles {
    store: Store,
    queues: Vec<Queue>,
    groups: Vec<Vec<Group>>,
    dead: Option<Queue>,
}

// ---------------------------------------------------------------------------
// The simulator

pub(crate) struct Sim {
    seed: u64,
    cfg: Config,
    rng: Rng,
    fs: SimFs,
    clock: ManualClock,
    h: Option<Handles>,
    qs: Vec<QueueModel>,
    held: Vec<Held>,
    /// A fault fired (or the power went out) since the store opened.
    tainted: bool,
    armed: Option<(FaultKind, FaultError)>,
    last_fired: Option<FaultError>,
    faults_seen: u64,
    cut_armed: bool,
    /// Operations left before recovering from a fault that fired.
    recover_in: Option<u32>,
    pub(crate) totals: Totals,
    phase: &'static str,
    step: usize,
    recent: VecDeque<String>,
    trace: bool,
}

fn fault_label(kind: FaultKind, error: FaultError) -> String {
    let e = match error {
        FaultError::Eio => "eio",
        FaultError::Enospc => "enospc",
    };
    let k = match kind {
        FaultKind::Write => "write",
        FaultKind::Sync => "fsync",
        FaultKind::SyncDir => "dir-fsync",
        FaultKind::Create => "create",
        FaultKind::Rename => "rename",
        FaultKind::Remove => "remove",
        FaultKind::SetLen => "set-len",
    };
    format!("{e} {k}")
}

fn short<T: std::fmt::Debug>(r: &Result<T, Error>) -> String {
    match r {
        Ok(v) => {
            let mut s = format!("{v:?}");
            s.truncate(80);
            format!("Ok({s})")
        }
        Err(e) => {
            let mut s = e.to_string();
            s.truncate(160);
            format!("Err({s})")
        }
    }
}

fn show_delivery(d: &Delivery) -> String {
    format!(
        "id {} attempt {} prio {} key {:?}",
        d.id,
        d.attempt,
        d.priority,
        payload::decode(&d.payload)
    )
}

impl Sim {
    pub(crate) fn new(seed: u64, options: crate::RunOptions) -> Sim {
        let trace = options.trace;
        let mut rng = Rng::new(seed ^ 0x6d69_6c6c_2d73_696d);
        let mut cfg = Config::draw(&mut rng);
        let mut own = Rng::new(seed ^ 0x6a6f_7572_6e61_6c73);
        if own.one_in(2) {
            cfg.compact_journal_bytes = 32 + 24 * own.range(1, 30);
        }
        let fs = SimFs::new(seed);
        fs.set_reorder_writes(cfg.reorder);
        let qs = cfg
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueModel {
                name: q.name.clone(),
                index: i as u8,
                attempted: 0,
                meta: Vec::new(),
                confirmed: BTreeMap::new(),
                damaged: BTreeSet::new(),
                exposed: BTreeSet::new(),
                flipped: BTreeSet::new(),
                flips: Vec::new(),
                retention: None,
                retention_floor: 0,
                poisoned: false,
                last_id: 0,
                groups: q.groups.iter().map(GroupModel::new).collect(),
            })
            .collect();
        let sim = Sim {
            seed,
            cfg,
            rng,
            fs,
            clock: ManualClock::new(T0),
            h: None,
            qs,
            held: Vec::new(),
            tainted: false,
            armed: None,
            last_fired: None,
            faults_seen: 0,
            cut_armed: false,
            recover_in: None,
            totals: Totals {
                seeds: 1,
                ..Totals::default()
            },
            phase: "open",
            step: 0,
            recent: VecDeque::new(),
            trace,
        };
        if trace {
            eprintln!("seed {seed}: {}", sim.cfg.describe());
        }
        sim
    }

    /// The seed's configuration and its last operations, for a report.
    pub(crate) fn context(&self) -> String {
        let mut s = format!(
            "  at {} step {} of {}, clock T0+{}ms\n  config: {}\n  last operations:",
            self.phase,
            self.step,
            self.cfg.ops,
            self.clock_now() - T0,
            self.cfg.describe()
        );
        for line in &self.recent {
            let _ = write!(s, "\n    {line}");
        }
        s
    }

    fn note(&mut self, line: String) {
        if self.trace {
            eprintln!("  [{} {}] {line}", self.phase, self.step);
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    fn clock_now(&self) -> u64 {
        use millpond::Clock;
        self.clock.now_ms()
    }

    fn handles(&self) -> &Handles {
        self.h.as_ref().expect("store is open")
    }

    fn queue(&self, qi: usize) -> Queue {
        self.handles().queues[qi].clone()
    }

    fn group(&self, qi: usize, gi: usize) -> Group {
        self.handles().groups[qi][gi].clone()
    }

    fn qg(&self, qi: usize, gi: usize) -> String {
        format!("{}/{}", self.qs[qi].name, self.qs[qi].groups[gi].name)
    }

    fn options(&self) -> Options {
        Options::default()
            .fs(Arc::new(self.fs.clone()))
            .clock(Arc::new(self.clock.clone()))
            .segment_bytes_max(self.cfg.segment_bytes)
            .index_interval_bytes(self.cfg.index_interval)
            .compact_interval(None)
            .copy_forward_percent(self.cfg.copy_forward)
            .compact_journal_bytes(self.cfg.compact_journal_bytes)
            .recovery_mode(if self.cfg.flips {
                RecoveryMode::Skip
            } else {
                RecoveryMode::Fail
            })
    }

    /// Whether an injected fault fired since the last call; counts it.
    fn fired(&mut self) -> bool {
        let n = self.fs.stats().faults_injected;
        if n <= self.faults_seen {
            return false;
        }
        self.faults_seen = n;
        self.tainted = true;
        if let Some((kind, error)) = self.armed.take() {
            self.totals.fault(&fault_label(kind, error));
            self.last_fired = Some(error);
        }
        if self.recover_in.is_none() {
            self.recover_in = Some(self.rng.below(6) as u32);
        }
        true
    }

    fn off(&self) -> bool {
        self.fs.is_powered_off()
    }

    fn op_done(&mut self) -> bool {
        self.totals.operations += 1;
        self.fired()
    }

    /// An error of an operation that may fail only because of a fault.
    fn allow_io(&mut self, e: &Error, fired: bool, what: &str) -> Check {
        match e {
            Error::Io { .. } | Error::DiskFull { .. } => {
                if fired || self.off() {
                    self.tainted = true;
                    Ok(())
                } else {
                    bail!("{what}: I/O error though no fault fired and the power is on: {e}")
                }
            }
            Error::Poisoned { .. } => {
                if self.tainted || fired || self.off() {
                    Ok(())
                } else {
                    bail!("{what}: Poisoned though no write or fsync failed before: {e}")
                }
            }
            _ => bail!("{what}: unexpected error: {e}"),
        }
    }

    /// A corruption error is fine only if it names a file we flipped bits in.
    fn allow_corruption(&mut self, qi: usize, e: &Error, what: &str) -> Check {
        if let Error::Corruption { path, .. } = e
            && self.qs[qi].flipped.contains(path)
        {
            self.totals.corruption_reported += 1;
            return Ok(());
        }
        bail!("{what}: corruption reported in a file no bit was flipped in: {e}")
    }

    fn allow_group_err(&mut self, qi: usize, e: &Error, fired: bool, what: &str) -> Check {
        if e.is_corruption() {
            self.allow_corruption(qi, e, what)
        } else {
            self.allow_io(e, fired, what)
        }
    }

    // -----------------------------------------------------------------------
    // The run

    pub(crate) fn run(&mut self) -> Check {
        self.phase = "open";
        match self.try_open() {
            Ok(h) => self.h = Some(h),
            Err(e) => bail!("first open failed: {e}"),
        }
        self.phase = "workload";
        for step in 0..self.cfg.ops {
            self.step = step;
            self.maybe_fault()?;
            self.op()?;
            if self.off() {
                self.crash(false)?;
                continue;
            }
            match self.recover_in {
                Some(0) => {
                    self.recover_in = None;
                    if self.rng.one_in(2) {
                        self.restart()?;
                    } else {
                        self.crash(false)?;
                    }
                }
                Some(n) => self.recover_in = Some(n - 1),
                None => {}
            }
        }
        self.phase = "final";
        self.crash(true)?;
        self.drain()?;
        self.final_checks()
    }

    fn maybe_fault(&mut self) -> Check {
        // A fault may fire outside the operations that look for it: reads
        // rebuild missing index files (best effort).
        self.fired();
        if self.armed.is_some() || self.cut_armed || self.tainted {
            return Ok(());
        }
        if !self.rng.one_in(self.cfg.fault_one_in) {
            return Ok(());
        }
        match self.rng.below(100) {
            0..30 => {
                let after = self.rng.below(40);
                self.fs.cut_power_after(after);
                self.cut_armed = true;
                self.note(format!("arm power cut after {after} mutating ops"));
            }
            75..90 if self.cfg.flips => {
                self.flip_bits()?;
            }
            90..100 => {
                self.note("restart".into());
                self.restart()?;
            }
            _ => self.arm_fault(),
        }
        Ok(())
    }

    /// Arms an `EIO` or `ENOSPC` on the nth next operation of a kind.
    fn arm_fault(&mut self) {
        let kind = match self.rng.below(100) {
            0..30 => FaultKind::Write,
            30..60 => FaultKind::Sync,
            60..75 => FaultKind::SyncDir,
            75..85 => FaultKind::Create,
            85..95 => FaultKind::Rename,
            95..98 => FaultKind::Remove,
            _ => FaultKind::SetLen,
        };
        let error = if self.rng.one_in(2) {
            FaultError::Eio
        } else {
            FaultError::Enospc
        };
        let nth = self.rng.range(1, 6);
        let fault = Fault { kind, nth, error };
        self.note(format!("arm {fault:?}"));
        self.fs.inject(fault);
        self.armed = Some((kind, error));
    }

    fn op(&mut self) -> Check {
        let has_held = !self.held.is_empty();
        match self.rng.below(100) {
            0..20 => self.op_push(),
            20..26 => self.op_push_batch(),
            26..44 => self.op_reserve(false),
            44..50 => self.op_reserve(true),
            50..63 if has_held => self.op_ack(),
            63..67 if has_held => self.op_ack_batch(),
            67..73 if has_held => self.op_nack(),
            73..76 if has_held => self.op_touch(),
            76..79 if has_held => self.op_bury(),
            50..79 => self.op_reserve(false),
            79..81 => self.op_kick(),
            81..84 => self.op_kick_id(),
            84..88 => self.op_compact(),
            88..95 => self.op_clock(false),
            95..97 => self.op_clock(true),
            97 if self.cfg.retention => self.op_retention(),
            _ => self.op_push(),
        }
    }

    fn pick_group(&mut self) -> (usize, usize) {
        let qi = self.rng.index(self.qs.len());
        let gi = self.rng.index(self.qs[qi].groups.len());
        (qi, gi)
    }

    // -----------------------------------------------------------------------
    // Pushes

    fn new_key(&mut self, qi: usize, priority: u32, delay_ms: u64) -> u32 {
        let now = self.clock_now();
        let q = &mut self.qs[qi];
        let seq = q.attempted;
        q.attempted += 1;
        q.meta.push(PushMeta {
            priority,
            not_before: if delay_ms == 0 { 0 } else { now + delay_ms },
        });
        seq
    }

    fn op_push(&mut self) -> Check {
        let qi = self.rng.index(self.qs.len());
        let priority = if self.rng.one_in(5) {
            self.rng.range(1, 4) as u32
        } else {
            0
        };
        let delay = if !self.rng.one_in(8) {
            0
        } else if self.rng.one_in(2) {
            self.rng.range(100, 10 * SECOND)
        } else {
            self.rng.range(MINUTE, HOUR)
        };
        let seq = self.new_key(qi, priority, delay);
        let p = payload(self.seed, qi as u8, seq);
        let queue = self.queue(qi);
        let r = if priority == 0 && delay == 0 && self.rng.one_in(2) {
            queue.push(&p)
        } else {
            queue.push_with(
                &p,
                PushOptions {
                    priority,
                    delay: Duration::from_millis(delay),
                },
            )
        };
        let fired = self.op_done();
        self.note(format!(
            "push {} key {seq} ({} B, prio {priority}, delay {delay}ms) -> {}",
            self.qs[qi].name,
            p.len(),
            short(&r)
        ));
        match r {
            Ok(id) => self.pushed_ok(qi, &[seq], id, fired),
            Err(e) => self.push_failed(qi, &e, fired, 1),
        }
    }

    fn op_push_batch(&mut self) -> Check {
        let qi = self.rng.index(self.qs.len());
        let n = self.rng.range(1, 6) as usize;
        let seqs: Vec<u32> = (0..n).map(|_| self.new_key(qi, 0, 0)).collect();
        let payloads: Vec<Vec<u8>> = seqs
            .iter()
            .map(|&s| payload(self.seed, qi as u8, s))
            .collect();
        let r = self.queue(qi).push_batch(&payloads);
        let fired = self.op_done();
        self.note(format!(
            "push_batch {} keys {seqs:?} -> {}",
            self.qs[qi].name,
            short(&r)
        ));
        match r {
            Ok(ids) => {
                if ids.end - ids.start != n as u64 {
                    bail!("push_batch of {n} returned ids {ids:?}");
                }
                self.pushed_ok(qi, &seqs, ids.start, fired)
            }
            Err(e) => self.push_failed(qi, &e, fired, n as u64),
        }
    }

    fn pushed_ok(&mut self, qi: usize, seqs: &[u32], first: u64, fired: bool) -> Check {
        let q = &mut self.qs[qi];
        if q.poisoned {
            bail!(
                "push into {} returned Ok (id {first}) after an earlier push failed on a write or fsync: the queue must refuse writes until reopened",
                q.name
            );
        }
        if fired {
            bail!(
                "push into {} returned Ok (id {first}) although an injected fault fired during it",
                q.name
            );
        }
        if first <= q.last_id {
            bail!(
                "push into {} returned id {first}, not above the previous push's id {}",
                q.name,
                q.last_id
            );
        }
        for (i, &seq) in seqs.iter().enumerate() {
            q.confirmed.insert(seq, first + i as u64);
        }
        q.last_id = first + seqs.len() as u64 - 1;
        self.totals.pushes_ok += seqs.len() as u64;
        Ok(())
    }

    fn push_failed(&mut self, qi: usize, e: &Error, fired: bool, n: u64) -> Check {
        self.totals.pushes_failed += n;
        let what = format!("push into {}", self.qs[qi].name);
        match e {
            Error::Poisoned { .. } => {
                if !(self.qs[qi].poisoned || self.tainted) {
                    bail!("{what}: Poisoned though no write or fsync failed before: {e}");
                }
                self.qs[qi].poisoned = true;
                Ok(())
            }
            Error::Io { .. } | Error::DiskFull { .. } => {
                if self.qs[qi].poisoned {
                    bail!(
                        "{what}: after an earlier failed write or fsync it must fail with Poisoned, got {e}"
                    );
                }
                if !(fired || self.off()) {
                    bail!("{what}: I/O error though no fault fired and the power is on: {e}");
                }
                if fired && !self.off() {
                    match (self.last_fired, e) {
                        (Some(FaultError::Enospc), Error::DiskFull { .. })
                        | (Some(FaultError::Eio), Error::Io { .. }) => {}
                        (f, _) => bail!("{what}: injected {f:?} surfaced as {e}"),
                    }
                }
                self.tainted = true;
                self.qs[qi].poisoned = true;
                if self.off() {
                    return Ok(());
                }
                // The next push must be refused: the page cache is no
                // longer trusted.
                let seq = self.new_key(qi, 0, 0);
                let p = payload(self.seed, qi as u8, seq);
                let r = self.queue(qi).push(&p);
                let fired = self.op_done();
                self.note(format!("probe push key {seq} -> {}", short(&r)));
                self.totals.pushes_failed += 1;
                match r {
                    Err(Error::Poisoned { .. }) => {
                        self.totals.poison_checks += 1;
                        Ok(())
                    }
                    Err(e) if self.off() || fired => self.allow_io(&e, fired, &what),
                    Ok(id) => bail!(
                        "{what}: a push right after a failed write or fsync returned Ok (id {id}); the queue must be poisoned"
                    ),
                    Err(e) => bail!(
                        "{what}: a push right after a failed write or fsync must fail with Poisoned, got {e}"
                    ),
                }
            }
            _ => bail!("{what}: unexpected error: {e}"),
        }
    }

    // -----------------------------------------------------------------------
    // Consuming

    fn op_reserve(&mut self, batch: bool) -> Check {
        let (qi, gi) = self.pick_group();
        let lease = self.rng.range(1, 120) * SECOND;
        let group = self.group(qi, gi);
        let what = format!(
            "reserve{} {}",
            if batch { "_batch" } else { "" },
            self.qg(qi, gi)
        );
        let r = if batch {
            let n = self.rng.range(2, 6) as usize;
            group.reserve_batch(n, Duration::from_millis(lease))
        } else {
            group
                .reserve(Duration::from_millis(lease))
                .map(|d| d.into_iter().collect())
        };
        let fired = self.op_done();
        match r {
            Ok(ds) => {
                let shown: Vec<String> = ds.iter().map(show_delivery).collect();
                self.note(format!("{what} lease {lease}ms -> [{}]", shown.join("; ")));
                for d in &ds {
                    self.delivered(qi, gi, d, lease)?;
                }
                Ok(())
            }
            Err(e) => {
                self.note(format!("{what} -> Err({e})"));
                self.allow_group_err(qi, &e, fired, &what)
            }
        }
    }

    fn delivered(&mut self, qi: usize, gi: usize, d: &Delivery, lease: u64) -> Check {
        let seq = self.check_delivery(qi, gi, d)?;
        let now = self.clock_now();
        self.held
            .retain(|h| !(h.q == qi && h.g == gi && h.id == d.id));
        self.held.push(Held {
            q: qi,
            g: gi,
            id: d.id,
            seq,
            deadline: now + lease,
        });
        Ok(())
    }

    /// Checks one delivery against the oracle and records it; returns its
    /// key.
    fn check_delivery(&mut self, qi: usize, gi: usize, d: &Delivery) -> Check<u32> {
        let now = self.clock_now();
        let qg = self.qg(qi, gi);
        let seed = self.seed;
        let q = &mut self.qs[qi];
        let Some((kq, seq)) = payload::decode(&d.payload) else {
            bail!(
                "{qg}: delivery of id {} carries {} bytes that no push had",
                d.id,
                d.payload.len()
            );
        };
        if kq != q.index || seq >= q.attempted {
            bail!(
                "{qg}: delivery of id {} claims to be key {seq} of queue #{kq}, never pushed here",
                d.id
            );
        }
        if d.payload != payload(seed, kq, seq) {
            bail!(
                "{qg}: delivery of id {} (key {seq}): payload bytes differ from what was pushed",
                d.id
            );
        }
        if let Some(&id) = q.confirmed.get(&seq)
            && id != d.id
        {
            bail!(
                "{qg}: key {seq} was pushed as id {id} but delivered as id {}",
                d.id
            );
        }
        let meta = q.meta[seq as usize];
        if d.priority != meta.priority {
            bail!(
                "{qg}: id {} (key {seq}) pushed with priority {} delivered with {}",
                d.id,
                meta.priority,
                d.priority
            );
        }
        let g = &mut q.groups[gi];
        if g.acked.contains(&seq) {
            bail!(
                "{qg}: id {} (key {seq}) delivered again (attempt {}) after its ack returned Ok",
                d.id,
                d.attempt
            );
        }
        if now < meta.not_before && !g.delay_void.contains(&seq) {
            bail!(
                "{qg}: id {} (key {seq}) delivered at T0+{} before its delay ends at T0+{}",
                d.id,
                now - T0,
                meta.not_before - T0
            );
        }
        let b = g.bounds.entry(seq).or_default();
        if d.attempt <= b.mem {
            bail!(
                "{qg}: id {} (key {seq}) delivered as attempt {}, but {} deliveries were already recorded (durably {})",
                d.id,
                d.attempt,
                b.mem,
                b.dur
            );
        }
        b.mem = d.attempt;
        g.dirty.insert(seq);
        if d.attempt >= g.max_attempts {
            g.maybe_buried.insert(seq, d.id);
        }
        self.totals.deliveries += 1;
        Ok(seq)
    }

    fn take_held(&mut self) -> Held {
        let i = self.rng.index(self.held.len());
        self.held.swap_remove(i)
    }

    /// `NotReserved` is right only once the lease may have ended (or
    /// retention may have dropped the message).
    fn allow_not_reserved(&self, h: &Held, what: &str) -> Check {
        let now = self.clock_now();
        let q = &self.qs[h.q];
        if now >= h.deadline || q.exposed.contains(&h.seq) || h.id < q.retention_floor {
            return Ok(());
        }
        bail!(
            "{what} {}: id {} (key {}) refused as not reserved, but its lease runs until T0+{} (now T0+{})",
            self.qg(h.q, h.g),
            h.id,
            h.seq,
            h.deadline - T0,
            now - T0
        )
    }

    fn op_ack(&mut self) -> Check {
        let h = self.take_held();
        let r = self.group(h.q, h.g).ack(h.id);
        let fired = self.op_done();
        self.note(format!(
            "ack {} id {} key {} -> {}",
            self.qg(h.q, h.g),
            h.id,
            h.seq,
            short(&r)
        ));
        match r {
            Ok(()) => {
                let g = &mut self.qs[h.q].groups[h.g];
                g.acked.insert(h.seq);
                g.promote();
                self.totals.acks_ok += 1;
                Ok(())
            }
            Err(Error::NotReserved { .. }) => self.allow_not_reserved(&h, "ack"),
            Err(e) => {
                self.qs[h.q].groups[h.g].maybe_acked.insert(h.seq);
                self.allow_group_err(h.q, &e, fired, "ack")
            }
        }
    }

    fn op_ack_batch(&mut self) -> Check {
        let first = self.held[self.rng.index(self.held.len())].clone();
        let mut batch: Vec<Held> = Vec::new();
        for h in &self.held {
            if h.q == first.q
                && h.g == first.g
                && batch.len() < 4
                && !batch.iter().any(|b| b.id == h.id)
            {
                batch.push(h.clone());
            }
        }
        let ids: Vec<u64> = batch.iter().map(|h| h.id).collect();
        let r = self.group(first.q, first.g).ack_batch(&ids);
        let fired = self.op_done();
        self.note(format!(
            "ack_batch {} ids {ids:?} -> {}",
            self.qg(first.q, first.g),
            short(&r)
        ));
        let in_batch = |h: &Held| h.q == first.q && h.g == first.g && ids.contains(&h.id);
        match r {
            Ok(()) => {
                self.held.retain(|h| !in_batch(h));
                let g = &mut self.qs[first.q].groups[first.g];
                for h in &batch {
                    g.acked.insert(h.seq);
                }
                g.promote();
                self.totals.acks_ok += batch.len() as u64;
                Ok(())
            }
            Err(Error::NotReserved { id, .. }) => {
                // Refused whole: the others stay reserved.
                let Some(h) = batch.iter().find(|h| h.id == id) else {
                    bail!("ack_batch {ids:?} refused id {id}, not in the batch");
                };
                self.allow_not_reserved(h, "ack_batch")?;
                self.held.retain(|h| !(in_batch(h) && h.id == id));
                Ok(())
            }
            Err(e) => {
                self.held.retain(|h| !in_batch(h));
                let g = &mut self.qs[first.q].groups[first.g];
                for h in &batch {
                    g.maybe_acked.insert(h.seq);
                }
                self.allow_group_err(first.q, &e, fired, "ack_batch")
            }
        }
    }

    fn op_nack(&mut self) -> Check {
        let h = self.take_held();
        let delay = if self.rng.one_in(3) {
            None
        } else {
            Some(Duration::from_millis(self.rng.below(5 * SECOND)))
        };
        let r = self.group(h.q, h.g).nack(h.id, delay);
        let fired = self.op_done();
        self.note(format!(
            "nack {} id {} key {} delay {delay:?} -> {}",
            self.qg(h.q, h.g),
            h.id,
            h.seq,
            short(&r)
        ));
        match r {
            Ok(()) => {
                self.qs[h.q].groups[h.g].promote();
                Ok(())
            }
            Err(Error::NotReserved { .. }) => self.allow_not_reserved(&h, "nack"),
            Err(e) => self.allow_group_err(h.q, &e, fired, "nack"),
        }
    }

    fn op_touch(&mut self) -> Check {
        let i = self.rng.index(self.held.len());
        let h = self.held[i].clone();
        let lease = self.rng.range(1, 120) * SECOND;
        let r = self
            .group(h.q, h.g)
            .touch(h.id, Duration::from_millis(lease));
        let fired = self.op_done();
        self.note(format!(
            "touch {} id {} lease {lease}ms -> {}",
            self.qg(h.q, h.g),
            h.id,
            short(&r)
        ));
        match r {
            Ok(()) => {
                self.held[i].deadline = self.clock_now() + lease;
                Ok(())
            }
            Err(Error::NotReserved { .. }) => {
                self.held.swap_remove(i);
                self.allow_not_reserved(&h, "touch")
            }
            Err(e) => self.allow_io(&e, fired, "touch"),
        }
    }

    fn op_bury(&mut self) -> Check {
        let h = self.take_held();
        let r = self.group(h.q, h.g).bury(h.id);
        let fired = self.op_done();
        self.note(format!(
            "bury {} id {} key {} -> {}",
            self.qg(h.q, h.g),
            h.id,
            h.seq,
            short(&r)
        ));
        match r {
            Ok(()) => {
                let g = &mut self.qs[h.q].groups[h.g];
                g.maybe_buried.insert(h.seq, h.id);
                g.promote();
                Ok(())
            }
            Err(Error::NotReserved { .. }) => self.allow_not_reserved(&h, "bury"),
            Err(e) => {
                self.qs[h.q].groups[h.g].maybe_buried.insert(h.seq, h.id);
                self.allow_group_err(h.q, &e, fired, "bury")
            }
        }
    }

    fn op_kick(&mut self) -> Check {
        let (qi, gi) = self.pick_group();
        let n = if self.rng.one_in(3) {
            usize::MAX
        } else {
            self.rng.range(1, 3) as usize
        };
        let r = self.group(qi, gi).kick(n);
        let fired = self.op_done();
        self.note(format!("kick {} {n} -> {}", self.qg(qi, gi), short(&r)));
        // Kicked messages restart their attempt count; which ones is not
        // tracked, so every bound of the group goes.
        match r {
            Ok(0) => Ok(()),
            Ok(_) => {
                let g = &mut self.qs[qi].groups[gi];
                g.reset_all();
                g.promote();
                Ok(())
            }
            Err(e) => {
                self.qs[qi].groups[gi].reset_all();
                self.allow_group_err(qi, &e, fired, "kick")
            }
        }
    }

    fn op_kick_id(&mut self) -> Check {
        let (qi, gi) = self.pick_group();
        let buried: Vec<(u32, u64)> = self.qs[qi].groups[gi]
            .maybe_buried
            .iter()
            .map(|(&s, &i)| (s, i))
            .collect();
        let target = if !buried.is_empty() && !self.rng.one_in(3) {
            buried[self.rng.index(buried.len())]
        } else {
            let q = &self.qs[qi];
            let live: Vec<(u32, u64)> = q
                .confirmed
                .iter()
                .filter(|(s, _)| !q.damaged.contains(s))
                .map(|(&s, &i)| (s, i))
                .collect();
            if live.is_empty() {
                return self.op_push();
            }
            live[self.rng.index(live.len())]
        };
        let (seq, id) = target;
        let r = self.group(qi, gi).kick_id(id);
        let fired = self.op_done();
        self.note(format!(
            "kick_id {} id {id} key {seq} -> {}",
            self.qg(qi, gi),
            short(&r)
        ));
        match r {
            Ok(()) => {
                let g = &mut self.qs[qi].groups[gi];
                g.reset(seq);
                g.delay_void.insert(seq);
                g.promote();
                Ok(())
            }
            Err(Error::NotBuried { .. }) => Ok(()),
            Err(e) => {
                let g = &mut self.qs[qi].groups[gi];
                g.reset(seq);
                g.delay_void.insert(seq);
                self.allow_group_err(qi, &e, fired, "kick_id")
            }
        }
    }

    fn op_compact(&mut self) -> Check {
        let r = self.handles().store.compact_now();
        let fired = self.op_done();
        self.note(format!("compact_now -> {}", short(&r)));
        let ok = match &r {
            Ok(rep) => {
                self.totals.compactions += 1;
                self.totals.segments_deleted += rep.segments_deleted;
                self.totals.segments_rewritten += rep.segments_rewritten;
                self.totals.segments_dropped += rep.segments_dropped;
                self.totals.journals_checkpointed += rep.journals_checkpointed;
                true
            }
            Err(e) => {
                if e.is_corruption() {
                    if !self.qs.iter().any(|q| q.flipped.contains(error_path(e))) {
                        bail!(
                            "compact_now: corruption reported in a file no bit was flipped in: {e}"
                        );
                    }
                } else {
                    self.allow_io(e, fired, "compact_now")?;
                }
                false
            }
        };
        self.expose_retention(ok)
    }

    /// After a compaction pass: what retention may have dropped.
    fn expose_retention(&mut self, pass_ok: bool) -> Check {
        for qi in 0..self.qs.len() {
            if self.qs[qi].retention.is_none() {
                continue;
            }
            let first = if pass_ok && !self.off() {
                match self.queue(qi).log_stats() {
                    Ok(s) => s.first_id,
                    Err(e) => {
                        let fired = self.fired();
                        self.allow_io(&e, fired, "log_stats")?;
                        u64::MAX
                    }
                }
            } else {
                u64::MAX
            };
            self.note(format!(
                "retention of {}: first id {first}",
                self.qs[qi].name
            ));
            let q = &mut self.qs[qi];
            let exposed: Vec<u32> = q
                .confirmed
                .iter()
                .filter(|&(_, &id)| id < first)
                .map(|(&s, _)| s)
                .collect();
            q.retention_floor = q.retention_floor.max(first);
            if first == u64::MAX {
                // Unknown how far the pass got: anything pushed so far.
                q.exposed.extend(0..q.attempted);
            } else {
                q.exposed.extend(exposed);
            }
        }
        Ok(())
    }

    fn op_clock(&mut self, big: bool) -> Check {
        let ms = if big {
            self.rng.range(MINUTE, 2 * HOUR)
        } else {
            self.rng.range(100, 10 * SECOND)
        };
        self.clock.advance(ms);
        self.note(format!("clock +{ms}ms"));
        Ok(())
    }

    fn op_retention(&mut self) -> Check {
        let qi = self.rng.index(self.qs.len());
        let retention = if self.rng.one_in(4) {
            None
        } else {
            let age = self
                .rng
                .one_in(2)
                .then(|| Duration::from_millis(self.rng.range(10 * MINUTE, 3 * HOUR)));
            let bytes = (age.is_none() || self.rng.one_in(2))
                .then(|| self.rng.range(2, 6) * self.cfg.segment_bytes);
            Some(Retention {
                max_age: age,
                max_bytes: bytes,
            })
        };
        self.queue(qi).set_retention(retention.unwrap_or_default());
        self.totals.operations += 1;
        self.note(format!("set_retention {} {retention:?}", self.qs[qi].name));
        self.qs[qi].retention = retention;
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Faults, crashes and reopening

    /// Flips one or two bits in a frame of a segment file (the message is
    /// then damaged: never to be handed out, not expected to be delivered),
    /// or one bit anywhere in an index file (derived data: nothing may be
    /// lost).
    fn flip_bits(&mut self) -> Check {
        let qi = self.rng.index(self.qs.len());
        let dir = Path::new(STORE).join("queues").join(&self.qs[qi].name);
        let Ok(names) = self.fs.list_dir(&dir) else {
            return Ok(());
        };
        if self.rng.one_in(4) {
            let idx: Vec<&String> = names.iter().filter(|n| n.ends_with(".idx")).collect();
            if idx.is_empty() {
                return Ok(());
            }
            let path = dir.join(idx[self.rng.index(idx.len())]);
            let len = self.fs.file_bytes(&path).map_or(0, |b| b.len() as u64);
            if len == 0 {
                return Ok(());
            }
            let (offset, bit) = (self.rng.below(len), self.rng.below(8) as u8);
            if self.fs.flip_bit(&path, offset, bit).is_ok() {
                self.totals.fault("bit flip index");
                self.note(format!("flip bit {bit} at {offset} of {}", path.display()));
            }
            return Ok(());
        }
        let segs: Vec<&String> = names.iter().filter(|n| n.ends_with(".seg")).collect();
        if segs.is_empty() {
            return Ok(());
        }
        let path = dir.join(segs[self.rng.index(segs.len())]);
        let Some(bytes) = self.fs.file_bytes(&path) else {
            return Ok(());
        };
        let frames = payload::frames(&bytes);
        if frames.is_empty() {
            return Ok(());
        }
        let flips = if self.rng.one_in(3) { 2 } else { 1 };
        for _ in 0..flips {
            let f = &frames[self.rng.index(frames.len())];
            let offset = f.offset + self.rng.below(f.len);
            let bit = self.rng.below(8) as u8;
            let Some(before) = self.fs.file_bytes(&path) else {
                continue;
            };
            if self.fs.flip_bit(&path, offset, bit).is_err() {
                continue;
            }
            self.totals.fault("bit flip segment");
            let q = &mut self.qs[qi];
            q.flipped.insert(path.clone());
            q.flips.push(FrameFlip {
                path: path.clone(),
                frame_offset: f.offset,
                original: before[f.offset as usize..(f.offset + f.len) as usize].to_vec(),
                offset,
                bit,
            });
            if let Some((kq, seq)) = f.key
                && kq == q.index
            {
                q.damaged.insert(seq);
                for g in &mut q.groups {
                    g.maybe_buried.remove(&seq);
                }
            }
            self.note(format!(
                "flip bit {bit} at {offset} of {} (id {}, key {:?})",
                path.display(),
                f.id,
                f.key
            ));
        }
        Ok(())
    }

    fn crash_options(&mut self) -> CrashOptions {
        match self.rng.below(4) {
            0 => CrashOptions::clean(),
            1 => CrashOptions::harsh(),
            _ => CrashOptions {
                torn_writes: self.rng.one_in(2),
                lose_unsynced_dir_ops: self.rng.one_in(2),
            },
        }
    }

    /// Forgets what lived only in the process: leases, poisoning, armed
    /// faults (after a power cut), undurable bounds (after a power cut).
    fn new_incarnation(&mut self, power_cut: bool) {
        self.held.clear();
        self.tainted = false;
        self.recover_in = None;
        self.last_fired = None;
        if power_cut {
            if self.armed.take().is_some() {
                self.totals.faults_unfired += 1;
            }
            self.cut_armed = false;
        }
        self.faults_seen = self.fs.stats().faults_injected;
        for q in &mut self.qs {
            q.poisoned = false;
            q.last_id = 0;
            for g in &mut q.groups {
                if power_cut {
                    g.power_cut();
                    // Unconfirmed messages may be gone and their ids reused.
                    let confirmed = &q.confirmed;
                    g.maybe_buried.retain(|s, id| confirmed.get(s) == Some(id));
                }
            }
        }
    }

    /// The power goes out; the store is reopened from the image it leaves.
    fn crash(&mut self, last: bool) -> Check {
        let prev = self.phase;
        self.phase = if last { "final crash" } else { "crash" };
        if self.off() {
            self.totals.fault("power cut");
        }
        self.fs.cut_power();
        self.h = None;
        let opts = self.crash_options();
        self.fs = self.fs.crash_image(opts);
        self.totals.crashes += 1;
        self.note(format!("power cut, image {opts:?}"));
        if self.trace {
            self.dump_files();
        }
        self.new_incarnation(true);
        if !last && self.cfg.flips && self.rng.one_in(3) {
            self.flip_bits()?;
        }
        if !last && self.rng.one_in(6) {
            let after = self.rng.below(30);
            self.fs.cut_power_after(after);
            self.cut_armed = true;
            self.note(format!(
                "arm power cut after {after} mutating ops (recovery)"
            ));
        } else if !last && self.rng.one_in(5) {
            // A fault that may hit recovery itself.
            self.arm_fault();
        }
        self.reopen()?;
        if !last && !self.cut_armed && self.armed.is_none() && self.rng.one_in(4) {
            self.drain()?;
        }
        self.phase = prev;
        Ok(())
    }

    /// The process closes the store (cleanly if it can) and opens it again
    /// on the same disk.
    fn restart(&mut self) -> Check {
        let prev = self.phase;
        self.phase = "restart";
        let h = self.h.take().expect("store is open");
        let r = h.store.close();
        let fired = self.op_done();
        self.note(format!("close -> {}", short(&r)));
        drop(h);
        if let Err(e) = &r
            && !(fired || self.tainted || self.off())
        {
            bail!("close failed though no fault fired: {e}");
        }
        self.totals.restarts += 1;
        if self.off() {
            self.phase = prev;
            return self.crash(false);
        }
        self.new_incarnation(false);
        if self.armed.is_none() && !self.cut_armed && self.rng.one_in(5) {
            self.arm_fault();
        }
        self.reopen()?;
        self.phase = prev;
        Ok(())
    }

    /// Checks that a group gets past damage: the same corruption error
    /// [`WEDGE_REPEATS`] times from one group between two kicks means
    /// reserve keeps stopping at the same bytes and the messages after
    /// them are never delivered. This check once listed seeds 1157, 1595
    /// and 2574 as the known bug `group-wedged-by-damage`: the engine's
    /// part (`peek_fresh` restarting its reader at the group cursor) was
    /// fixed when the group cursor began moving past what its reader could
    /// not read; the later seeds tripped the check only because it pooled
    /// the errors of every group of a queue across kicks.
    fn wedged(&mut self, e: &Error, repeats: &mut BTreeMap<String, u32>) -> Check {
        let n = repeats.entry(e.to_string()).or_default();
        *n += 1;
        if *n < WEDGE_REPEATS {
            return Ok(());
        }
        bail!(
            "the group is wedged: reserve reported the same corruption {WEDGE_REPEATS} times, never getting past it: {e}"
        )
    }

    fn try_open(&mut self) -> Result<Handles, Error> {
        self.totals.operations += 1;
        let store = Store::open(STORE, self.options())?;
        let mut queues = Vec::new();
        let mut groups = Vec::new();
        for q in &self.cfg.queues {
            let queue = store.queue(&q.name)?;
            let mut gs = Vec::new();
            for g in &q.groups {
                gs.push(queue.group_with(g.name, g.opts.clone())?);
            }
            queues.push(queue);
            groups.push(gs);
        }
        let dead = if self.cfg.dead {
            Some(store.queue(DEAD)?)
        } else {
            None
        };
        for (qi, q) in self.qs.iter().enumerate() {
            if let Some(r) = q.retention {
                queues[qi].set_retention(r);
            }
        }
        Ok(Handles {
            store,
            queues,
            groups,
            dead,
        })
    }

    fn reopen(&mut self) -> Check {
        let mut attempts = 0;
        loop {
            attempts += 1;
            if attempts > 10 {
                bail!("the store did not open in 10 attempts");
            }
            let r = self.try_open();
            let fired = self.fired();
            match r {
                Ok(h) => {
                    self.note(format!(
                        "open ok{}",
                        if fired { " (a fault fired)" } else { "" }
                    ));
                    self.h = Some(h);
                    break;
                }
                Err(e) => {
                    self.note(format!("open -> Err({e})"));
                    if self.off() {
                        self.totals.crashes += 1;
                        self.totals.crashes_in_recovery += 1;
                        self.totals.fault("power cut");
                        let opts = self.crash_options();
                        self.fs = self.fs.crash_image(opts);
                        self.new_incarnation(true);
                        self.note(format!("power cut during recovery, image {opts:?}"));
                        continue;
                    }
                    if fired {
                        self.totals.reopen_retries += 1;
                        self.tainted = false;
                        self.recover_in = None;
                        continue;
                    }
                    bail!("reopen failed: {e}");
                }
            }
        }
        self.check_after_open()
    }

    /// Keys the dead-letter queue holds (each checked to be a message some
    /// dead-lettering group had, byte for byte).
    fn dead_keys(&mut self) -> Check<BTreeSet<(u8, u32)>> {
        let mut keys = BTreeSet::new();
        let Some(dead) = self.h.as_ref().and_then(|h| h.dead.clone()) else {
            return Ok(keys);
        };
        for m in dead.reader(1) {
            self.totals.operations += 1;
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    let fired = self.fired();
                    if self.off() || fired {
                        return Ok(keys);
                    }
                    bail!("reading the dead-letter queue failed: {e}");
                }
            };
            let Some((kq, seq)) = payload::decode(&m.payload) else {
                bail!("dead-letter queue id {} holds bytes no push had", m.id);
            };
            let ok = self.qs.get(kq as usize).is_some_and(|q| {
                q.groups.iter().any(|g| g.dlq)
                    && seq < q.attempted
                    && m.payload == payload(self.seed, kq, seq)
            });
            if !ok {
                bail!(
                    "dead-letter queue id {} holds key {seq} of queue #{kq}: not a message a dead-lettering group had, or other bytes",
                    m.id
                );
            }
            keys.insert((kq, seq));
        }
        Ok(keys)
    }

    /// After every reopen: what recovery reported, and every acknowledged
    /// push some group has not finished is readable byte for byte.
    /// With `--trace`: the frames of every segment file, as this simulator
    /// reads them, and the sizes of index files.
    fn dump_files(&self) {
        for q in &self.qs {
            let dir = Path::new(STORE).join("queues").join(&q.name);
            let Ok(names) = self.fs.list_dir(&dir) else {
                continue;
            };
            for n in names {
                let Some(bytes) = self.fs.file_bytes(&dir.join(&n)) else {
                    continue;
                };
                if n.ends_with(".seg") {
                    let frames = payload::frames(&bytes);
                    let end = frames.last().map_or(32, |f| f.offset + f.len);
                    let ids: Vec<String> = frames
                        .iter()
                        .map(|f| format!("{}@{}", f.id, f.offset))
                        .collect();
                    eprintln!(
                        "    file {}/{n}: {} bytes, valid frames to {end}: {}",
                        q.name,
                        bytes.len(),
                        ids.join(" ")
                    );
                } else {
                    eprintln!("    file {}/{n}: {} bytes", q.name, bytes.len());
                }
            }
        }
    }

    fn check_after_open(&mut self) -> Check {
        if self.trace {
            self.dump_files();
        }
        let report = self.handles().store.recovery_report().clone();
        for qr in &report.queues {
            self.totals.torn_tails += u64::from(qr.torn_tail.is_some());
            self.totals.damaged_ranges += qr.damaged.len() as u64;
            for d in &qr.damaged {
                let flipped = self
                    .qs
                    .iter()
                    .any(|q| q.name == qr.queue && q.flipped.contains(&d.path));
                if !flipped {
                    bail!(
                        "recovery of queue {} reports damage in a file no bit was flipped in: {d:?}",
                        qr.queue
                    );
                }
            }
        }
        let mut dead: Option<BTreeSet<(u8, u32)>> = None;
        for qi in 0..self.qs.len() {
            if self.off() {
                return Ok(());
            }
            let queue = self.queue(qi);
            let next = queue.next_id();
            let mut must: Vec<(u32, u64, bool)> = Vec::new();
            let q = &self.qs[qi];
            for (&seq, &id) in &q.confirmed {
                if q.damaged.contains(&seq) || q.exposed.contains(&seq) {
                    continue;
                }
                if id >= next {
                    bail!(
                        "after reopen {} continues at id {next}, but id {id} (key {seq}) is an acknowledged push",
                        q.name
                    );
                }
                let open: Vec<&GroupModel> = q
                    .groups
                    .iter()
                    .filter(|g| !g.acked.contains(&seq) && !g.maybe_acked.contains(&seq))
                    .collect();
                if !open.is_empty() {
                    must.push((seq, id, open.iter().all(|g| g.dlq)));
                }
            }
            for (seq, id, only_dlq) in must {
                let r = queue.read(id);
                self.totals.operations += 1;
                let want = payload(self.seed, qi as u8, seq);
                match r {
                    Ok(Some(m)) if m.id == id && m.payload == want => {
                        self.totals.reads_verified += 1;
                        continue;
                    }
                    Err(e) if self.off() => {
                        let fired = self.fired();
                        return self.allow_io(&e, fired, "read");
                    }
                    _ => {}
                }
                if only_dlq {
                    if dead.is_none() {
                        dead = Some(self.dead_keys()?);
                        if self.off() {
                            // A power cut armed for recovery fired while the
                            // dead-letter queue was read: its keys are
                            // partial, so absence proves nothing. The next
                            // open checks again (seed 21668).
                            return Ok(());
                        }
                    }
                    if dead.as_ref().is_some_and(|d| d.contains(&(qi as u8, seq))) {
                        continue;
                    }
                }
                let got = match &r {
                    Ok(Some(m)) => format!("id {} with {} other bytes", m.id, m.payload.len()),
                    Ok(None) => "nothing".into(),
                    Err(e) => format!("error {e}"),
                };
                bail!(
                    "after reopen, {} id {id} (key {seq}, push returned Ok, not finished by every group) reads as {got}",
                    self.qs[qi].name
                );
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Drains and the final checks

    /// With the clock far ahead and buried messages kicked, delivers
    /// everything every group has and acks it; then checks that each
    /// acknowledged push was delivered to each group that had not acked it
    /// (or moved to the dead-letter queue), unless a bit flip or retention
    /// took it.
    fn drain(&mut self) -> Check {
        let prev = self.phase;
        self.phase = "drain";
        self.totals.drains += 1;
        self.clock.advance(2 * DAY);
        self.note("drain: clock +2 days".into());
        let mut corrupt = 0u64;
        let mut delivered: Vec<Vec<BTreeSet<u32>>> = Vec::new();
        for qi in 0..self.qs.len() {
            let mut per_group = Vec::new();
            for gi in 0..self.qs[qi].groups.len() {
                let mut got = BTreeSet::new();
                let qg = self.qg(qi, gi);
                let mut repeats = BTreeMap::new();
                for round in 0..6 {
                    if round > 0 {
                        // Attempts restart after a kick: the first round
                        // checked them against the bounds.
                        let r = self.group(qi, gi).kick(usize::MAX);
                        self.totals.operations += 1;
                        self.note(format!("drain kick {qg} -> {}", short(&r)));
                        match r {
                            Ok(0) => break,
                            Ok(_) => {
                                self.qs[qi].groups[gi].reset_all();
                                repeats.clear();
                            }
                            Err(e) => bail!("drain: kick {qg} failed: {e}"),
                        }
                    }
                    loop {
                        let r = self.group(qi, gi).reserve(Duration::from_millis(HOUR));
                        self.totals.operations += 1;
                        match r {
                            Ok(Some(d)) => {
                                self.note(format!("drain reserve {qg} -> {}", show_delivery(&d)));
                                let seq = self.check_delivery(qi, gi, &d)?;
                                if !got.insert(seq) {
                                    bail!(
                                        "drain: {qg} delivered key {seq} (id {}) twice though it was acked",
                                        d.id
                                    );
                                }
                                let r = self.group(qi, gi).ack(d.id);
                                self.totals.operations += 1;
                                if let Err(e) = r {
                                    bail!("drain: ack {qg} id {} failed: {e}", d.id);
                                }
                                let g = &mut self.qs[qi].groups[gi];
                                g.acked.insert(seq);
                                g.promote();
                                self.totals.acks_ok += 1;
                            }
                            Ok(None) => break,
                            Err(e) if e.is_corruption() => {
                                self.note(format!("drain reserve {qg} -> Err({e})"));
                                self.allow_corruption(qi, &e, &format!("drain reserve {qg}"))?;
                                corrupt += 1;
                                self.wedged(&e, &mut repeats)?;
                                if corrupt > DRAIN_CORRUPTION_MAX {
                                    bail!("drain: {qg} keeps reporting corruption: {e}");
                                }
                            }
                            Err(e) => bail!("drain: reserve {qg} failed: {e}"),
                        }
                    }
                }
                per_group.push(got);
            }
            delivered.push(per_group);
        }
        let dead = self.dead_keys()?;
        for (qi, q) in self.qs.iter().enumerate() {
            for (gi, g) in q.groups.iter().enumerate() {
                for (&seq, &id) in &q.confirmed {
                    if delivered[qi][gi].contains(&seq) {
                        self.totals.drain_verified += 1;
                        continue;
                    }
                    if g.acked.contains(&seq)
                        || g.maybe_acked.contains(&seq)
                        || q.damaged.contains(&seq)
                        || q.exposed.contains(&seq)
                    {
                        continue;
                    }
                    if g.dlq && dead.contains(&(q.index, seq)) {
                        self.totals.drain_verified += 1;
                        continue;
                    }
                    bail!(
                        "{}/{}: id {id} (key {seq}) was lost: its push returned Ok, the group never acked it, and the drain did not deliver it{}",
                        q.name,
                        g.name,
                        if g.dlq {
                            " (nor is it in the dead-letter queue)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
        self.phase = prev;
        Ok(())
    }

    /// After the final drain: compaction gives back every sealed segment
    /// of an undamaged queue, and after one more power cut nothing comes
    /// back (every ack of the drain returned under `Sync`).
    fn final_checks(&mut self) -> Check {
        self.phase = "final checks";
        let r = self.handles().store.compact_now();
        self.totals.operations += 1;
        self.note(format!("compact_now -> {}", short(&r)));
        if let Err(e) = r {
            bail!("final compaction failed: {e}");
        }
        for qi in 0..self.qs.len() {
            if !self.qs[qi].flipped.is_empty() {
                continue;
            }
            let stats = self.queue(qi).log_stats();
            match stats {
                Ok(s) if s.segments == 1 => {}
                Ok(s) => bail!(
                    "{}: every message is acked by every group, yet compaction left {} segments ({} bytes)",
                    self.qs[qi].name,
                    s.segments,
                    s.bytes_on_disk
                ),
                Err(e) => bail!("log_stats failed: {e}"),
            }
        }
        self.crash(true)?;
        self.phase = "after final crash";
        self.clock.advance(2 * DAY);
        for qi in 0..self.qs.len() {
            for gi in 0..self.qs[qi].groups.len() {
                let qg = self.qg(qi, gi);
                if let Err(e) = self.group(qi, gi).kick(usize::MAX) {
                    bail!("kick {qg} failed: {e}");
                }
                let mut corrupt = 0;
                let mut repeats = BTreeMap::new();
                loop {
                    let r = self.group(qi, gi).reserve(Duration::from_millis(HOUR));
                    self.totals.operations += 2;
                    match r {
                        Ok(None) => break,
                        Ok(Some(d)) => {
                            // Only a damaged message may come (never, now
                            // that no bits are flipped back): the drain
                            // could not deliver it.
                            let seq = self.check_delivery(qi, gi, &d)?;
                            if !self.qs[qi].damaged.contains(&seq) {
                                bail!(
                                    "{qg}: after every message was acked and a power cut, delivered {} again",
                                    show_delivery(&d)
                                );
                            }
                            if let Err(e) = self.group(qi, gi).ack(d.id) {
                                bail!("ack {qg} id {} failed: {e}", d.id);
                            }
                            self.qs[qi].groups[gi].acked.insert(seq);
                        }
                        Err(e) if e.is_corruption() => {
                            self.allow_corruption(qi, &e, &qg)?;
                            self.wedged(&e, &mut repeats)?;
                            corrupt += 1;
                            if corrupt > DRAIN_CORRUPTION_MAX {
                                bail!("{qg} keeps reporting corruption: {e}");
                            }
                        }
                        Err(e) => bail!("reserve {qg} failed: {e}"),
                    }
                }
            }
        }
        Ok(())
    }
}

fn error_path(e: &Error) -> &Path {
    match e {
        Error::Corruption { path, .. } => path,
        _ => Path::new(""),
    }
}
