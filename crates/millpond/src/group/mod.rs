//! Consumer groups: leases, acks, retries with backoff, delays, priorities,
//! dead letters, and the journal and checkpoint that make the ack state
//! durable.
//!
//! On disk a group is a directory `queues/<queue>/groups/<group>/` holding
//! a `checkpoint` and the journals written since it.

pub mod checkpoint;
pub mod journal;
mod journal_writer;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::error::{Error, IoContext, Result};
use crate::fs::{self, Fs};
use crate::log::{FloorCache, Log, LogReader, StoredFrame};
use crate::options::Durability;
use journal::{Goal, Journal, Record};
use state::{Entry, EntryState, GroupState, Refused};

const CHECKPOINT_FILE: &str = "checkpoint";
/// Longest accepted lease.
pub const LEASE_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// At the oldest message still in the log (default).
    #[default]
    Oldest,
    /// At the tail: only messages pushed from now on.
    Tail,
}

/// The retry delay of `nack` without an explicit delay: exponential in the
/// attempt number, capped, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first attempt. Default 1 s.
    pub base: Duration,
    /// Largest delay. Default 5 min.
    pub max: Duration,
    /// Spread each delay uniformly over ±`jitter_percent` percent (0–100).
    /// Default 20.
    pub jitter_percent: u8,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter_percent: 20,
        }
    }
}

impl Backoff {
    /// The delay before retry after `attempts` deliveries of message `id`.
    pub fn delay_ms(&self, id: u64, attempts: u32) -> u64 {
        let base = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(self.max.as_millis()).unwrap_or(u64::MAX);
        let exp = attempts.saturating_sub(1).min(63);
        let d = base.saturating_mul(1u64 << exp.min(62)).min(max);
        let jitter = u64::from(self.jitter_percent.min(100));
        if jitter == 0 || d == 0 {
            return d;
        }
        // A hash of (id, attempts): deterministic, spread, no RNG state.
        let mut x = id ^ (u64::from(attempts) << 48) ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let span = d / 100 * jitter * 2 + 1;
        (d - d / 100 * jitter + x % span).min(max)
    }
}

/// Options of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOptions {
    /// Where a new group starts. Default [`StartAt::Oldest`]. Ignored when
    /// the group exists.
    pub start: StartAt,
    /// Deliveries without an ack after which a message is buried (dead-
    /// lettered within the group). Default 10.
    pub max_attempts: u32,
    /// Retry delay for `nack` without an explicit delay.
    pub backoff: Backoff,
    /// Journal bytes after which a checkpoint is written and the journal
    /// rotated; also after eight times as many records as fit in this many
    /// bytes (a run record counted as the records it stands for), so that
    /// replay after a crash stays bounded. Default 4 MiB.
    pub checkpoint_journal_bytes: u64,
    /// A queue (in the same store) that receives messages which ran out of
    /// attempts, instead of burying them in the group. The move pushes the
    /// payload (and priority) to that queue, then removes the message from
    /// this group; a crash between the two can leave it in both
    /// (at-least-once). Default: none, bury in the group.
    pub dead_letter_queue: Option<String>,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions {
            start: StartAt::Oldest,
            max_attempts: 10,
            backoff: Backoff::default(),
            checkpoint_journal_bytes: 4 << 20,
            dead_letter_queue: None,
        }
    }
}

/// A reserved message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Message id.
    pub id: u64,
    /// The payload.
    pub payload: Vec<u8>,
    /// Which delivery this is, from 1.
    pub attempt: u32,
    /// When it was pushed, unix ms.
    pub enqueued_ms: u64,
    /// Its priority.
    pub priority: u32,
}

/// Where a message is, for [`Group::peek`](crate::Group::peek).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Ready to be reserved.
    Ready,
    /// Not ready before this time (unix ms).
    Delayed(u64),
    /// Reserved until this time (unix ms).
    Reserved(u64),
    /// Dead-lettered.
    Buried,
}

/// A message read without reserving it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peeked {
    /// Message id.
    pub id: u64,
    /// The payload.
    pub payload: Vec<u8>,
    /// Where it is in the group.
    pub state: MessageState,
    /// Deliveries so far.
    pub attempts: u32,
    /// Its priority.
    pub priority: u32,
    /// When it was pushed, unix ms.
    pub enqueued_ms: u64,
}

/// Figures of one group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupStats {
    /// Ready messages, including pushed ones the group has not scanned yet.
    pub ready: u64,
    /// Reserved messages.
    pub reserved: u64,
    /// Delayed messages (among those scanned).
    pub delayed: u64,
    /// Buried messages.
    pub buried: u64,
    /// Messages pushed to the queue in total (ids handed out).
    pub pushed_total: u64,
    /// Acks by this group since it was created.
    pub acked_total: u64,
    /// Messages buried by running out of attempts.
    pub dead_lettered_total: u64,
    /// Messages retention dropped before this group finished them (it lagged
    /// behind `max_age` or `max_bytes`).
    pub retention_lost_total: u64,
    /// Age of the oldest ready message, ms (0 if none).
    pub oldest_ready_age_ms: u64,
    /// Bytes of the queue's segment files.
    pub bytes_on_disk: u64,
}

/// What opening a group found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupRecovery {
    /// Journal records replayed.
    pub records_replayed: u64,
    /// Records that referred past the end of the recovered log, discarded.
    pub records_discarded: u64,
    /// Bytes of torn journal tail ignored.
    pub journal_bytes_torn: u64,
    /// Leases live at the crash, returned to ready with the attempt counted.
    pub leases_released: u64,
    /// The checkpoint on disk already held the recovered state and its
    /// journal no record, so the open wrote nothing: it goes on appending
    /// to that journal (an idle group reopened after a crash). Otherwise
    /// the open writes a fresh journal and a checkpoint naming it.
    pub kept_state_files: bool,
    /// Time taken.
    pub duration: Duration,
}

/// Where a group moves messages that ran out of attempts.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetterTarget {
    pub log: Arc<Log>,
    pub wake: Arc<Wake>,
}

/// Wakes blocked `reserve_timeout` calls of every group of a queue.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    generation: Mutex<u64>,
    cv: Condvar,
    /// Threads inside `reserve_timeout`. A push skips the lock and the
    /// wake-up syscall when there are none: a waiter registers before it
    /// looks for a message, so a push it could miss sees it registered.
    waiters: AtomicUsize,
}

impl Wake {
    pub fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        *self.generation.lock().expect("wake lock") += 1;
        self.cv.notify_all();
    }
}

/// Registers a waiter for as long as it lives.
struct Waiting<'a>(&'a Wake);

