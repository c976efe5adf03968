//! The segmented log of one queue: frame codec, segment files, sparse
//! index, the group-commit writer, the reader and recovery.

pub mod frame;
pub mod index;
mod maintain;
mod recover;
pub mod segment;
mod segments;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use parking_lot::{Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::options::{Durability, Options};

pub(crate) use maintain::SealedRange;
pub use recover::{DamagedRange, QueueRecovery, TornTail};
pub(crate) use segments::{SegmentFile, StoredFrame};
use writer::WriterState;
pub(crate) use writer::{now_ms, preallocate_target};

/// Settings the log keeps from [`Options`].
#[derive(Debug, Clone)]
pub(crate) struct LogOptions {
    pub durability: Durability,
    pub segment_bytes_max: u64,
    /// How far past the last frame the active segment file (and each
    /// group journal) is extended: `Options::preallocate_bytes` under
    /// `Sync`, 0 otherwise.
    pub preallocate_bytes: u64,
    /// Largest payload a push may have.
    pub message_bytes_max: u32,
    /// Largest payload length a decoder accepts: the absolute limit, not the
    /// configured one, so reopening with a smaller `message_bytes_max` never
    /// mistakes durable frames for damage.
    pub frame_payload_max: u32,
    pub index_interval: u64,
    pub write_buffer_bytes: usize,
    pub recovery_mode: crate::RecoveryMode,
    pub clock: Arc<dyn crate::Clock>,
}

impl From<&Options> for LogOptions {
    fn from(o: &Options) -> LogOptions {
        LogOptions {
            durability: o.durability,
            segment_bytes_max: o.segment_bytes_max,
            // Zeros ahead only pay where every push waits for an fsync;
            // elsewhere they would double the page-cache writes of a
            // buffered push for a size change committed once per flush.
            preallocate_bytes: match o.durability {
                Durability::Sync => o.preallocate_bytes,
                Durability::Interval(_) | Durability::Buffered => 0,
            },
            message_bytes_max: o.message_bytes_max,
            frame_payload_max: crate::options::MESSAGE_BYTES_LIMIT,
            index_interval: u64::from(o.index_interval_bytes),
            write_buffer_bytes: o.write_buffer_bytes,
            recovery_mode: o.recovery_mode,
            clock: o.clock.clone(),
        }
    }
}

/// The log of one queue.
#[derive(Debug)]
pub(crate) struct Log {
    pub name: String,
    pub dir: PathBuf,
    pub fs: Arc<dyn Fs>,
    pub opts: LogOptions,
    /// Every segment by first id; the last one is active.
    segments: RwLock<BTreeMap<u64, Arc<SegmentFile>>>,
    state: Mutex<WriterState>,
    /// Signalled when a flush round ends, by round parity: waiters whose
    /// frames a round carries sleep on its slot and are all woken when it
    /// ends; waiters for the next round sleep on the other slot, and only
    /// one of them is woken to lead it (no herd of 64 threads waking to go
    /// back to sleep). Both slots are woken when the log is poisoned.
    flushed: [Condvar; 2],
    /// Wakes a leader that is gathering pushers for its round once as many
    /// have pushed as the last round carried.
    gathered: Condvar,
    /// Wakes pushers held back while a large batch is written in pieces
    /// (`WriterState::piecewise`), when it is done.
    piecewise_done: Condvar,
    /// The active segment; held only by the thread running a flush round.
    io: Mutex<writer::WriterIo>,
    /// Wakes the interval timer early on close.
    timer_wake: Condvar,
    /// The lowest priority among frames pushed but not yet taken by a
    /// flush round (lowered under the writer lock), and among those the
    /// running round is writing: with the segments' floors they bound
    /// every pushed message, written or not (see `priority_floor`).
    buffered_floor: AtomicU32,
    writing_floor: AtomicU32,
    /// The active segment file's length: its frames, then the zeros
    /// written ahead of them (see `Options::preallocate_bytes`). Changed
    /// only by the holder of `io`; read without it for `bytes_on_disk`.
    file_end: AtomicU64,
    /// Bytes written to the active segment since it was last fsynced.
    /// Under `Buffered`, the writeback thread fsyncs it once this reaches
    /// [`writer::WRITEBACK_BYTES`], so that rolling to the next segment
    /// (which fsyncs the sealed one) does not stall a push for a whole
    /// segment's writeback.
    unsynced_bytes: AtomicU64,
    /// Bumped (under the `segments` write lock) whenever a segment is
    /// added, removed or replaced: a [`FloorCache`] made at the same value
    /// still describes the map.
    segments_generation: AtomicU64,
    recovery: QueueRecovery,
}

impl Log {
    /// What recovery found when this log was opened.
    pub fn recovery(&self) -> &QueueRecovery {
        &self.recovery
    }

    /// The smallest id still on disk (the first id of the oldest segment).
    pub fn first_id(&self) -> u64 {
        let segs = self.segments.read().expect("segments lock");
        *segs.keys().next().expect("a log has at least one segment")
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.read().expect("segments lock").len()
    }

