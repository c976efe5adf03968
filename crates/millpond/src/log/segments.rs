//! Segment files at run time: the handle each segment has in memory, its
//! lazily loaded sparse index, and the cursor that reads frames from it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use super::frame::{self, Attrs, Decoded};
use super::index::{self, IndexError, IndexMeta, SparseIndex};
use super::segment::{self, Damage, HeaderError};
use crate::error::{Error, IoContext, Result};
use crate::fs::{Fs, FsFile, Mapped, OpenMode};

/// One segment file, sealed or active.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub first_id: u64,
    pub path: PathBuf,
    pub index_path: PathBuf,
    file: OnceLock<Arc<dyn FsFile>>,
    inner: RwLock<SegInner>,
}

#[derive(Debug)]
struct SegInner {
    /// Sealed segments are never written again and may be mapped.
    sealed: bool,
    /// Whether header, index and length are known (always for the active
    /// segment; on first read for sealed ones).
    loaded: bool,
    /// Readable bytes, header included.
    len: u64,
    /// One past the last id in the readable bytes.
    next_id: u64,
    /// No frame in the readable bytes has a lower priority (`u32::MAX`
    /// without frames). Known once loaded; kept through sealing.
    priority_floor: u32,
    /// A sealed segment's floor as its index file's checked header states
    /// it, read without loading the segment; `priority_floor` once loaded.
    header_floor: Option<u32>,
    index: SparseIndex,
    map: Option<Arc<Mapped>>,
    damage: Vec<Damage>,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFrame {
    /// The id.
    pub id: u64,
    /// Push time, unix milliseconds.
    pub timestamp_ms: u64,
    /// Priority and not-before time.
    pub attrs: Attrs,
    /// The payload.
    pub payload: Vec<u8>,
    /// Offset of the frame in its segment file.
    pub offset: u64,
    /// Encoded length of the frame.
    pub frame_len: u32,
}

impl SegmentFile {
    /// A sealed segment whose file is opened on first read.
    pub fn sealed(dir: &Path, first_id: u64) -> SegmentFile {
        let (path, index_path) = segment::paths(dir, first_id);
        SegmentFile {
            first_id,
            path,
            index_path,
            file: OnceLock::new(),
            inner: RwLock::new(SegInner {
                sealed: true,
                loaded: false,
                len: 0,
                next_id: first_id,
                priority_floor: 0,
                header_floor: None,
                index: SparseIndex::Owned(Vec::new()),
                map: None,
                damage: Vec::new(),
            }),
        }
    }

    /// The active segment, recovered or just created. `priority_floor` is
    /// the lowest priority of its frames (`u32::MAX` without frames).
    #[allow(clippy::too_many_arguments)]
    pub fn active(
        dir: &Path,
        first_id: u64,
        file: Arc<dyn FsFile>,
        len: u64,
        next_id: u64,
        priority_floor: u32,
        entries: Vec<(u64, u64)>,
        damage: Vec<Damage>,
    ) -> SegmentFile {
        let (path, index_path) = segment::paths(dir, first_id);
        let cell = OnceLock::new();
        cell.set(file).expect("fresh cell");
        SegmentFile {
            first_id,
            path,
            index_path,
            file: cell,
            inner: RwLock::new(SegInner {
                sealed: false,
                loaded: true,
                len,
                next_id,
                priority_floor,
                header_floor: None,
                index: SparseIndex::Owned(entries),
                map: None,
                damage,
            }),
        }
    }

    pub fn file(&self) -> Option<&Arc<dyn FsFile>> {
        self.file.get()
    }

    /// Records bytes the writer has handed to the OS, whose frames have no
    /// priority below `priority_floor`. Readers see the frames only after
    /// this, so a floor read before them is never above theirs.
    pub fn advance(&self, len: u64, next_id: u64, priority_floor: u32, entries: &[(u64, u64)]) {
        let mut inner = self.inner.write().expect("segment lock");
        debug_assert!(len >= inner.len && next_id >= inner.next_id);
        inner.len = len;
        inner.next_id = next_id;
        inner.priority_floor = inner.priority_floor.min(priority_floor);
        if let SparseIndex::Owned(v) = &mut inner.index {
            v.extend_from_slice(entries);
        }
    }