impl<'a> Waiting<'a> {
    fn new(wake: &'a Wake) -> Waiting<'a> {
        wake.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(wake)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub(crate) struct GroupInner {
    pub name: String,
    dir: PathBuf,
    log: Arc<Log>,
    fs: Arc<dyn Fs>,
    clock: Arc<dyn Clock>,
    durability: Durability,
    live: Mutex<Live>,
    /// Held from a journal rotation until its checkpoint is written
    /// (outside `live`): one checkpoint at a time. Taken before `live`,
    /// or tried with `live` held.
    checkpointing: Mutex<()>,
    journal: Journal,
    dead_letters: Mutex<Option<DeadLetterTarget>>,
    wake: Arc<Wake>,
    recovery: GroupRecovery,
}

/// The key of the frame `GroupInner::peek_fresh` found (and left in
/// `Live::pending`).
#[derive(Debug, Clone, Copy)]
struct Fresh {
    id: u64,
    priority: u32,
    timestamp_ms: u64,
}

impl Fresh {
    fn of(f: &StoredFrame) -> Fresh {
        Fresh {
            id: f.id,
            priority: f.attrs.priority,
            timestamp_ms: f.timestamp_ms,
        }
    }
}

#[derive(Debug)]
struct Live {
    state: GroupState,
    opts: GroupOptions,
    fresh: LogReader,
    /// The first fresh message, read ahead but not yet reserved.
    pending: Option<StoredFrame>,
    /// For the log's priority floor from the cursor on.
    floor: FloorCache,
    journal_seq: u64,
    closed: bool,
    /// An error a batch reserve met after it had reserved messages: the
    /// batch hands those out, and the next reserve reports this.
    deferred: Option<Error>,
}

/// The most records (a run record's counted one by one) a journal takes
/// before a checkpoint, for `checkpoint_journal_bytes` of `bound`: eight
/// times what fits in the bound one record per message. Run records make
/// a journal's bytes say little about the work of replaying it: a drain in
/// batches of 1,000 writes 48 bytes per 1,000 messages, so 4 MiB would
/// stand for some 87 M messages to replay after a crash.
fn replay_records_max(bound: u64) -> u64 {
    bound / journal::RECORD_LEN as u64 * 8
}

fn refused(group: &str, id: u64, r: Refused) -> Error {
    match r {
        Refused::NotReserved => Error::NotReserved {
            group: group.to_owned(),
            id,
        },
        Refused::NotBuried => Error::NotBuried {
            group: group.to_owned(),
            id,
        },
    }
}

fn lease_ms(lease: Duration) -> Result<u64> {
    if lease.is_zero() {
        return Err(Error::InvalidLease {
            lease,
            reason: "a lease must be longer than zero",
        });
    }
    if lease > LEASE_MAX {
        return Err(Error::InvalidLease {
            lease,
            reason: "a lease may be at most 30 days",
        });
    }
    Ok(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1))
}

impl GroupInner {
    /// Opens or creates the group in `dir`, replaying its journal.
    pub fn open(
        name: &str,
        dir: PathBuf,
        log: Arc<Log>,
        clock: Arc<dyn Clock>,
        opts: Option<GroupOptions>,
        wake: Arc<Wake>,
    ) -> Result<Arc<GroupInner>> {
        let started = Instant::now();
        let explicit = opts.is_some();
        let opts = opts.unwrap_or_default();
        let fs = log.fs.clone();
        let parent = fs::parent_dir(&dir).to_owned();
        if !fs.exists(&dir).ctx("stat", &dir)? {
            fs.create_dir_all(&dir)
                .ctx("create group directory", &dir)?;
            fs.sync_dir(&parent).ctx("fsync directory", &parent)?;
        }
        let ckpt_path = dir.join(CHECKPOINT_FILE);
        let names = fs.list_dir(&dir).ctx("list group directory", &dir)?;
        let mut journals: Vec<u64> = names
            .iter()
            .filter_map(|n| journal::parse_file_name(n))
            .collect();
        journals.sort_unstable();
        let now = clock.now_ms();
        let mut report = GroupRecovery::default();
        let mut ckpt_bytes = None;
        let (mut state, from_seq) = match fs.open(&ckpt_path, fs::OpenMode::Read) {
            Ok(f) => {
                let bytes = f.map().ctx("read checkpoint", &ckpt_path)?;
                let c = checkpoint::decode(&ckpt_path, &bytes)?;
                ckpt_bytes = Some(bytes.to_vec());
                (c.state, c.journal_seq)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cursor = match opts.start {
                    StartAt::Oldest => log.first_id(),
                    StartAt::Tail => log.next_id(),
                };
                (GroupState::new(cursor), 0)
            }
            Err(e) => return Err(Error::io("open checkpoint", &ckpt_path, e)),
        };
        let log_end = log.next_id();
        // Whether the checkpoint's own journal holds nothing: no record,
        // no torn bytes.
        let mut empty_journal = false;
        for &seq in journals.iter().filter(|&&s| s >= from_seq) {
            let path = dir.join(journal::file_name(seq));
            let bytes = fs
                .open(&path, fs::OpenMode::Read)
                .and_then(|f| f.map())
                .ctx("read journal", &path)?;
            let replay = journal::read(&path, &bytes, seq)?;
            if seq == from_seq {
                // A journal of an older version is not kept: records this
                // build writes (runs) need the current one.
                empty_journal = replay.slots.is_empty()
                    && replay.version == journal::VERSION
                    && replay.torn_bytes == 0
                    && replay.end == journal::HEADER_LEN;
            }
            report.journal_bytes_torn += replay.torn_bytes;
            for rec in replay.records() {
                if replay_record(&mut state, rec, &log, log_end, now)? {
                    report.records_replayed += 1;
                } else {
                    report.records_discarded += 1;
                }
            }
        }
        // Leases are released under the limit the group last ran with; the
        // caller's options apply afterwards (`apply_options`).
        let mut opts = opts;
        if state.max_attempts != 0 && !explicit {
            opts.max_attempts = state.max_attempts;
        }
        state.max_attempts = opts.max_attempts;
        if state.closed_cleanly && report.records_replayed == 0 && report.records_discarded == 0 {
            // A clean close: the leases were handed out and not lost to a
            // crash; they run until their deadline, as any lease does.
            let before = state.counts().1;
            state.tick(now, opts.max_attempts);
            report.leases_released = (before - state.counts().1) as u64;
        } else {
            report.leases_released = state.counts().1 as u64;
            state.release_all_leases(opts.max_attempts);
        }
        state.closed_cleanly = false;
        state.exhausted.clear();
        report.records_discarded += state.clamp(log_end) as u64;
        state.forget_below(log.first_id());

        // A fresh journal and a checkpoint naming it; then the old journals
        // can go.
        let seq = journals.last().map_or(1, |s| s + 1).max(from_seq + 1);
        // Journal records are 24 bytes: a 256 KiB step already makes size
        // changes rare (one per ~10,000 records), and keeps the zeros an
        // idle group holds small. Never past the size at which a
        // checkpoint rotates the journal.
        let preallocate = log
            .opts
            .preallocate_bytes
            .min(JOURNAL_PREALLOCATE_MAX)
            .min(opts.checkpoint_journal_bytes.max(4096));
        // Unless what is on disk already says exactly this: the same
        // checkpoint (it records an open, not a clean close) naming a
        // journal with nothing in it, and no other journal. Then there is
        // nothing to write, and an idle group reopened after a crash costs
        // no fsync (a server with many idle tubes restarts without two
        // file creations, five fsyncs and a rename per tube).
        let (journal, seq) = if empty_journal
            && journals == [from_seq]
            && ckpt_bytes.as_deref() == Some(&checkpoint::encode(from_seq, &state)[..])
        {
            report.kept_state_files = true;
            let journal = Journal::reopen_empty(fs.clone(), &dir, from_seq, preallocate)?;
            (journal, from_seq)
        } else {
            let journal = Journal::create(fs.clone(), &dir, seq, preallocate)?;
            fs::write_atomic(&*fs, &ckpt_path, &checkpoint::encode(seq, &state))
                .ctx("write checkpoint", &ckpt_path)?;
            remove_journals_below(&*fs, &dir, &journals, seq)?;
            (journal, seq)
        };
        report.duration = started.elapsed();
        let fresh = log.reader(state.cursor);
        let group = Arc::new(GroupInner {
            name: name.to_owned(),
            dir,
            durability: log.opts.durability,
            fs,
            log,
            clock,
            live: Mutex::new(Live {
                state,
                opts,
                fresh,
                pending: None,
                floor: FloorCache::default(),
                journal_seq: seq,
                closed: false,
                deferred: None,
            }),
            checkpointing: Mutex::new(()),
            journal,
            dead_letters: Mutex::new(None),
            wake,
            recovery: report,
        });
        if let Durability::Interval(every) = group.durability {
            let weak = Arc::downgrade(&group);
            let signal = group.journal.timer.clone();
            std::thread::Builder::new()
                .name(format!("millpond-journal-{name}"))
                .spawn(move || journal_timer(&weak, &signal, every))
                .map_err(|e| Error::io("spawn journal timer for", &group.dir, e))?;
        }
        Ok(group)
    }

    pub fn recovery(&self) -> &GroupRecovery {
        &self.recovery
    }

    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.live
            .lock()
            .expect("group lock")
            .state
            .entries()
            .count()
    }

    /// Applies options given by a caller to a group that was opened with
    /// other ones (every group on disk is recovered when the store opens,
    /// with default options). Ready messages already out of attempts under
    /// the new limit are dead-lettered.
    pub fn apply_options(
        &self,
        opts: GroupOptions,
        dead_letters: Option<DeadLetterTarget>,
    ) -> Result<()> {
        let _checkpointing = self.checkpointing.lock().expect("checkpoint lock");
        let mut live = self.lock()?;
        let max = opts.max_attempts;
        let changed = live.opts != opts;
        live.opts = opts;
        let has_target = dead_letters.is_some();
        *self.dead_letters.lock().expect("dead letter lock") = dead_letters;
        if changed {
            live.state.bury_exhausted(max);
        }
        if has_target {
            // Messages buried out of attempts before the dead-letter queue
            // was set (or before a restart) move too.
            live.state.exhausted = live.state.buried_exhausted(max);
        }
        let ticket = self.move_dead_letters(&mut live)?;
        if live.state.max_attempts != max {
            // Recovery releases leases under the limit in the checkpoint.
            live.state.max_attempts = max;
            self.checkpoint_locked(&mut live)?;
        }
        drop(live);
        if let Some((t, _)) = ticket {
            self.commit(t, true)?;
        }
        Ok(())
    }

    /// Records the dead-lettering of messages that ran out of attempts and
    /// moves them to the dead-letter queue, if one is set: pushes them
    /// there, makes the pushes durable, then journals the `Ack`s that take
    /// them out of this group. Returns the ticket of the last journal
    /// record and whether anything moved (a move is settled like an ack).
    fn move_dead_letters(&self, live: &mut Live) -> Result<Option<(u64, bool)>> {
        if live.state.exhausted.is_empty() {
            return Ok(None);
        }
        let ids = std::mem::take(&mut live.state.exhausted);
        let target = self.dead_letters.lock().expect("dead letter lock").clone();
        let mut last = None;
        let mut moving = Vec::new();
        for id in ids {
            if !matches!(
                live.state.entry(id),
                Some(Entry {
                    state: EntryState::Buried,
                    ..
                })
            ) {
                continue;
            }
            let ticket = self.journal.append(Record::DeadLetter { id })?;
            last = Some((ticket, last.is_some_and(|(_, m)| m)));
            let Some(target) = &target else {
                continue;
            };
            let frame = match self.log.read(id) {
                Ok(f) => f,
                // A damaged message cannot be moved: it stays buried here,
                // where `verify` and `repair` find it.
                Err(e) if e.is_corruption() => continue,
                Err(e) => return Err(e),
            };
            if let Some(frame) = frame {
                let attrs = crate::log::frame::Attrs {
                    priority: frame.attrs.priority,
                    not_before_ms: 0,
                };
                target.log.append(&[(&frame.payload, attrs)])?;
                target.wake.notify();
            }
            moving.push(id);
        }
        if let Some(target) = &target
            && !moving.is_empty()
        {
            // The `Ack`s below remove the messages from this group: the
            // pushes must be durable first, or a power cut that keeps this
            // group's journal (or a checkpoint) and not the dead-letter
            // queue's unsynced pushes loses them from both. Under `Sync`
            // the pushes returned durable.
            if target.log.opts.durability != Durability::Sync {
                target.log.flush()?;
            }
            for id in moving {
                live.state.finish_buried(id);
                last = Some((self.journal.append(Record::Ack { id })?, true));
            }
        }
        Ok(last)
    }

    /// Moves due delays and expired leases, then dead letters.
    fn tick(&self, live: &mut Live, now: u64) -> Result<()> {
        let max = live.opts.max_attempts;
        live.state.tick(now, max);
        if let Some((t, true)) = self.move_dead_letters(live)? {
            // Settled like an ack: durable under Sync before going on.
            self.journal.wait(
                t,
                if self.durability == Durability::Sync {
                    Goal::Durable
                } else {
                    Goal::Written
                },
            )?;
        }
        Ok(())
    }

    fn lock(&self) -> Result<MutexGuard<'_, Live>> {
        let live = self.live.lock().expect("group lock");
        if live.closed {
            return Err(Error::Closed);
        }
        Ok(live)
    }