    /// A priority no message from `id` on is below, counting every message
    /// whose push has returned: `u32::MAX` when there are none. A consumer group reads fresh messages in id order at this
    /// priority and sets the others aside, so a queue whose messages all
    /// carry one priority (not only 0) costs a group no memory per message.
    ///
    /// It is the lowest floor of the segments from the one holding `id` on.
    /// A segment's floor only falls while it is active (lowered before its
    /// frames become visible) and is fixed once sealed, so `cache` keeps the
    /// sealed segments' part while the first segment and the active one
    /// stay the same. A copy-forward keeps a subset of a segment's frames
    /// and retention only drops segments: a cached value can only be too
    /// low, which costs memory, never order. A segment that cannot be
    /// loaded counts as 0 (no claim); reading it reports the error.
    pub fn priority_floor(&self, id: u64, cache: &mut FloorCache) -> u32 {
        // Frames not yet in a segment first: a round moves them from the
        // buffer to `writing_floor` before it resets `buffered_floor`, and
        // lowers the segment's floor before it resets `writing_floor`.
        let unwritten = self
            .buffered_floor
            .load(Ordering::SeqCst)
            .min(self.writing_floor.load(Ordering::SeqCst));
        let (max, interval) = (self.opts.frame_payload_max, self.opts.index_interval);
        // Then the segments. With the map as the cache saw it (a segment
        // added since was added after `unwritten` was read, so its frames
        // left the unwritten floors after that too) and `id` in the same
        // segment, only the active segment's floor can have moved: no
        // map lookup, no lock but the active segment's. A group asks for
        // every message it reserves.
        let generation = self.segments_generation.load(Ordering::SeqCst);
        if cache.generation == generation
            && (cache.from..cache.next_from).contains(&id)
            && let Some(active) = &cache.active_segment
        {
            return cache
                .sealed
                .min(active.priority_floor(&*self.fs, max, interval).unwrap_or(0))
                .min(unwritten);
        }
        let (from, next_from, active, between) = {
            let segs = self.segments.read().expect("segments lock");
            let (&active_id, active) = segs
                .iter()
                .next_back()
                .expect("a log has at least one segment");
            let from = segs
                .range(..=id)
                .next_back()
                .map_or(*segs.keys().next().expect("a segment"), |(&k, _)| k);
            let next_from = segs
                .range(from.saturating_add(1)..)
                .next()
                .map_or(u64::MAX, |(&k, _)| k);
            let active = active.clone();
            let same_active = cache
                .active_segment
                .as_ref()
                .is_some_and(|a| a.first_id == active_id);
            if same_active && cache.from == from {
                (from, next_from, active, None)
            } else {
                let between: Vec<_> = segs
                    .range(from..active_id)
                    .map(|(_, s)| s.clone())
                    .collect();
                (from, next_from, active, Some(between))
            }
        };
        if let Some(between) = between {
            let sealed = between.iter().fold(u32::MAX, |m, s| {
                m.min(s.priority_floor(&*self.fs, max, interval).unwrap_or(0))
            });
            cache.sealed = sealed;
        }
        // Made from the map of `generation` or a later one: if later, the
        // next call sees a different generation and comes here again.
        cache.from = from;
        cache.next_from = next_from;
        cache.active_segment = Some(active.clone());
        cache.generation = generation;
        cache
            .sealed
            .min(active.priority_floor(&*self.fs, max, interval).unwrap_or(0))
            .min(unwritten)
    }

    fn segment_for(&self, id: u64) -> Option<Arc<SegmentFile>> {
        let segs = self.segments.read().expect("segments lock");
        segs.range(..=id).next_back().map(|(_, s)| s.clone())
    }

    fn segment_after(&self, first_id: u64) -> Option<Arc<SegmentFile>> {
        let segs = self.segments.read().expect("segments lock");
        segs.range((
            std::ops::Bound::Excluded(first_id),
            std::ops::Bound::Unbounded,
        ))
        .next()
        .map(|(_, s)| s.clone())
    }

    /// Reads the message with `id`, if it is on disk and visible.
    pub fn read(&self, id: u64) -> Result<Option<StoredFrame>> {
        if id >= self.visible_next_id()? {
            return Ok(None);
        }
        let Some(seg) = self.segment_for(id) else {
            return Ok(None);
        };
        let mut cursor = seg.cursor(
            &*self.fs,
            id,
            self.opts.frame_payload_max,
            self.opts.index_interval,
        )?;
        let mut damage = None;
        loop {
            match cursor.next_frame() {
                Ok(Some(f)) if f.id < id => {}
                Ok(Some(f)) if f.id == id => return Ok(Some(f)),
                Ok(_) => return damage.map_or(Ok(None), Err),
                Err(e) if e.is_corruption() => damage = Some(e),
                Err(e) => return Err(e),
            }
        }
    }