    /// The index file bytes describing the segment as it is now.
    pub fn encode_index(&self) -> Vec<u8> {
        let inner = self.inner.read().expect("segment lock");
        let meta = IndexMeta {
            first_id: self.first_id,
            covered_bytes: inner.len,
            next_id: inner.next_id,
            priority_floor: inner.priority_floor,
        };
        index::encode(&meta, &inner.index.to_vec())
    }

    /// Marks the segment sealed, after its bytes and index file are
    /// durable: from now on it is mapped on its next read, index included,
    /// and the in-memory index is dropped, so memory does not grow with the
    /// bytes written since the queue was opened.
    pub fn seal(&self) {
        let mut inner = self.inner.write().expect("segment lock");
        inner.sealed = true;
        inner.loaded = false;
        inner.index = SparseIndex::Owned(Vec::new());
    }

    /// Readable length and next id (loading a sealed segment if needed).
    pub fn extent(&self, fs: &dyn Fs, payload_len_max: u32, interval: u64) -> Result<(u64, u64)> {
        self.load(fs, payload_len_max, interval)?;
        let inner = self.inner.read().expect("segment lock");
        Ok((inner.len, inner.next_id))
    }

    /// Length in bytes, without loading a sealed segment: `extent`'s
    /// length once loaded, else the file's length (a sealed file is never
    /// written again). Sizing every sealed segment (a compaction pass,
    /// `Log::bytes_on_disk`) so maps no segment and no index: a process
    /// that only pushes keeps none of them resident.
    pub fn byte_len(&self, fs: &dyn Fs) -> Result<u64> {
        {
            let inner = self.inner.read().expect("segment lock");
            if inner.loaded {
                return Ok(inner.len);
            }
        }
        self.open_file(fs)?.len().ctx("size segment", &self.path)
    }

    /// An index file's bytes, read into memory for their check; `None`
    /// when the file is longer than any index of a segment of
    /// `segment_len` bytes could be (one entry per frame at most), which
    /// makes it invalid without reading it.
    fn read_index(&self, f: &dyn FsFile, segment_len: u64) -> Result<Option<Vec<u8>>> {
        let len = f.len().ctx("size index", &self.index_path)?;
        let most = (index::HEADER_LEN + index::ENTRY_LEN) as u64
            + index::ENTRY_LEN as u64 * (segment_len / frame::HEADER_LEN as u64);
        if len > most {
            return Ok(None);
        }
        let mut buf = vec![0; len as usize];
        f.read_exact_at(&mut buf, 0)
            .ctx("read index", &self.index_path)?;
        Ok(Some(buf))
    }

    /// The segment's file, opened on first use.
    fn open_file(&self, fs: &dyn Fs) -> Result<Arc<dyn FsFile>> {
        if let Some(f) = self.file.get() {
            return Ok(f.clone());
        }
        let f = fs
            .open(&self.path, OpenMode::Read)
            .ctx("open segment", &self.path)?;
        Ok(self.file.get_or_init(|| f).clone())
    }

    /// A priority no message in the segment is below: `u32::MAX` when it
    /// has none, 0 when its index file predates the field. A sealed
    /// segment that is not loaded answers from its index file's header
    /// (56 bytes, checked by their own checksum) when the header matches
    /// the segment, and is loaded (index read whole, or rebuilt) only when
    /// it does not: a group's first reserve after a restart asks for the
    /// floor of every segment ahead of it.
    pub fn priority_floor(&self, fs: &dyn Fs, payload_len_max: u32, interval: u64) -> Result<u32> {
        {
            // One lock when loaded (the active segment always is): a
            // group asks for every message it reserves.
            let inner = self.inner.read().expect("segment lock");
            if inner.loaded {
                return Ok(inner.priority_floor);
            }
            if let Some(floor) = inner.header_floor {
                return Ok(floor);
            }
        }
        if let Some(floor) = self.floor_from_index_header(fs)? {
            self.inner.write().expect("segment lock").header_floor = Some(floor);
            return Ok(floor);
        }
        self.load(fs, payload_len_max, interval)?;
        Ok(self.inner.read().expect("segment lock").priority_floor)
    }