    /// The first fresh message: ready (no delay, or a due one) at the log's
    /// priority floor from the cursor on, the lowest any unscanned message
    /// has (0 unless every message from there on has a higher one). Messages
    /// the scan passes on the way, delayed or at another priority, are set
    /// aside into the tracked state. A queue whose messages share one
    /// priority so costs no memory per message, whatever that priority is.
    ///
    /// The frame stays in `live.pending` (a reserve takes it from there);
    /// the caller gets its key, not a copy of its payload.
    fn peek_fresh(&self, live: &mut Live, now: u64) -> Result<Option<Fresh>> {
        let mut floor = self.log.priority_floor(live.state.cursor, &mut live.floor);
        loop {
            if let Some(f) = live.pending.take() {
                if f.attrs.priority != floor {
                    floor = self.log.priority_floor(f.id, &mut live.floor);
                }
                if f.attrs.priority == floor {
                    let key = Fresh::of(&f);
                    live.pending = Some(f);
                    return Ok(Some(key));
                }
                // A message with a lower priority arrived behind it: it
                // is no longer first in (priority, id) order.
                live.state
                    .set_aside(f.id, f.attrs.priority, f.attrs.not_before_ms, now);
                live.state.cursor = f.id + 1;
                continue;
            }
            if live.fresh.position() != live.state.cursor {
                live.fresh = self.log.reader(live.state.cursor);
            }
            let f = match live.fresh.next() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => {
                    // The reader has moved past what it could not read;
                    // the group moves with it, so the error is reported
                    // once and the messages after it still flow.
                    let past = live.fresh.position();
                    live.state.cursor = live.state.cursor.max(past);
                    return Err(e);
                }
            };
            if f.id < live.state.cursor || live.state.entry(f.id).is_some() {
                continue;
            }
            if f.attrs.priority != floor {
                // The floor may have risen: the scan left the segment that
                // held a lower priority, or the frame is in one that was
                // not there when the floor was read.
                floor = self.log.priority_floor(f.id, &mut live.floor);
            }
            if f.attrs.priority != floor || f.attrs.not_before_ms > now {
                live.state
                    .set_aside(f.id, f.attrs.priority, f.attrs.not_before_ms, now);
                live.state.cursor = f.id + 1;
                continue;
            }
            let key = Fresh::of(&f);
            live.pending = Some(f);
            return Ok(Some(key));
        }
    }

    fn reserve_locked(&self, live: &mut Live, lease: u64) -> Result<Option<(Delivery, u64)>> {
        if let Some(e) = live.deferred.take() {
            return Err(e);
        }
        let now = self.clock.now_ms();
        self.tick(live, now)?;
        let Some((d, rec)) = self.reserve_at(live, lease, now)? else {
            return Ok(None);
        };
        Ok(Some((d, self.journal.append(rec)?)))
    }

    /// A reserve at `now`, with the state already ticked to it. Returns
    /// the delivery and the journal record the caller must append.
    fn reserve_at(
        &self,
        live: &mut Live,
        lease: u64,
        now: u64,
    ) -> Result<Option<(Delivery, Record)>> {
        loop {
            // The fresh scan may set aside messages into the tracked
            // state, so it runs first.
            let fresh = self.peek_fresh(live, now)?;
            let tracked = live.state.best_ready();
            let take_tracked = match (&tracked, &fresh) {
                (Some(t), Some(f)) => *t < (f.priority, f.id),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return Ok(None),
            };
            let deadline = now.saturating_add(lease);
            let delivery = if take_tracked {
                let (priority, id) = tracked.expect("matched Some");
                let frame = match self.log.read(id) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => {
                        // Gone from the log (dropped by retention): forget it.
                        live.state.clamp_one(id);
                        continue;
                    }
                    Err(e) if e.is_corruption() => {
                        // Its bytes fail their check: it can never be
                        // delivered. Bury it so the group goes on, and
                        // report the damage once.
                        let mut entry = live.state.entry(id).expect("tracked");
                        entry.state = EntryState::Buried;
                        live.state.set(id, entry);
                        self.journal.append(Record::Bury { id })?;
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
                let attempt = live.state.reserve_tracked(id, deadline);
                Delivery {
                    id,
                    payload: frame.payload,
                    attempt,
                    enqueued_ms: frame.timestamp_ms,
                    priority,
                }
            } else {
                let frame = live.pending.take().expect("peeked above");
                live.state
                    .reserve_fresh(frame.id, deadline, 1, frame.attrs.priority);
                Delivery {
                    id: frame.id,
                    payload: frame.payload,
                    attempt: 1,
                    enqueued_ms: frame.timestamp_ms,
                    priority: frame.attrs.priority,
                }
            };
            let rec = Record::Reserve {
                id: delivery.id,
                attempts: delivery.attempt,
                priority: delivery.priority,
            };
            return Ok(Some((delivery, rec)));
        }
    }

    /// Makes a journal record written or durable as the durability says.
    fn commit(&self, ticket: u64, settle: bool) -> Result<()> {
        match (self.durability, settle) {
            (Durability::Sync, true) => self.journal.wait(ticket, Goal::Durable),
            (Durability::Sync | Durability::Interval(_), _) => {
                self.journal.wait(ticket, Goal::Written)
            }
            (Durability::Buffered, _) => Ok(()),
        }
    }

    /// Releases the group lock. First, if the journal has reached
    /// `checkpoint_journal_bytes` and no checkpoint is being written,
    /// rotates the journal and encodes the state as of the rotation, under
    /// the lock; then writes the checkpoint without it, so reserves and
    /// settles of other threads wait for the encoding, not for the file's
    /// writes and fsyncs.
    fn unlock(&self, mut live: MutexGuard<'_, Live>) -> Result<()> {
        let (_, len, records) = self.journal.position();
        let bound = live.opts.checkpoint_journal_bytes;
        if len < bound && records < replay_records_max(bound) {
            return Ok(());
        }
        let held = match self.checkpointing.try_lock() {
            Ok(held) => held,
            // One is being written: the next settle checkpoints.
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let (seq, bytes) = self.rotate_locked(&mut live)?;
        drop(live);
        self.write_checkpoint(seq, &bytes)?;
        drop(held);
        Ok(())
    }

    /// A checkpoint for the compactor, when the journal holds at least
    /// `min_bytes`: the records of finished messages are space like their
    /// frames, and a queue that went quiet would otherwise keep up to
    /// `checkpoint_journal_bytes` of them for good. Returns the length of
    /// the journal given back (0 when below `min_bytes`, or when another
    /// checkpoint is being written).
    pub fn checkpoint_journal(&self, min_bytes: u64) -> Result<u64> {
        // Most groups of a pass are below the bound: tell without taking
        // the group lock from their consumers. Checked again under it.
        if self.journal.position().1 < min_bytes {
            return Ok(0);
        }
        let mut live = self.lock()?;
        let (_, len, _) = self.journal.position();
        if len < min_bytes {
            return Ok(0);
        }
        let held = match self.checkpointing.try_lock() {
            Ok(held) => held,
            Err(std::sync::TryLockError::WouldBlock) => return Ok(0),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let (seq, bytes) = self.rotate_locked(&mut live)?;
        drop(live);
        self.write_checkpoint(seq, &bytes)?;
        drop(held);
        Ok(len)
    }

    /// Rotates the journal (its records durable first) and encodes a
    /// checkpoint of the state as of the rotation, naming the new journal.
    /// The caller holds `checkpointing`.
    fn rotate_locked(&self, live: &mut Live) -> Result<(u64, Vec<u8>)> {
        let seq = live.journal_seq + 1;
        self.journal.rotate(seq)?;
        live.journal_seq = seq;
        Ok((seq, checkpoint::encode(seq, &live.state)))
    }

    /// Writes the checkpoint naming journal `seq` (atomic replace), then
    /// removes the journals before `seq`. A crash before the replace is
    /// durable leaves the old checkpoint and every journal since it, which
    /// recovery replays in order. The caller holds `checkpointing`.
    fn write_checkpoint(&self, seq: u64, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(CHECKPOINT_FILE);
        fs::write_atomic(&*self.fs, &path, bytes).ctx("write checkpoint", &path)?;
        let names = self
            .fs
            .list_dir(&self.dir)
            .ctx("list group directory", &self.dir)?;
        let journals: Vec<u64> = names
            .iter()
            .filter_map(|n| journal::parse_file_name(n))
            .collect();
        remove_journals_below(&*self.fs, &self.dir, &journals, seq)
    }

    /// A checkpoint now, with the group lock held throughout (for `close`
    /// and option changes). The caller holds `checkpointing`.
    fn checkpoint_locked(&self, live: &mut Live) -> Result<()> {
        let (seq, bytes) = self.rotate_locked(live)?;
        self.write_checkpoint(seq, &bytes)
    }

    pub fn reserve(&self, lease: Duration) -> Result<Option<Delivery>> {
        let lease = lease_ms(lease)?;
        let mut live = self.lock()?;
        let Some((d, ticket)) = self.reserve_locked(&mut live, lease)? else {
            return Ok(None);
        };
        self.unlock(live)?;
        self.commit(ticket, false)?;
        Ok(Some(d))
    }

    pub fn reserve_batch(&self, n: usize, lease: Duration) -> Result<Vec<Delivery>> {
        let lease = lease_ms(lease)?;
        let mut live = self.lock()?;
        if let Some(e) = live.deferred.take() {
            return Err(e);
        }
        // One clock reading and one tick for the batch: its deliveries
        // share a deadline.
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        let mut out = Vec::with_capacity(n.min(4096));
        let mut recs = Vec::with_capacity(n.min(4096));
        while out.len() < n {
            match self.reserve_at(&mut live, lease, now) {
                Ok(Some((d, rec))) => {
                    out.push(d);
                    recs.push(rec);
                }
                Ok(None) => break,
                // Hand out what is reserved already; the error comes back
                // on the next call (the scan has moved past what it could
                // not read, so it would not meet it again).
                Err(e) if !out.is_empty() => {
                    live.deferred = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // One journal append for the batch, in the order of the state
        // changes above, all under the group lock.
        let ticket = if recs.is_empty() {
            None
        } else {
            Some(self.journal.append_all(&recs)?)
        };
        self.unlock(live)?;
        if let Some(t) = ticket {
            self.commit(t, false)?;
        }
        Ok(out)
    }

    pub fn reserve_timeout(&self, lease: Duration, wait: Duration) -> Result<Option<Delivery>> {
        let until = Instant::now() + wait;
        let _waiting = Waiting::new(&self.wake);
        loop {
            let generation = *self.wake.generation.lock().expect("wake lock");
            if let Some(d) = self.reserve(lease)? {
                return Ok(Some(d));
            }
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            let mut timeout = until - now;
            if let Some(t) = self.lock()?.state.next_deadline() {
                let in_ms = t.saturating_sub(self.clock.now_ms());
                timeout = timeout.min(Duration::from_millis(in_ms.max(1)));
            }
            let g = self.wake.generation.lock().expect("wake lock");
            if *g == generation {
                drop(self.wake.cv.wait_timeout(g, timeout).expect("wake lock"));
            }
        }
    }

    fn settle(
        &self,
        id: u64,
        op: impl FnOnce(&mut GroupState, &GroupOptions, u64) -> Result<Record, Refused>,
        wake: bool,
    ) -> Result<()> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        let opts = live.opts.clone();
        let rec = op(&mut live.state, &opts, now).map_err(|r| refused(&self.name, id, r))?;
        let mut ticket = self.journal.append(rec)?;
        if let Some((t, _)) = self.move_dead_letters(&mut live)? {
            ticket = t;
        }
        self.unlock(live)?;
        if wake {
            self.wake.notify();
        }
        self.commit(ticket, true)
    }

    pub fn ack(&self, id: u64) -> Result<()> {
        self.settle(id, |s, _, _| s.ack(id).map(|()| Record::Ack { id }), false)
    }

    pub fn ack_batch(&self, ids: &[u64]) -> Result<()> {
        let mut live = self.lock()?;
        for &id in ids {
            if !matches!(
                live.state.entry(id),
                Some(Entry {
                    state: EntryState::Reserved(_),
                    ..
                })
            ) {
                return Err(refused(&self.name, id, Refused::NotReserved));
            }
        }
        let mut recs = Vec::with_capacity(ids.len());
        let mut refusal = None;
        for &id in ids {
            // Only an id listed twice fails here (all were checked above):
            // journal the acks made before it, then report it.
            if let Err(r) = live.state.ack(id) {
                refusal = Some(refused(&self.name, id, r));
                break;
            }
            recs.push(Record::Ack { id });
        }
        let ticket = if recs.is_empty() {
            None
        } else {
            Some(self.journal.append_all(&recs)?)
        };
        if let Some(e) = refusal {
            return Err(e);
        }
        self.unlock(live)?;
        match ticket {
            Some(t) => self.commit(t, true),
            None => Ok(()),
        }
    }

    pub fn nack(&self, id: u64, delay: Option<Duration>) -> Result<()> {
        self.settle(
            id,
            |s, opts, now| {
                let (max, backoff) = (opts.max_attempts, opts.backoff);
                let attempts = match s.entry(id) {
                    Some(e) => e.attempts,
                    None => return Err(Refused::NotReserved),
                };
                let delay_ms = match delay {
                    Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                    None => backoff.delay_ms(id, attempts),
                };
                let until = if delay_ms == 0 {
                    0
                } else {
                    now.saturating_add(delay_ms)
                };
                s.nack(id, until, now, max)
                    .map(|()| Record::Nack { id, until })
            },
            true,
        )
    }

    pub fn touch(&self, id: u64, lease: Duration) -> Result<()> {
        let lease = lease_ms(lease)?;
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        live.state
            .touch(id, now.saturating_add(lease))
            .map_err(|r| refused(&self.name, id, r))
    }

    pub fn bury(&self, id: u64) -> Result<()> {
        self.settle(
            id,
            |s, _, _| s.bury(id).map(|()| Record::Bury { id }),
            false,
        )
    }

    pub fn kick_id(&self, id: u64) -> Result<()> {
        {
            // A delayed message the fresh scan has not reached yet.
            let mut live = self.lock()?;
            let now = self.clock.now_ms();
            if live.state.entry(id).is_none()
                && id >= live.state.cursor
                && self
                    .log
                    .read(id)?
                    .is_some_and(|f| f.attrs.not_before_ms > now)
            {
                self.track_through(&mut live, id, now)?;
            }
        }
        self.settle(
            id,
            |s, _, _| s.kick_id(id).map(|()| Record::Kick { id }),
            true,
        )
    }

    pub fn kick(&self, n: usize) -> Result<usize> {
        let live = self.lock()?;
        let ids = live.state.buried_ids(n);
        self.kick_ids(live, &ids)
    }

    /// Kicks `ids` (buried or delayed, as listed by the state under the
    /// lock held in `live`) with one commit; wakes waiting reservers.
    fn kick_ids(&self, mut live: MutexGuard<'_, Live>, ids: &[u64]) -> Result<usize> {
        let mut ticket = 0;
        for &id in ids {
            live.state
                .kick_id(id)
                .map_err(|r| refused(&self.name, id, r))?;
            ticket = self.journal.append(Record::Kick { id })?;
        }
        self.unlock(live)?;
        if !ids.is_empty() {
            self.wake.notify();
            self.commit(ticket, true)?;
        }
        Ok(ids.len())
    }

    /// Makes the fresh messages from the cursor through `id` tracked and
    /// moves the cursor past `id`, so `id` can be addressed out of order.
    /// Returns the journal ticket, or `None` (nothing recorded) when `id`
    /// is not fresh.
    fn track_through(&self, live: &mut Live, id: u64, now: u64) -> Result<Option<u64>> {
        if id < live.state.cursor || id >= self.log.next_id() {
            return Ok(None);
        }
        track_until(&mut live.state, &self.log, id + 1, now)?;
        if live.pending.as_ref().is_some_and(|f| f.id <= id) {
            live.pending = None;
        }
        Ok(Some(self.journal.append(Record::Track { id })?))
    }

    pub fn delete_batch(&self, ids: &[(u64, bool)]) -> Result<Vec<bool>> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        let mut out = Vec::with_capacity(ids.len());
        let mut last = None;
        for &(id, reserved_ok) in ids {
            if live.state.entry(id).is_none()
                && let Some(t) = self.track_through(&mut live, id, now)?
            {
                last = Some(t);
            }
            let ok = match live.state.entry(id) {
                Some(Entry {
                    state: EntryState::Reserved(_),
                    ..
                }) => reserved_ok,
                Some(_) => true,
                None => false,
            };
            if ok {
                live.state.delete(id);
                last = Some(self.journal.append(Record::Delete { id })?);
            }
            out.push(ok);
        }
        self.unlock(live)?;
        if let Some(t) = last {
            self.commit(t, true)?;
        }
        Ok(out)
    }

    /// Releases a reserved message with a new priority, ready after
    /// `delay`; never buries.
    pub fn release(&self, id: u64, priority: u32, delay: Duration) -> Result<()> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        if !matches!(
            live.state.entry(id),
            Some(Entry {
                state: EntryState::Reserved(_),
                ..
            })
        ) {
            return Err(refused(&self.name, id, Refused::NotReserved));
        }
        live.state.set_priority(id, priority);
        self.journal.append(Record::Priority { id, priority })?;
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let until = if delay_ms == 0 {
            0
        } else {
            now.saturating_add(delay_ms)
        };
        live.state
            .nack(id, until, now, u32::MAX)
            .map_err(|r| refused(&self.name, id, r))?;
        let ticket = self.journal.append(Record::Nack { id, until })?;
        self.unlock(live)?;
        self.wake.notify();
        self.commit(ticket, true)
    }

    /// Buries a reserved message with a new priority.
    pub fn bury_with(&self, id: u64, priority: u32) -> Result<()> {
        let mut live = self.lock()?;
        live.state
            .bury(id)
            .map_err(|r| refused(&self.name, id, r))?;
        live.state.set_priority(id, priority);
        self.journal.append(Record::Priority { id, priority })?;
        let ticket = self.journal.append(Record::Bury { id })?;
        self.unlock(live)?;
        self.commit(ticket, true)
    }

    /// Makes up to `n` delayed messages ready now, due first first.
    pub fn kick_delayed(&self, n: usize) -> Result<usize> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        self.peek_fresh(&mut live, now)?;
        // The soonest due among the tracked and the unscanned ones.
        let mut due: Vec<(u64, u64)> = live.state.delayed_first(n);
        let unscanned = self.unscanned_delayed(&mut live, now)?;
        due.extend(unscanned.iter().take(n).map(|&(t, id, _)| (t, id)));
        due.sort_unstable();
        due.truncate(n);
        // Unscanned ones are tracked first (every fresh message up to the
        // last of them, as `kick_id` does), so the kicks have entries.
        let last_unscanned = due
            .iter()
            .filter(|&&(_, id)| live.state.entry(id).is_none())
            .map(|&(_, id)| id)
            .max();
        if let Some(id) = last_unscanned {
            self.track_through(&mut live, id, now)?;
        }
        let ids: Vec<u64> = due.into_iter().map(|(_, id)| id).collect();
        self.kick_ids(live, &ids)
    }

    /// Reserves the message `id` if it is ready, delayed or buried.
    pub fn reserve_id(&self, id: u64, lease: Duration) -> Result<Option<Delivery>> {
        let lease = lease_ms(lease)?;
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        if live.state.entry(id).is_none() {
            self.track_through(&mut live, id, now)?;
        }
        let Some(entry) = live.state.entry(id) else {
            return Ok(None);
        };
        if matches!(entry.state, EntryState::Reserved(_)) {
            return Ok(None);
        }
        let Some(frame) = self.log.read(id)? else {
            return Ok(None);
        };
        let attempt = live
            .state
            .reserve_id(id, now.saturating_add(lease))
            .map_err(|r| refused(&self.name, id, r))?;
        let ticket = self.journal.append(Record::Reserve {
            id,
            attempts: attempt,
            priority: entry.priority,
        })?;
        self.unlock(live)?;
        self.commit(ticket, false)?;
        Ok(Some(Delivery {
            id,
            payload: frame.payload,
            attempt,
            enqueued_ms: frame.timestamp_ms,
            priority: entry.priority,
        }))
    }

    /// When the next delay falls due or lease expires (unix ms), among
    /// messages the group has scanned.
    pub fn next_due_ms(&self) -> Result<Option<u64>> {
        Ok(self.lock()?.state.next_deadline())
    }

    fn peeked(&self, id: u64, e: Option<Entry>) -> Result<Option<Peeked>> {
        let Some(frame) = self.log.read(id)? else {
            return Ok(None);
        };
        let (state, attempts, priority) = match e {
            Some(e) => (
                match e.state {
                    EntryState::Ready => MessageState::Ready,
                    EntryState::Delayed(t) => MessageState::Delayed(t),
                    EntryState::Reserved(t) => MessageState::Reserved(t),
                    EntryState::Buried => MessageState::Buried,
                },
                e.attempts,
                e.priority,
            ),
            None => (MessageState::Ready, 0, frame.attrs.priority),
        };
        Ok(Some(Peeked {
            id,
            payload: frame.payload,
            state,
            attempts,
            priority,
            enqueued_ms: frame.timestamp_ms,
        }))
    }

    pub fn peek(&self, id: u64) -> Result<Option<Peeked>> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        if let Some(e) = live.state.entry(id) {
            return self.peeked(id, Some(e));
        }
        if id < live.state.cursor {
            return Ok(None); // finished
        }
        // A fresh message: its own attributes say where it is.
        let Some(frame) = self.log.read(id)? else {
            return Ok(None);
        };
        let state = if frame.attrs.not_before_ms > now {
            MessageState::Delayed(frame.attrs.not_before_ms)
        } else {
            MessageState::Ready
        };
        Ok(Some(Peeked {
            id,
            payload: frame.payload,
            state,
            attempts: 0,
            priority: frame.attrs.priority,
            enqueued_ms: frame.timestamp_ms,
        }))
    }

    pub fn peek_ready(&self) -> Result<Option<Peeked>> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        let fresh = self.peek_fresh(&mut live, now)?;
        let tracked = live.state.best_ready();
        match (tracked, fresh) {
            (Some((p, tid)), Some(f)) if (p, tid) < (f.priority, f.id) => {
                self.peeked(tid, live.state.entry(tid))
            }
            (_, Some(f)) => self.peeked(f.id, None),
            (Some((_, tid)), None) => self.peeked(tid, live.state.entry(tid)),
            (None, None) => Ok(None),
        }
    }

    pub fn peek_delayed(&self) -> Result<Option<Peeked>> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        // Delayed messages ahead of the first ready fresh one are set
        // aside by the scan; those behind it are found by reading on.
        self.peek_fresh(&mut live, now)?;
        let tracked = live
            .state
            .first_delayed()
            .and_then(|(due, id)| Some((due, id, live.state.entry(id)?)));
        let unscanned = self
            .unscanned_delayed(&mut live, now)?
            .into_iter()
            .next()
            .map(|(due, id, priority)| {
                let e = Entry {
                    state: EntryState::Delayed(due),
                    attempts: 0,
                    priority,
                };
                (due, id, e)
            });
        let best = match (tracked, unscanned) {
            (Some(a), Some(b)) => Some(if (b.0, b.1) < (a.0, a.1) { b } else { a }),
            (a, b) => a.or(b),
        };
        match best {
            Some((_, id, e)) => self.peeked(id, Some(e)),
            None => Ok(None),
        }
    }

    /// The delayed messages the fresh scan has not reached (it stops at the
    /// first ready message): (due, id, priority), soonest due first. Read
    /// from the log, not tracked. None when the priority floor from the
    /// cursor on is above 0: a delayed frame counts as 0 in its segment's
    /// floor, so the common case of one non-zero priority costs no read.
    fn unscanned_delayed(&self, live: &mut Live, now: u64) -> Result<Vec<(u64, u64, u32)>> {
        let cursor = live.state.cursor;
        if self.log.priority_floor(cursor, &mut live.floor) > 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        each_frame_from(&self.log, cursor, |f| {
            if f.attrs.not_before_ms > now && live.state.entry(f.id).is_none() {
                out.push((f.attrs.not_before_ms, f.id, f.attrs.priority));
            }
            true
        })?;
        out.sort_unstable();
        Ok(out)
    }

    pub fn peek_buried(&self) -> Result<Option<Peeked>> {
        let live = self.lock()?;
        match live.state.buried_ids(1).first() {
            Some(&id) => self.peeked(id, live.state.entry(id)),
            None => Ok(None),
        }
    }

    pub fn stats(&self) -> Result<GroupStats> {
        let mut live = self.lock()?;
        let now = self.clock.now_ms();
        self.tick(&mut live, now)?;
        // The scan first: it sets aside delayed messages ahead of the
        // first ready fresh one, so they count as delayed.
        let oldest = self.peek_fresh(&mut live, now)?.map(|f| f.timestamp_ms);
        let (ready, reserved, delayed, buried) = live.state.counts();
        let next_id = self.log.next_id();
        let unscanned = next_id.saturating_sub(live.state.cursor);
        let oldest_tracked = live
            .state
            .min_ready_id()
            .and_then(|id| self.log.read(id).ok().flatten())
            .map(|f| f.timestamp_ms);
        let oldest = match (oldest, oldest_tracked) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(GroupStats {
            ready: ready as u64 + unscanned,
            reserved: reserved as u64,
            delayed: delayed as u64,
            buried: buried as u64,
            pushed_total: next_id.saturating_sub(1),
            acked_total: live.state.acked_total,
            dead_lettered_total: live.state.dead_lettered_total,
            retention_lost_total: live.state.retention_lost_total,
            oldest_ready_age_ms: oldest.map_or(0, |t| now.saturating_sub(t)),
            bytes_on_disk: self.log.bytes_on_disk()?,
        })
    }

    /// For the compactor: the group's cursor and the ids it still tracks in
    /// `[lo, hi)`. Ids below the cursor and not returned are finished.
    pub fn liveness(&self, lo: u64, hi: u64) -> (u64, Vec<u64>) {
        let live = self.live.lock().expect("group lock");
        (live.state.cursor, live.state.tracked_in(lo, hi))
    }

    /// Makes every journal record appended so far durable, so the acks
    /// that finished messages are on disk before their bytes are dropped.
    pub fn sync_journal(&self) -> Result<()> {
        self.journal.sync()
    }

    /// Forgets messages below `first` (dropped by retention); returns how
    /// many the group had not finished.
    pub fn forget_below(&self, first: u64) -> u64 {
        let mut live = self.live.lock().expect("group lock");
        if live.pending.as_ref().is_some_and(|f| f.id < first) {
            live.pending = None;
        }
        live.state.forget_below(first)
    }

    /// Syncs the journal and writes a final checkpoint.
    pub fn close(&self) -> Result<()> {
        // Waits for a checkpoint being written by another thread.
        let _checkpointing = self.checkpointing.lock().expect("checkpoint lock");
        let mut live = self.live.lock().expect("group lock");
        if live.closed {
            return Ok(());
        }
        live.closed = true;
        self.journal.sync()?;
        live.state.closed_cleanly = true;
        self.checkpoint_locked(&mut live)
    }
}