    /// A reader of the messages from `id` on.
    pub fn reader(self: &Arc<Self>, id: u64) -> LogReader {
        LogReader {
            log: self.clone(),
            next_id: id,
            cursor: None,
            seg_end: u64::MAX,
            limit: 0,
        }
    }

    /// Bytes of all segment files (from the writer's and loader's view).
    pub fn bytes_on_disk(&self) -> Result<u64> {
        let segs: Vec<_> = self
            .segments
            .read()
            .expect("segments lock")
            .values()
            .cloned()
            .collect();
        let mut total = 0;
        let last = segs.len().saturating_sub(1);
        for (i, s) in segs.into_iter().enumerate() {
            let len = s.byte_len(&*self.fs)?;
            // The active segment's file also holds the zeros written ahead.
            total += if i == last {
                len.max(self.file_end.load(Ordering::Relaxed))
            } else {
                len
            };
        }
        Ok(total)
    }

    fn interval(&self) -> Option<Duration> {
        match self.opts.durability {
            Durability::Interval(d) => Some(d),
            _ => None,
        }
    }

    pub(crate) fn poisoned_error(&self, cause: &Arc<str>) -> Error {
        Error::Poisoned {
            queue: self.name.clone(),
            cause: cause.clone(),
        }
    }
}

/// What [`Log::priority_floor`] keeps between calls from one reader:
/// the floor of the sealed segments from `from` up to the active one, and
/// the map it was read from.
#[derive(Debug, Clone, Default)]
pub(crate) struct FloorCache {
    /// First id of the segment holding the id asked for.
    from: u64,
    /// First id of the segment after it (`u64::MAX`: none).
    next_from: u64,
    /// The active segment when this was made; `None`: nothing cached yet.
    active_segment: Option<Arc<SegmentFile>>,
    sealed: u32,
    /// `Log::segments_generation` when this was made.
    generation: u64,
}

/// Reads messages in id order; see [`crate::Reader`].
#[derive(Debug)]
pub(crate) struct LogReader {
    log: Arc<Log>,
    next_id: u64,
    cursor: Option<segments::Cursor>,
    /// The first id of the segment after the cursor's when the cursor was
    /// made (`u64::MAX` for the last one): the cursor's segment holds no
    /// id from there on.
    seg_end: u64,
    /// One past the last visible id when last asked; asked again (a lock
    /// of the writer) only once the reader reaches it.
    limit: u64,
}

impl LogReader {
    /// The next message, `Ok(None)` when caught up with the writer.
    /// A corruption error is returned once per damaged range; reading
    /// continues after it.
    pub fn next(&mut self) -> Result<Option<StoredFrame>> {
        if self.next_id >= self.limit {
            self.limit = self.log.visible_next_id()?;
        }
        let limit = self.limit;
        loop {
            if self.next_id >= limit {
                return Ok(None);
            }
            if self.cursor.is_none() {
                let first = self.log.first_id();
                if self.next_id < first {
                    self.next_id = first;
                }
                let Some(seg) = self.log.segment_for(self.next_id) else {
                    return Ok(None);
                };
                match seg.cursor(
                    &*self.log.fs,
                    self.next_id,
                    self.log.opts.frame_payload_max,
                    self.log.opts.index_interval,
                ) {
                    Ok(c) => {
                        self.cursor = Some(c.sequential());
                        self.seg_end = self
                            .log
                            .segment_after(seg.first_id)
                            .map_or(u64::MAX, |next| next.first_id);
                    }
                    Err(e) => {
                        // An unreadable segment is reported once; reading
                        // goes on with the next one.
                        if let Some(next) = self.log.segment_after(seg.first_id) {
                            self.next_id = self.next_id.max(next.first_id);
                        } else {
                            self.next_id = limit;
                        }
                        return Err(e);
                    }
                }
            }
            let cursor = self.cursor.as_mut().expect("set above");
            match cursor.next_frame()? {
                Some(f) if f.id < self.next_id => {}
                Some(f) if f.id >= self.seg_end => {
                    // A segment with a successor holds only ids below the
                    // successor's first, so this frame is not a write in
                    // progress but stray bytes that pass the checksum; the
                    // ids from here on are the next segment's. (Treating it
                    // as not yet visible stalled the reader here for good.)
                    self.next_id = self.next_id.max(self.seg_end);
                    self.cursor = None;
                }
                Some(f) if f.id >= limit => {
                    // Not visible yet (written, not durable): the cursor
                    // moved past it, so seek again next time rather than
                    // skip it.
                    self.cursor = None;
                    return Ok(None);
                }
                Some(f) => {
                    self.next_id = f.id + 1;
                    return Ok(Some(f));
                }
                None => {
                    let first = cursor.seg.first_id;
                    match self.log.segment_after(first) {
                        Some(next) => {
                            self.next_id = self.next_id.max(next.first_id);
                            self.cursor = None;
                        }
                        None => return Ok(None),
                    }
                }
            }
        }
    }

    /// The id the next call starts at.
    pub fn position(&self) -> u64 {
        self.next_id
    }
}
