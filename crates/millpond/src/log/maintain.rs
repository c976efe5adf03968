//! What the compactor asks of a log: which segments are sealed, removing a
//! segment, rewriting one with only its live frames, and the age of a
//! segment's newest message.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Log;
use super::frame;
use super::frame::Decoded;
use super::index::{self, IndexMeta};
use super::segment;
use super::segments::{SegmentFile, check_header};
use crate::error::{IoContext, Result};
use crate::fs::{FsFile, OpenMode};

/// A sealed segment as the compactor sees it.
#[derive(Debug, Clone)]
pub(crate) struct SealedRange {
    /// First id (the file name).
    pub first_id: u64,
    /// The next segment's first id: every id of this segment is below it.
    pub end_id: u64,
    /// Bytes of the segment file.
    pub bytes: u64,
}

/// The live frames of a sealed segment, from [`Log::copy_live`].
#[derive(Debug)]
pub(crate) struct LiveCopy {
    /// The segment's first id.
    pub first_id: u64,
    /// Header plus the live frames, when asked to copy.
    pub bytes: Vec<u8>,
    /// Sparse index entries of `bytes`: (id, offset).
    pub entries: Vec<(u64, u64)>,
    /// One past the last live id found.
    pub next_id: u64,
    /// The lowest priority among the live frames (`u32::MAX` if none).
    pub priority_floor: u32,
    /// Bytes of the live frames found.
    pub live_bytes: u64,
    /// Live ids not found: missing, or inside damaged bytes.
    pub missing: usize,
    /// Some frame failed its check (live or not).
    pub damaged: bool,
}

/// Bytes of a rewritten segment written and fsynced at a time.
pub(crate) const COPY_CHUNK_BYTES: usize = 256 << 10;