/// Under `Interval`, fsyncs the journal at least every `every` until the
/// group closes or is dropped. A failure poisons the journal; settles
/// report it.
/// The `Interval` journal timer of a group: `every` after records are
/// appended to a journal that had none waiting, fsync it; with none, sleep
/// until the next (it used to wake every `every`, idle or not).
fn journal_timer(
    group: &std::sync::Weak<GroupInner>,
    signal: &journal_writer::TimerSignal,
    every: Duration,
) {
    loop {
        if !signal.wait() {
            return; // the journal, and so the group, is gone
        }
        std::thread::sleep(every);
        let Some(g) = group.upgrade() else { return };
        if g.live.lock().expect("group lock").closed {
            return;
        }
        let _ = g.journal.sync();
    }
}

/// Applies one journal record during recovery. Returns false when the
/// record refers past the end of the log (discarded, never applied).
fn replay_record(
    state: &mut GroupState,
    rec: Record,
    log: &Arc<Log>,
    log_end: u64,
    now: u64,
) -> Result<bool> {
    let id = match rec {
        Record::Reserve { id, .. }
        | Record::Ack { id }
        | Record::Nack { id, .. }
        | Record::Bury { id }
        | Record::Kick { id }
        | Record::DeadLetter { id }
        | Record::Delete { id }
        | Record::Priority { id, .. }
        | Record::Track { id } => id,
    };
    if id >= log_end {
        return Ok(false);
    }
    // A live lease may have expired (and been re-reserved) without a
    // record: treat the entry as reserved for the record that settles it.
    let force_reserved = |state: &mut GroupState| -> bool {
        match state.entry(id) {
            // Already reserved (a run member stays in its run).
            Some(Entry {
                state: EntryState::Reserved(_),
                ..
            }) => true,
            Some(mut e) => {
                e.state = EntryState::Reserved(0);
                state.set(id, e);
                true
            }
            None => false,
        }
    };
    match rec {
        Record::Reserve {
            attempts, priority, ..
        } => {
            if id > state.cursor {
                set_aside_until(state, log, id, now)?;
            }
            if id >= state.cursor && state.entry(id).is_none() {
                state.reserve_fresh(id, 0, attempts, priority);
            } else if force_reserved(state) {
                state.set_attempts(id, attempts);
            }
        }
        Record::Ack { .. } => {
            // A live ack of a buried message is refused, so an ack record
            // for a buried entry is a move to the dead-letter queue: not an
            // ack of the group's.
            if !state.finish_buried(id) && force_reserved(state) {
                let _ = state.ack(id);
            }
        }
        Record::Nack { until, .. } => {
            // Never buries here: a dead-lettering has its own record.
            if force_reserved(state) {
                let _ = state.nack(id, until, 0, u32::MAX);
            }
        }
        Record::Bury { .. } => {
            if force_reserved(state) {
                let _ = state.bury(id);
            }
        }
        Record::Kick { .. } => {
            if id >= state.cursor {
                // Kicked while set aside by a scan that left no record.
                set_aside_until(state, log, id + 1, now)?;
                state.cursor = state.cursor.max(id + 1);
            }
            if let Some(mut e) = state.entry(id) {
                if matches!(e.state, EntryState::Reserved(_)) {
                    e.state = EntryState::Buried;
                    state.set(id, e);
                }
                let _ = state.kick_id(id);
            }
        }
        Record::DeadLetter { .. } => state.replay_dead_letter(id),
        Record::Delete { .. } => {
            if id >= state.cursor && state.entry(id).is_none() {
                // Deleted while set aside by a scan that left no record
                // (a fresh message deleted first has a track record).
                set_aside_until(state, log, id + 1, now)?;
                state.cursor = state.cursor.max(id + 1);
            }
            state.delete(id);
        }
        Record::Priority { priority, .. } => {
            state.set_priority(id, priority);
        }
        Record::Track { .. } => {
            if id >= state.cursor {
                track_until(state, log, id + 1, now)?;
            }
        }
    }
    Ok(true)
}

