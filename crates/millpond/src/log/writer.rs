//! The write path: frames are encoded into a shared buffer under a short
//! lock; one thread at a time (the leader of a flush round) writes
//! everything buffered with one `write` per segment (per 64 KiB chunk of
//! it) and, when asked, one `fdatasync`. Threads that pushed while a round
//! ran are carried by the next round: group commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Log;
use super::frame::{self, Attrs};
use super::segment;
use super::segments::SegmentFile;
use crate::error::{Error, IoContext, Result};
use crate::fs::OpenMode;
use crate::options::Durability;

/// Shared state of the writer, behind `Log::state`.
#[derive(Debug)]
pub(crate) struct WriterState {
    /// The id the next pushed frame gets.
    pub next_id: u64,
    /// Encoded frames not yet handed to the OS, in id order.
    chunks: Vec<Chunk>,
    pending_bytes: usize,
    /// Segment the next frame goes to, and its length after pending frames.
    tail_first_id: u64,
    tail_len: u64,
    tail_last_entry: Option<u64>,
    /// Ids below this were handed to the OS.
    pub written_next_id: u64,
    /// Ids below this are durable.
    pub durable_next_id: u64,
    /// A flush round is running.
    flushing: bool,
    /// Flush rounds started; while `flushing`, the number of the running
    /// one. Its parity picks the condvar its waiters sleep on.
    rounds: u64,
    /// While `flushing`: one past the last id the running round carries.
    inflight_target: u64,
    /// A would-be leader is letting other pushers join its round.
    gathering: bool,
    /// The `Interval` timer sleeps with no deadline: everything written is
    /// durable. The round that next writes wakes it.
    timer_idle: bool,
    /// Threads asleep on each `flushed` slot: a round that ends wakes a
    /// slot only if someone sleeps there (a wake-up is a system call even
    /// with no one to wake, and a lone pusher's round would make two).
    sleeping: [u32; 2],
    /// `append` calls whose frames are buffered, not yet taken by a round.
    pending_pushers: u64,
    /// How many pushers the next synced round should carry: those the last
    /// one carried (they are about to push again) plus those that pushed
    /// while it ran. Under `Sync` the next leader waits, briefly, until that
    /// many have pushed, so one fsync carries every active pusher instead of
    /// the threads splitting into two cohorts that alternate rounds.
    expected_pushers: u64,
    /// Set by the first failed write or fsync; every later write fails.
    pub poisoned: Option<Arc<str>>,
    pub closed: bool,
    /// A batch larger than [`PIECEWISE_BYTES`] is being written in pieces:
    /// other pushers wait (on `Log::piecewise_done`) until it is done, so
    /// that its ids stay consecutive.
    piecewise: bool,
}

/// Frames for one segment, gathered between two flush rounds.
#[derive(Debug)]
struct Chunk {
    segment_first_id: u64,
    /// The segment must be created (and the previous one sealed) first.
    new_segment: bool,
    start_pos: u64,
    bytes: Vec<u8>,
    entries: Vec<(u64, u64)>,
    end_id: u64,
    /// The lowest priority among the chunk's frames.
    priority_floor: u32,
}

/// What only the flush leader touches.
#[derive(Debug)]
pub(crate) struct WriterIo {
    pub active: Arc<SegmentFile>,
}

impl WriterState {
    pub fn new(
        next_id: u64,
        tail: &SegmentFile,
        tail_len: u64,
        tail_last_entry: Option<u64>,
    ) -> WriterState {
        WriterState {
            next_id,
            chunks: Vec::new(),
            pending_bytes: 0,
            tail_first_id: tail.first_id,
            tail_len,
            tail_last_entry,
            written_next_id: next_id,
            durable_next_id: next_id,
            flushing: false,
            rounds: 0,
            inflight_target: next_id,
            gathering: false,
            timer_idle: false,
            sleeping: [0; 2],
            pending_pushers: 0,
            expected_pushers: 0,
            poisoned: None,
            closed: false,
            piecewise: false,
        }
    }
}

