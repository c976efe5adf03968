//! The narrow I/O layer every file operation of the engine goes through.
//!
//! The engine never touches `std::fs` directly: it holds an [`Fs`] and the
//! [`FsFile`]s it opens. Three implementations exist:
//!
//! - [`RealFs`]: the operating system's file system (the default);
//! - [`MemFs`]: an in-memory file system, for fast tests of logic;
//! - [`SimFs`]: a fault-injecting simulation that remembers which bytes and
//!   which directory entries are durable, can hand back the image a power cut
//!   would leave, and can fail the Nth operation of a kind with `EIO` or
//!   `ENOSPC`. Deterministic from a seed.
//!
//! Durability model shared by all three: file contents become durable with
//! [`FsFile::sync_data`]; creating, renaming or removing a directory entry
//! becomes durable with [`Fs::sync_dir`] on the parent directory.

mod real;
mod sim;

use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use real::RealFs;
pub use sim::{CrashOptions, Fault, FaultError, FaultKind, MemFs, SimFs, SimStats};

/// How [`Fs::open`] should open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file for reading only.
    Read,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Create a new file for reading and writing; fails if it exists.
    CreateNew,
    /// Create the file if missing, or truncate it to zero length.
    CreateTruncate,
}

/// A file system, as the engine sees it.
///
/// Paths are absolute or relative to the process's working directory;
/// implementations other than [`RealFs`] treat them as plain keys.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>>;
    /// Creates a directory and any missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Lists the names (not paths) of the entries of a directory, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` names an existing file or directory.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Takes an exclusive lock on `path` (creating the file if needed),
    /// without waiting. Returns `Ok(None)` when another owner holds it.
    /// The lock is held until the returned guard is dropped.
    fn try_lock(&self, path: &Path) -> io::Result<Option<LockGuard>>;
}

/// An open file.
pub trait FsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (fewer only at the end of the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `bufs` one after the other from `offset`, as one write where
    /// the file system can (`pwritev`). Not atomic: a crash may keep any
    /// prefix of the bytes, as with one `write_all_at` per buffer.
    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
        for b in bufs {
            self.write_all_at(b, offset)?;
            offset += b.len() as u64;
        }
        Ok(())
    }
    /// Sets the length of the file, truncating or zero-extending it.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current length of the file.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Makes the file's contents and length durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// A read-only view of the whole file as it is now. [`RealFs`] maps the
    /// file into memory; other implementations copy it.
    fn map(&self) -> io::Result<Mapped>;

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with
    /// [`io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A read-only view of a file's bytes: a memory map or an owned copy.
pub struct Mapped(MappedInner);

enum MappedInner {
    Map(memmap2::Mmap),
    Owned(Arc<[u8]>),
    Empty,
}

impl Mapped {
    /// A view over bytes held in memory.
    pub fn owned(bytes: Arc<[u8]>) -> Mapped {
        Mapped(MappedInner::Owned(bytes))
    }

    pub(crate) fn from_map(map: memmap2::Mmap) -> Mapped {
        Mapped(MappedInner::Map(map))
    }

    pub(crate) fn empty() -> Mapped {
        Mapped(MappedInner::Empty)
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            MappedInner::Map(m) => m,
            MappedInner::Owned(b) => b,
            MappedInner::Empty => &[],
        }
    }
}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapped").field("len", &self.len()).finish()
    }
}

/// Holds an exclusive lock taken with [`Fs::try_lock`]; dropping it releases
/// the lock.
pub struct LockGuard {
    path: PathBuf,
    _inner: Box<dyn Send + Sync>,
}

impl LockGuard {
    /// Wraps whatever keeps the lock held.
    pub fn new(path: PathBuf, inner: Box<dyn Send + Sync>) -> LockGuard {
        LockGuard {
            path,
            _inner: inner,
        }
    }

    /// The locked path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.path)
            .finish()
    }
}

/// The parent directory of `path`, for [`Fs::sync_dir`] after a create,
/// rename or removal.
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes zeros over `[from, to)` of `file`, 64 KiB at a time (space
/// preallocated ahead of a segment's frames or a journal's records).
pub(crate) fn write_zeros(file: &dyn FsFile, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut pos = from;
    while pos < to {
        let n = (to - pos).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Replaces `path` atomically with `bytes`: write `<path>.tmp`, sync it,
/// rename it over `path`, sync the directory. After a crash `path` holds
/// the old bytes or the new ones. Public for tools that keep files beside
/// a store's (the command line's import records).
///
/// # Errors
///
/// The first failed step's I/O error.
pub fn write_atomic(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = fs.open(&tmp, OpenMode::CreateTruncate)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    fs.rename(&tmp, path)?;
    fs.sync_dir(parent_dir(path))
}

/// Creates `dir` and any missing parents, fsyncing the parent of each
/// directory it creates so that the new entries survive a power cut.
///
/// # Errors
///
/// The first failed step's I/O error.
pub fn create_dir_durable(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    while !fs.exists(p)? {
        missing.push(p);
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    fs.create_dir_all(dir)?;
    for created in missing.iter().rev() {
        fs.sync_dir(parent_dir(created))?;
    }
    Ok(())
}