    /// The floor a sealed segment's index file header states, if the
    /// header passes its checksum, names this segment and covers the
    /// whole file. `None` (load the segment instead) when the index is
    /// missing, damaged, of version 1 (no header checksum), of a newer
    /// version (loading reports it) or describes other bytes.
    fn floor_from_index_header(&self, fs: &dyn Fs) -> Result<Option<u32>> {
        let f = match fs.open(&self.index_path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open index", &self.index_path, e)),
        };
        if f.len().ctx("size index", &self.index_path)? < index::HEADER_LEN as u64 {
            return Ok(None);
        }
        let mut header = [0u8; index::HEADER_LEN];
        f.read_exact_at(&mut header, 0)
            .ctx("read index header", &self.index_path)?;
        let Ok(meta) = index::decode_header(&header) else {
            return Ok(None);
        };
        let len = self.byte_len(fs)?;
        Ok(
            (meta.first_id == self.first_id && meta.covered_bytes == len)
                .then_some(meta.priority_floor),
        )
    }

    /// Loads a sealed segment's header and index, rebuilding the index from
    /// the segment when its file is missing or does not match.
    fn load(&self, fs: &dyn Fs, payload_len_max: u32, interval: u64) -> Result<()> {
        if self.inner.read().expect("segment lock").loaded {
            return Ok(());
        }
        let mut inner = self.inner.write().expect("segment lock");
        if inner.loaded {
            return Ok(());
        }
        let file = self.open_file(fs)?;
        let map = Arc::new(file.map().ctx("map segment", &self.path)?);
        let len = map.len() as u64;
        // The header is read, not looked at through the map: touching the
        // map would bring its first pages (the kernel maps up to 64 KiB
        // around a fault) into the process's RSS for every sealed segment
        // a priority scan loads, where only the ones read need any.
        let mut header = vec![0; (segment::HEADER_LEN as usize).min(map.len())];
        file.read_exact_at(&mut header, 0)
            .ctx("read segment header", &self.path)?;
        check_header(&self.path, &header, self.first_id)?;
        let from_file = match fs.open(&self.index_path, OpenMode::Read) {
            Ok(f) => {
                let checked = self.read_index(&*f, len)?;
                match checked.as_deref().map(index::decode) {
                    Some(Ok(meta))
                        if meta.first_id == self.first_id && meta.covered_bytes == len =>
                    {
                        // Checked from a copy, then mapped: the check reads
                        // every entry, and through the map they would all
                        // stay resident as long as the segment is loaded
                        // (256 KiB per full segment), where a lookup
                        // touches a few pages. Index files are replaced,
                        // never rewritten, so the map shows the same bytes.
                        let bytes = f.map().ctx("map index", &self.index_path)?;
                        (bytes.len() == checked.map_or(0, |c| c.len()))
                            .then(|| (meta, SparseIndex::Mapped(Arc::new(bytes))))
                    }
                    None | Some(Ok(_) | Err(IndexError::Invalid(_))) => None,
                    Some(Err(IndexError::Version(found))) => {
                        return Err(Error::UnsupportedVersion {
                            path: self.index_path.clone(),
                            found,
                            supported: index::VERSION,
                        });
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("open index", &self.index_path, e)),
        };
        let (next_id, floor, idx, damage) = match from_file {
            Some((meta, idx)) => (meta.next_id, meta.priority_floor, idx, Vec::new()),
            None => {
                let s = segment::scan(
                    &map,
                    segment::HEADER_LEN,
                    self.first_id,
                    None,
                    interval,
                    payload_len_max,
                );
                let mut damage = s.damage;
                if let Some((offset, len, detail)) = s.torn {
                    // A sealed segment was fsynced whole: a bad tail here is
                    // damage, not a torn write.
                    damage.push(Damage {
                        offset,
                        len,
                        detail,
                    });
                }
                let floor = s.min_priority.unwrap_or(u32::MAX);
                let meta = IndexMeta {
                    first_id: self.first_id,
                    covered_bytes: len,
                    next_id: s.next_id,
                    priority_floor: floor,
                };
                // The index is derived data: failing to save it costs a
                // rescan next time, nothing more.
                let _ = crate::fs::write_atomic(
                    fs,
                    &self.index_path,
                    &index::encode(&meta, &s.entries),
                );
                (s.next_id, floor, SparseIndex::Owned(s.entries), damage)
            }
        };
        inner.len = len;
        inner.next_id = next_id;
        inner.priority_floor = floor;
        inner.index = idx;
        inner.map = Some(map);
        inner.damage = damage;
        inner.loaded = true;
        Ok(())
    }

    /// A cursor positioned at or before `id` (by the sparse index).
    pub fn cursor(
        self: &Arc<Self>,
        fs: &dyn Fs,
        id: u64,
        payload_len_max: u32,
        interval: u64,
    ) -> Result<Cursor> {
        self.load(fs, payload_len_max, interval)?;
        let inner = self.inner.read().expect("segment lock");
        // A reader that starts at the segment's first message (one that
        // moves on from the previous segment, or a group at its oldest
        // message) needs no lookup: the binary search would bring most of
        // a mapped index into the process's RSS (the kernel maps up to
        // 64 KiB around each page it touches), 256 KiB per full segment.
        let pos = if id <= self.first_id {
            segment::HEADER_LEN
        } else {
            inner
                .index
                .floor(id)
                .map_or(segment::HEADER_LEN, |(_, pos)| pos)
        };
        Ok(Cursor {
            seg: self.clone(),
            pos,
            min_id: self.first_id,
            buf: Vec::new(),
            buf_start: 0,
            payload_len_max,
            chunk: READ_CHUNK_SMALL,
            sealed: None,
        })
    }
}

/// Checks a segment header, mapping failures to the engine's errors.
pub(crate) fn check_header(path: &Path, bytes: &[u8], first_id: u64) -> Result<()> {
    match segment::decode_header(bytes, first_id) {
        Ok(()) => Ok(()),
        Err(HeaderError::Version(found)) => Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found,
            supported: segment::VERSION,
        }),
        Err(HeaderError::Short) => Err(Error::corruption(
            path,
            0,
            "segment shorter than its header",
        )),
        Err(HeaderError::Invalid(detail)) => Err(Error::corruption(path, 0, detail)),
    }
}

/// Reads frames of one segment in order.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub seg: Arc<SegmentFile>,
    pos: u64,
    /// Frames with smaller ids are noise (used by resync).
    min_id: u64,
    buf: Vec<u8>,
    buf_start: u64,
    payload_len_max: u32,
    /// Bytes read ahead per `pread`: small for point reads, large for
    /// sequential ones.
    chunk: usize,
    /// The map and length of a sealed segment, once seen: neither changes
    /// after sealing, so later frames skip the segment lock.
    sealed: Option<(Arc<Mapped>, u64)>,
}

