//! What the compactor asks of a log: which segments are sealed, removing a
//! segment, rewriting one with only its live frames, and the age of a
//! segment's newest message.

use std::io;
use std::sync::Arc;

use super::Log;
use super::frame;
use super::index::{self, IndexMeta};
use super::segment;
use super::segments::SegmentFile;
use crate::error::{Error, IoContext, Result};
use crate::fs::OpenMode;

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
            let (bytes, _) = seg.extent(
                &*self.fs,
                self.opts.frame_payload_max,
                self.opts.index_interval,
            )?;
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

    /// Rewrites a sealed segment with only the frames of `live_ids` (sorted),
    /// keeping their ids, and swaps it in crash-atomically: write
    /// `NNN.seg.compact`, fsync, remove the old index, rename over the
    /// segment, fsync the directory, write the new index. Returns the new
    /// size in bytes.
    pub fn rewrite_segment(&self, first_id: u64, live_ids: &[u64]) -> Result<u64> {
        debug_assert!(live_ids.windows(2).all(|w| w[0] < w[1]));
        let (path, index_path) = segment::paths(&self.dir, first_id);
        let mut buf = segment::encode_header(first_id).to_vec();
        let mut entries: Vec<(u64, u64)> = Vec::new();
        let mut next_id = first_id;
        for &id in live_ids {
            let Some(f) = self.read(id)? else {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!("live message {id} is missing from its segment"),
                ));
            };
            let pos = buf.len() as u64;
            if entries
                .last()
                .is_none_or(|&(_, p)| pos >= p + self.opts.index_interval)
            {
                entries.push((id, pos));
            }
            frame::encode(&mut buf, f.id, f.timestamp_ms, &f.attrs, &f.payload);
            next_id = id + 1;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".compact");
        let tmp = std::path::PathBuf::from(tmp);
        let file = self
            .fs
            .open(&tmp, OpenMode::CreateTruncate)
            .ctx("create", &tmp)?;
        file.write_all_at(&buf, 0).ctx("write", &tmp)?;
        file.sync_data().ctx("fsync", &tmp)?;
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
            covered_bytes: buf.len() as u64,
            next_id,
        };
        crate::fs::write_atomic(&*self.fs, &index_path, &index::encode(&meta, &entries))
            .ctx("write index", &index_path)?;
        self.segments
            .write()
            .expect("segments lock")
            .insert(first_id, Arc::new(SegmentFile::sealed(&self.dir, first_id)));
        Ok(buf.len() as u64)
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
                Ok(Some(f)) => newest = Some(f.timestamp_ms),
                Ok(None) => return Ok(newest),
                Err(e) if e.is_corruption() => {}
                Err(e) => return Err(e),
            }
        }
    }
}
