//! The compactor: gives back the disk of finished messages.
//!
//! A pass over one queue, oldest segment first, never touching the active
//! segment:
//!
//! 1. **Retention** (`max_age`, `max_bytes`): whole sealed segments are
//!    dropped even if a group lags; each group counts the messages it had
//!    not finished as lost.
//! 2. **Delete**: a sealed segment whose every message is finished for every
//!    group (acked, or dead-lettered and moved) is deleted.
//! 3. **Copy forward**: a sealed segment whose live bytes fall below
//!    `copy_forward_percent` of its size is rewritten with only its live
//!    frames, keeping their ids: one sequential pass over the segment
//!    picks the live frames (`Log::copy_live`), then the copy replaces it
//!    (`Log::rewrite_segment`).
//!
//! Before any segment is deleted or rewritten, every group's journal is
//! fsynced: the acks that finished those messages are durable before their
//! bytes go. The pass holds the queue's group registry (so no group is
//! created underneath it) and each group's lock only to copy its cursor, or
//! the ids it tracks in one segment; pushes and reserves never wait on its
//! I/O. `CompactReport::longest_hold` says how long those holds took.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::group::GroupInner;
use crate::log::{Log, SealedRange, frame};

/// Retention of a queue read as a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Drop sealed segments whose newest message is older than this.
    pub max_age: Option<Duration>,
    /// Drop the oldest sealed segments while the queue's segment files
    /// take more than this many bytes.
    pub max_bytes: Option<u64>,
}

/// What compaction did (one pass, or totals so far).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Sealed segments deleted because every message in them was finished.
    pub segments_deleted: u64,
    /// Sealed segments rewritten with only their live frames.
    pub segments_rewritten: u64,
    /// Sealed segments dropped by retention.
    pub segments_dropped: u64,
    /// Sealed segments left alone because live frames in them fail their
    /// check (run `millpond verify` and `repair`).
    pub segments_damaged: u64,
    /// Bytes of segment files given back.
    pub bytes_reclaimed: u64,
    /// Group journals replaced by a checkpoint because they held at least
    /// `Options::compact_journal_bytes` (16 KiB by default) of records.
    pub journals_checkpointed: u64,
    /// Bytes of group journals given back by those checkpoints.
    pub journal_bytes_reclaimed: u64,
    /// Messages retention dropped before some group finished them (summed
    /// over groups).
    pub retention_lost: u64,
    /// Segment files after the pass.
    pub segments: u64,
    /// Bytes of segment files after the pass.
    pub bytes_on_disk: u64,
    /// Bytes still live after the pass: the frames of unfinished messages
    /// in sealed segments below every group's cursor, plus every other
    /// segment whole (the active one, and any a group has not read yet).
    pub live_bytes: u64,
    /// Time the pass took.
    pub duration: Duration,
    /// The longest the pass held (or waited for) a lock that pushes or
    /// reserves also take: a group's lock while it copied the group's
    /// cursor and tracked ids, or the writer's while it rolled a finished
    /// active segment (totals: the longest over all passes).
    pub longest_hold: Duration,
}

impl CompactReport {
    /// Adds another report's counts to this one (sizes are replaced).
    pub fn absorb(&mut self, other: &CompactReport) {
        self.segments_deleted += other.segments_deleted;
        self.segments_rewritten += other.segments_rewritten;
        self.segments_dropped += other.segments_dropped;
        self.segments_damaged += other.segments_damaged;
        self.bytes_reclaimed += other.bytes_reclaimed;
        self.journals_checkpointed += other.journals_checkpointed;
        self.journal_bytes_reclaimed += other.journal_bytes_reclaimed;
        self.retention_lost += other.retention_lost;
        self.duration += other.duration;
        self.longest_hold = self.longest_hold.max(other.longest_hold);
    }
}

/// Settings of a pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassOptions {
    pub copy_forward_percent: u8,
    /// Group journals at least this long are checkpointed
    /// (`Options::compact_journal_bytes`).
    pub checkpoint_journal_bytes: u64,
    pub retention: Retention,
    pub now_ms: u64,
}

/// The smallest cursor of `groups` (0 without groups): every id below it
/// has been read by every group.
fn min_cursor(groups: &[Arc<GroupInner>], report: &mut CompactReport) -> u64 {
    groups
        .iter()
        .map(|g| held(report, || g.liveness(0, 0)).0)
        .min()
        .unwrap_or(0)
}

