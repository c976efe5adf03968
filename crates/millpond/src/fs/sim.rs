//! The in-memory file system [`MemFs`] and the fault-injecting simulation
//! [`SimFs`].
//!
//! Both hold one tree of inodes behind one mutex. A directory maps names to
//! inode ids; an open file refers to its inode, so renaming or removing the
//! entry leaves open handles working, as on POSIX. Paths are plain keys:
//! `.`-components are dropped and `..` is resolved lexically; relative paths
//! hang off one root (`.`), absolute ones off another (`/`).
//!
//! [`SimFs`] also remembers what is durable:
//!
//! - per file, the durable bytes and the ordered writes and `set_len`s made
//!   since the last [`FsFile::sync_data`];
//! - per directory, the durable entries, plus one ordered log of the
//!   creations, renames and removals not yet made durable by
//!   [`Fs::sync_dir`]. A rename across two directories becomes durable only
//!   once both have been synced, and a directory's operations become durable
//!   in order, so one stuck behind such a rename waits for it. After a
//!   `sync_dir` of every directory involved, the durable tree equals the
//!   current one.
//!
//! [`SimFs::crash_image`] turns that record into the file system a power cut
//! would leave; [`CrashOptions`] says how adversarial the cut is.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{Fs, FsFile, LockGuard, Mapped, OpenMode};

const EIO: i32 = 5;
const EBADF: i32 = 9;
const ENOSPC: i32 = 28;
/// Largest file either file system holds; beyond it writes and `set_len`
/// fail with [`io::ErrorKind::FileTooLarge`].
const FILE_BYTES_MAX: u64 = 1 << 32;
/// Torn writes are cut at multiples of this, counted from the file start.
const SECTOR_BYTES: u64 = 512;
const ROOT_RELATIVE: u64 = 0;
const ROOT_ABSOLUTE: u64 = 1;
const CRASH_SALT: u64 = 0x6372_6173_685f_696d;

/// Which operation a [`Fault`] targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// [`FsFile::write_all_at`].
    Write,
    /// [`FsFile::sync_data`].
    Sync,
    /// [`Fs::sync_dir`].
    SyncDir,
    /// [`Fs::open`] with [`OpenMode::CreateNew`] or [`OpenMode::CreateTruncate`].
    Create,
    /// [`Fs::rename`].
    Rename,
    /// [`Fs::remove_file`].
    Remove,
    /// [`FsFile::set_len`].
    SetLen,
}

/// The error an injected [`Fault`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// `EIO` (raw OS error 5).
    Eio,
    /// `ENOSPC` (raw OS error 28, [`io::ErrorKind::StorageFull`]).
    Enospc,
}

impl FaultError {
    /// The [`io::Error`] this fault returns.
    pub fn io_error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            FaultError::Eio => EIO,
            FaultError::Enospc => ENOSPC,
        })
    }
}

/// Makes the `nth` operation of `kind` (1-based, counted from when the fault
/// is injected with [`SimFs::inject`]; 0 counts as 1) fail with `error`.
///
/// Every call of the targeted kind counts, even one that would have failed
/// for another reason. The failing operation has no effect, except a
/// [`FaultKind::Write`] failing with [`FaultError::Enospc`]: like a short
/// `pwrite` on a full disk, a random prefix (possibly empty) of its bytes is
/// written, unsynced, before the error is returned.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The operation to fail.
    pub kind: FaultKind,
    /// Which call of that operation fails, 1-based.
    pub nth: u64,
    /// The error it fails with.
    pub error: FaultError,
}

/// What a power cut does beyond dropping unsynced data.
///
/// With both fields `false` the crash image is exactly the durable state.
#[derive(Debug, Clone, Copy)]
pub struct CrashOptions {
    /// If `true`, a random prefix (possibly empty, possibly all) of each
    /// file's unsynced writes and `set_len`s lands, and the next write after
    /// it may land torn: cut at a 512-byte boundary of the file offset
    /// (possibly to nothing), with the rest either missing or, if the write
    /// grew the file, read back as zeros. If `false`, all unsynced file data
    /// is lost.
    pub torn_writes: bool,
    /// If `true`, each unsynced directory operation independently lands or is
    /// lost (replayed in order; one that no longer applies, such as a rename
    /// of a missing source, is lost). If `false`, all of them are lost.
    pub lose_unsynced_dir_ops: bool,
}

impl CrashOptions {
    /// Torn writes and randomly lost directory operations.
    pub fn harsh() -> CrashOptions {
        CrashOptions {
            torn_writes: true,
            lose_unsynced_dir_ops: true,
        }
    }

    /// Only the durable state survives.
    pub fn clean() -> CrashOptions {
        CrashOptions {
            torn_writes: false,
            lose_unsynced_dir_ops: false,
        }
    }
}

/// Counters of a [`SimFs`]. Operations count only when they succeed.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    /// Calls of [`FsFile::write_all_at`].
    pub writes: u64,
    /// Calls of [`FsFile::sync_data`].
    pub syncs: u64,
    /// Calls of [`Fs::sync_dir`].
    pub dir_syncs: u64,
    /// Entries created: files by [`Fs::open`], directories by
    /// [`Fs::create_dir_all`].
    pub creates: u64,
    /// Calls of [`Fs::rename`].
    pub renames: u64,
    /// Calls of [`Fs::remove_file`].
    pub removes: u64,
    /// Injected faults that fired.
    pub faults_injected: u64,
    /// Writes that crash images left torn.
    pub torn_writes: u64,
    /// Unsynced directory operations that crash images lost.
    pub dir_ops_lost: u64,
    /// Bytes of unsynced writes that crash images lost.
    pub bytes_dropped: u64,
}

/// Fault-injecting simulation of a file system that tracks durability and
/// can hand back the image a power cut would leave. Deterministic from its
/// seed. Clones share the same state.
#[derive(Clone, Debug)]
pub struct SimFs {
    core: Arc<Mutex<Core>>,
}

/// In-memory file system: every operation takes effect at once and counts as
/// durable; no faults. Clones share the same state.
#[derive(Clone, Debug)]
pub struct MemFs {
    inner: SimFs,
}

impl Default for MemFs {
    fn default() -> MemFs {
        MemFs::new()
    }
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> MemFs {
        MemFs {
            inner: SimFs::from_core(Core::new(0, false)),
        }
    }
}

impl SimFs {
    /// An empty, powered-on file system whose randomness comes from `seed`.
    pub fn new(seed: u64) -> SimFs {
        SimFs::from_core(Core::new(seed, true))
    }