/// Longest pause between two pieces of a rewritten segment.
const PACE_PAUSE_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// Writes `bytes` at offset 0 in pieces of `chunk` bytes, each fsynced
/// before the next is written. A push's `fdatasync` that lands while a
/// segment is being rewritten then waits behind at most one piece in the
/// device's queue, not the whole copy. After each piece the thread pauses
/// as long as the piece took to write and sync, so the copy takes at most
/// about half of the device's time and pushes get the other half.
fn write_synced_in_chunks(file: &dyn FsFile, bytes: &[u8], chunk: usize) -> io::Result<()> {
    assert!(chunk > 0);
    let mut at = 0;
    for piece in bytes.chunks(chunk) {
        let started = std::time::Instant::now();
        file.write_all_at(piece, at as u64)?;
        file.sync_data()?;
        at += piece.len();
        if at < bytes.len() {
            std::thread::sleep(started.elapsed().min(PACE_PAUSE_MAX));
        }
    }
    if bytes.is_empty() {
        file.sync_data()?;
    }
    Ok(())
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl Log {
    /// Every segment but the active one, oldest first. A segment that is
    /// not the newest was fsynced whole when the next one was created.
    pub fn sealed_ranges(&self) -> Result<Vec<SealedRange>> {
        let segs: Vec<(u64, Arc<SegmentFile>)> = {
            let map = self.segments.read().expect("segments lock");
            map.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        let mut out = Vec::with_capacity(segs.len().saturating_sub(1));
        for pair in segs.windows(2) {
            let (first_id, seg) = &pair[0];
            let bytes = seg.byte_len(&*self.fs)?;
            out.push(SealedRange {
                first_id: *first_id,
                end_id: pair[1].0,
                bytes,
            });
        }
        Ok(out)
    }

    /// Deletes a sealed segment and its index, durably. Readers already
    /// inside it keep reading the unlinked file.
    pub fn remove_segment(&self, first_id: u64) -> Result<()> {
        let seg = {
            let mut map = self.segments.write().expect("segments lock");
            assert!(
                map.keys().next_back() != Some(&first_id),
                "the active segment is never removed"
            );
            self.segments_generation.fetch_add(1, Ordering::SeqCst);
            map.remove(&first_id)
        };
        let Some(seg) = seg else { return Ok(()) };
        ignore_missing(self.fs.remove_file(&seg.index_path))
            .ctx("remove index", &seg.index_path)?;
        self.fs
            .remove_file(&seg.path)
            .ctx("remove segment", &seg.path)?;
        self.fs
            .sync_dir(&self.dir)
            .ctx("fsync directory", &self.dir)
    }

    /// Reads a sealed segment once, in order, and picks out the frames of
    /// `live_ids` (sorted): their total size, how many of them were not
    /// found (missing, or inside bytes that fail their check), and, with
    /// `copy`, the segment image holding only them (copied byte for byte
    /// after their checksum is verified), ready for
    /// [`Log::rewrite_segment`]. Stops after the last live id. Bytes that
    /// fail their check are skipped (the walk resumes at the next valid
    /// frame, as a reader does) and noted in `damaged`.
    pub fn copy_live(&self, first_id: u64, live_ids: &[u64], copy: bool) -> Result<LiveCopy> {
        debug_assert!(live_ids.windows(2).all(|w| w[0] < w[1]));
        let mut out = LiveCopy {
            first_id,
            bytes: Vec::new(),
            entries: Vec::new(),
            next_id: first_id,
            priority_floor: u32::MAX,
            live_bytes: 0,
            missing: 0,
            damaged: false,
        };
        if copy {
            out.bytes
                .extend_from_slice(&segment::encode_header(first_id));
        }
        let seg = {
            let map = self.segments.read().expect("segments lock");
            map.get(&first_id).cloned()
        };
        let Some(seg) = seg else {
            out.missing = live_ids.len();
            return Ok(out);
        };
        // A sealed segment was fsynced whole and is never written again:
        // map it and walk its frames in place, copying the live ones byte
        // for byte (their checksums were just verified).
        let file = self
            .fs
            .open(&seg.path, OpenMode::Read)
            .ctx("open segment", &seg.path)?;
        let map = file.map().ctx("map segment", &seg.path)?;
        check_header(&seg.path, &map, first_id)?;
        let max = self.opts.frame_payload_max;
        let mut pos = segment::HEADER_LEN as usize;
        let mut min_id = first_id;
        let mut want = live_ids.iter().copied().peekable();
        while want.peek().is_some() && pos < map.len() {
            let f = match frame::decode(&map[pos..], max) {
                Decoded::Frame(f) if f.id >= min_id => f,
                _ => {
                    // Damage (or a frame out of order): resume at the next
                    // valid frame, as a reader does.
                    out.damaged = true;
                    pos = segment::resync(&map, pos + 1, min_id, max).unwrap_or(map.len());
                    continue;
                }
            };
            let start = pos;
            pos += f.len;
            min_id = f.id + 1;
            // Live ids below this frame's were not in the segment.
            while want.next_if(|&w| w < f.id).is_some() {
                out.missing += 1;
            }
            if want.next_if_eq(&f.id).is_none() {
                continue;
            }
            out.live_bytes += f.len as u64;
            out.priority_floor = out.priority_floor.min(f.attrs.floor_priority());
            if copy {
                let at = out.bytes.len() as u64;
                if out
                    .entries
                    .last()
                    .is_none_or(|&(_, p)| at >= p + self.opts.index_interval)
                {
                    out.entries.push((f.id, at));
                }
                out.bytes.extend_from_slice(&map[start..pos]);
            }
            out.next_id = f.id + 1;
        }
        out.missing += want.count();
        Ok(out)
    }

    /// Replaces a sealed segment with the image [`Log::copy_live`] built
    /// (which must have found every live frame), crash-atomically: write
    /// `NNN.seg.compact`, fsync, remove the old index, rename over the
    /// segment, fsync the directory, write the new index. Returns the new
    /// size in bytes.
    pub fn rewrite_segment(&self, copy: &LiveCopy) -> Result<u64> {
        let first_id = copy.first_id;
        let (path, index_path) = segment::paths(&self.dir, first_id);
        assert!(
            copy.missing == 0 && copy.bytes.len() >= segment::HEADER_LEN as usize,
            "a rewrite needs a full copy of the live frames"
        );
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".compact");
        let tmp = std::path::PathBuf::from(tmp);
        let file = self
            .fs
            .open(&tmp, OpenMode::CreateTruncate)
            .ctx("create", &tmp)?;
        write_synced_in_chunks(&*file, &copy.bytes, COPY_CHUNK_BYTES).ctx("write", &tmp)?;
        drop(file);
        ignore_missing(self.fs.remove_file(&index_path)).ctx("remove index", &index_path)?;
        self.fs
            .rename(&tmp, &path)
            .ctx("rename compacted segment over", &path)?;
        self.fs
            .sync_dir(&self.dir)
            .ctx("fsync directory", &self.dir)?;
        let meta = IndexMeta {
            first_id,
            covered_bytes: copy.bytes.len() as u64,
            next_id: copy.next_id,
            priority_floor: copy.priority_floor,
        };
        crate::fs::write_atomic(&*self.fs, &index_path, &index::encode(&meta, &copy.entries))
            .ctx("write index", &index_path)?;
        {
            let mut map = self.segments.write().expect("segments lock");
            self.segments_generation.fetch_add(1, Ordering::SeqCst);
            map.insert(first_id, Arc::new(SegmentFile::sealed(&self.dir, first_id)));
        }
        Ok(copy.bytes.len() as u64)
    }

    /// The push time of the newest message in a sealed segment, if any.
    pub fn newest_timestamp(&self, range: &SealedRange) -> Result<Option<u64>> {
        let seg = {
            let map = self.segments.read().expect("segments lock");
            map.get(&range.first_id).cloned()
        };
        let Some(seg) = seg else { return Ok(None) };
        let mut cursor = seg.cursor(
            &*self.fs,
            range.end_id.saturating_sub(1),
            self.opts.frame_payload_max,
            self.opts.index_interval,
        )?;
        let mut newest = None;
        loop {
            match cursor.next_frame() {
                // Ids at or past the range's end belong to the next segment.
                Ok(Some(f)) if f.id < range.end_id => newest = Some(f.timestamp_ms),
                Ok(Some(_)) => {}
                Ok(None) => return Ok(newest),
                Err(e) if e.is_corruption() => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Fs, OpenMode, SimFs};
    use crate::log::LogOptions;
    use crate::options::{Durability, Options};
    use std::path::{Path, PathBuf};

    /// A log of 60 messages of 100 bytes, sealed every ~20 frames; returns
    /// it with the first sealed segment's range.
    fn log_with_sealed(fs: &SimFs) -> (Arc<Log>, SealedRange) {
        let dir = PathBuf::from("/q");
        fs.create_dir_all(&dir).unwrap();
        let opts = Options::default()
            .durability(Durability::Sync)
            .segment_bytes_max(20 * 128 + 32)
            .index_interval_bytes(512);
        let log = Log::open("q", dir, Arc::new(fs.clone()), LogOptions::from(&opts)).unwrap();
        // Each payload is its id (ids start at 1), so a copy that mixes
        // frames up shows.
        for id in 1..=60u8 {
            let got = log
                .append(&[(&[id; 100][..], frame::Attrs::default())])
                .unwrap();
            assert_eq!(got, u64::from(id));
        }
        let sealed = log.sealed_ranges().unwrap();
        assert!(sealed.len() >= 2, "{sealed:?}");
        (log, sealed[0].clone())
    }

    fn payload(log: &Log, id: u64) -> Option<Vec<u8>> {
        log.read(id).unwrap().map(|f| f.payload)
    }

    #[test]
    fn copy_live_keeps_exactly_the_live_frames_in_one_pass() {
        let fs = SimFs::new(1);
        let (log, seg) = log_with_sealed(&fs);
        let live: Vec<u64> = (seg.first_id..seg.end_id)
            .filter(|id| id % 3 == 0)
            .collect();
        let copy = log.copy_live(seg.first_id, &live, true).unwrap();
        assert_eq!((copy.missing, copy.damaged), (0, false));
        assert_eq!(copy.live_bytes, live.len() as u64 * 128);
        assert_eq!(
            copy.bytes.len() as u64,
            segment::HEADER_LEN + copy.live_bytes
        );
        assert_eq!(copy.next_id, live.last().unwrap() + 1);
        // Measuring alone finds the same and copies nothing.
        let measured = log.copy_live(seg.first_id, &live, false).unwrap();
        assert_eq!(measured.live_bytes, copy.live_bytes);
        assert!(measured.bytes.is_empty());

        let new_len = log.rewrite_segment(&copy).unwrap();
        assert_eq!(new_len, copy.bytes.len() as u64);
        for id in seg.first_id..seg.end_id {
            let want = (id % 3 == 0).then(|| vec![id as u8; 100]);
            assert_eq!(payload(&log, id), want, "id {id}");
        }
        // Messages after the segment are untouched.
        assert_eq!(payload(&log, seg.end_id), Some(vec![seg.end_id as u8; 100]));
    }

    #[test]
    fn a_copy_is_written_and_fsynced_piece_by_piece() {
        let fs = SimFs::new(3);
        let file = fs.open(Path::new("/f"), OpenMode::CreateTruncate).unwrap();
        let bytes: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let before = fs.stats();
        write_synced_in_chunks(&*file, &bytes, 1000).unwrap();
        let after = fs.stats();
        assert_eq!(after.writes - before.writes, 3);
        assert_eq!(after.syncs - before.syncs, 3);
        assert_eq!(fs.file_bytes(Path::new("/f")).unwrap(), bytes);
    }

    fn flip_frame_of(fs: &SimFs, log: &Log, id: u64) {
        let f = log.read(id).unwrap().unwrap();
        let path = segment::paths(Path::new("/q"), 1).0;
        fs.flip_bit(&path, f.offset + 40, 2).unwrap();
    }

    #[test]
    fn damaged_dead_frames_are_skipped_and_damaged_live_ones_reported() {
        let fs = SimFs::new(2);
        let (log, seg) = log_with_sealed(&fs);
        assert_eq!(seg.first_id, 1);
        let live = vec![2, 9, 15];
        flip_frame_of(&fs, &log, 5);
        let copy = log.copy_live(1, &live, true).unwrap();
        assert_eq!((copy.missing, copy.damaged), (0, true));
        assert_eq!(copy.live_bytes, 3 * 128);

        flip_frame_of(&fs, &log, 9);
        let copy = log.copy_live(1, &live, true).unwrap();
        assert_eq!((copy.missing, copy.damaged), (1, true));
        assert_eq!(copy.live_bytes, 2 * 128);
        // Ids that are not in the segment at all are missing too.
        let copy = log.copy_live(1, &[2, seg.end_id + 5], false).unwrap();
        assert_eq!(copy.missing, 1);
    }
}