/// How far ahead of `end` a file is extended with zeros: as far as the
/// file already reaches, at least 64 KiB and at most `max`
/// (`Options::preallocate_bytes`). The step doubles as a file grows, so a
/// queue that is written rarely (a beanstalkd tube with a few jobs) holds
/// 64 KiB of zeros, not `max`, and a busy one extends its file once per
/// `max`.
fn preallocate_step(end: u64, max: u64) -> u64 {
    end.max(64 << 10).min(max)
}

/// Where a file whose data ends at `end` is extended to with zeros:
/// [`preallocate_step`] past `end`, no further than `limit`, cut to whole
/// pages (so the next extension starts page-aligned), never below `end`.
pub(crate) fn preallocate_target(end: u64, max: u64, limit: u64) -> u64 {
    ((end + preallocate_step(end, max)).min(limit) & !4095).max(end)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The longest a `Sync` leader waits for the pushers it expects to join its
/// round (see `WriterState::expected_pushers`); it leads as soon as they
/// have all pushed. On 2 vCPUs, 64 threads released by one round take
/// ~300 us to push again.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(300);

/// A round that writes at least this much to a segment extends the file
/// with its frames only, no zeros ahead. Zeros cost device bandwidth in
/// proportion to the frames they make room for, and save one size commit
/// per fsync: worth it for small rounds, a loss for large ones (4 KiB
/// messages in `Sync` batches of 64 went from about 150k to 115k
/// messages/s with zeros ahead of every 256 KiB round).
const PREALLOCATE_WRITE_MAX: usize = 128 << 10;

/// Under `Buffered`, the writeback thread fsyncs the active segment once
/// this many bytes were written to it since its last fsync. Sealing a
/// segment fsyncs it, and the push that rolls to the next segment waits
/// for that: with nothing synced before, for the writeback of up to a
/// whole segment (64 MiB). The kernel's own writeback starts only past
/// `dirty_background_ratio` (10% of memory) or after 30 s.
pub(crate) const WRITEBACK_BYTES: u64 = 8 << 20;

/// The most bytes one chunk holds. A batch larger than this is encoded
/// into several chunks of one segment, written one after the other.
/// Buffers of this size come from the allocator's heap and go back to it
/// (and, at its top, to the system) when the round is written; a buffer
/// the size of a whole batch (1.3 MB for 10,000 messages of 100 bytes) is
/// mapped, and glibc then raises its mapping threshold and keeps every
/// later one in a heap it does not give back: 4 MiB of resident memory in
/// a process that pushes such batches.
const CHUNK_BYTES_MAX: usize = 64 << 10;

/// A batch whose frames take more than this is encoded and written in
/// pieces of at most [`PIECE_BYTES`] (each handed to the OS in a round of
/// its own; under `Sync` one fsync after the last), not encoded whole
/// before the first write. A process pushing 10 M messages in batches of
/// 10,000 (1.2 MB of frames each) held the whole batch in write chunks,
/// and glibc's heap, fragmented by the small objects each segment roll
/// allocates among the freed chunks, grew to 3.5 MB with 0.1 MB in use.
const PIECEWISE_BYTES: usize = 512 << 10;

/// The most frame bytes one piece of a piecewise batch holds (a single
/// frame larger than this is a piece of its own).
const PIECE_BYTES: usize = 256 << 10;

/// The condvar slot of a flush round.
fn parity(round: u64) -> usize {
    (round % 2) as usize
}

/// Whether a flush round must also fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    Written,
    Durable,
}