    fn from_core(core: Core) -> SimFs {
        SimFs {
            core: Arc::new(Mutex::new(core)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Arms `fault`; see [`Fault`].
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(ArmedFault { fault, seen: 0 });
    }

    /// After `ops` more mutating operations (`write_all_at`, `set_len`,
    /// `sync_data`, `sync_dir`, creating opens, `rename`, `remove_file`,
    /// `create_dir_all`) succeed, the power goes out: that operation and every
    /// later one of any kind, reads and already-open files included, fails
    /// with `EIO`. With 0 the very next mutating operation fails. Power never
    /// comes back; take a [`SimFs::crash_image`].
    pub fn cut_power_after(&self, ops: u64) {
        let mut core = self.lock();
        if !matches!(core.power, Power::Off) {
            core.power = Power::CutAfter(ops);
        }
    }

    /// Cuts the power now; see [`SimFs::cut_power_after`].
    pub fn cut_power(&self) {
        self.lock().power = Power::Off;
    }

    /// Whether the power has gone out.
    pub fn is_powered_off(&self) -> bool {
        matches!(self.lock().power, Power::Off)
    }

    /// The image a power cut now would leave, as a fresh powered-on file
    /// system with no locks held and no faults armed. Works whether or not
    /// the power is off. Its randomness derives from this file system's seed
    /// and the number of images taken so far, so the same seed and the same
    /// operations give the same image. The counts of torn writes, lost
    /// directory operations and dropped bytes are added to this file
    /// system's [`SimStats`] and are the only non-zero counts of the image's.
    pub fn crash_image(&self, opts: CrashOptions) -> SimFs {
        SimFs::from_core(self.lock().crash_image(opts))
    }

    /// Makes later power-cut images (with `torn_writes`) land each unsynced
    /// write independently rather than a prefix of them, as writeback in
    /// any order would: an earlier append may be a zero-filled gap before a
    /// later one that reached the disk.
    pub fn set_reorder_writes(&self, on: bool) {
        self.lock().reorder_writes = on;
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// Flips bit `bit` (0..8) of the byte at `offset` of `path` in both the
    /// current and the durable contents, as bit rot on disk would.
    ///
    /// # Errors
    ///
    /// `NotFound` if there is no such file, `InvalidInput` if `offset` is past
    /// its current end or `bit` is not below 8.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut core = self.lock();
        let id = core.lookup_file(path)?;
        let file = core.file_mut(id);
        let index = usize::try_from(offset)
            .ok()
            .filter(|&i| i < file.current.len() && bit < 8)
            .ok_or_else(|| invalid(path, "offset or bit out of range"))?;
        file.current[index] ^= 1 << bit;
        if let Some(byte) = file.durable.get_mut(index) {
            *byte ^= 1 << bit;
        }
        Ok(())
    }

    /// The current (not necessarily durable) contents of the file at `path`,
    /// or `None` if there is no such file.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let core = self.lock();
        let id = core.lookup_file(path).ok()?;
        Some(core.file(id).current.clone())
    }

    /// Replaces the contents of `path` with `bytes`, durably, creating the
    /// file if missing; its entry in the parent directory is made durable
    /// too. Ignores faults and power, for tests that plant files.
    ///
    /// # Errors
    ///
    /// `NotFound` if the parent directory is missing, `IsADirectory` if
    /// `path` is a directory.
    pub fn put_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        check_end(path, 0, bytes.len())?;
        let key = Key::parse(path)?;
        let mut core = self.lock();
        let (dir, name) = core.parent(&key, path)?;
        let id = match core.dirs[&dir].get(name).copied() {
            Some(id) if core.is_dir(id) => return Err(is_a_dir(path)),
            Some(id) => id,
            None => core.new_file(dir, name, true),
        };
        core.durable_dirs
            .get_mut(&dir)
            .expect("every directory has durable entries")
            .insert(name.to_owned(), id);
        let file = core.file_mut(id);
        file.current = bytes.to_vec();
        file.durable = bytes.to_vec();
        file.pending.clear();
        Ok(())
    }
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SplitMix64: small, fast and good enough to pick crash outcomes.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

type Entries = BTreeMap<String, u64>;

#[derive(Debug, Clone)]
enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl DataOp {
    fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            DataOp::Write { offset, bytes } => write_into(buf, *offset, bytes),
            DataOp::SetLen(len) => buf.resize(*len as usize, 0),
        }
    }
}

/// Writes `bytes` at `offset`, zero-filling any gap. The range was checked
/// against [`FILE_BYTES_MAX`] when the write was made.
fn write_into(buf: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let start = offset as usize;
    let end = start + bytes.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[start..end].copy_from_slice(bytes);
}

#[derive(Debug, Default)]
struct FileNode {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes and `set_len`s since the last `sync_data`, oldest first.
    pending: Vec<DataOp>,
    handles: u64,
}

impl FileNode {
    /// The bytes a crash leaves; see [`CrashOptions::torn_writes`].
    /// Like `crash_bytes` with tearing, but each unsynced write lands or not
    /// independently, as page-cache writeback in any order would leave it: a
    /// later append can land while an earlier one is a zero-filled gap.
    fn crash_bytes_reordered(&self, rng: &mut SplitMix64, stats: &mut SimStats) -> Vec<u8> {
        const PAGE: u64 = 4096;
        let mut bytes = self.durable.clone();
        for op in &self.pending {
            match op {
                DataOp::Write {
                    offset,
                    bytes: data,
                } => {
                    // Page by page: writeback may persist any of them.
                    let end = offset + data.len() as u64;
                    let mut at = *offset;
                    while at < end {
                        let next = ((at / PAGE + 1) * PAGE).min(end);
                        let chunk = &data[(at - offset) as usize..(next - offset) as usize];
                        if rng.coin() {
                            write_into(&mut bytes, at, chunk);
                        } else {
                            stats.bytes_dropped += chunk.len() as u64;
                        }
                        at = next;
                    }
                }
                other => {
                    if rng.coin() {
                        other.apply(&mut bytes);
                    }
                }
            }
        }
        bytes
    }

    fn crash_bytes(&self, rng: &mut SplitMix64, torn: bool, stats: &mut SimStats) -> Vec<u8> {
        let mut bytes = self.durable.clone();
        let landed = if torn {
            rng.below(self.pending.len() as u64 + 1) as usize
        } else {
            0
        };
        for op in &self.pending[..landed] {
            op.apply(&mut bytes);
        }
        let mut lost = self.pending[landed..].iter().peekable();
        if torn
            && let Some(DataOp::Write {
                offset,
                bytes: data,
            }) = lost.peek()
            && rng.coin()
        {
            let kept = tear(&mut bytes, *offset, data, rng);
            stats.torn_writes += 1;
            stats.bytes_dropped += (data.len() - kept) as u64;
            lost.next();
        }
        for op in lost {
            if let DataOp::Write { bytes: data, .. } = op {
                stats.bytes_dropped += data.len() as u64;
            }
        }
        bytes
    }
}

/// Applies `data` at `offset` torn; returns how many of its bytes landed.
fn tear(bytes: &mut Vec<u8>, offset: u64, data: &[u8], rng: &mut SplitMix64) -> usize {
    let end = offset + data.len() as u64;
    // Cut points: `offset` itself, then every sector boundary inside the write.
    let first = (offset / SECTOR_BYTES + 1) * SECTOR_BYTES;
    let cuts = if first >= end {
        1
    } else {
        2 + (end - 1 - first) / SECTOR_BYTES
    };
    let pick = rng.below(cuts);
    let cut = if pick == 0 {
        offset
    } else {
        first + (pick - 1) * SECTOR_BYTES
    };
    let kept = (cut - offset) as usize;
    write_into(bytes, offset, &data[..kept]);
    if rng.coin() && (bytes.len() as u64) < end {
        // The size reached the disk, the data did not.
        bytes.resize(end as usize, 0);
    }
    kept
}

/// A directory entry, as (directory id, name).
type Slot = (u64, String);

/// A creation (`from` is `None`), removal (`to` is `None`) or rename of the
/// entry for inode `id`.
#[derive(Debug, Clone)]
struct DirOp {
    from: Option<Slot>,
    to: Option<Slot>,
    id: u64,
}

impl DirOp {
    fn dirs(&self) -> Vec<u64> {
        let mut dirs: Vec<u64> = self.from.iter().chain(&self.to).map(|s| s.0).collect();
        dirs.dedup();
        dirs
    }