/// The ids in `[lo, hi)` some group still tracks, sorted, without
/// duplicates. Each group's lock is held for the copy of one segment's
/// ids, not of every segment's at once. Copies made at different moments
/// are safe: below a group's cursor its tracked set only shrinks, so a copy
/// never misses an id that is live later.
fn live_ids(groups: &[Arc<GroupInner>], lo: u64, hi: u64, report: &mut CompactReport) -> Vec<u64> {
    let mut ids = Vec::new();
    for g in groups {
        ids.extend(held(report, || g.liveness(lo, hi)).1);
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Runs `f`, which takes a lock pushes or reserves also take, and records
/// how long it took in `report.longest_hold`.
fn held<T>(report: &mut CompactReport, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    report.longest_hold = report.longest_hold.max(started.elapsed());
    out
}

/// An active segment at least this long (or a quarter of
/// `segment_bytes_max`, if less) whose messages are all finished is rolled
/// by a pass, so the pass can delete it.
const ROLL_FINISHED_ACTIVE_BYTES: u64 = 1 << 20;

/// One pass over one queue. `groups` is every group of the queue, held
/// locked by the caller against creation.
pub(crate) fn compact_queue(
    log: &Log,
    groups: &[Arc<GroupInner>],
    opts: PassOptions,
) -> Result<CompactReport> {
    let started = Instant::now();
    let mut report = CompactReport::default();

    // 0. An active segment every group has finished: roll it, so that step
    // 2 deletes it (else a queue that went quiet keeps up to a segment of
    // acknowledged messages on disk for good). Small ones stay: a busy queue
    // whose consumers keep up would otherwise roll a file every pass.
    if !groups.is_empty() {
        let (first, next, len) = log.active_extent();
        let min_len = ROLL_FINISHED_ACTIVE_BYTES.min(log.opts.segment_bytes_max / 4);
        if len >= min_len && next > first {
            let finished = groups.iter().all(|g| {
                let (cursor, live) = held(&mut report, || g.liveness(first, next));
                cursor >= next && live.is_empty()
            });
            if finished {
                held(&mut report, || log.roll_active(next))?;
            }
        }
    }

    let mut sealed = log.sealed_ranges()?;

    // 1. Retention.
    let r = opts.retention;
    if r.max_age.is_some() || r.max_bytes.is_some() {
        let mut total = log.bytes_on_disk()?;
        let mut dropped_end = None;
        while let Some(seg) = sealed.first().cloned() {
            let too_big = r.max_bytes.is_some_and(|max| total > max);
            let too_old = match r.max_age {
                Some(age) => {
                    let limit = opts
                        .now_ms
                        .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
                    log.newest_timestamp(&seg)?.is_some_and(|t| t < limit)
                }
                None => false,
            };
            if !(too_big || too_old) {
                break;
            }
            log.remove_segment(seg.first_id)?;
            total = total.saturating_sub(seg.bytes);
            report.segments_dropped += 1;
            report.bytes_reclaimed += seg.bytes;
            dropped_end = Some(seg.end_id);
            sealed.remove(0);
        }
        if let Some(end) = dropped_end {
            for g in groups {
                report.retention_lost += held(&mut report, || g.forget_below(end));
            }
        }
    }

    // 2 and 3. Finished and sparse segments below every group's cursor.
    let mut plan: Vec<(SealedRange, Vec<u64>)> = Vec::new();
    if !sealed.is_empty() {
        let min_cursor = min_cursor(groups, &mut report);
        for seg in &sealed {
            if seg.end_id > min_cursor {
                break;
            }
            let live = live_ids(groups, seg.first_id, seg.end_id, &mut report);
            let payload_bytes = seg.bytes.saturating_sub(crate::log::segment::HEADER_LEN);
            let threshold = payload_bytes * u64::from(opts.copy_forward_percent) / 100;
            if live.is_empty() || (live.len() as u64) * (frame::HEADER_LEN as u64) < threshold {
                plan.push((seg.clone(), live));
            }
        }
    }
    if !plan.is_empty() {
        for g in groups {
            g.sync_journal()?;
        }
    }
    // Live bytes per segment measured on the way: first id -> (live ids,
    // bytes). Below every cursor the live set only shrinks, so the same
    // count later means the same ids.
    let mut measured: HashMap<u64, (usize, u64)> = HashMap::new();
    for (seg, live) in plan {
        if live.is_empty() {
            log.remove_segment(seg.first_id)?;
            report.segments_deleted += 1;
            report.bytes_reclaimed += seg.bytes;
            continue;
        }
        // One sequential pass copies the live frames and measures them. A
        // segment whose live frames fail their check (or are missing) is
        // left as it is, and counted: a rewrite must never drop damaged
        // bytes silently, and one damaged segment must not stop the rest
        // of the pass.
        let copy = match log.copy_live(seg.first_id, &live, true) {
            Ok(c) if c.missing == 0 => c,
            Ok(_) => {
                report.segments_damaged += 1;
                continue;
            }
            Err(e) if e.is_corruption() => {
                report.segments_damaged += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let payload_bytes = seg.bytes.saturating_sub(crate::log::segment::HEADER_LEN);
        if copy.live_bytes * 100 >= payload_bytes * u64::from(opts.copy_forward_percent) {
            measured.insert(seg.first_id, (live.len(), copy.live_bytes));
            continue;
        }
        let new_bytes = log.rewrite_segment(&copy)?;
        measured.insert(seg.first_id, (live.len(), copy.live_bytes));
        report.segments_rewritten += 1;
        report.bytes_reclaimed += seg.bytes.saturating_sub(new_bytes);
    }

    // 4. Journals: the records of finished messages, given back by a
    // checkpoint (which holds only what is still tracked).
    for g in groups {
        let freed = held(&mut report, || {
            g.checkpoint_journal(opts.checkpoint_journal_bytes)
        })?;
        if freed > 0 {
            report.journals_checkpointed += 1;
            report.journal_bytes_reclaimed += freed;
        }
    }

    // Sizes after the pass.
    let after = log.sealed_ranges()?;
    report.segments = after.len() as u64 + 1;
    report.bytes_on_disk = log.bytes_on_disk()?;
    let min_cursor = if after.is_empty() {
        0
    } else {
        min_cursor(groups, &mut report)
    };
    let mut sealed_bytes = 0;
    let mut live_estimate = 0;
    for seg in &after {
        sealed_bytes += seg.bytes;
        if seg.end_id > min_cursor {
            live_estimate += seg.bytes;
            continue;
        }
        let live = live_ids(groups, seg.first_id, seg.end_id, &mut report);
        if live.is_empty() {
            continue;
        }
        live_estimate += match measured.get(&seg.first_id) {
            Some(&(count, bytes)) if count == live.len() => bytes,
            _ => match log.copy_live(seg.first_id, &live, false) {
                Ok(c) => c.live_bytes,
                Err(e) if e.is_corruption() => 0,
                Err(e) => return Err(e),
            },
        };
    }
    report.live_bytes = live_estimate + report.bytes_on_disk.saturating_sub(sealed_bytes);
    report.duration = started.elapsed();
    Ok(report)
}