impl Log {
    /// Appends messages; returns the id of the first. All of them are
    /// committed together (one write, one fsync under `Sync`).
    pub fn append(&self, payloads: &[(&[u8], Attrs)]) -> Result<u64> {
        for (p, _) in payloads {
            if p.len() > self.opts.message_bytes_max as usize {
                return Err(Error::MessageTooLarge {
                    size: p.len(),
                    max: self.opts.message_bytes_max,
                });
            }
        }
        let ts = self.opts.clock.now_ms();
        let mut st = self.state.lock();
        while st.piecewise && !st.closed && st.poisoned.is_none() {
            self.piecewise_done.wait(&mut st);
        }
        self.check_writable(&st)?;
        let first = st.next_id;
        // u64::MAX is never an id (the one after it could not be
        // represented): refuse a batch that would reach it, whole.
        if first.checked_add(payloads.len() as u64).is_none() {
            return Err(Error::IdsExhausted {
                queue: self.name.clone(),
            });
        }
        // Bytes the batch still has to encode: a chunk made for it is
        // sized once, not doubled up from 4 KiB (a 1.3 MB batch grew a
        // 2 MiB buffer through nine copies, and the freed buffers stayed
        // in the allocator's heap).
        let mut rest: usize = payloads
            .iter()
            .map(|(p, a)| frame::frame_len(p.len(), a))
            .sum();
        if rest > PIECEWISE_BYTES {
            st = self.append_pieces(st, payloads, ts, rest)?;
        } else {
            for (payload, attrs) in payloads {
                let len = frame::frame_len(payload.len(), attrs);
                self.encode_locked(&mut st, payload, attrs, ts, rest);
                rest -= len;
            }
        }
        let last = st.next_id - 1;
        st.pending_pushers += 1;
        if st.gathering && st.pending_pushers >= st.expected_pushers {
            self.gathered.notify_one();
        }
        match self.opts.durability {
            Durability::Sync => {
                self.wait_for(st, last, Goal::Durable)?;
            }
            Durability::Interval(_) => {
                self.wait_for(st, last, Goal::Written)?;
            }
            Durability::Buffered => {
                if st.pending_bytes >= self.opts.write_buffer_bytes {
                    if st.flushing && st.pending_bytes < 4 * self.opts.write_buffer_bytes {
                        return Ok(first);
                    }
                    // Write what is buffered, or wait for the running round
                    // when the buffer has grown past its bound.
                    self.wait_for(st, last, Goal::Written)?;
                }
            }
        }
        Ok(first)
    }