    /// Applies the operation to `dirs` if it still can (the source maps to
    /// `id`; a created name is free; a rename does not replace a directory);
    /// returns whether it did.
    fn apply(&self, dirs: &mut BTreeMap<u64, Entries>) -> bool {
        let entry = |slot: &Slot| dirs.get(&slot.0).map(|e| e.get(&slot.1));
        let source_ok = self
            .from
            .as_ref()
            .is_none_or(|s| entry(s) == Some(Some(&self.id)));
        let target_ok = self.to.as_ref().is_none_or(|s| match entry(s) {
            None => false,
            Some(None) => true,
            Some(Some(old)) => self.from.is_some() && !dirs.contains_key(old),
        });
        if !source_ok || !target_ok {
            return false;
        }
        if let Some((dir, name)) = &self.from {
            dirs.get_mut(dir).map(|e| e.remove(name));
        }
        if let Some((dir, name)) = &self.to {
            dirs.get_mut(dir).map(|e| e.insert(name.clone(), self.id));
        }
        true
    }
}

#[derive(Debug)]
struct PendingDirOp {
    op: DirOp,
    /// Directories touched by `op` that have not been synced since.
    unsynced: Vec<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Power {
    On,
    CutAfter(u64),
    Off,
}

#[derive(Debug)]
struct ArmedFault {
    fault: Fault,
    seen: u64,
}

/// A path as a key: which root, then the names below it.
struct Key {
    root: u64,
    names: Vec<String>,
}

impl Key {
    fn parse(path: &Path) -> io::Result<Key> {
        let mut key = Key {
            root: ROOT_RELATIVE,
            names: Vec::new(),
        };
        for component in path.components() {
            match component {
                Component::RootDir => {
                    key.root = ROOT_ABSOLUTE;
                    key.names.clear();
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    if key.names.pop().is_none() && key.root == ROOT_RELATIVE {
                        return Err(invalid(path, "path leaves the root"));
                    }
                }
                Component::Normal(name) => {
                    let name = name.to_str().ok_or_else(|| invalid(path, "not UTF-8"))?;
                    key.names.push(name.to_owned());
                }
                Component::Prefix(_) => return Err(invalid(path, "path prefixes unsupported")),
            }
        }
        Ok(key)
    }

    fn to_path(&self) -> PathBuf {
        let mut path = PathBuf::from(if self.root == ROOT_ABSOLUTE { "/" } else { "." });
        path.extend(&self.names);
        path
    }
}

struct Core {
    /// Whether durability is tracked (`SimFs`) or everything is durable at
    /// once (`MemFs`).
    track: bool,
    files: BTreeMap<u64, FileNode>,
    /// Current entries of every directory; a node is a directory iff here.
    dirs: BTreeMap<u64, Entries>,
    /// Durable entries of every directory (when tracking).
    durable_dirs: BTreeMap<u64, Entries>,
    /// Directory operations not yet durable, oldest first.
    log: Vec<PendingDirOp>,
    next_id: u64,
    locks: BTreeSet<PathBuf>,
    faults: Vec<ArmedFault>,
    power: Power,
    stats: SimStats,
    seed: u64,
    rng: SplitMix64,
    images_taken: u64,
    /// Unsynced writes land as a random subset, not a prefix.
    reorder_writes: bool,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("track", &self.track)
            .field("files", &self.files.len())
            .field("dirs", &self.dirs.len())
            .field("unsynced_dir_ops", &self.log.len())
            .field("power", &self.power)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Core {
    fn new(seed: u64, track: bool) -> Core {
        let roots: BTreeMap<u64, Entries> = [
            (ROOT_RELATIVE, Entries::new()),
            (ROOT_ABSOLUTE, Entries::new()),
        ]
        .into();
        Core {
            track,
            files: BTreeMap::new(),
            durable_dirs: roots.clone(),
            dirs: roots,
            log: Vec::new(),
            next_id: ROOT_ABSOLUTE + 1,
            locks: BTreeSet::new(),
            faults: Vec::new(),
            power: Power::On,
            stats: SimStats::default(),
            seed,
            rng: SplitMix64(seed),
            images_taken: 0,
            reorder_writes: false,
        }
    }

    fn check_power(&self) -> io::Result<()> {
        match self.power {
            Power::Off => Err(io::Error::from_raw_os_error(EIO)),
            _ => Ok(()),
        }
    }

    /// Starts a mutating operation: fails it if the power is out or goes out
    /// now.
    fn begin(&mut self) -> io::Result<()> {
        if let Power::CutAfter(0) = self.power {
            self.power = Power::Off;
        }
        self.check_power()
    }

    /// Ends a mutating operation that succeeded.
    fn end(&mut self) {
        if let Power::CutAfter(n) = &mut self.power {
            *n = n.saturating_sub(1);
        }
    }

    /// Counts a call of `kind` against the armed faults; returns the error of
    /// one that fires.
    fn fault(&mut self, kind: FaultKind) -> Option<FaultError> {
        let mut fired = None;
        for armed in self.faults.iter_mut().filter(|a| a.fault.kind == kind) {
            armed.seen += 1;
            if armed.seen >= armed.fault.nth.max(1) {
                fired = fired.or(Some(armed.fault.error));
            }
        }
        if fired.is_some() {
            self.faults.retain(|a| a.seen < a.fault.nth.max(1));
            self.stats.faults_injected += 1;
        }
        fired
    }

    /// Runs a mutating operation `op` of fault kind `kind`.
    fn mutate<T>(
        &mut self,
        kind: Option<FaultKind>,
        op: impl FnOnce(&mut Core) -> io::Result<T>,
    ) -> io::Result<T> {
        self.begin()?;
        if let Some(error) = kind.and_then(|kind| self.fault(kind)) {
            return Err(error.io_error());
        }
        let out = op(self)?;
        self.end();
        Ok(out)
    }

    fn is_dir(&self, id: u64) -> bool {
        self.dirs.contains_key(&id)
    }

    fn file(&self, id: u64) -> &FileNode {
        self.files
            .get(&id)
            .expect("a reachable or open file has an inode")
    }

    fn file_mut(&mut self, id: u64) -> &mut FileNode {
        self.files
            .get_mut(&id)
            .expect("a reachable or open file has an inode")
    }

    /// Walks `names` down from directory `id`: `Ok(None)` if an entry is
    /// missing, `NotADirectory` if a file is in the way.
    fn walk(&self, mut id: u64, names: &[String], path: &Path) -> io::Result<Option<u64>> {
        for name in names {
            let entries = self.dirs.get(&id).ok_or_else(|| not_a_dir(path))?;
            match entries.get(name) {
                Some(&next) => id = next,
                None => return Ok(None),
            }
        }
        Ok(Some(id))
    }

    fn lookup(&self, path: &Path) -> io::Result<Option<u64>> {
        let key = Key::parse(path)?;
        self.walk(key.root, &key.names, path)
    }

    fn lookup_file(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            None => Err(not_found(path)),
            Some(id) if self.is_dir(id) => Err(is_a_dir(path)),
            Some(id) => Ok(id),
        }
    }

    fn lookup_dir(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            None => Err(not_found(path)),
            Some(id) if !self.is_dir(id) => Err(not_a_dir(path)),
            Some(id) => Ok(id),
        }
    }

