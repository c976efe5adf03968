//! The public handle of one queue.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::compact::{CompactReport, PassOptions, Retention, compact_queue};
use crate::error::{Error, IoContext, Result};
use crate::group::{
    DeadLetterTarget, Delivery, GroupInner, GroupOptions, GroupRecovery, GroupStats, Peeked, Wake,
};
use crate::log::frame::Attrs;
use crate::log::{Log, LogOptions, LogReader, QueueRecovery, StoredFrame};
use crate::name::validate_name;
use crate::options::Options;
use crate::store::StoreInner;

/// The name of the group every queue has.
pub const DEFAULT_GROUP: &str = "default";
const GROUPS_DIR: &str = "groups";

/// What a queue's handles share: its log and its groups.
#[derive(Debug)]
pub(crate) struct QueueShared {
    pub log: Arc<Log>,
    groups: Mutex<BTreeMap<String, Arc<GroupInner>>>,
    retention: Mutex<Retention>,
    compacted: Mutex<CompactReport>,
    wake: Arc<Wake>,
    clock: Arc<dyn Clock>,
}

impl QueueShared {
    /// Opens the queue in `dir` with every group it has (and `default`).
    pub fn open(name: &str, dir: PathBuf, options: &Options) -> Result<Arc<QueueShared>> {
        let fs = options.fs.clone();
        let log = Log::open(name, dir.clone(), fs.clone(), LogOptions::from(options))?;
        let shared = Arc::new(QueueShared {
            log,
            groups: Mutex::new(BTreeMap::new()),
            retention: Mutex::new(Retention::default()),
            compacted: Mutex::new(CompactReport::default()),
            wake: Arc::new(Wake::default()),
            clock: options.clock.clone(),
        });
        let groups_dir = dir.join(GROUPS_DIR);
        let names = match fs.list_dir(&groups_dir) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs.create_dir_all(&groups_dir)
                    .ctx("create directory", &groups_dir)?;
                fs.sync_dir(&dir).ctx("fsync directory", &dir)?;
                Vec::new()
            }
            Err(e) => return Err(Error::io("list", &groups_dir, e)),
        };
        for g in names.iter().filter(|n| validate_name(n).is_ok()) {
            shared.group(g, None)?;
        }
        shared.group(DEFAULT_GROUP, None)?;
        Ok(shared)
    }

    fn group(&self, name: &str, options: Option<GroupOptions>) -> Result<Arc<GroupInner>> {
        validate_name(name)?;
        let mut groups = self.groups.lock().expect("groups lock");
        if let Some(g) = groups.get(name) {
            return Ok(g.clone());
        }
        let dir = self.log.dir.join(GROUPS_DIR).join(name);
        let g = GroupInner::open(
            name,
            dir,
            self.log.clone(),
            self.clock.clone(),
            options,
            self.wake.clone(),
        )?;
        groups.insert(name.to_owned(), g.clone());
        Ok(g)
    }

    /// One compaction pass; adds it to the queue's totals.
    pub fn compact(
        &self,
        copy_forward_percent: u8,
        checkpoint_journal_bytes: u64,
    ) -> Result<CompactReport> {
        let groups = self.groups.lock().expect("groups lock");
        let list: Vec<Arc<GroupInner>> = groups.values().cloned().collect();
        let opts = PassOptions {
            copy_forward_percent,
            checkpoint_journal_bytes,
            retention: *self.retention.lock().expect("retention lock"),
            now_ms: self.clock.now_ms(),
        };
        let report = compact_queue(&self.log, &list, opts)?;
        drop(groups);
        let mut totals = self.compacted.lock().expect("compact lock");
        totals.absorb(&report);
        totals.segments = report.segments;
        totals.bytes_on_disk = report.bytes_on_disk;
        totals.live_bytes = report.live_bytes;
        Ok(report)
    }

    pub fn set_retention(&self, retention: Retention) {
        *self.retention.lock().expect("retention lock") = retention;
    }

    /// Flushes the log, checkpoints every group, closes the log.
    pub fn close(&self) -> Result<()> {
        let mut first = self.log.flush().err();
        let groups: Vec<_> = self
            .groups
            .lock()
            .expect("groups lock")
            .values()
            .cloned()
            .collect();
        for g in groups {
            if let Err(e) = g.close() {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.log.close() {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    pub fn recovery(&self) -> &QueueRecovery {
        self.log.recovery()
    }
}

/// A named queue: an append-only log of messages with ids that only grow.
///
/// Cheap to clone, `Send + Sync`: share it between threads freely. Under
/// [`Durability::Sync`](crate::Durability::Sync), concurrent pushes from
/// many threads share one write and one fsync.
#[derive(Clone, Debug)]
pub struct Queue {
    shared: Arc<QueueShared>,
    log: Arc<Log>,
    store: Arc<StoreInner>,
}

/// A message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The id, unique and increasing within its queue.
    pub id: u64,
    /// When it was pushed, unix milliseconds.
    pub timestamp_ms: u64,
    /// Priority, lower first; 0 by default.
    pub priority: u32,
    /// Unix milliseconds before which it is not ready; 0 for none.
    pub not_before_ms: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

impl From<StoredFrame> for Message {
    fn from(f: StoredFrame) -> Message {
        Message {
            id: f.id,
            timestamp_ms: f.timestamp_ms,
            priority: f.attrs.priority,
            not_before_ms: f.attrs.not_before_ms,
            payload: f.payload,
        }
    }
}

/// Options of one push: priority and delay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// Lower is delivered first. Default 0.
    pub priority: u32,
    /// Not delivered before this much time has passed. Default none.
    pub delay: Duration,
}

/// Figures of one queue's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogStats {
    /// Oldest id still on disk.
    pub first_id: u64,
    /// The id the next push gets.
    pub next_id: u64,
    /// Segment files.
    pub segments: usize,
    /// Bytes of all segment files.
    pub bytes_on_disk: u64,
}

impl Queue {
    pub(crate) fn new(shared: Arc<QueueShared>, store: Arc<StoreInner>) -> Queue {
        Queue {
            log: shared.log.clone(),
            shared,
            store,
        }
    }

    /// Opens the consumer group `name`, creating it with default options if
    /// needed; an existing group keeps the options it runs with (its
    /// `max_attempts` is kept in its checkpoint; other options are not
    /// stored and are the defaults after a restart until
    /// [`Queue::group_with`] sets them). Every queue has the group
    /// [`DEFAULT_GROUP`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; errors while recovering its journal.
    pub fn group(&self, name: &str) -> Result<Group> {
        let inner = self.shared.group(name, None)?;
        Ok(Group {
            inner,
            _queue: self.clone(),
        })
    }

    /// Opens or creates the group `name` with `options`. Options are not
    /// stored on disk: the store recovers every group with the defaults
    /// when it opens, and this call replaces them (dead-lettering ready
    /// messages already out of attempts under the new `max_attempts`).
    ///
    /// # Errors
    ///
    /// As [`Queue::group`].
    pub fn group_with(&self, name: &str, options: GroupOptions) -> Result<Group> {
        let dead_letters = match &options.dead_letter_queue {
            Some(q) if q == self.name() => {
                return Err(Error::InvalidOption {
                    option: "dead_letter_queue",
                    reason: format!("queue {q:?} cannot be its own dead-letter queue"),
                });
            }
            Some(q) => {
                let target = self.store.queue_shared(q)?;
                Some(DeadLetterTarget {
                    log: target.log.clone(),
                    wake: target.wake.clone(),
                })
            }
            None => None,
        };
        let inner = self.shared.group(name, Some(options.clone()))?;
        inner.apply_options(options, dead_letters)?;
        Ok(Group {
            inner,
            _queue: self.clone(),
        })
    }

    /// Sets the queue's retention (not stored on disk: set it again after
    /// reopening). The compactor applies it on its next pass.
    pub fn set_retention(&self, retention: Retention) {
        self.shared.set_retention(retention);
    }

    /// Compaction totals so far (since the store opened) and the sizes
    /// after the last pass.
    pub fn compact_stats(&self) -> CompactReport {
        self.shared.compacted.lock().expect("compact lock").clone()
    }

    /// Names of the queue's groups, sorted.
    pub fn group_names(&self) -> Vec<String> {
        self.shared
            .groups
            .lock()
            .expect("groups lock")
            .keys()
            .cloned()
            .collect()
    }

    fn pushed(&self, r: Result<u64>) -> Result<u64> {
        if r.is_ok() {
            self.shared.wake.notify();
        }
        r
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.log.name
    }

    /// Appends one message and returns its id. Under the default
    /// [`Durability::Sync`](crate::Durability::Sync) it returns only once
    /// the message is on disk.
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`](crate::Error::MessageTooLarge) above
    /// `message_bytes_max`; [`Error::Poisoned`](crate::Error::Poisoned)
    /// after an earlier failed write or fsync; I/O errors
    /// ([`Error::DiskFull`](crate::Error::DiskFull) among them), after which
    /// the queue is poisoned; [`Error::Closed`](crate::Error::Closed).
    pub fn push(&self, payload: impl AsRef<[u8]>) -> Result<u64> {
        self.pushed(self.log.append(&[(payload.as_ref(), Attrs::default())]))
    }

    /// Appends one message with a priority and a delay.
    ///
    /// # Errors
    ///
    /// As [`Queue::push`].
    pub fn push_with(&self, payload: impl AsRef<[u8]>, options: PushOptions) -> Result<u64> {
        let attrs = Attrs {
            priority: options.priority,
            not_before_ms: if options.delay.is_zero() {
                0
            } else {
                self.shared
                    .clock
                    .now_ms()
                    .saturating_add(u64::try_from(options.delay.as_millis()).unwrap_or(u64::MAX))
            },
        };
        self.pushed(self.log.append(&[(payload.as_ref(), attrs)]))
    }

    /// Appends messages as one commit (one fsync under `Sync`) and returns
    /// their ids, which are consecutive. An empty batch returns an empty
    /// range.
    ///
    /// A batch of up to 512 KiB of frames is one write. A larger one is
    /// encoded and written in pieces of 256 KiB, so it needs no second
    /// copy of itself in memory; other pushes wait until its last piece is
    /// encoded. Under `Sync` readers see none of it before all of it is
    /// durable; under `Buffered` and `Interval` they may see its first
    /// pieces before this returns. After a crash, a batch this call did
    /// not acknowledge may have left a prefix of itself, whatever its size.
    ///
    /// # Errors
    ///
    /// As [`Queue::push`]; a batch with an oversize message is refused
    /// whole.
    pub fn push_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Range<u64>> {
        if payloads.is_empty() {
            let next = self.log.next_id();
            return Ok(next..next);
        }
        let items: Vec<(&[u8], Attrs)> = payloads
            .iter()
            .map(|p| (p.as_ref(), Attrs::default()))
            .collect();
        let first = self.pushed(self.log.append(&items))?;
        Ok(first..first + payloads.len() as u64)
    }

    /// Appends messages, each with its own priority and delay, as one
    /// commit (one fsync under `Sync`, written as [`Queue::push_batch`]
    /// writes) and returns their ids. An empty batch returns an empty
    /// range.
    ///
    /// # Errors
    ///
    /// As [`Queue::push_batch`].
    pub fn push_batch_with<P: AsRef<[u8]>>(
        &self,
        items: &[(P, PushOptions)],
    ) -> Result<Range<u64>> {
        if items.is_empty() {
            let next = self.log.next_id();
            return Ok(next..next);
        }
        let now = self.shared.clock.now_ms();
        let batch: Vec<(&[u8], Attrs)> = items
            .iter()
            .map(|(p, o)| {
                let not_before_ms = if o.delay.is_zero() {
                    0
                } else {
                    now.saturating_add(u64::try_from(o.delay.as_millis()).unwrap_or(u64::MAX))
                };
                (
                    p.as_ref(),
                    Attrs {
                        priority: o.priority,
                        not_before_ms,
                    },
                )
            })
            .collect();
        let first = self.pushed(self.log.append(&batch))?;
        Ok(first..first + items.len() as u64)
    }

    /// Reads the message with `id`, or `None` if there is none (never
    /// pushed, not yet visible, or removed).
    ///
    /// # Errors
    ///
    /// [`Error::Corruption`](crate::Error::Corruption) naming the file and
    /// offset if the message's bytes fail their check; I/O errors.
    pub fn read(&self, id: u64) -> Result<Option<Message>> {
        Ok(self.log.read(id)?.map(Message::from))
    }

    /// Iterates over messages from `id` on, in id order, until it catches
    /// up with the writer. A damaged range yields one
    /// [`Error::Corruption`](crate::Error::Corruption); iteration continues
    /// with the valid messages after it.
    pub fn reader(&self, id: u64) -> Reader {
        Reader {
            inner: self.log.reader(id),
        }
    }

    /// Writes and fsyncs everything pushed so far (the way to make
    /// `Buffered` pushes durable).
    ///
    /// # Errors
    ///
    /// I/O errors, after which the queue is poisoned;
    /// [`Error::Poisoned`](crate::Error::Poisoned).
    pub fn flush(&self) -> Result<()> {
        self.log.flush()
    }

    /// The id the next push gets.
    pub fn next_id(&self) -> u64 {
        self.log.next_id()
    }

    /// Figures of the log.
    ///
    /// # Errors
    ///
    /// I/O errors while loading segment metadata.
    pub fn log_stats(&self) -> Result<LogStats> {
        Ok(LogStats {
            first_id: self.log.first_id(),
            next_id: self.log.next_id(),
            segments: self.log.segment_count(),
            bytes_on_disk: self.log.bytes_on_disk()?,
        })
    }

    /// What recovery found when the queue was opened.
    pub fn recovery(&self) -> &QueueRecovery {
        self.log.recovery()
    }
}

/// An iterator over a queue's messages in id order; see [`Queue::reader`].
#[derive(Debug)]
pub struct Reader {
    inner: LogReader,
}

impl Reader {
    /// The id the next message will have at least.
    pub fn position(&self) -> u64 {
        self.inner.position()
    }
}

impl Iterator for Reader {
    type Item = Result<Message>;

    fn next(&mut self) -> Option<Result<Message>> {
        self.inner.next().map(|f| f.map(Message::from)).transpose()
    }
}

/// A consumer group of a queue: consumers of one group compete for its
/// messages; every group sees every message.
///
/// Cheap to clone, `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Group {
    inner: Arc<GroupInner>,
    _queue: Queue,
}

impl Group {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Messages the group tracks in memory.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.inner.tracked()
    }

    /// Reserves the next ready message for `lease`, or returns `None`.
    /// Ready order is (priority, id). The reservation is recorded (written,
    /// not fsynced) before this returns, so the attempt counts even if the
    /// process dies while handling it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidLease`] for a zero or too long lease;
    /// [`Error::Corruption`] when the next message's bytes fail their check
    /// (the next call continues after them); I/O errors.
    pub fn reserve(&self, lease: Duration) -> Result<Option<Delivery>> {
        self.inner.reserve(lease)
    }

    /// As [`Group::reserve`], but waits up to `wait` for a message to become
    /// ready: woken by pushes, releases, kicks, and by delays and leases
    /// falling due.
    ///
    /// # Errors
    ///
    /// As [`Group::reserve`].
    pub fn reserve_timeout(&self, lease: Duration, wait: Duration) -> Result<Option<Delivery>> {
        self.inner.reserve_timeout(lease, wait)
    }

    /// Reserves up to `n` ready messages, with one journal append for the
    /// batch (one record for each run of fresh messages at one priority).
    ///
    /// # Errors
    ///
    /// As [`Group::reserve`]. An error met after some messages were
    /// reserved (a damaged message, say) does not discard them: the batch
    /// returns them, and the next reserve of this group returns the error.
    pub fn reserve_batch(&self, n: usize, lease: Duration) -> Result<Vec<Delivery>> {
        self.inner.reserve_batch(n, lease)
    }

    /// Acknowledges a reserved message: it is never delivered to this group
    /// again. Under `Sync` this returns after the ack is fsynced
    /// (concurrent acks share the fsync).
    ///
    /// # Errors
    ///
    /// [`Error::NotReserved`] if `id` is not reserved in this group; I/O
    /// errors.
    pub fn ack(&self, id: u64) -> Result<()> {
        self.inner.ack(id)
    }

    /// Writes and fsyncs every record of this group so far: acks, nacks,
    /// buries, kicks and reservations. The way to make `Buffered` acks
    /// durable ([`Queue::flush`] makes pushes durable, not acks); under
    /// `Sync` an ack returns durable already, and under `Interval` the
    /// group's timer fsyncs within the interval.
    ///
    /// # Errors
    ///
    /// I/O errors, after which the group is poisoned.
    pub fn flush(&self) -> Result<()> {
        self.inner.sync_journal()
    }

    /// Acknowledges several reserved messages with one commit. Refused
    /// whole if any is not reserved.
    ///
    /// # Errors
    ///
    /// As [`Group::ack`].
    pub fn ack_batch(&self, ids: &[u64]) -> Result<()> {
        self.inner.ack_batch(ids)
    }

    /// Releases a reserved message for a retry after `delay`, or after the
    /// group's backoff when `None`. A message out of attempts is buried.
    ///
    /// # Errors
    ///
    /// As [`Group::ack`].
    pub fn nack(&self, id: u64, delay: Option<Duration>) -> Result<()> {
        self.inner.nack(id, delay)
    }

    /// Extends the lease of a reserved message to `lease` from now.
    ///
    /// # Errors
    ///
    /// As [`Group::ack`]; [`Error::InvalidLease`].
    pub fn touch(&self, id: u64, lease: Duration) -> Result<()> {
        self.inner.touch(id, lease)
    }

    /// Dead-letters a reserved message within the group.
    ///
    /// # Errors
    ///
    /// As [`Group::ack`].
    pub fn bury(&self, id: u64) -> Result<()> {
        self.inner.bury(id)
    }

    /// Finishes messages whatever their state, with one commit (durable
    /// under `Sync` when this returns): ready, delayed and buried ones
    /// always, reserved ones only where the pair's flag is true (the
    /// caller holds that reservation). Returns, per id, whether it was
    /// deleted; false for ids that are finished, unknown, or reserved
    /// without the flag. Deletes count with the acks in
    /// [`GroupStats::acked_total`].
    ///
    /// A fresh message (one the group has not reached yet) is deleted by
    /// tracking every fresh message before it (a small entry each, as a
    /// message with a priority costs), so deleting far ahead of the
    /// consumers costs memory in proportion.
    ///
    /// # Errors
    ///
    /// I/O errors; [`Error::Closed`].
    pub fn delete_batch(&self, ids: &[(u64, bool)]) -> Result<Vec<bool>> {
        self.inner.delete_batch(ids)
    }

    /// Releases a reserved message with a new `priority`, ready again
    /// after `delay` (at once if zero). Unlike [`Group::nack`] it never
    /// buries a message, whatever its attempts.
    ///
    /// # Errors
    ///
    /// As [`Group::ack`].
    pub fn release(&self, id: u64, priority: u32, delay: Duration) -> Result<()> {
        self.inner.release(id, priority, delay)
    }

    /// Buries a reserved message with a new `priority`.
    ///
    /// # Errors
    ///
    /// As [`Group::ack`].
    pub fn bury_with(&self, id: u64, priority: u32) -> Result<()> {
        self.inner.bury_with(id, priority)
    }

    /// Makes up to `n` delayed messages ready now (due first first);
    /// returns how many.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn kick_delayed(&self, n: usize) -> Result<usize> {
        self.inner.kick_delayed(n)
    }

    /// Reserves the message `id` for `lease` if it is ready, delayed or
    /// buried; `None` if it is reserved, finished or unknown.
    ///
    /// # Errors
    ///
    /// As [`Group::reserve`].
    pub fn reserve_id(&self, id: u64, lease: Duration) -> Result<Option<Delivery>> {
        self.inner.reserve_id(id, lease)
    }

    /// When the group's next delay falls due or lease expires, unix ms
    /// (among the messages it has scanned); a waiter sleeps until then.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`].
    pub fn next_due_ms(&self) -> Result<Option<u64>> {
        self.inner.next_due_ms()
    }

    /// Revives up to `n` buried messages (oldest first); returns how many.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn kick(&self, n: usize) -> Result<usize> {
        self.inner.kick(n)
    }

    /// Revives one buried or delayed message.
    ///
    /// # Errors
    ///
    /// [`Error::NotBuried`]; I/O errors.
    pub fn kick_id(&self, id: u64) -> Result<()> {
        self.inner.kick_id(id)
    }

    /// The message `id` and where it is, without reserving it; `None` if
    /// finished or unknown.
    ///
    /// # Errors
    ///
    /// I/O errors; [`Error::Corruption`].
    pub fn peek(&self, id: u64) -> Result<Option<Peeked>> {
        self.inner.peek(id)
    }

    /// The message the next reserve would get.
    ///
    /// # Errors
    ///
    /// As [`Group::peek`].
    pub fn peek_ready(&self) -> Result<Option<Peeked>> {
        self.inner.peek_ready()
    }

    /// The delayed message due first.
    ///
    /// # Errors
    ///
    /// As [`Group::peek`].
    pub fn peek_delayed(&self) -> Result<Option<Peeked>> {
        self.inner.peek_delayed()
    }

    /// The oldest buried message.
    ///
    /// # Errors
    ///
    /// As [`Group::peek`].
    pub fn peek_buried(&self) -> Result<Option<Peeked>> {
        self.inner.peek_buried()
    }

    /// Counts and totals.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn stats(&self) -> Result<GroupStats> {
        self.inner.stats()
    }

    /// What opening the group found.
    pub fn recovery(&self) -> &GroupRecovery {
        self.inner.recovery()
    }
}