/// Replays the live fresh scan from the cursor up to (not including) `end`:
/// messages with a priority or a delay are set aside, as the live scan did.
fn set_aside_until(state: &mut GroupState, log: &Arc<Log>, end: u64, now: u64) -> Result<()> {
    set_aside_where(state, log, end, now, |f| {
        f.attrs.priority != 0 || f.attrs.not_before_ms != 0
    })
}

/// Tracks every fresh message from the cursor up to (not including) `end`
/// as the fresh scan would set it aside (ready at its priority, or
/// delayed), priority 0 ones included, and moves the cursor to `end`.
fn track_until(state: &mut GroupState, log: &Arc<Log>, end: u64, now: u64) -> Result<()> {
    set_aside_where(state, log, end, now, |_| true)?;
    state.cursor = state.cursor.max(end);
    Ok(())
}

/// Sets aside the untracked messages from the cursor up to (not including)
/// `end` that `wanted` picks.
fn set_aside_where(
    state: &mut GroupState,
    log: &Arc<Log>,
    end: u64,
    now: u64,
    wanted: impl Fn(&StoredFrame) -> bool,
) -> Result<()> {
    each_frame_from(log, state.cursor, |f| {
        if f.id >= end {
            return false;
        }
        if state.entry(f.id).is_none() && wanted(&f) {
            state.set_aside(f.id, f.attrs.priority, f.attrs.not_before_ms, now);
        }
        true
    })
}

