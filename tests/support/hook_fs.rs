//! A file system that wraps another and calls hooks on some operations:
//! for tests that must see (or hold up) what the engine does to its files.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use millpond::fs::{Fs, FsFile, LockGuard, Mapped, OpenMode};

/// Called with the path of the file an operation is about to act on. A
/// hook may block (to hold the operation up) or return an error (the
/// operation then fails with it and is not done).
pub type Hook = Arc<dyn Fn(&Path) -> io::Result<()> + Send + Sync>;

/// The hooks of a [`HookFs`]; `None` does nothing.
#[derive(Default, Clone)]
pub struct Hooks {
    /// Before [`FsFile::map`].
    pub map: Option<Hook>,
    /// Before [`FsFile::sync_data`].
    pub sync_data: Option<Hook>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("map", &self.map.is_some())
            .field("sync_data", &self.sync_data.is_some())
            .finish()
    }
}

/// `inner` with [`Hooks`].
#[derive(Debug, Clone)]
pub struct HookFs {
    inner: Arc<dyn Fs>,
    hooks: Hooks,
}

impl HookFs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Fs>, hooks: Hooks) -> HookFs {
        HookFs { inner, hooks }
    }
}

#[derive(Debug)]
struct HookFile {
    inner: Arc<dyn FsFile>,
    path: PathBuf,
    hooks: Hooks,
}

fn run(hook: &Option<Hook>, path: &Path) -> io::Result<()> {
    hook.as_ref().map_or(Ok(()), |h| h(path))
}

impl FsFile for HookFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn sync_data(&self) -> io::Result<()> {
        run(&self.hooks.sync_data, &self.path)?;
        self.inner.sync_data()
    }
    fn map(&self) -> io::Result<Mapped> {
        run(&self.hooks.map, &self.path)?;
        self.inner.map()
    }
}

impl Fs for HookFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        Ok(Arc::new(HookFile {
            inner: self.inner.open(path, mode)?,
            path: path.to_owned(),
            hooks: self.hooks.clone(),
        }))
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