    /// The directory that holds `key`'s last name, and that name.
    fn parent<'k>(&self, key: &'k Key, path: &Path) -> io::Result<(u64, &'k str)> {
        let (name, dir_names) = key
            .names
            .split_last()
            .ok_or_else(|| invalid(path, "no file name"))?;
        match self.walk(key.root, dir_names, path)? {
            None => Err(not_found(path)),
            Some(dir) if !self.is_dir(dir) => Err(not_a_dir(path)),
            Some(dir) => Ok((dir, name)),
        }
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Creates an empty file `name` in `dir`; the entry is durable at once if
    /// `durable`, else an unsynced directory operation.
    fn new_file(&mut self, dir: u64, name: &str, durable: bool) -> u64 {
        let id = self.alloc_id();
        self.files.insert(id, FileNode::default());
        self.link(dir, name, id, durable);
        id
    }

    fn new_dir(&mut self, parent: u64, name: &str) -> u64 {
        let id = self.alloc_id();
        self.dirs.insert(id, Entries::new());
        if self.track {
            self.durable_dirs.insert(id, Entries::new());
        }
        self.link(parent, name, id, false);
        self.stats.creates += 1;
        id
    }

    fn link(&mut self, dir: u64, name: &str, id: u64, durable: bool) {
        let entries = self.dirs.get_mut(&dir).expect("links go into directories");
        entries.insert(name.to_owned(), id);
        if !self.track {
            return;
        }
        if durable {
            let durable = self.durable_dirs.get_mut(&dir);
            durable
                .expect("every directory has durable entries")
                .insert(name.to_owned(), id);
        } else {
            let to = Some((dir, name.to_owned()));
            self.log_dir_op(DirOp { from: None, to, id });
        }
    }

    fn log_dir_op(&mut self, op: DirOp) {
        if self.track {
            let unsynced = op.dirs();
            self.log.push(PendingDirOp { op, unsynced });
        }
    }

    /// Records a write or `set_len` of file `id`.
    fn record(&mut self, id: u64, op: DataOp) {
        let track = self.track;
        let file = self.file_mut(id);
        op.apply(&mut file.current);
        if track {
            file.pending.push(op);
        }
    }

    /// Makes the log's operations on `dir` durable, in order, except those
    /// still waiting for another directory (and those behind them).
    /// Makes the pending operations on `dir` durable; returns the inodes
    /// that may no longer be referred to (those the operations moved away
    /// from, and those they replaced in the durable view).
    fn commit_dir(&mut self, dir: u64) -> Vec<u64> {
        let mut blocked = BTreeSet::new();
        let mut touched = Vec::new();
        for pending in std::mem::take(&mut self.log) {
            let mut pending = pending;
            pending.unsynced.retain(|&d| d != dir);
            let dirs = pending.op.dirs();
            if pending.unsynced.is_empty() && !dirs.iter().any(|d| blocked.contains(d)) {
                touched.push(pending.op.id);
                if let Some((d, name)) = &pending.op.to
                    && let Some(&old) = self.durable_dirs.get(d).and_then(|e| e.get(name))
                {
                    touched.push(old);
                }
                pending.op.apply(&mut self.durable_dirs);
            } else {
                blocked.extend(dirs);
                self.log.push(pending);
            }
        }
        touched
    }

    /// Drops those of the file inodes `ids` that no entry, pending
    /// operation or handle refers to. Only inodes an operation just let go
    /// of can have become garbage, so only they are checked (a sweep of
    /// every inode on every rename, sync and close was a fifth of the
    /// time of the `ops_vs_model` fuzz target).
    fn collect_garbage(&mut self, ids: &[u64]) {
        for &id in ids {
            if self.files.get(&id).is_none_or(|f| f.handles > 0) {
                continue;
            }
            let used = self.log.iter().any(|p| p.op.id == id)
                || self
                    .dirs
                    .values()
                    .chain(self.durable_dirs.values())
                    .any(|e| e.values().any(|&v| v == id));
            if !used {
                self.files.remove(&id);
            }
        }
    }

    /// Whether `target` is `dir` or below it.
    fn contains_dir(&self, dir: u64, target: u64) -> bool {
        let mut stack = vec![dir];
        while let Some(id) = stack.pop() {
            if id == target {
                return true;
            }
            if let Some(entries) = self.dirs.get(&id) {
                stack.extend(entries.values().filter(|&&e| self.is_dir(e)));
            }
        }
        false
    }

    fn crash_image(&mut self, opts: CrashOptions) -> Core {
        let salt = SplitMix64(self.images_taken).next_u64();
        let mut rng = SplitMix64(self.seed ^ CRASH_SALT ^ salt);
        self.images_taken += 1;
        let mut stats = SimStats::default();

        let mut dirs = self.durable_dirs.clone();
        for pending in &self.log {
            let landed = opts.lose_unsynced_dir_ops && rng.coin() && pending.op.apply(&mut dirs);
            if !landed {
                stats.dir_ops_lost += 1;
            }
        }

        let mut reachable = BTreeSet::new();
        let mut stack = vec![ROOT_RELATIVE, ROOT_ABSOLUTE];
        while let Some(id) = stack.pop() {
            if reachable.insert(id)
                && let Some(entries) = dirs.get(&id)
            {
                stack.extend(entries.values());
            }
        }
        dirs.retain(|id, _| reachable.contains(id));

        let mut files = BTreeMap::new();
        for (&id, file) in &self.files {
            if reachable.contains(&id) && !dirs.contains_key(&id) {
                let bytes = if opts.torn_writes && self.reorder_writes {
                    file.crash_bytes_reordered(&mut rng, &mut stats)
                } else {
                    file.crash_bytes(&mut rng, opts.torn_writes, &mut stats)
                };
                let node = FileNode {
                    current: bytes.clone(),
                    durable: bytes,
                    ..FileNode::default()
                };
                files.insert(id, node);
            }
        }

        self.stats.torn_writes += stats.torn_writes;
        self.stats.dir_ops_lost += stats.dir_ops_lost;
        self.stats.bytes_dropped += stats.bytes_dropped;
        let mut image = Core::new(rng.next_u64(), true);
        image.files = files;
        image.durable_dirs = dirs.clone();
        image.dirs = dirs;
        image.next_id = self.next_id;
        image.stats = stats;
        image.reorder_writes = self.reorder_writes;
        image
    }

    fn open(&mut self, path: &Path, mode: OpenMode) -> io::Result<(u64, bool)> {
        let key = Key::parse(path)?;
        if matches!(mode, OpenMode::Read | OpenMode::ReadWrite) {
            self.check_power()?;
            return Ok((self.lookup_file(path)?, mode == OpenMode::ReadWrite));
        }
        let id = self.mutate(Some(FaultKind::Create), |core| {
            let (dir, name) = core.parent(&key, path)?;
            match core.dirs[&dir].get(name).copied() {
                Some(_) if mode == OpenMode::CreateNew => Err(already_exists(path)),
                Some(id) if core.is_dir(id) => Err(is_a_dir(path)),
                Some(id) => {
                    core.record(id, DataOp::SetLen(0));
                    Ok(id)
                }
                None => {
                    core.stats.creates += 1;
                    Ok(core.new_file(dir, name, false))
                }
            }
        })?;
        Ok((id, true))
    }

    fn read_at(&self, id: u64, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.check_power()?;
        let current = &self.file(id).current;
        let start = usize::try_from(offset).map_or(current.len(), |o| o.min(current.len()));
        let n = buf.len().min(current.len() - start);
        buf[..n].copy_from_slice(&current[start..start + n]);
        Ok(n)
    }

    fn write_at(&mut self, id: u64, writable: bool, buf: &[u8], offset: u64) -> io::Result<()> {
        self.begin()?;
        if !writable {
            return Err(io::Error::from_raw_os_error(EBADF));
        }
        check_end(Path::new("<open file>"), offset, buf.len())?;
        let mut kept = buf.len();
        let fault = self.fault(FaultKind::Write);
        match fault {
            Some(FaultError::Eio) => kept = 0,
            Some(FaultError::Enospc) => kept = self.rng.below(buf.len() as u64 + 1) as usize,
            None => {}
        }
        if kept > 0 {
            let bytes = buf[..kept].to_vec();
            self.record(id, DataOp::Write { offset, bytes });
        }
        if let Some(error) = fault {
            return Err(error.io_error());
        }
        self.stats.writes += 1;
        self.end();
        Ok(())
    }

    fn set_len(&mut self, id: u64, writable: bool, len: u64) -> io::Result<()> {
        self.mutate(Some(FaultKind::SetLen), |core| {
            if !writable {
                return Err(io::Error::from_raw_os_error(EBADF));
            }
            check_end(Path::new("<open file>"), len, 0)?;
            core.record(id, DataOp::SetLen(len));
            Ok(())
        })
    }

    fn sync_data(&mut self, id: u64) -> io::Result<()> {
        self.mutate(Some(FaultKind::Sync), |core| {
            let FileNode {
                durable, pending, ..
            } = core.file_mut(id);
            for op in pending.drain(..) {
                op.apply(durable);
            }
            core.stats.syncs += 1;
            Ok(())
        })
    }

    fn create_dir_all(&mut self, path: &Path) -> io::Result<()> {
        let key = Key::parse(path)?;
        self.mutate(None, |core| {
            let mut id = key.root;
            for (i, name) in key.names.iter().enumerate() {
                id = match core.dirs[&id].get(name).copied() {
                    Some(next) if core.is_dir(next) => next,
                    Some(_) if i + 1 == key.names.len() => return Err(already_exists(path)),
                    Some(_) => return Err(not_a_dir(path)),
                    None => core.new_dir(id, name),
                };
            }
            Ok(())
        })
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let (from_key, to_key) = (Key::parse(from)?, Key::parse(to)?);
        self.mutate(Some(FaultKind::Rename), |core| {
            let (from_dir, from_name) = core.parent(&from_key, from)?;
            let id = core.dirs[&from_dir].get(from_name).copied();
            let id = id.ok_or_else(|| not_found(from))?;
            let (to_dir, to_name) = core.parent(&to_key, to)?;
            if (from_dir, from_name) == (to_dir, to_name) {
                core.stats.renames += 1;
                return Ok(());
            }
            if let Some(old) = core.dirs[&to_dir].get(to_name).copied() {
                if core.is_dir(old) {
                    return Err(is_a_dir(to));
                }
                if core.is_dir(id) {
                    return Err(not_a_dir(to));
                }
            }
            if core.is_dir(id) && core.contains_dir(id, to_dir) {
                return Err(invalid(to, "cannot move a directory below itself"));
            }
            let replaced = core.dirs[&to_dir].get(to_name).copied();
            core.dirs.get_mut(&from_dir).map(|e| e.remove(from_name));
            core.dirs
                .get_mut(&to_dir)
                .map(|e| e.insert(to_name.to_owned(), id));
            core.log_dir_op(DirOp {
                from: Some((from_dir, from_name.to_owned())),
                to: Some((to_dir, to_name.to_owned())),
                id,
            });
            core.stats.renames += 1;
            core.collect_garbage(replaced.as_slice());
            Ok(())
        })
    }

    fn remove_file(&mut self, path: &Path) -> io::Result<()> {
        let key = Key::parse(path)?;
        self.mutate(Some(FaultKind::Remove), |core| {
            let (dir, name) = core.parent(&key, path)?;
            let id = core.dirs[&dir].get(name).copied();
            let id = id.ok_or_else(|| not_found(path))?;
            if core.is_dir(id) {
                return Err(is_a_dir(path));
            }
            core.dirs.get_mut(&dir).map(|e| e.remove(name));
            let from = Some((dir, name.to_owned()));
            core.log_dir_op(DirOp { from, to: None, id });
            core.stats.removes += 1;
            core.collect_garbage(&[id]);
            Ok(())
        })
    }

    fn sync_dir(&mut self, path: &Path) -> io::Result<()> {
        self.mutate(Some(FaultKind::SyncDir), |core| {
            let dir = core.lookup_dir(path)?;
            let touched = core.commit_dir(dir);
            core.collect_garbage(&touched);
            core.stats.dir_syncs += 1;
            Ok(())
        })
    }

    fn try_lock(&mut self, path: &Path) -> io::Result<Option<PathBuf>> {
        self.check_power()?;
        let key = Key::parse(path)?;
        let lock_key = key.to_path();
        if self.locks.contains(&lock_key) {
            return Ok(None);
        }
        if self.lookup(path)?.is_none() {
            let (dir, name) = self.parent(&key, path)?;
            self.new_file(dir, name, true);
        }
        self.locks.insert(lock_key.clone());
        Ok(Some(lock_key))
    }
}

