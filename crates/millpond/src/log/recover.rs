//! Opening a queue's log: find its segments, validate the tail, truncate a
//! torn tail, report interior damage.
//!
//! Only the newest segment can hold unsynced bytes: a segment is fsynced
//! whole before the next one is created. Its index file, written after an
//! fsync (at seal and on clean close), describes a durable prefix, so the
//! scan starts where the index ends: after a clean shutdown nothing is
//! scanned, after a crash only what was written since the last index.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, RwLock};

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::index::{self, IndexError};
use super::segment::{self, Damage};
use super::segments::{SegmentFile, check_header};
use super::writer::{WriterIo, WriterState};
use super::{Log, LogOptions};
use crate::error::{Error, IoContext, Result};
use crate::fs::{Fs, FsFile, OpenMode};
use crate::options::{Durability, RecoveryMode};

/// What opening one queue found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueRecovery {
    /// The queue.
    pub queue: String,
    /// Segment files found.
    pub segments: usize,
    /// Segments whose frames were scanned (0 after a clean shutdown).
    pub segments_scanned: usize,
    /// Bytes of frames scanned.
    pub bytes_scanned: u64,
    /// Bytes cut off the end of the newest segment.
    pub bytes_truncated: u64,
    /// Zero bytes after the newest segment's last frame, kept in place:
    /// space the writer preallocated (see
    /// [`Options::preallocate_bytes`](crate::Options::preallocate_bytes)),
    /// or unsynced writes that reached the disk as zeros. No frame was
    /// there; the next push overwrites them.
    pub zero_tail_bytes: u64,
    /// The torn tail that was truncated, if any.
    pub torn_tail: Option<TornTail>,
    /// Damaged ranges kept in place and skipped by readers
    /// ([`RecoveryMode::Skip`] only; under `Fail` the open fails instead).
    pub damaged: Vec<DamagedRange>,
    /// A newest segment whose header was never completely written (a crash
    /// while creating it) and was rewritten; it held no messages.
    pub header_rewritten: Option<PathBuf>,
    /// Leftover files removed: partial compaction output (`*.seg.compact`),
    /// partial index writes (`*.idx.tmp`), index files without a segment.
    pub leftovers_removed: Vec<PathBuf>,
    /// Time spent.
    pub duration: Duration,
}

/// A torn tail: the last, partial record of the newest segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the valid data ends and the cut began.
    pub offset: u64,
    /// Bytes dropped.
    pub bytes: u64,
    /// Why the bytes there were not a valid frame.
    pub detail: String,
}

/// A damaged range in the interior of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// The segment file.
    pub path: PathBuf,
    /// Offset of the first bad byte.
    pub offset: u64,
    /// Length of the range.
    pub len: u64,
    /// What failed.
    pub detail: String,
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl Log {
    /// Opens (creating if `create`) the log in `dir`.
    pub(crate) fn open(
        name: &str,
        dir: PathBuf,
        fs: Arc<dyn Fs>,
        opts: LogOptions,
    ) -> Result<Arc<Log>> {
        let started = Instant::now();
        let mut report = QueueRecovery {
            queue: name.to_owned(),
            ..QueueRecovery::default()
        };
        let names = fs.list_dir(&dir).ctx("list queue directory", &dir)?;
        // Leftovers of an interrupted compaction or index write, and index
        // files whose segment is gone: never data of record.
        let mut removed = false;
        for n in &names {
            let orphan_index = n
                .strip_suffix(".idx")
                .is_some_and(|stem| !names.iter().any(|m| m.strip_suffix(".seg") == Some(stem)));
            if n.ends_with(".seg.compact") || n.ends_with(".idx.tmp") || orphan_index {
                let p = dir.join(n);
                fs.remove_file(&p).ctx("remove leftover", &p)?;
                report.leftovers_removed.push(p);
                removed = true;
            }
        }
        if removed {
            fs.sync_dir(&dir).ctx("fsync directory", &dir)?;
        }
        let mut ids: Vec<u64> = names
            .iter()
            .filter_map(|n| segment::parse_file_name(n))
            .collect();
        ids.sort_unstable();
        if ids.is_empty() {
            create_segment(&*fs, &dir, 1)?;
            ids.push(1);
        }
        report.segments = ids.len();
        let tail_id = *ids.last().expect("at least one segment");
        let mut segments = BTreeMap::new();
        for &id in &ids[..ids.len() - 1] {
            segments.insert(id, Arc::new(SegmentFile::sealed(&dir, id)));
        }
        let tail = recover_tail(&*fs, &dir, tail_id, &opts, &mut report)?;
        let (len, next_id, last_entry) = (tail.len, tail.next_id, tail.entries.last().map(|e| e.1));
        let tail_seg = Arc::new(SegmentFile::active(
            &dir,
            tail_id,
            tail.file,
            tail.len,
            tail.next_id,
            tail.priority_floor,
            tail.entries,
            tail.damage,
        ));
        segments.insert(tail_id, tail_seg.clone());
        report.duration = started.elapsed();
        let log = Arc::new(Log {
            name: name.to_owned(),
            dir,
            fs,
            state: Mutex::new(WriterState::new(next_id, &tail_seg, len, last_entry)),
            opts,
            segments: RwLock::new(segments),
            flushed: [Condvar::new(), Condvar::new()],
            gathered: Condvar::new(),
            piecewise_done: Condvar::new(),
            io: Mutex::new(WriterIo { active: tail_seg }),
            timer_wake: Condvar::new(),
            buffered_floor: AtomicU32::new(u32::MAX),
            writing_floor: AtomicU32::new(u32::MAX),
            file_end: AtomicU64::new(tail.file_len),
            unsynced_bytes: AtomicU64::new(0),
            segments_generation: AtomicU64::new(0),
            recovery: report,
        });
        if log.interval().is_some() {
            let timer = log.clone();
            std::thread::Builder::new()
                .name(format!("millpond-fsync-{name}"))
                .spawn(move || timer.run_timer())
                .map_err(|e| Error::io("spawn fsync timer for", &log.dir, e))?;
        } else if log.opts.durability == Durability::Buffered {
            let writeback = log.clone();
            std::thread::Builder::new()
                .name(format!("millpond-writeback-{name}"))
                .spawn(move || writeback.run_writeback())
                .map_err(|e| Error::io("spawn writeback thread for", &log.dir, e))?;
        }
        Ok(log)
    }
}