    /// Encodes a large batch ([`PIECEWISE_BYTES`]) piece by piece, handing
    /// each piece but the last to the OS in a round (led here or joined)
    /// before encoding the next, with other pushers held back meanwhile.
    /// Returns with the last piece encoded and not yet taken by a round,
    /// for `append` to wait on as it does for any batch: so under `Sync`
    /// the batch is still one fsync, and readers (bounded by durable ids)
    /// see none of it before all of it. Under `Buffered` and `Interval`
    /// readers may see the first pieces before the rest: a batch was
    /// never a transaction (a crash can keep a prefix of it either way).
    fn append_pieces<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
        payloads: &[(&[u8], Attrs)],
        ts: u64,
        mut rest: usize,
    ) -> Result<MutexGuard<'a, WriterState>> {
        st.piecewise = true;
        let mut frames = payloads.iter().peekable();
        let result = loop {
            let mut piece = 0;
            while let Some((payload, attrs)) = frames.peek() {
                let len = frame::frame_len(payload.len(), attrs);
                if piece > 0 && piece + len > PIECE_BYTES {
                    break;
                }
                // Chunks are sized for this piece, not the whole batch.
                self.encode_locked(&mut st, payload, attrs, ts, rest.min(PIECE_BYTES - piece));
                piece += len;
                rest -= len;
                frames.next();
            }
            if frames.peek().is_none() {
                break Ok(());
            }
            let last = st.next_id - 1;
            let (guard, result) = self.wait_locked(st, last, Goal::Written);
            st = guard;
            if result.is_err() {
                break result;
            }
        };
        st.piecewise = false;
        self.piecewise_done.notify_all();
        result.map(|()| st)
    }

    fn check_writable(&self, st: &WriterState) -> Result<()> {
        if st.closed {
            return Err(Error::Closed);
        }
        if let Some(cause) = &st.poisoned {
            return Err(self.poisoned_error(cause));
        }
        Ok(())
    }

    /// Encodes one frame into the round's chunks; `rest` is the bytes of
    /// this frame and the batch's frames after it, to size a new chunk.
    fn encode_locked(
        &self,
        st: &mut WriterState,
        payload: &[u8],
        attrs: &Attrs,
        ts: u64,
        rest: usize,
    ) {
        let len = frame::frame_len(payload.len(), attrs) as u64;
        let has_frames = st.tail_len > segment::HEADER_LEN;
        let roll = has_frames && st.tail_len + len > self.opts.segment_bytes_max;
        if roll {
            st.tail_first_id = st.next_id;
            st.tail_len = segment::HEADER_LEN;
            st.tail_last_entry = None;
        }
        let tail_first_id = st.tail_first_id;
        let start_pos = st.tail_len;
        if roll
            || st.chunks.last().is_none_or(|c| {
                c.segment_first_id != tail_first_id
                    || (!c.bytes.is_empty() && c.bytes.len() + len as usize > CHUNK_BYTES_MAX)
            })
        {
            st.chunks.push(Chunk {
                segment_first_id: tail_first_id,
                new_segment: roll,
                start_pos,
                bytes: Vec::with_capacity(
                    rest.min(self.opts.segment_bytes_max.saturating_sub(start_pos) as usize)
                        .clamp(4096, CHUNK_BYTES_MAX),
                ),
                entries: Vec::new(),
                end_id: st.next_id,
                priority_floor: u32::MAX,
            });
        }
        let id = st.next_id;
        let pos = st.tail_len;
        if st
            .tail_last_entry
            .is_none_or(|p| pos >= p + self.opts.index_interval)
        {
            st.tail_last_entry = Some(pos);
            st.chunks
                .last_mut()
                .expect("pushed above")
                .entries
                .push((id, pos));
        }
        let chunk = st.chunks.last_mut().expect("pushed above");
        frame::encode(&mut chunk.bytes, id, ts, attrs, payload);
        chunk.end_id = id + 1;
        let floor = attrs.floor_priority();
        chunk.priority_floor = chunk.priority_floor.min(floor);
        // Under the writer lock, as is the round's reset: check, then lower.
        if floor < self.buffered_floor.load(Ordering::Relaxed) {
            self.buffered_floor.fetch_min(floor, Ordering::SeqCst);
        }
        st.next_id = id + 1;
        st.tail_len += len;
        st.pending_bytes += len as usize;
    }

    /// Waits until `id` is written (or durable), leading flush rounds when
    /// no other thread is.
    fn wait_for(&self, st: MutexGuard<'_, WriterState>, id: u64, goal: Goal) -> Result<()> {
        self.wait_locked(st, id, goal).1
    }

    /// [`Log::wait_for`], giving the lock back.
    fn wait_locked<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
        id: u64,
        goal: Goal,
    ) -> (MutexGuard<'a, WriterState>, Result<()>) {
        loop {
            let done = match goal {
                Goal::Written => st.written_next_id > id,
                Goal::Durable => st.durable_next_id > id,
            };
            if done {
                return (st, Ok(()));
            }
            if let Some(cause) = &st.poisoned {
                let e = self.poisoned_error(cause);
                return (st, Err(e));
            }
            if st.flushing || st.gathering {
                // Carried by the running round: woken when it ends. Else
                // carried by the next one, led by a gathering thread or by
                // the one waiter the running round's end wakes.
                let round = if st.flushing && id < st.inflight_target {
                    st.rounds
                } else {
                    st.rounds + 1
                };
                st = self.sleep_until_round(st, round);
                continue;
            }
            if goal == Goal::Durable
                && self.opts.durability == Durability::Sync
                && st.pending_pushers < st.expected_pushers
            {
                // Pushers the last round carried are about to push again:
                // wait for them (bounded), so this fsync carries them too.
                // A lone pusher never waits (it expects only itself).
                st.gathering = true;
                let deadline = std::time::Instant::now() + GATHER_MAX;
                while st.pending_pushers < st.expected_pushers
                    && !st.closed
                    && st.poisoned.is_none()
                {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        break;
                    }
                    self.gathered.wait_for(&mut st, deadline - now);
                }
                st.gathering = false;
            }
            let (guard, result) = self.flush_round(st, goal);
            st = guard;
            if result.is_err() {
                return (st, result);
            }
        }
    }

    /// Sleeps on the `flushed` slot of `round` until woken (its end, the
    /// lead of it, or poisoning), counted in `sleeping`.
    fn sleep_until_round<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
        round: u64,
    ) -> MutexGuard<'a, WriterState> {
        let p = parity(round);
        st.sleeping[p] += 1;
        self.flushed[p].wait(&mut st);
        st.sleeping[p] -= 1;
        st
    }

    /// Runs one flush round as leader: takes every buffered chunk, writes
    /// it, fsyncs if the goal says so, then publishes the new marks.
    fn flush_round<'a>(
        &'a self,
        mut st: MutexGuard<'a, WriterState>,
        goal: Goal,
    ) -> (MutexGuard<'a, WriterState>, Result<()>) {
        debug_assert!(!st.flushing);
        st.flushing = true;
        st.rounds += 1;
        let round = st.rounds;
        let chunks = std::mem::take(&mut st.chunks);
        st.pending_bytes = 0;
        let pushers = std::mem::take(&mut st.pending_pushers);
        let target = st.next_id;
        st.inflight_target = target;
        let sync = goal == Goal::Durable && st.durable_next_id < target;
        self.writing_floor
            .fetch_min(self.buffered_floor.load(Ordering::SeqCst), Ordering::SeqCst);
        self.buffered_floor.store(u32::MAX, Ordering::SeqCst);
        drop(st);
        let result = self.write_chunks(chunks, sync);
        let mut st = self.state.lock();
        st.flushing = false;
        match &result {
            Ok(()) => {
                // Every frame of the round is in its segment's floor now.
                self.writing_floor.store(u32::MAX, Ordering::SeqCst);
                if sync {
                    st.expected_pushers = pushers + st.pending_pushers;
                }
                st.written_next_id = target;
                if sync {
                    // The `Interval` timer also moves it, outside rounds.
                    st.durable_next_id = st.durable_next_id.max(target);
                }
                // Everyone this round carried; one waiter of the next round
                // to lead it (it wakes the rest of its round when done).
                if st.sleeping[parity(round)] > 0 {
                    self.flushed[parity(round)].notify_all();
                }
                if st.timer_idle && st.durable_next_id < st.next_id {
                    st.timer_idle = false;
                    self.timer_wake.notify_all();
                }
                if st.sleeping[parity(round + 1)] > 0 {
                    self.flushed[parity(round + 1)].notify_one();
                }
            }
            Err(e) => self.poison_locked(&mut st, e),
        }
        (st, result)
    }

    fn write_chunks(&self, chunks: Vec<Chunk>, sync: bool) -> Result<()> {
        let mut io = self.io.lock();
        // Bytes this round writes to the segment that is active at its end.
        let mut written = 0;
        // A segment's chunks are consecutive in the round and in the file:
        // each group of them is everything the round writes to that
        // segment, in one vectored write; then its chunks are published in
        // order.
        let mut rest = &chunks[..];
        while let Some(head) = rest.first() {
            let n = 1 + rest[1..]
                .iter()
                .take_while(|c| !c.new_segment && c.segment_first_id == head.segment_first_id)
                .count();
            let (group, after) = rest.split_at(n);
            rest = after;
            debug_assert!(
                group
                    .windows(2)
                    .all(|w| w[0].start_pos + w[0].bytes.len() as u64 == w[1].start_pos)
            );
            if head.new_segment {
                self.roll(&mut io, head.segment_first_id)?;
            }
            let bufs: Vec<&[u8]> = group.iter().map(|c| &c.bytes[..]).collect();
            let group_len: usize = bufs.iter().map(|b| b.len()).sum();
            written = group_len as u64;
            let seg = &io.active;
            debug_assert_eq!(seg.first_id, head.segment_first_id);
            let file = seg.file().expect("active segment is open");
            file.write_all_vectored_at(&bufs, head.start_pos)
                .ctx("write segment", &seg.path)?;
            let end = head.start_pos + group_len as u64;
            if end > self.file_end.load(Ordering::Relaxed) {
                // Whether zeros go ahead depends on what the round writes
                // to the segment, not on how it was cut into chunks.
                let target = if group_len < PREALLOCATE_WRITE_MAX {
                    // Zeros ahead, never past the segment size limit: they
                    // reach the disk with this round's fsync, and later
                    // rounds then overwrite allocated blocks, with no file
                    // size to commit.
                    let limit = self.opts.segment_bytes_max.max(end);
                    let target = preallocate_target(end, self.opts.preallocate_bytes, limit);
                    crate::fs::write_zeros(&**file, end, target)
                        .ctx("preallocate segment", &seg.path)?;
                    target
                } else {
                    end
                };
                self.file_end.store(target, Ordering::Relaxed);
            }
            for chunk in group {
                seg.advance(
                    chunk.start_pos + chunk.bytes.len() as u64,
                    chunk.end_id,
                    chunk.priority_floor,
                    &chunk.entries,
                );
            }
        }
        if sync {
            let seg = &io.active;
            seg.file()
                .expect("active segment is open")
                .sync_data()
                .ctx("fsync segment", &seg.path)?;
            self.unsynced_bytes.store(0, Ordering::Relaxed);
        } else if self.unsynced_bytes.fetch_add(written, Ordering::Relaxed) + written
            >= WRITEBACK_BYTES
            && self.opts.durability == Durability::Buffered
        {
            // The writeback thread checks under the writer lock, which is
            // not held here: a wake-up it misses comes again with the
            // next round, the count still past the bound.
            self.timer_wake.notify_all();
        }
        Ok(())
    }

    /// Cuts the zeros written ahead of the active segment's frames off
    /// its file (before sealing it or closing cleanly), so that the file
    /// ends at its last frame. Made durable by the caller's fsync.
    /// Returns whether there was anything to cut.
    fn trim(&self, io: &WriterIo) -> Result<bool> {
        let seg = &io.active;
        let (len, _) = seg.extent(
            &*self.fs,
            self.opts.frame_payload_max,
            self.opts.index_interval,
        )?;
        if self.file_end.load(Ordering::Relaxed) > len {
            seg.file()
                .expect("active segment is open")
                .set_len(len)
                .ctx("trim preallocated zeros of", &seg.path)?;
            self.file_end.store(len, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    /// Seals the active segment (fsync, index file) and creates the next,
    /// durably: header written and fsynced, directory fsynced.
    fn roll(&self, io: &mut WriterIo, first_id: u64) -> Result<()> {
        self.trim(io)?;
        self.seal(&io.active)?;
        let (path, _) = segment::paths(&self.dir, first_id);
        let file = self
            .fs
            .open(&path, OpenMode::CreateNew)
            .ctx("create segment", &path)?;
        file.write_all_at(&segment::encode_header(first_id), 0)
            .ctx("write segment header", &path)?;
        file.sync_data().ctx("fsync segment", &path)?;
        self.fs
            .sync_dir(&self.dir)
            .ctx("fsync directory", &self.dir)?;
        let seg = Arc::new(SegmentFile::active(
            &self.dir,
            first_id,
            file,
            segment::HEADER_LEN,
            first_id,
            u32::MAX,
            Vec::new(),
            Vec::new(),
        ));
        {
            let mut map = self.segments.write().expect("segments lock");
            self.segments_generation.fetch_add(1, Ordering::SeqCst);
            map.insert(first_id, seg.clone());
        }
        io.active = seg;
        self.file_end.store(segment::HEADER_LEN, Ordering::Relaxed);
        // The sealed segment was fsynced; what the round writes next
        // counts toward the new one.
        self.unsynced_bytes.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Makes a segment durable and writes its index file.
    fn seal(&self, seg: &SegmentFile) -> Result<()> {
        seg.file()
            .expect("active segment is open")
            .sync_data()
            .ctx("fsync segment", &seg.path)?;
        self.write_index(seg)?;
        seg.seal();
        Ok(())
    }

    /// Writes the index file of a segment whose bytes are durable.
    pub(crate) fn write_index(&self, seg: &SegmentFile) -> Result<()> {
        crate::fs::write_atomic(&*self.fs, &seg.index_path, &seg.encode_index())
            .ctx("write index", &seg.index_path)
    }

    /// The active segment's first id and the id the next push gets, and its
    /// length in bytes (header included, buffered frames too).
    pub fn active_extent(&self) -> (u64, u64, u64) {
        let st = self.state.lock();
        (st.tail_first_id, st.next_id, st.tail_len)
    }

    /// Seals the active segment and starts an empty one, so that a
    /// compaction pass can delete it once every message in it is finished
    /// (otherwise a queue that went quiet keeps up to a whole segment of
    /// acknowledged messages on disk for good). Does nothing, and returns
    /// false, if anything was pushed since `next_id` was read (the caller
    /// decided on a snapshot) or the segment has no frames.
    pub fn roll_active(&self, next_id: u64) -> Result<bool> {
        let mut st = self.state.lock();
        loop {
            self.check_writable(&st)?;
            if st.next_id != next_id || st.tail_len <= segment::HEADER_LEN {
                return Ok(false);
            }
            if st.flushing {
                let round = st.rounds;
                st = self.sleep_until_round(st, round);
                continue;
            }
            if st.durable_next_id < st.next_id {
                // Buffered or interval frames: durable first (a roll seals
                // with an fsync, but the marks must say so too).
                self.wait_for(st, next_id - 1, Goal::Durable)?;
                st = self.state.lock();
                continue;
            }
            break;
        }
        // No round runs and none can start while the state lock is held.
        debug_assert!(st.chunks.is_empty());
        let mut io = self.io.lock();
        if let Err(e) = self.roll(&mut io, next_id) {
            self.poison_locked(&mut st, &e);
            return Err(e);
        }
        st.tail_first_id = next_id;
        st.tail_len = segment::HEADER_LEN;
        st.tail_last_entry = None;
        Ok(true)
    }

    /// Writes and fsyncs everything pushed so far.
    pub fn flush(&self) -> Result<()> {
        let st = self.state.lock();
        if let Some(cause) = &st.poisoned {
            return Err(self.poisoned_error(cause));
        }
        if st.durable_next_id >= st.next_id {
            return Ok(());
        }
        let last = st.next_id - 1;
        self.wait_for(st, last, Goal::Durable)
    }

    /// One past the last id readers may see: durable ids under `Sync`,
    /// written ids otherwise. Under `Buffered`, buffered frames are written
    /// first so that a reader sees every returned push.
    pub fn visible_next_id(&self) -> Result<u64> {
        let st = self.state.lock();
        match self.opts.durability {
            Durability::Sync => Ok(st.durable_next_id),
            Durability::Interval(_) => Ok(st.written_next_id),
            Durability::Buffered => {
                if st.written_next_id >= st.next_id || st.poisoned.is_some() {
                    return Ok(st.written_next_id);
                }
                let last = st.next_id - 1;
                self.wait_for(st, last, Goal::Written)?;
                Ok(last + 1)
            }
        }
    }

    /// The id the next push gets.
    pub fn next_id(&self) -> u64 {
        self.state.lock().next_id
    }

    /// Flushes, fsyncs and writes the active segment's index so the next
    /// open needs no scan. Later writes fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        // Refuse new pushes first, so none can write after the flush below
        // (and after the store lock is released).
        let mut st = self.state.lock();
        let was_closed = std::mem::replace(&mut st.closed, true);
        // Pushers held back by a piecewise batch fail with `Closed`; the
        // batch itself finishes, and the flush below covers it.
        self.piecewise_done.notify_all();
        while st.piecewise {
            self.piecewise_done.wait(&mut st);
        }
        drop(st);
        self.timer_wake.notify_all();
        let flushed = self.flush();
        let mut st = self.state.lock();
        while st.flushing {
            let round = st.rounds;
            st = self.sleep_until_round(st, round);
        }
        let clean = st.poisoned.is_none() && st.durable_next_id >= st.next_id;
        drop(st);
        if was_closed || !clean {
            return flushed;
        }
        flushed?;
        let io = self.io.lock();
        // The next open reads no further than the index: the file must end
        // where it does.
        if self.trim(&io)? {
            let seg = &io.active;
            seg.file()
                .expect("active segment is open")
                .sync_data()
                .ctx("fsync segment", &seg.path)?;
        }
        self.write_index(&io.active)
    }

    /// Records the first failed write or fsync: every later write fails
    /// with it. Wakes every waiter of a round to see it, and the timer or
    /// writeback thread to exit.
    fn poison_locked(&self, st: &mut WriterState, e: &crate::error::Error) {
        if st.poisoned.is_none() {
            st.poisoned = Some(Arc::from(e.to_string()));
        }
        for cv in &self.flushed {
            cv.notify_all();
        }
        self.piecewise_done.notify_all();
        self.timer_wake.notify_all();
    }

    /// Fsyncs the active segment with no lock held (the `io` lock only to
    /// take it): for the timer and writeback threads, outside any round.
    fn sync_active_unlocked(&self) -> Result<()> {
        let seg = self.io.lock().active.clone();
        seg.file()
            .expect("active segment is open")
            .sync_data()
            .ctx("fsync segment", &seg.path)
    }

    /// The body of the `Buffered` writeback thread: fsync the active
    /// segment whenever [`WRITEBACK_BYTES`] were written to it since its
    /// last fsync, off the pushers' path, until the log closes. It makes
    /// nothing durable that a caller waits for (`flush` still fsyncs);
    /// it only leaves less for the fsync that seals the segment. A failed
    /// fsync poisons the log, as any other: the kernel may have dropped
    /// the pages it could not write, and a later fsync would not say so.
    pub(crate) fn run_writeback(self: Arc<Self>) {
        let mut st = self.state.lock();
        loop {
            self.timer_wake.wait_while(&mut st, |st| {
                !st.closed
                    && st.poisoned.is_none()
                    && self.unsynced_bytes.load(Ordering::Relaxed) < WRITEBACK_BYTES
            });
            if st.closed || st.poisoned.is_some() {
                return;
            }
            drop(st);
            // Bytes written while this fsync runs count toward the next.
            self.unsynced_bytes.store(0, Ordering::Relaxed);
            let result = self.sync_active_unlocked();
            st = self.state.lock();
            if let Err(e) = result {
                self.poison_locked(&mut st, &e);
                return;
            }
        }
    }

    /// The body of the `Interval` timer thread: fsync at least every
    /// `interval`, until the log closes. The fsync runs outside a flush
    /// round: pushes under `Interval` wait for their round's write, and
    /// used to wait for the timer's fsync as well whenever it held the
    /// round.
    pub(crate) fn run_timer(self: Arc<Self>) {
        let Some(interval) = self.interval() else {
            return;
        };
        let mut st = self.state.lock();
        loop {
            if st.durable_next_id >= st.next_id {
                // Nothing to make durable: sleep until a round writes
                // (or the log closes), not every `interval`. A store with
                // many idle queues would otherwise wake each one's timer
                // twenty times a second at 50 ms.
                st.timer_idle = true;
                self.timer_wake.wait_while(&mut st, |st| {
                    st.timer_idle
                        && !st.closed
                        && st.poisoned.is_none()
                        && st.durable_next_id >= st.next_id
                });
                st.timer_idle = false;
            }
            // Then at most `interval` after that write, as before.
            self.timer_wake.wait_for(&mut st, interval);
            if st.closed || st.poisoned.is_some() {
                return;
            }
            if st.durable_next_id < st.next_id {
                let target = st.next_id;
                // Write what is buffered, in a round like any push's; then
                // fsync outside the round, so that pushes, which wait for
                // the round only, are not held up by the fsync. Every id
                // below `target` is then in the segment synced here or in
                // an older one, which its seal synced.
                if self.wait_for(st, target - 1, Goal::Written).is_err() {
                    return; // poisoned: pushes report it
                }
                let result = self.sync_active_unlocked();
                st = self.state.lock();
                if let Err(e) = result {
                    self.poison_locked(&mut st, &e);
                    return;
                }
                st.durable_next_id = st.durable_next_id.max(target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