/// Fails unless `offset + len` fits in a file.
fn check_end(path: &Path, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= FILE_BYTES_MAX => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{}: file would pass {FILE_BYTES_MAX} bytes", path.display()),
        )),
    }
}

fn error(kind: io::ErrorKind, path: &Path, what: &str) -> io::Error {
    io::Error::new(kind, format!("{}: {what}", path.display()))
}

fn not_found(path: &Path) -> io::Error {
    error(io::ErrorKind::NotFound, path, "no such file or directory")
}

fn already_exists(path: &Path) -> io::Error {
    error(io::ErrorKind::AlreadyExists, path, "already exists")
}

fn is_a_dir(path: &Path) -> io::Error {
    error(io::ErrorKind::IsADirectory, path, "is a directory")
}

fn not_a_dir(path: &Path) -> io::Error {
    error(io::ErrorKind::NotADirectory, path, "not a directory")
}

fn invalid(path: &Path, what: &str) -> io::Error {
    error(io::ErrorKind::InvalidInput, path, what)
}

/// An open file of a [`SimFs`] or [`MemFs`]: a reference to its inode.
struct SimFile {
    core: Arc<Mutex<Core>>,
    id: u64,
    writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("id", &self.id)
            .field("writable", &self.writable)
            .finish()
    }
}

impl FsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        lock(&self.core).read_at(self.id, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        lock(&self.core).write_at(self.id, self.writable, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        lock(&self.core).set_len(self.id, self.writable, len)
    }

    fn len(&self) -> io::Result<u64> {
        let core = lock(&self.core);
        core.check_power()?;
        Ok(core.file(self.id).current.len() as u64)
    }

    fn sync_data(&self) -> io::Result<()> {
        lock(&self.core).sync_data(self.id)
    }

    fn map(&self) -> io::Result<Mapped> {
        let core = lock(&self.core);
        core.check_power()?;
        Ok(Mapped::owned(core.file(self.id).current.as_slice().into()))
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut core = lock(&self.core);
        if let Some(file) = core.files.get_mut(&self.id) {
            file.handles -= 1;
            if file.handles == 0 {
                core.collect_garbage(&[self.id]);
            }
        }
    }
}

/// Releases a [`SimFs`] lock when dropped.
struct LockHold {
    core: Weak<Mutex<Core>>,
    key: PathBuf,
}

impl Drop for LockHold {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            lock(&core).locks.remove(&self.key);
        }
    }
}