/// Calls `each` with every readable frame from id `from` on, in id order,
/// until it returns false. Damaged bytes are skipped: they are reported
/// where a reader that delivers messages meets them (the live scan).
fn each_frame_from(
    log: &Arc<Log>,
    from: u64,
    mut each: impl FnMut(StoredFrame) -> bool,
) -> Result<()> {
    let mut reader = log.reader(from);
    loop {
        match reader.next() {
            Ok(Some(f)) => {
                if !each(f) {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) if e.is_corruption() => {}
            Err(e) => return Err(e),
        }
    }
}

/// The most a journal file is preallocated ahead of its records.
const JOURNAL_PREALLOCATE_MAX: u64 = 256 << 10;

fn remove_journals_below(fs: &dyn Fs, dir: &Path, journals: &[u64], seq: u64) -> Result<()> {
    let mut removed = false;
    for &s in journals.iter().filter(|&&s| s < seq) {
        let p = dir.join(journal::file_name(s));
        fs.remove_file(&p).ctx("remove journal", &p)?;
        removed = true;
    }
    if removed {
        fs.sync_dir(dir).ctx("fsync directory", dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod checkpoint_tests;

#[cfg(test)]
mod out_of_order_tests;

#[cfg(test)]
mod priority_floor_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            jitter_percent: 0,
        };
        assert_eq!(b.delay_ms(1, 1), 100);
        assert_eq!(b.delay_ms(1, 2), 200);
        assert_eq!(b.delay_ms(1, 3), 400);
        assert_eq!(b.delay_ms(1, 10), 1000);
        let j = Backoff {
            jitter_percent: 20,
            ..b
        };
        for id in 0..200 {
            let d = j.delay_ms(id, 2);
            assert!((160..=240).contains(&d), "{d}");
        }
        assert!(
            (0..200)
                .map(|id| j.delay_ms(id, 2))
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                > 10
        );
    }

    #[test]
    fn lease_bounds() {
        assert!(matches!(
            lease_ms(Duration::ZERO),
            Err(Error::InvalidLease { .. })
        ));
        assert!(matches!(
            lease_ms(LEASE_MAX + Duration::from_secs(1)),
            Err(Error::InvalidLease { .. })
        ));
        assert_eq!(lease_ms(Duration::from_millis(1500)).unwrap(), 1500);
    }
}