const READ_CHUNK_SMALL: usize = 16 << 10;
const READ_CHUNK: usize = 256 << 10;

impl Cursor {
    /// Reads ahead in large chunks, for sequential reading.
    pub fn sequential(mut self) -> Cursor {
        self.chunk = READ_CHUNK;
        self
    }

    /// The next frame, `Ok(None)` at the end of the readable bytes, or a
    /// corruption error for bad bytes (the cursor then moves past them, so
    /// the next call returns the valid frames after the damage).
    pub fn next_frame(&mut self) -> Result<Option<StoredFrame>> {
        // The common case of a sequential read of a sealed segment: no lock,
        // no reference count, just the decode.
        if let Some((m, len)) = &self.sealed {
            let len = *len;
            if self.pos >= len {
                return Ok(None);
            }
            let pos = self.pos;
            if let Ok(f) =
                Self::decode_owned(&m[pos as usize..len as usize], pos, self.payload_len_max)
                && f.id >= self.min_id
            {
                self.pos = pos + u64::from(f.frame_len);
                self.min_id = f.id + 1;
                return Ok(Some(f));
            }
            // Damage: the general path below reports it and resyncs.
        }
        let (len, map) = {
            let inner = self.seg.inner.read().expect("segment lock");
            let map = if inner.sealed {
                inner.map.clone()
            } else {
                None
            };
            if let Some(m) = &map {
                self.sealed = Some((m.clone(), inner.len));
            }
            (inner.len, map)
        };
        if self.pos >= len {
            return Ok(None);
        }
        let pos = self.pos;
        let decoded = match &map {
            Some(m) => {
                Self::decode_owned(&m[pos as usize..len as usize], pos, self.payload_len_max)
            }
            None => {
                self.fill(pos, len, frame::HEADER_LEN)?;
                let mut d = self.decode_buf(pos);
                if let Err(Needed(n)) = d {
                    self.fill(pos, len, n)?;
                    d = self.decode_buf(pos);
                }
                d.unwrap_or(Err(Decoded2::Incomplete))
            }
        };
        match decoded {
            Ok(f) if f.id >= self.min_id => {
                self.pos = pos + u64::from(f.frame_len);
                self.min_id = f.id + 1;
                Ok(Some(f))
            }
            other => {
                let detail = match other {
                    Ok(f) => format!("frame id {} is not above {}", f.id, self.min_id - 1),
                    Err(Decoded2::Incomplete) => {
                        "frame runs past the end of the written data".into()
                    }
                    Err(Decoded2::Bad(b)) => b,
                };
                // Find where valid frames resume.
                let rest: Vec<u8>;
                let bytes: &[u8] = match &map {
                    Some(m) => &m[..len as usize],
                    None => {
                        let mut v = vec![0u8; (len - pos) as usize];
                        let file = self.seg.file().expect("active segment is open");
                        file.read_exact_at(&mut v, pos)
                            .ctx("read segment", &self.seg.path)?;
                        rest = v;
                        &rest
                    }
                };
                let base = if map.is_some() { 0 } else { pos };
                let from = (pos - base) as usize + 1;
                self.pos = match segment::resync(bytes, from, self.min_id, self.payload_len_max) {
                    Some(p) => base + p as u64,
                    None => len,
                };
                self.buf.clear();
                Err(Error::corruption(&self.seg.path, pos, detail))
            }
        }
    }