impl Fs for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut core = self.lock();
        let (id, writable) = core.open(path, mode)?;
        core.file_mut(id).handles += 1;
        let core = Arc::clone(&self.core);
        Ok(Arc::new(SimFile { core, id, writable }))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.lock().create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let core = self.lock();
        core.check_power()?;
        let dir = core.lookup_dir(path)?;
        Ok(core.dirs[&dir].keys().cloned().collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.lock().rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.lock().remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.lock().sync_dir(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let core = self.lock();
        core.check_power()?;
        match core.lookup(path) {
            Ok(found) => Ok(found.is_some()),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        let Some(key) = self.lock().try_lock(path)? else {
            return Ok(None);
        };
        let core = Arc::downgrade(&self.core);
        let hold = LockHold { core, key };
        Ok(Some(LockGuard::new(path.to_path_buf(), Box::new(hold))))
    }
}

impl Fs for MemFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        self.inner.open(path, mode)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>> {
        self.inner.try_lock(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> &Path {
        Path::new(path)
    }

    fn create(fs: &dyn Fs, path: &str, bytes: &[u8]) -> Arc<dyn FsFile> {
        let file = fs.open(p(path), OpenMode::CreateNew).unwrap();
        if !bytes.is_empty() {
            file.write_all_at(bytes, 0).unwrap();
        }
        file
    }

    fn read(fs: &dyn Fs, path: &str) -> Vec<u8> {
        let file = fs.open(p(path), OpenMode::Read).unwrap();
        let mut buf = vec![0; file.len().unwrap() as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// An inode goes once no entry (current or durable), pending directory
    /// operation or open handle refers to it, and not before.
    #[test]
    fn inodes_nothing_refers_to_are_dropped() {
        let fs = SimFs::new(1);
        fs.create_dir_all(p("/d")).unwrap();
        fs.sync_dir(p("/")).unwrap();
        let inodes = |fs: &SimFs| fs.lock().files.len();
        let base = inodes(&fs);
        drop(create(&fs, "/d/a", b"a"));
        drop(create(&fs, "/d/b", b"b"));
        assert_eq!(inodes(&fs), base + 2);
        fs.sync_dir(p("/d")).unwrap();
        fs.rename(p("/d/b"), p("/d/a")).unwrap();
        assert_eq!(inodes(&fs), base + 2, "the old a is still durable");
        assert_eq!(
            fs.crash_image(CrashOptions::clean())
                .file_bytes(p("/d/a"))
                .unwrap(),
            b""
        );
        fs.sync_dir(p("/d")).unwrap();
        assert_eq!(inodes(&fs), base + 1, "the replaced inode is gone");
        let handle = fs.open(p("/d/a"), OpenMode::Read).unwrap();
        fs.remove_file(p("/d/a")).unwrap();
        fs.sync_dir(p("/d")).unwrap();
        assert_eq!(inodes(&fs), base + 1, "an open handle keeps it");
        assert_eq!(&*handle.map().unwrap(), b"b");
        drop(handle);
        assert_eq!(inodes(&fs), base);
    }

    /// Every path below `.` with its bytes (`None` for directories).
    fn dump(fs: &SimFs) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::from(".")];
        while let Some(dir) = stack.pop() {
            for name in fs.list_dir(&dir).unwrap() {
                let path = dir.join(name);
                match fs.file_bytes(&path) {
                    Some(bytes) => out.push((path, Some(bytes))),
                    None => {
                        out.push((path.clone(), None));
                        stack.push(path);
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn raw(result: io::Result<impl fmt::Debug>) -> Option<i32> {
        result.unwrap_err().raw_os_error()
    }

    #[test]
    fn handles_are_send_sync() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<SimFs>();
        check::<MemFs>();
    }

    #[test]
    fn unsynced_write_is_lost_and_synced_write_survives() {
        let fs = SimFs::new(1);
        let file = create(&fs, "f", b"hello");
        fs.sync_dir(p(".")).unwrap();
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.file_bytes(p("f")), Some(Vec::new()));
        assert_eq!(fs.stats().bytes_dropped, 5);

        file.sync_data().unwrap();
        file.write_all_at(b" world", 5).unwrap();
        file.set_len(3).unwrap();
        assert_eq!(fs.file_bytes(p("f")).unwrap(), b"hel");
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.file_bytes(p("f")).unwrap(), b"hello");
        assert_eq!(dump(&image).len(), 1);
    }

    #[test]
    fn create_is_durable_only_after_sync_dir() {
        let fs = SimFs::new(2);
        fs.create_dir_all(p("db")).unwrap();
        create(&fs, "db/a", b"x").sync_data().unwrap();
        fs.sync_dir(p("db")).unwrap();
        // `db` itself is not durable in `.` yet, so neither is `db/a`.
        assert!(
            !fs.crash_image(CrashOptions::clean())
                .exists(p("db"))
                .unwrap()
        );
        fs.sync_dir(p(".")).unwrap();
        create(&fs, "db/b", b"y").sync_data().unwrap();
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.list_dir(p("db")).unwrap(), ["a"]);
        assert_eq!(image.file_bytes(p("db/a")).unwrap(), b"x");
        fs.sync_dir(p("db")).unwrap();
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.list_dir(p("db")).unwrap(), ["a", "b"]);
        assert_eq!(image.file_bytes(p("db/b")).unwrap(), b"y");
    }

    #[test]
    fn rename_and_remove_are_durable_only_after_sync_dir() {
        let fs = SimFs::new(3);
        create(&fs, "tmp", b"new").sync_data().unwrap();
        create(&fs, "old", b"gone").sync_data().unwrap();
        create(&fs, "final", b"old").sync_data().unwrap();
        fs.sync_dir(p(".")).unwrap();
        fs.rename(p("tmp"), p("final")).unwrap();
        fs.remove_file(p("old")).unwrap();
        assert_eq!(fs.list_dir(p(".")).unwrap(), ["final"]);
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.list_dir(p(".")).unwrap(), ["final", "old", "tmp"]);
        assert_eq!(image.file_bytes(p("final")).unwrap(), b"old");
        assert_eq!(fs.stats().dir_ops_lost, 2);
        fs.sync_dir(p(".")).unwrap();
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(
            dump(&image),
            [(PathBuf::from("./final"), Some(b"new".to_vec()))]
        );
    }

    #[test]
    fn cross_directory_rename_needs_both_syncs() {
        let fs = SimFs::new(4);
        fs.create_dir_all(p("a")).unwrap();
        fs.create_dir_all(p("b")).unwrap();
        create(&fs, "a/x", b"data").sync_data().unwrap();
        fs.sync_dir(p("a")).unwrap();
        fs.sync_dir(p(".")).unwrap();
        fs.rename(p("a/x"), p("b/y")).unwrap();
        create(&fs, "a/z", b"").sync_data().unwrap();
        fs.sync_dir(p("a")).unwrap();
        // The rename waits for `b`, and `a/z` waits behind it.
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.list_dir(p("a")).unwrap(), ["x"]);
        assert!(image.list_dir(p("b")).unwrap().is_empty());
        fs.sync_dir(p("b")).unwrap();
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.list_dir(p("a")).unwrap(), ["z"]);
        assert_eq!(image.list_dir(p("b")).unwrap(), ["y"]);
        assert_eq!(image.file_bytes(p("b/y")).unwrap(), b"data");
    }

    #[test]
    fn syncing_everything_makes_the_image_equal_the_current_tree() {
        let fs = SimFs::new(5);
        fs.create_dir_all(p("d/e")).unwrap();
        create(&fs, "d/e/f", b"1").sync_data().unwrap();
        create(&fs, "d/g", b"2").sync_data().unwrap();
        fs.rename(p("d/e"), p("h")).unwrap();
        fs.rename(p("d/g"), p("h/f")).unwrap();
        create(&fs, "d/g", b"").sync_data().unwrap();
        fs.remove_file(p("d/g")).unwrap();
        create(&fs, "d/g", b"3").sync_data().unwrap();
        for dir in ["h", "d", "d/e", "."] {
            let _ = fs.sync_dir(p(dir));
        }
        let image = fs.crash_image(CrashOptions::harsh());
        assert_eq!(dump(&image), dump(&fs));
        assert_eq!(image.file_bytes(p("h/f")).unwrap(), b"2");
        assert_eq!(image.file_bytes(p("d/g")).unwrap(), b"3");
        assert_eq!(fs.stats().dir_ops_lost, 0);
    }

    #[test]
    fn harsh_crash_lands_each_dir_op_independently() {
        let mut seen = BTreeSet::new();
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            create(&fs, "a", b"");
            create(&fs, "b", b"");
            let names = fs
                .crash_image(CrashOptions::harsh())
                .list_dir(p("."))
                .unwrap();
            seen.insert(names);
        }
        let all: BTreeSet<Vec<String>> = [vec![], vec!["a"], vec!["b"], vec!["a", "b"]]
            .into_iter()
            .map(|v| v.into_iter().map(String::from).collect())
            .collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn rename_of_a_lost_create_is_skipped() {
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            create(&fs, "tmp", b"").sync_data().unwrap();
            fs.rename(p("tmp"), p("final")).unwrap();
            let names = fs
                .crash_image(CrashOptions::harsh())
                .list_dir(p("."))
                .unwrap();
            assert!(
                names.is_empty() || names == ["tmp"] || names == ["final"],
                "{names:?}"
            );
        }
    }

    #[test]
    fn torn_writes_cut_at_sectors_or_read_as_zeros() {
        let (offset, len) = (100usize, 2000usize);
        let (mut cut_mid, mut zeroed, mut whole, mut none) = (false, false, false, false);
        for seed in 0..400 {
            let fs = SimFs::new(seed);
            let file = create(&fs, "f", b"");
            file.sync_data().unwrap();
            fs.sync_dir(p(".")).unwrap();
            file.write_all_at(&[0xAB; 2000], offset as u64).unwrap();
            let image = fs.crash_image(CrashOptions::harsh());
            let bytes = image.file_bytes(p("f")).unwrap();
            let torn = image.stats().torn_writes;
            assert_eq!(torn, fs.stats().torn_writes);
            if bytes.is_empty() {
                none = true;
                continue;
            }
            assert!(bytes[..offset].iter().all(|&b| b == 0));
            let data = bytes[offset..].iter().take_while(|&&b| b == 0xAB).count();
            let cut = offset + data;
            assert!(bytes[cut..].iter().all(|&b| b == 0), "seed {seed}");
            if data == len {
                assert_eq!((bytes.len(), torn), (offset + len, 0));
                whole = true;
                continue;
            }
            assert_eq!(torn, 1);
            assert!(cut == offset || cut % 512 == 0, "seed {seed}: cut at {cut}");
            assert_eq!(image.stats().bytes_dropped, (len - data) as u64);
            if bytes.len() == offset + len {
                zeroed = true;
            } else {
                assert_eq!(bytes.len(), cut);
                cut_mid |= cut > offset;
            }
        }
        assert!(cut_mid && zeroed && whole && none);
    }

    #[test]
    fn nth_fault_fires_exactly_once_without_effect() {
        let fs = SimFs::new(6);
        let file = create(&fs, "f", b"");
        fs.inject(Fault {
            kind: FaultKind::Write,
            nth: 3,
            error: FaultError::Enospc,
        });
        fs.inject(Fault {
            kind: FaultKind::Sync,
            nth: 2,
            error: FaultError::Eio,
        });
        file.write_all_at(b"a", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"b", 1).unwrap();
        let err = file.write_all_at(b"cccc", 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert!(fs.file_bytes(p("f")).unwrap().starts_with(b"ab"));
        file.write_all_at(b"d", 2).unwrap();
        assert_eq!(raw(file.sync_data()), Some(EIO));
        fs.sync_dir(p(".")).unwrap();
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.file_bytes(p("f")).unwrap(), b"a");
        file.sync_data().unwrap();
        let before = fs.file_bytes(p("f")).unwrap();

        for (kind, op) in [
            (FaultKind::Create, 0),
            (FaultKind::Rename, 1),
            (FaultKind::Remove, 2),
            (FaultKind::SyncDir, 3),
            (FaultKind::SetLen, 4),
        ] {
            fs.inject(Fault {
                kind,
                nth: 1,
                error: FaultError::Eio,
            });
            let result = match op {
                0 => fs.open(p("g"), OpenMode::CreateNew).map(drop),
                1 => fs.rename(p("f"), p("g")),
                2 => fs.remove_file(p("f")),
                3 => fs.sync_dir(p(".")),
                _ => file.set_len(0),
            };
            assert_eq!(raw(result), Some(EIO), "{kind:?}");
        }
        assert_eq!(fs.list_dir(p(".")).unwrap(), ["f"]);
        assert_eq!(fs.file_bytes(p("f")).unwrap(), before);
        assert_eq!(fs.stats().faults_injected, 7);
        assert_eq!(fs.stats().writes, 3);
    }

    #[test]
    fn power_cut_fails_everything_and_keeps_durable_data() {
        let fs = SimFs::new(7);
        let file = create(&fs, "f", b"");
        fs.sync_dir(p(".")).unwrap();
        fs.cut_power_after(2);
        file.write_all_at(b"kept", 0).unwrap();
        file.sync_data().unwrap();
        assert!(!fs.is_powered_off());
        assert_eq!(raw(file.write_all_at(b"lost", 4)), Some(EIO));
        assert!(fs.is_powered_off());
        assert_eq!(raw(file.read_at(&mut [0; 4], 0)), Some(EIO));
        assert_eq!(raw(file.len()), Some(EIO));
        assert_eq!(raw(fs.list_dir(p("."))), Some(EIO));
        assert_eq!(raw(fs.open(p("f"), OpenMode::Read)), Some(EIO));
        assert_eq!(raw(fs.exists(p("f"))), Some(EIO));
        let image = fs.crash_image(CrashOptions::harsh());
        assert_eq!(
            dump(&image),
            [(PathBuf::from("./f"), Some(b"kept".to_vec()))]
        );
        assert!(!image.is_powered_off());
        image
            .open(p("f"), OpenMode::ReadWrite)
            .unwrap()
            .write_all_at(b"!", 4)
            .unwrap();

        let fs = SimFs::new(7);
        fs.cut_power_after(0);
        assert_eq!(raw(fs.create_dir_all(p("d"))), Some(EIO));
        assert!(
            !fs.crash_image(CrashOptions::harsh())
                .exists(p("d"))
                .unwrap()
        );
    }

    fn scenario(seed: u64) -> SimFs {
        let fs = SimFs::new(seed);
        fs.create_dir_all(p("/q/seg")).unwrap();
        fs.sync_dir(p("/")).unwrap();
        for i in 0..8u8 {
            let name = format!("/q/seg/{i:04}");
            let file = create(&fs, &name, &[i; 700]);
            file.write_all_at(&[i + 1; 1500], 300).unwrap();
            if i % 3 == 0 {
                file.sync_data().unwrap();
            }
            if i % 4 == 0 {
                fs.sync_dir(p("/q/seg")).unwrap();
            }
        }
        fs.rename(p("/q/seg/0001"), p("/q/meta")).unwrap();
        fs
    }

    fn dump_abs(fs: &SimFs) -> Vec<(String, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        for dir in ["/q", "/q/seg"] {
            for name in fs.list_dir(p(dir)).unwrap_or_default() {
                let path = format!("{dir}/{name}");
                out.push((path.clone(), fs.file_bytes(p(&path))));
            }
        }
        out
    }

    #[test]
    fn same_seed_gives_the_same_image() {
        let images: Vec<_> = (0..10)
            .map(|seed| dump_abs(&scenario(seed).crash_image(CrashOptions::harsh())))
            .collect();
        for (seed, image) in images.iter().enumerate() {
            let again = scenario(seed as u64).crash_image(CrashOptions::harsh());
            assert_eq!(&dump_abs(&again), image);
        }
        assert!(images.iter().any(|i| i != &images[0]));
        // A second image of the same state is drawn afresh, deterministically.
        let (a, b) = (scenario(3), scenario(3));
        a.crash_image(CrashOptions::harsh());
        b.crash_image(CrashOptions::harsh());
        let second = dump_abs(&a.crash_image(CrashOptions::harsh()));
        assert_eq!(second, dump_abs(&b.crash_image(CrashOptions::harsh())));
    }

    #[test]
    fn memfs_reads_writes_lists_renames_removes() {
        let fs = MemFs::new();
        fs.create_dir_all(p("/data/sub")).unwrap();
        let file = create(&fs, "/data/b", b"hello");
        file.write_all_at(b"!", 7).unwrap();
        assert_eq!(read(&fs, "/data/b"), b"hello\0\0!");
        let mut buf = [9; 4];
        assert_eq!(file.read_at(&mut buf, 6).unwrap(), 2);
        assert_eq!(buf, [0, b'!', 9, 9]);
        assert_eq!(file.read_at(&mut buf, 100).unwrap(), 0);
        file.set_len(2).unwrap();
        assert_eq!(&*file.map().unwrap(), b"he");
        create(&fs, "/data/a", b"a");
        assert_eq!(fs.list_dir(p("/data/")).unwrap(), ["a", "b", "sub"]);
        fs.rename(p("/data/a"), p("/data/b")).unwrap();
        assert_eq!(fs.list_dir(p("/data")).unwrap(), ["b", "sub"]);
        assert_eq!(read(&fs, "/data/./b"), b"a");
        assert_eq!(&*file.map().unwrap(), b"he", "open handle keeps its inode");
        fs.remove_file(p("/data/b")).unwrap();
        assert!(!fs.exists(p("/data/b")).unwrap());
        assert!(fs.exists(p("/data/sub")).unwrap());
        fs.sync_dir(p("/data")).unwrap();
        let kind = |r: io::Result<Arc<dyn FsFile>>| r.unwrap_err().kind();
        assert_eq!(
            kind(fs.open(p("/data/b"), OpenMode::Read)),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            kind(fs.open(p("/none/b"), OpenMode::CreateNew)),
            io::ErrorKind::NotFound
        );
        create(&fs, "c", b"");
        assert_eq!(
            kind(fs.open(p("c"), OpenMode::CreateNew)),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            fs.remove_file(p("c/d")).unwrap_err().kind(),
            io::ErrorKind::NotADirectory
        );
        assert_eq!(
            fs.remove_file(p("d")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fs.list_dir(p("nope")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(fs.list_dir(p(".")).unwrap(), ["c"]);
        let truncated = fs
            .open(p("/data/sub/../x"), OpenMode::CreateTruncate)
            .unwrap();
        truncated.write_all_at(b"xyz", 0).unwrap();
        fs.open(p("/data/x"), OpenMode::CreateTruncate).unwrap();
        assert_eq!(truncated.len().unwrap(), 0);
        let read_only = fs.open(p("/data/x"), OpenMode::Read).unwrap();
        assert_eq!(
            read_only.write_all_at(b"no", 0).unwrap_err().raw_os_error(),
            Some(EBADF)
        );
    }

    #[test]
    fn removed_inode_is_freed_once_unreferenced() {
        let fs = MemFs::new();
        let file = create(&fs, "f", b"abc");
        fs.remove_file(p("f")).unwrap();
        assert_eq!(fs.inner.lock().files.len(), 1);
        drop(file);
        assert_eq!(fs.inner.lock().files.len(), 0);

        let fs = SimFs::new(8);
        drop(create(&fs, "f", b"abc"));
        fs.sync_dir(p(".")).unwrap();
        fs.remove_file(p("f")).unwrap();
        assert_eq!(fs.lock().files.len(), 1, "still durable");
        fs.sync_dir(p(".")).unwrap();
        assert_eq!(fs.lock().files.len(), 0);
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let fs = SimFs::new(9);
        fs.create_dir_all(p("db")).unwrap();
        fs.sync_dir(p(".")).unwrap();
        let guard = fs.try_lock(p("db/LOCK")).unwrap().expect("free");
        assert_eq!(guard.path(), p("db/LOCK"));
        assert!(fs.try_lock(p("./db/LOCK")).unwrap().is_none());
        assert!(fs.clone().try_lock(p("db/LOCK")).unwrap().is_none());
        assert!(
            fs.crash_image(CrashOptions::clean())
                .try_lock(p("db/LOCK"))
                .unwrap()
                .is_some()
        );
        drop(guard);
        assert!(fs.try_lock(p("db/LOCK")).unwrap().is_some());
        assert_eq!(fs.list_dir(p("db")).unwrap(), ["LOCK"]);
        assert_eq!(
            fs.try_lock(p("nope/LOCK")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let mem = MemFs::new();
        let held = mem.try_lock(p("LOCK")).unwrap();
        assert!(held.is_some() && mem.try_lock(p("LOCK")).unwrap().is_none());
    }

    #[test]
    fn flip_bit_and_put_file_change_durable_bytes() {
        let fs = SimFs::new(10);
        fs.put_file(p("f"), b"\x00\x10").unwrap();
        fs.flip_bit(p("f"), 1, 4).unwrap();
        fs.flip_bit(p("f"), 0, 7).unwrap();
        assert!(fs.flip_bit(p("f"), 2, 0).is_err());
        assert!(fs.flip_bit(p("f"), 0, 8).is_err());
        assert!(fs.flip_bit(p("g"), 0, 0).is_err());
        assert!(fs.put_file(p("none/f"), b"").is_err());
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.file_bytes(p("f")).unwrap(), b"\x80\x00");
    }

    #[test]
    fn threads_share_one_file_system() {
        let fs = SimFs::new(11);
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let fs = fs.clone();
                std::thread::spawn(move || {
                    let file = create(&fs, &format!("t{t}"), b"");
                    for i in 0..100u64 {
                        file.write_all_at(&[t], i).unwrap();
                    }
                    file.sync_data().unwrap();
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        fs.sync_dir(p(".")).unwrap();
        let image = fs.crash_image(CrashOptions::clean());
        assert_eq!(image.list_dir(p(".")).unwrap(), ["t0", "t1", "t2", "t3"]);
        assert_eq!(image.file_bytes(p("t3")).unwrap(), [3; 100]);
        assert_eq!(fs.stats().writes, 400);
    }
}