/// Creates an empty segment durably.
fn create_segment(fs: &dyn Fs, dir: &Path, first_id: u64) -> Result<Arc<dyn FsFile>> {
    let (path, _) = segment::paths(dir, first_id);
    let file = fs
        .open(&path, OpenMode::CreateNew)
        .ctx("create segment", &path)?;
    file.write_all_at(&segment::encode_header(first_id), 0)
        .ctx("write segment header", &path)?;
    file.sync_data().ctx("fsync segment", &path)?;
    fs.sync_dir(dir).ctx("fsync directory", dir)?;
    Ok(file)
}

struct Tail {
    file: Arc<dyn FsFile>,
    /// The file's length: `len`, then zeros.
    file_len: u64,
    len: u64,
    next_id: u64,
    /// No frame in the tail has a lower priority.
    priority_floor: u32,
    entries: Vec<(u64, u64)>,
    damage: Vec<Damage>,
}

fn recover_tail(
    fs: &dyn Fs,
    dir: &Path,
    first_id: u64,
    opts: &LogOptions,
    report: &mut QueueRecovery,
) -> Result<Tail> {
    let (path, index_path) = segment::paths(dir, first_id);
    let file = fs
        .open(&path, OpenMode::ReadWrite)
        .ctx("open segment", &path)?;
    let mut file_len = file.len().ctx("stat segment", &path)?;
    let mut header = [0u8; segment::HEADER_LEN as usize];
    let header_read = file_len >= segment::HEADER_LEN && file.read_exact_at(&mut header, 0).is_ok();
    if !header_read || (header.iter().all(|&b| b == 0) && only_zeros(&*file, file_len, &path)?) {
        // Created but its header never became durable: it holds nothing.
        file.set_len(0).ctx("truncate segment", &path)?;
        file.write_all_at(&segment::encode_header(first_id), 0)
            .ctx("write segment header", &path)?;
        file.sync_data().ctx("fsync segment", &path)?;
        // The header write that failed may have been the one after the
        // create, before the directory fsync: the file's name may not be
        // durable yet, and pushes into it will return as durable.
        fs.sync_dir(dir).ctx("fsync directory", dir)?;
        report.header_rewritten = Some(path);
        return Ok(Tail {
            file,
            file_len: segment::HEADER_LEN,
            len: segment::HEADER_LEN,
            next_id: first_id,
            priority_floor: u32::MAX,
            entries: Vec::new(),
            damage: Vec::new(),
        });
    }
    check_header(&path, &header, first_id)?;

    // Start after what a valid index file already describes.
    let (mut start, mut next_id, mut entries) = (segment::HEADER_LEN, first_id, Vec::new());
    let mut priority_floor = u32::MAX;
    match fs.open(&index_path, OpenMode::Read) {
        Ok(f) => {
            let bytes = f.map().ctx("map index", &index_path)?;
            match index::decode(&bytes) {
                Ok(meta)
                    if meta.first_id == first_id
                        && meta.covered_bytes >= segment::HEADER_LEN
                        && meta.covered_bytes <= file_len =>
                {
                    start = meta.covered_bytes;
                    next_id = meta.next_id;
                    priority_floor = meta.priority_floor;
                    entries = (0..index::entry_count(&bytes))
                        .map(|i| index::entry(&bytes, i))
                        .collect();
                }
                Err(IndexError::Version(found)) => {
                    return Err(Error::UnsupportedVersion {
                        path: index_path,
                        found,
                        supported: index::VERSION,
                    });
                }
                _ => {}
            }
        }
        Err(e) if not_found(&e) => {}
        Err(e) => return Err(Error::io("open index", &index_path, e)),
    }

    let mut damage = Vec::new();
    let mut len = start;
    if start < file_len {
        let map = file.map().ctx("map segment", &path)?;
        let last_entry = entries.last().map(|e: &(u64, u64)| e.1);
        let mut s = segment::scan(
            &map,
            start,
            next_id,
            last_entry,
            opts.index_interval,
            opts.frame_payload_max,
        );
        // A zero-filled gap followed by valid frames is unsynced writes that
        // reached the disk out of order (writeback has no order): every
        // fsync covers all earlier writes, so no frame after a gap was ever
        // acknowledged as durable. Cut there, as at a torn tail. The gap
        // may end inside a frame (a sector that did not land held the
        // frame's start, the next one landed): zeros to a sector boundary,
        // then the rest of that frame.
        if let Some(d) = s.damage.first()
            && let Some(lost) = segment::unsynced_gap(&map, d.offset, d.len)
        {
            let (cut, gap) = (d.offset, d.len);
            let frames_after = s.frames;
            s = segment::scan(
                &map[..cut as usize],
                start,
                next_id,
                last_entry,
                opts.index_interval,
                opts.frame_payload_max,
            );
            let dropped = frames_after - s.frames;
            s.torn = Some((
                cut,
                file_len - cut,
                segment::unsynced_gap_detail(lost, gap, dropped),
            ));
        }
        // Zeros after the last frame are space the writer preallocated (or
        // unsynced writes that reached the disk as zeros): no frame was
        // there, nothing is cut, and the writer overwrites them.
        let mut zero_tail = 0;
        if let Some((offset, bytes, _)) = &s.torn
            && map[*offset as usize..].iter().all(|&b| b == 0)
        {
            zero_tail = *bytes;
            s.torn = None;
        }
        drop(map);
        report.zero_tail_bytes += zero_tail;
        if let Some((offset, flags)) = s.newer {
            return Err(Error::corruption(
                &path,
                offset,
                format!(
                    "frame flags {flags:#x} are unknown to this version: written by a newer millpond? Nothing was changed"
                ),
            ));
        }
        report.segments_scanned += 1;
        report.bytes_scanned += file_len - start;
        if let Some(d) = s.damage.first()
            && opts.recovery_mode == RecoveryMode::Fail
        {
            return Err(Error::corruption(
                &path,
                d.offset,
                format!(
                    "{} ({} bytes damaged, valid records follow; open with RecoveryMode::Skip to keep them readable)",
                    d.detail, d.len
                ),
            ));
        }
        for d in &s.damage {
            report.damaged.push(DamagedRange {
                path: path.clone(),
                offset: d.offset,
                len: d.len,
                detail: d.detail.clone(),
            });
        }
        if let Some((offset, bytes, detail)) = s.torn {
            file.set_len(offset).ctx("truncate torn tail of", &path)?;
            file_len = offset;
            file.sync_data().ctx("fsync segment", &path)?;
            report.bytes_truncated += bytes;
            report.torn_tail = Some(TornTail {
                path: path.clone(),
                offset,
                bytes,
                detail,
            });
        }
        len = s.end;
        next_id = s.next_id;
        if let Some(p) = s.min_priority {
            priority_floor = priority_floor.min(p);
        }
        entries.extend(s.entries);
        damage = s.damage;
    }
    // After a process restart (no power cut) the page cache may hold bytes
    // whose fsync failed, or a segment whose directory entry was never
    // synced. Everything from here on builds on what this open sees, so
    // make it durable first: the tail's data and the queue directory.
    file.sync_data().ctx("fsync segment", &path)?;
    fs.sync_dir(dir).ctx("fsync directory", dir)?;
    Ok(Tail {
        file,
        file_len,
        len,
        next_id,
        priority_floor,
        entries,
        damage,
    })
}

fn only_zeros(file: &dyn FsFile, len: u64, path: &Path) -> Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)
            .ctx("read segment", path)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}