    fn fill(&mut self, pos: u64, len: u64, need: usize) -> Result<()> {
        let have_end = self.buf_start + self.buf.len() as u64;
        if pos >= self.buf_start && pos + need as u64 <= have_end {
            return Ok(());
        }
        let want = (len - pos).min(need.max(self.chunk) as u64) as usize;
        self.buf.resize(want, 0);
        let file = self.seg.file().expect("active segment is open");
        file.read_exact_at(&mut self.buf, pos)
            .ctx("read segment", &self.seg.path)?;
        self.buf_start = pos;
        Ok(())
    }

    fn decode_buf(&self, pos: u64) -> Result<Result<StoredFrame, Decoded2>, Needed> {
        let start = (pos - self.buf_start) as usize;
        let bytes = &self.buf[start..];
        match frame::decode(bytes, self.payload_len_max) {
            Decoded::Incomplete if bytes.len() >= frame::HEADER_LEN => {
                // The header says how much is needed; fetch it all.
                let need = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize
                    + frame::HEADER_LEN
                    + 12;
                if need > bytes.len() {
                    return Err(Needed(need));
                }
                Ok(Err(Decoded2::Incomplete))
            }
            _ => Ok(Self::decode_owned(bytes, pos, self.payload_len_max)),
        }
    }

    fn decode_owned(bytes: &[u8], pos: u64, max: u32) -> Result<StoredFrame, Decoded2> {
        match frame::decode(bytes, max) {
            Decoded::Frame(f) => Ok(StoredFrame {
                id: f.id,
                timestamp_ms: f.timestamp_ms,
                attrs: f.attrs,
                payload: f.payload.to_vec(),
                offset: pos,
                frame_len: u32::try_from(f.len).expect("frame length fits u32"),
            }),
            Decoded::Incomplete => Err(Decoded2::Incomplete),
            Decoded::Bad(b) => Err(Decoded2::Bad(b.to_string())),
        }
    }
}

struct Needed(usize);

enum Decoded2 {
    Incomplete,
    Bad(String),
}
